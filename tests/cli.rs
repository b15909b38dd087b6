//! The command line end to end: a short run, evaluation, info, and one clear error (non-zero
//! exit, one message) for each kind of bad input.

mod common;

use common::{stderr, terse};

fn assert_fails_with(args: &[&str], needle: &str) {
    let o = terse(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let e = stderr(&o);
    assert!(
        e.contains(needle),
        "{args:?}: expected '{needle}' in stderr:\n{e}"
    );
    assert!(!e.contains("panicked"), "{args:?} panicked:\n{e}");
}

#[test]
fn train_then_eval_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 20_000);
    let out = dir.path().join("ck");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        d,
        "--steps",
        "4",
        "--batch",
        "2",
        "--seq",
        "32",
        "--heldout-bytes",
        "4000",
        "--out",
        o,
        "--quiet",
        "--json",
    ];
    let r = terse(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(summary["steps_done"], 4);
    assert!(summary["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(out.join("model.safetensors").exists() && out.join("metrics.jsonl").exists());

    let r = terse(&[
        "eval",
        "--checkpoint",
        o,
        "--data",
        d,
        "--seq",
        "32",
        "--max-bytes",
        "3000",
        "--json",
        "--baselines",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let e: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let bpb = e["bits_per_byte"].as_f64().unwrap();
    assert!(bpb > 0.5 && bpb < 9.0, "{bpb}");
    assert!(e["xz_bpb"].as_f64().unwrap() > 0.5);

    let r = terse(&["train", "--resume", o, "--steps", "6", "--quiet", "--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let s: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(s["steps_done"], 6);
    assert_fails_with(
        &["train", "--resume", o, "--lr", "0.1"],
        "--lr cannot be changed on --resume",
    );
}

#[test]
fn info_reports_backends() {
    let r = terse(&["info", "--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(j["backends"]["cpu"]["threads"].as_u64().unwrap() >= 1);
    assert!(j["gpus"].is_array());
}

#[test]
fn bench_train_reports_throughput() {
    let r = terse(&[
        "bench", "train", "--preset", "tiny", "--batch", "2", "--seq", "16", "--steps", "2",
        "--device", "cpu", "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(j["tokens_per_s"].as_f64().unwrap() > 0.0 && j["ms_per_step"].as_f64().unwrap() > 0.0);
    assert_fails_with(
        &["bench", "train", "--preset", "nope"],
        "unknown preset 'nope'",
    );
}

/// Without a GPU, the CUDA paths exit non-zero with one clear message (never a panic).
#[test]
fn cuda_commands_explain_without_a_gpu() {
    if terse::backend::cuda::gpu_unavailable_reason().is_none() {
        eprintln!("SKIPPED: a GPU is usable here (the GPU paths are covered by gpu_parity)");
        return;
    }
    assert_fails_with(
        &[
            "bench", "kernels", "--preset", "tiny", "--batch", "2", "--seq", "16",
        ],
        "bench kernels needs a GPU",
    );
    assert_fails_with(
        &[
            "bench", "train", "--preset", "tiny", "--batch", "2", "--seq", "16", "--device", "cuda",
        ],
        "--device cuda: no usable GPU",
    );
    // auto falls back to the CPU and says why
    let r = terse(&[
        "bench", "train", "--preset", "tiny", "--batch", "2", "--seq", "16", "--steps", "1",
        "--device", "auto", "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(j["backend"].as_str().unwrap().starts_with("cpu"), "{j}");
    assert!(j["note"].as_str().unwrap().contains("no usable GPU"), "{j}");
}

#[test]
fn missing_empty_and_unreadable_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.txt");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let a_dir = dir.path().join("corpus.txt");
    std::fs::create_dir(&a_dir).unwrap();
    let bad_gz = dir.path().join("bad.txt.gz");
    std::fs::write(&bad_gz, b"this is not gzip data at all").unwrap();
    for (path, needle) in [
        (&missing, "cannot open corpus"),
        (&empty, "holds no text"),
        (&a_dir, "directory"),
        (&bad_gz, "bad.txt.gz"),
    ] {
        let p = path.to_str().unwrap();
        let args = [
            "train",
            "--preset",
            "tiny",
            "--data",
            p,
            "--steps",
            "1",
            "--heldout-bytes",
            "10",
        ];
        assert_fails_with(&args, needle);
    }
}

#[test]
fn corrupt_and_truncated_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 8_000);
    let out = dir.path().join("ck");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    common::train_tiny(&data, &out, &["--steps", "1"]);
    let model = out.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_with(
        &["eval", "--checkpoint", o, "--data", d],
        "model.safetensors",
    );
    let mut flipped = bytes.clone();
    flipped[10] ^= 0xFF;
    std::fs::write(&model, &flipped).unwrap();
    assert_fails_with(
        &["eval", "--checkpoint", o, "--data", d],
        "model.safetensors",
    );
    assert_fails_with(
        &[
            "eval",
            "--checkpoint",
            dir.path().join("none").to_str().unwrap(),
            "--data",
            d,
        ],
        "none",
    );
}

#[test]
fn unknown_preset_and_bad_flags() {
    assert_fails_with(
        &["train", "--preset", "huge", "--data", "x.txt"],
        "unknown preset 'huge'",
    );
    assert_fails_with(&["train", "--bogus"], "--bogus");
    assert_fails_with(&["train", "--steps", "many"], "many");
    assert_fails_with(&["frobnicate"], "frobnicate");
    assert_fails_with(&["train", "--preset", "tiny"], "--data is required");
}

#[test]
fn compress_decompress_round_trip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let ck = dir.path().join("m1");
    common::train_tiny(&data, &ck, &["--steps", "2"]);
    let mut input = std::fs::read(&data).unwrap();
    input.extend_from_slice(&[0xFF, 0x00, 0xC3, 0x28]); // not UTF-8
    let src = dir.path().join("in.bin");
    std::fs::write(&src, &input).unwrap();
    let (z, back) = (dir.path().join("in.terse"), dir.path().join("back.bin"));
    let (m, s, zs, bs) = (
        ck.to_str().unwrap(),
        src.to_str().unwrap(),
        z.to_str().unwrap(),
        back.to_str().unwrap(),
    );
    let r = terse(&["compress", "--m1", m, "--json", s, zs]);
    assert!(r.status.success(), "{}", stderr(&r));
    let rep: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(rep["original_bytes"], input.len());
    let r = terse(&["decompress", "--m1", m, zs, bs]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(std::fs::read(&back).unwrap(), input);
    // Another M1 is refused by name, with no output left behind.
    let other = dir.path().join("m1b");
    common::train_tiny(&data, &other, &["--steps", "1", "--seed", "7"]);
    let nope = dir.path().join("nope.bin");
    assert_fails_with(
        &[
            "decompress",
            "--m1",
            other.to_str().unwrap(),
            zs,
            nope.to_str().unwrap(),
        ],
        "wrong M1",
    );
    assert!(!nope.exists());
    let z_bytes = std::fs::read(&z).unwrap();
    std::fs::write(&z, &z_bytes[..z_bytes.len() - 3]).unwrap();
    assert_fails_with(
        &["decompress", "--m1", m, zs, nope.to_str().unwrap()],
        "truncated",
    );
    assert!(!nope.exists());
}

/// `--gpu` (M1 of `ac` on the GPU) on a machine without one is refused with the reason and
/// writes nothing; with a GPU, tests/gpu_parity.rs checks the same path bit for bit.
#[test]
fn m1_on_gpu_without_a_gpu_is_refused() {
    if terse::backend::cuda::gpu_unavailable_reason().is_none() {
        eprintln!("SKIPPED: a GPU is present (tests/gpu_parity.rs covers --gpu)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let ck = dir.path().join("m1");
    common::train_tiny(&data, &ck, &["--steps", "1"]);
    let out = dir.path().join("ds");
    let (d, m, o) = (
        data.to_str().unwrap(),
        ck.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let r = terse(&[
        "tokenize", "--method", "ac", "--gpu", "--m1", m, "--data", d, "--out", o,
    ]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("no usable GPU"), "{}", stderr(&r));
    assert!(!out.exists(), "a refused run left output");
    // equal-info runs on the GPU too, and is refused the same way; bytes has no M1 to run there.
    let r = terse(&[
        "tokenize",
        "--method",
        "equal-info",
        "--gpu",
        "--m1",
        m,
        "--data",
        d,
        "--out",
        o,
    ]);
    assert!(stderr(&r).contains("no usable GPU"), "{}", stderr(&r));
    assert!(!out.exists(), "a refused run left output");
    let r = terse(&[
        "tokenize", "--method", "bytes", "--gpu", "--data", d, "--out", o,
    ]);
    assert!(!r.status.success());
    assert!(!out.exists(), "a refused run left output");
}
