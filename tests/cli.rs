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

/// An M1 checkpoint and a small input file in `dir`: (checkpoint, input bytes, input path).
fn m1_and_input(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>, std::path::PathBuf) {
    let data = common::sample_prefix(dir, 4_000);
    let ck = dir.join("m1");
    common::train_tiny(&data, &ck, &["--steps", "1"]);
    let input = std::fs::read(&data).unwrap()[..1500].to_vec();
    let src = dir.join("in.bin");
    std::fs::write(&src, &input).unwrap();
    (ck, input, src)
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Decompresses `z` with `ck` and returns the bytes.
fn decompressed(ck: &std::path::Path, z: &std::path::Path) -> Vec<u8> {
    let back = z.with_extension("back");
    let r = terse(&[
        "decompress",
        "--m1",
        path_str(ck),
        "--force",
        path_str(z),
        path_str(&back),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    std::fs::read(back).unwrap()
}

fn hidden_temps(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
        .collect()
}

#[test]
fn compress_writes_through_a_symlink_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, src) = m1_and_input(dir.path());
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("out.terse");
    std::os::unix::fs::symlink(real.join("target.terse"), &link).unwrap();
    let r = terse(&[
        "compress",
        "--m1",
        path_str(&ck),
        path_str(&src),
        path_str(&link),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(decompressed(&ck, &real.join("target.terse")), input);
    // The link now points at an existing file: refused without --force, followed with it.
    let r = terse(&[
        "compress",
        "--m1",
        path_str(&ck),
        path_str(&src),
        path_str(&link),
    ]);
    assert!(!r.status.success());
    let r = terse(&[
        "compress",
        "--m1",
        path_str(&ck),
        "--force",
        path_str(&src),
        path_str(&link),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(decompressed(&ck, &link), input);
}

#[test]
fn compress_writes_through_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, src) = m1_and_input(dir.path());
    let fifo = dir.path().join("pipe");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let r = terse(&[
        "compress",
        "--m1",
        path_str(&ck),
        path_str(&src),
        path_str(&fifo),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let got = reader.join().unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    // The bytes that went down the pipe are the compressed file.
    let z = dir.path().join("from-pipe.terse");
    std::fs::write(&z, &got).unwrap();
    assert_eq!(decompressed(&ck, &z), input);
    let regular = dir.path().join("regular.terse");
    let r = terse(&[
        "compress",
        "--m1",
        path_str(&ck),
        path_str(&src),
        path_str(&regular),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(std::fs::read(&regular).unwrap(), got);
}

/// Device files made in a temp dir (as root): a copy of /dev/null stays a device, and a copy of
/// /dev/full gives a "disk full" error that names the path.
#[test]
fn compress_to_a_device_writes_through_and_a_full_disk_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let null = dir.path().join("null");
    let made = std::process::Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: mknod needs root");
        return;
    }
    let (ck, _input, src) = m1_and_input(dir.path());
    let r = terse(&[
        "compress",
        "--m1",
        path_str(&ck),
        path_str(&src),
        path_str(&null),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::symlink_metadata(&null).unwrap().file_type();
    assert!(t.is_char_device(), "{t:?}");
    let r = terse(&[
        "decompress",
        "--m1",
        path_str(&ck),
        path_str(&src),
        path_str(&null),
    ]);
    assert!(!r.status.success(), "not a compressed file");
    assert!(std::fs::symlink_metadata(&null)
        .unwrap()
        .file_type()
        .is_char_device());
    let full = dir.path().join("full");
    assert!(std::process::Command::new("mknod")
        .arg(&full)
        .args(["c", "1", "7"])
        .status()
        .unwrap()
        .success());
    assert_fails_with(
        &[
            "compress",
            "--m1",
            path_str(&ck),
            path_str(&src),
            path_str(&full),
        ],
        &format!("cannot write {}", full.display()),
    );
    assert!(stderr(&terse(&[
        "compress",
        "--m1",
        path_str(&ck),
        path_str(&src),
        path_str(&full)
    ]))
    .contains("No space left"));
}

#[test]
fn existing_output_refused_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, src) = m1_and_input(dir.path());
    let (m, s) = (path_str(&ck), path_str(&src));
    let z = dir.path().join("out.terse");
    std::fs::write(&z, b"precious").unwrap();
    assert_fails_with(&["compress", "--m1", m, s, path_str(&z)], "--force");
    assert_eq!(std::fs::read(&z).unwrap(), b"precious");
    let r = terse(&["compress", "--m1", m, "--force", s, path_str(&z)]);
    assert!(r.status.success(), "{}", stderr(&r));
    let back = dir.path().join("back.bin");
    std::fs::write(&back, b"precious too").unwrap();
    assert_fails_with(
        &["decompress", "--m1", m, path_str(&z), path_str(&back)],
        "--force",
    );
    assert_eq!(std::fs::read(&back).unwrap(), b"precious too");
    let r = terse(&[
        "decompress",
        "--m1",
        m,
        "--force",
        path_str(&z),
        path_str(&back),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(std::fs::read(&back).unwrap(), input);
    // detokenize the same way.
    let ds = dir.path().join("ds");
    common::tokenize(
        &dir.path().join("corpus.txt"),
        &ds,
        "bytes",
        "8",
        "256",
        &[],
    );
    let (first, text) = (dir.path().join("first"), dir.path().join("text"));
    let detok = |out: &std::path::Path, force: bool| {
        let mut a = vec![
            "detokenize",
            "--data",
            path_str(&ds),
            "--out",
            path_str(out),
        ];
        if force {
            a.push("--force");
        }
        terse(&a)
    };
    assert!(detok(&first, false).status.success());
    std::fs::write(&text, b"keep").unwrap();
    let r = detok(&text, false);
    assert!(!r.status.success() && stderr(&r).contains("--force"));
    assert_eq!(std::fs::read(&text).unwrap(), b"keep");
    let r = detok(&text, true);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(
        std::fs::read(&text).unwrap(),
        std::fs::read(&first).unwrap()
    );
}

/// A compress killed mid-write leaves no output, only its hidden temp file, which the next run
/// into the same place removes (saying so).
#[test]
fn killed_compress_leaves_no_output_and_next_run_cleans_its_temp() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, src) = m1_and_input(dir.path());
    let big = dir.path().join("big.bin");
    std::fs::write(&big, input.repeat(4_000)).unwrap();
    let z = dir.path().join("out.terse");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_terse"))
        .args(["--threads", "1", "compress", "--m1", path_str(&ck)])
        .args([&big, &z])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while hidden_temps(dir.path()).is_empty() {
        assert!(t.elapsed().as_secs() < 120, "no temp file appeared");
        assert!(child.try_wait().unwrap().is_none(), "finished too soon");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!z.exists(), "a killed compress left output");
    assert_eq!(hidden_temps(dir.path()).len(), 1);
    let r = terse(&[
        "compress",
        "--m1",
        path_str(&ck),
        path_str(&src),
        path_str(&z),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("removed 1 temp file"), "{}", stderr(&r));
    assert!(hidden_temps(dir.path()).is_empty());
    assert_eq!(decompressed(&ck, &z), input);
}
