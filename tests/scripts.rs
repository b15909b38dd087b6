//! The helper scripts under `scripts/` that run outside cargo: `bench_table.py` (the BENCHMARKS.md
//! table of a gpu-check.sh run). Skipped with a note where python3 is missing.

use std::process::{Command, Output};

fn bench_table(dir: &std::path::Path) -> Option<Output> {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench_table.py"
        ))
        .arg(dir)
        .output();
    match out {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("SKIPPED: bench_table.py: python3 not runnable: {e}");
            None
        }
    }
}

#[test]
fn bench_table_refuses_a_folder_without_logs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(out) = bench_table(dir.path()) else {
        return;
    };
    assert!(!out.status.success(), "an empty folder was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither 06-train.log nor 07-torch.log"),
        "{err}"
    );
}

#[test]
fn bench_table_pairs_terse_and_torch_rows_and_skips_garbage() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("06-train.log"),
        "# == 06-train-m1-3m: terse bench train\n\
         {not json\n\
         {\"bench\":\"train\",\"preset\":\"m1-3m\",\"batch\":128,\"seq\":1024,\"ms_per_step\":6.0,\
         \"tokens_per_s\":21845333,\"tflops\":300.0,\"backend\":\"cuda: H100\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("07-torch.log"),
        "{\"torch\": \"2.11.0\", \"gpu\": \"NVIDIA H100 80GB HBM3\"}\n\
         \u{fffd}garbage\n\
         {\"what\": \"train\", \"model\": \"m1-3m\", \"compiled\": true, \"batch\": 128, \"seq\": 1024, \
         \"ms_per_step\": 12.0, \"tokens_per_s\": 10922667, \"tflops\": 150.0}\n",
    )
    .unwrap();
    let Some(out) = bench_table(dir.path()) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Device: NVIDIA H100 80GB HBM3; torch 2.11.0"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("| m1-3m 128x1024"))
        .unwrap_or_else(|| panic!("no m1-3m row in:\n{text}"));
    assert!(row.contains("| 6.00 (21,845,333, 300.0) |"), "{row}");
    assert!(row.contains("| 12.00 (10,922,667, 150.0) |"), "{row}");
    assert!(row.contains("| 2.00x |"), "{row}");
    assert!(row.contains("<= 6.5 ms (met)"), "{row}");
}
