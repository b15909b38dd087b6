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

/// `bench m1` times contract 3 (what codes) beside contract 2 on the same windows, both ways of
/// driving M1, and refuses a context contract 3 cannot attend over.
#[test]
fn bench_m1_reports_both_contracts() {
    for steps in [false, true] {
        let mut args = vec!["bench", "m1", "--preset", "tiny", "--windows", "4"];
        args.extend(["--len", "8", "--context", "16", "--rounds", "3", "--json"]);
        if steps {
            args.push("--steps");
        }
        let r = terse(&args);
        assert!(r.status.success(), "{}", stderr(&r));
        let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert!(j["positions_per_s"].as_f64().unwrap() > 0.0, "{j}");
        assert!(j["float_positions_per_s"].as_f64().unwrap() > 0.0, "{j}");
        // Four windows of nine positions, three timed runs of each contract.
        assert_eq!(j["positions"], 36, "{j}");
        let runs = |key: &str| j[key].as_array().unwrap().len();
        assert_eq!((runs("runs"), runs("float_runs")), (3, 3), "{j}");
        let ratio = j["ratio"].as_f64().unwrap();
        let (low, high) = (
            j["round_ratio_min"].as_f64().unwrap(),
            j["round_ratio_max"].as_f64().unwrap(),
        );
        assert!(ratio > 0.0 && low > 0.0 && low <= high, "{j}");
        let device = j["device"].as_str().unwrap();
        assert!(device.contains("int8"), "{j}");
        assert_eq!(device.contains("lockstep"), steps, "{j}");
    }
    assert_fails_with(
        &["bench", "m1", "--preset", "tiny", "--context", "0"],
        "--context must be between 1 and 1024",
    );
    assert_fails_with(
        &["bench", "m1", "--preset", "tiny", "--rounds", "0"],
        "--windows and --rounds must be positive",
    );
}

/// Without a GPU, the CUDA paths exit non-zero with one clear message (never a panic).
#[test]
fn cuda_commands_explain_without_a_gpu() {
    if terse::backend::cuda::gpu_unavailable_reason().is_none() {
        eprintln!("SKIPPED: a GPU is usable here (the GPU paths are covered by gpu_parity)");
        return;
    }
    assert_fails_with(&["bench", "ceilings"], "bench ceilings needs a GPU");
    // bench kernels predicts alone: the cost model at the named card's ceilings
    let r = terse(&[
        "bench", "kernels", "--preset", "m1-3m", "--batch", "128", "--seq", "1024", "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["card"]["name"], "H200", "{j}");
    let floor = j["predicted_step_ms"].as_f64().unwrap();
    assert!(floor > 1.0 && floor < 20.0, "{j}");
    let kernels = j["kernels"].as_array().unwrap();
    assert!(kernels
        .iter()
        .any(|k| k["kernel"] == "attention_backward" && k["per_step"] == 3));
    let text = terse(&["bench", "kernels", "--preset", "tiny", "--card", "h100"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains("predicted on H100") && out.contains("predicted step floor"),
        "{out}"
    );
    assert_fails_with(
        &["bench", "kernels", "--preset", "tiny", "--batch", "0"],
        "--batch and --seq must be positive",
    );
    assert_fails_with(
        &["bench", "kernels", "--preset", "tiny", "--card", "A100"],
        "no measured ceilings for card \"A100\"",
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
    // Equal-Info windows, then the default (ac), which is written last and refused below.
    for (method, extra) in [
        (
            "equal-info",
            &["--method", "equal-info", "--window-bits", "24"][..],
        ),
        ("ac", &[]),
    ] {
        let mut args = vec!["compress", "--m1", m, "--json", "--force"];
        args.extend(extra);
        args.extend([s, zs]);
        let r = terse(&args);
        assert!(r.status.success(), "{}", stderr(&r));
        let rep: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(rep["original_bytes"], input.len());
        assert_eq!(rep["method"], method);
        let r = terse(&["decompress", "--m1", m, "--force", zs, bs]);
        assert!(r.status.success(), "{}", stderr(&r));
        assert_eq!(std::fs::read(&back).unwrap(), input, "{method}");
    }
    assert_fails_with(
        &["compress", "--m1", m, "--window-bits", "16", s, zs],
        "--window-bits applies to --method equal-info, not ac",
    );
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

/// `terse pack-m1` writes an M1 pack that `--m1` takes in place of its checkpoint: it reports
/// the checkpoint's fingerprint, compresses to the same bytes and decodes what the checkpoint
/// coded; an existing output is refused without --force; a damaged pack is refused by its CRC-32.
#[test]
fn pack_m1_codes_as_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, src) = m1_and_input(dir.path());
    let pack = dir.path().join("m1.pack");
    let args = ["pack-m1", "--m1", path_str(&ck), "--out", path_str(&pack)];
    let r = terse(&[&args[..], &["--json"]].concat());
    assert!(r.status.success(), "{}", stderr(&r));
    let rep: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(rep["bytes"], std::fs::metadata(&pack).unwrap().len());
    let fingerprint = terse::m1::Int8M1::load(&ck).unwrap().fingerprint();
    assert_eq!(rep["fingerprint"], format!("{fingerprint:016x}"));
    assert_fails_with(&args, "already exists (--force replaces it)");
    let r = terse(&[&args[..], &["--force"]].concat());
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains(&format!("M1 fingerprint {fingerprint:016x}"))
    );

    let coded = |m1: &std::path::Path| {
        let r = terse(&["compress", "--m1", path_str(m1), "-c", path_str(&src)]);
        assert!(r.status.success(), "{}", stderr(&r));
        r.stdout
    };
    let by_checkpoint = coded(&ck);
    assert_eq!(coded(&pack), by_checkpoint);
    let z = dir.path().join("in.terse");
    std::fs::write(&z, &by_checkpoint).unwrap();
    assert_eq!(decompressed(&pack, &z), input);

    let mut bytes = std::fs::read(&pack).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&pack, &bytes).unwrap();
    assert_fails_with(
        &["decompress", "--m1", path_str(&pack), "-c", path_str(&z)],
        "its tensor data does not match its CRC-32",
    );
}

/// `--gpu` (M1 of `ac` or `equal-info` on the GPU) on a machine without one is refused with the
/// reason and writes nothing; with a GPU, tests/gpu_parity.rs checks the same path bit for bit.
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
    let why = "no usable GPU";
    assert!(!r.status.success());
    assert!(stderr(&r).contains(why), "{}", stderr(&r));
    assert!(!out.exists(), "a refused run left output");
    // equal-info is refused the same way; bytes has no M1 to run there.
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
    assert!(stderr(&r).contains(why), "{}", stderr(&r));
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

/// xz's habits: `compress FILE` writes FILE.terse and removes FILE, `decompress FILE.terse`
/// restores FILE and removes FILE.terse; -k keeps the input, an existing output is refused
/// without -f (and the input then stays), -c writes to stdout and keeps the input, -t checks
/// without writing (and fails on a damaged file), `compress -d` decompresses, and a name without
/// the suffix is refused when there is no OUTPUT.
#[test]
fn compress_follows_xz_habits() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, src) = m1_and_input(dir.path());
    let m = path_str(&ck);
    let z = dir.path().join("in.bin.terse");
    let ok = |args: &[&str]| {
        let r = terse(args);
        assert!(r.status.success(), "{args:?}: {}", stderr(&r));
        r
    };
    ok(&["compress", "--m1", m, path_str(&src)]);
    assert!(
        z.exists() && !src.exists(),
        "FILE.terse written, FILE removed"
    );
    ok(&["decompress", "--m1", m, path_str(&z)]);
    assert_eq!(std::fs::read(&src).unwrap(), input);
    assert!(!z.exists(), "FILE.terse removed");
    ok(&["compress", "--m1", m, "-k", path_str(&src)]);
    assert!(z.exists() && src.exists(), "-k keeps FILE");
    assert_fails_with(&["compress", "--m1", m, path_str(&src)], "already exists");
    assert!(src.exists(), "a refused run keeps its input");
    ok(&["compress", "--m1", m, "-f", "-k", path_str(&src)]);
    let c = ok(&["compress", "--m1", m, "-c", path_str(&src)]);
    assert_eq!(
        c.stdout,
        std::fs::read(&z).unwrap(),
        "-c writes the same bytes"
    );
    assert!(src.exists(), "-c keeps FILE");
    let t = ok(&["decompress", "--m1", m, "-t", path_str(&z)]);
    assert!(String::from_utf8_lossy(&t.stdout).starts_with("tested"));
    assert!(z.exists(), "-t keeps FILE.terse");
    ok(&["compress", "--m1", m, "-t", path_str(&z)]);
    std::fs::remove_file(&src).unwrap();
    ok(&["compress", "--m1", m, "-d", "-k", path_str(&z)]);
    assert_eq!(std::fs::read(&src).unwrap(), input);
    let bytes = std::fs::read(&z).unwrap();
    let damaged = dir.path().join("damaged.terse");
    std::fs::write(&damaged, &bytes[..bytes.len() - 3]).unwrap();
    assert_fails_with(
        &["decompress", "--m1", m, "-t", path_str(&damaged)],
        "truncated",
    );
    assert!(damaged.exists(), "a refused file stays");
    assert_fails_with(
        &["decompress", "--m1", m, path_str(&src)],
        "no .terse suffix to remove",
    );
    assert_fails_with(
        &["compress", "--m1", m, "-c", path_str(&src), "out"],
        "give OUTPUT or -c/--stdout, not both",
    );
    for bad in ["0", "16777217"] {
        assert_fails_with(
            &[
                "compress",
                "--m1",
                m,
                "-c",
                "--chunk-bytes",
                bad,
                path_str(&src),
            ],
            &format!("chunk bytes {bad} out of range 1..=16777216"),
        );
    }
}

#[test]
fn a_file_list_codes_each_file_and_names_the_ones_that_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, _) = m1_and_input(dir.path());
    let m = path_str(&ck);
    let files: Vec<_> = (1..=3)
        .map(|i| {
            let f = dir.path().join(format!("f{i}"));
            std::fs::write(&f, &input[..500 * i]).unwrap();
            f
        })
        .collect();
    let missing = dir.path().join("missing");
    let list = dir.path().join("list");
    let names = [&files[0], &missing, &files[1], &files[2]];
    let text: String = names
        .iter()
        .map(|f| format!("{}\n\n", f.display()))
        .collect();
    std::fs::write(&list, text).unwrap();
    let r = terse(&["compress", "--m1", m, "-k", "--filelist", path_str(&list)]);
    assert!(!r.status.success(), "a missing file fails the run");
    let err = stderr(&r);
    assert!(err.contains(path_str(&missing)), "{err}");
    assert!(err.contains("1 of the 4 files"), "{err}");
    // The others were coded, each to its derived name, and decode to their input.
    for (i, f) in files.iter().enumerate() {
        let z = dir.path().join(format!("f{}.terse", i + 1));
        assert_eq!(decompressed(&ck, &z), input[..500 * (i + 1)]);
        assert!(f.exists(), "-k keeps each input");
    }
    assert_fails_with(
        &[
            "compress",
            "--m1",
            m,
            "--filelist",
            path_str(&list),
            path_str(&files[0]),
        ],
        "cannot be used with",
    );
    std::fs::write(&list, "-\n").unwrap();
    assert_fails_with(
        &["compress", "--m1", m, "--filelist", path_str(&list)],
        "standard input (-) cannot be one of a list's files",
    );
    std::fs::write(&list, "\n \n").unwrap();
    assert_fails_with(
        &["compress", "--m1", m, "--filelist", path_str(&list)],
        "the file list names no file",
    );
    assert_fails_with(
        &["decompress", "--m1", m, "--filelist", path_str(&missing)],
        "cannot read the file list",
    );
}

/// A process that an MPI launcher seems to have started, but whose MPI library is missing or
/// is not a library, stops with one clear message (no mpirun needed: the launcher's variable is
/// set by hand).
#[test]
fn an_unusable_mpi_library_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let out = dir.path().join("run");
    let not_mpi = dir.path().join("not-mpi.so");
    std::fs::write(&not_mpi, b"not a shared library").unwrap();
    for (library, needle) in [
        (
            dir.path().join("libmpi.so.40"),
            "cannot open an MPI library",
        ),
        (not_mpi, "cannot open an MPI library"),
    ] {
        let r = std::process::Command::new(env!("CARGO_BIN_EXE_terse"))
            .args(["train", "--preset", "tiny", "--steps", "1", "--quiet"])
            .args(["--data", path_str(&data), "--out", path_str(&out)])
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .env("TERSE_MPI_LIBRARY", &library)
            .output()
            .unwrap();
        assert!(!r.status.success());
        let err = stderr(&r);
        assert!(
            err.contains(needle) && err.contains(path_str(&library)),
            "{err}"
        );
        assert!(!out.exists(), "a refused run wrote {}", out.display());
    }
}

/// Runs terse with `args`, `stdin` written to its standard input through a pipe (from another
/// thread, so a child that writes while it reads cannot deadlock), and its output collected.
fn run(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = common::spawn_piped(args);
    let mut pipe = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || pipe.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    out
}

/// `-` reads standard input and writes standard output, through real pipes: `cat FILE | terse
/// compress - - | terse decompress - -` gives FILE back, the same bytes as compressing the file;
/// the reports go to stderr, and a damaged stream on stdin is refused with a non-zero status.
#[test]
fn compress_and_decompress_through_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, src) = m1_and_input(dir.path());
    let m = path_str(&ck);
    let z = run(&["compress", "--m1", m, "-", "-"], &input);
    assert!(z.status.success(), "{}", stderr(&z));
    assert!(
        stderr(&z).contains("compressed"),
        "the report goes to stderr"
    );
    let from_file = dir.path().join("file.terse");
    let r = terse(&["compress", "--m1", m, path_str(&src), path_str(&from_file)]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(std::fs::read(&from_file).unwrap(), z.stdout);
    let back = run(&["decompress", "--m1", m, "--json", "-", "-"], &z.stdout);
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(back.stdout, input);
    assert!(
        stderr(&back).contains("\"method\":\"ac\""),
        "{}",
        stderr(&back)
    );
    let cut = run(
        &["decompress", "--m1", m, "-", "-"],
        &z.stdout[..z.stdout.len() - 5],
    );
    assert!(!cut.status.success());
    assert!(stderr(&cut).contains("truncated"), "{}", stderr(&cut));
}

/// With no flags but the file's name, `compress FILE && decompress FILE.terse` gives FILE back
/// byte for byte, and so does `compress - - | decompress - -`, on every kind of input: prose,
/// web-like markup, source code, an executable, random bytes, bytes that are not UTF-8, and
/// nothing at all (the built-in M1; a kilobyte of each keeps it quick).
#[test]
fn no_flags_round_trip_every_kind_of_input() {
    let dir = tempfile::tempdir().unwrap();
    let books = include_bytes!("../data/sample-books.txt");
    let markup = b"<html><head><title>Offers</title></head><body><ul class=\"menu\">\
        <li><a href=\"/home\">Home</a></li><li><a href=\"/shop\">Shop</a></li></ul>\
        <p>Free shipping on orders over $50!</p><ul class=\"menu\"><li><a href=\"/home\">Home\
        </a></li></ul></body></html>\n"
        .repeat(8);
    let source = include_bytes!("../src/coder/contexts.rs");
    let exe = std::fs::read(env!("CARGO_BIN_EXE_terse")).unwrap();
    let mut r = terse::rng::Rng::new(11);
    let random: Vec<u8> = (0..1000).map(|_| r.below(256) as u8).collect();
    let latin1: Vec<u8> = "Déjà vu, naïve café. "
        .bytes()
        .map(|b| if b >= 0x80 { 0xe9 } else { b })
        .cycle()
        .take(1000)
        .collect();
    let inputs: [(&str, &[u8]); 7] = [
        ("prose", &books[600_000..601_000]),
        ("markup", &markup[..1000]),
        ("source", &source[..1000]),
        ("executable", &exe[..1000]),
        ("random", &random),
        ("latin1", &latin1),
        ("empty", b""),
    ];
    std::thread::scope(|s| {
        for (name, input) in inputs {
            let dir = dir.path();
            s.spawn(move || {
                let file = dir.join(name);
                std::fs::write(&file, input).unwrap();
                let z = run(&["compress", path_str(&file)], b"");
                assert!(z.status.success(), "{name}: {}", stderr(&z));
                assert!(!file.exists(), "{name}: FILE removed");
                let terse_file = dir.join(format!("{name}.terse"));
                let d = run(&["decompress", path_str(&terse_file)], b"");
                assert!(d.status.success(), "{name}: {}", stderr(&d));
                assert_eq!(std::fs::read(&file).unwrap(), input, "{name} from the file");
                let z = run(&["compress", "-", "-"], input);
                assert!(z.status.success(), "{name}: {}", stderr(&z));
                let d = run(&["decompress", "-", "-"], &z.stdout);
                assert!(d.status.success(), "{name}: {}", stderr(&d));
                assert_eq!(d.stdout, input, "{name} through pipes");
            });
        }
    });
}

/// A file written by an earlier build decodes with this one, byte for byte: the built-in M1's
/// format 5 coding of 8,000 bytes of the bundled sample, kept as it was written (2026-12-06, the
/// last build that wrote format 5). It names the built-in M1 of then (a124b74909300e4e): a new
/// built-in M1 refuses it as coded with another M1, and the fixture is then written again with
/// format 5's coding (`Coding::Ac(AcModel::M1RepeatsContexts(ContextsRecipe::Format5))`), which
/// `contexts.rs` keeps predicting as it always did.
#[test]
fn format_5_files_from_an_earlier_build_decode() {
    let books = include_bytes!("../data/sample-books.txt");
    let old = include_bytes!("fixtures/books-400000-8000.format5.terse");
    assert_eq!(
        u16::from_le_bytes([old[8], old[9]]),
        5,
        "the fixture's format"
    );
    let back = run(&["decompress", "-", "-"], old);
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(back.stdout, &books[400_000..408_000]);
}

/// Without --m1, compress and decompress use the M1 built into the binary: English text through
/// pipes comes back byte for byte at well under gzip's size, and a file coded with another M1 is
/// refused naming the flag that would decode it.
#[test]
fn builtin_m1_compresses_through_pipes() {
    use std::io::Write;
    let books = include_bytes!("../data/sample-books.txt");
    let input = &books[400_000..408_000];
    let z = run(&["compress", "-", "-"], input);
    assert!(z.status.success(), "{}", stderr(&z));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(input).unwrap();
    let gzip = gz.finish().unwrap().len();
    assert!(
        (z.stdout.len() as f64) < 0.8 * gzip as f64,
        "the built-in M1 gave {} bytes, gzip -9 {gzip}",
        z.stdout.len()
    );
    let back = run(&["decompress", "-", "-"], &z.stdout);
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(back.stdout, input);

    let dir = tempfile::tempdir().unwrap();
    let (ck, other, _) = m1_and_input(dir.path());
    let z = run(&["compress", "--m1", path_str(&ck), "-", "-"], &other);
    assert!(z.status.success(), "{}", stderr(&z));
    let back = run(&["decompress", "-", "-"], &z.stdout);
    assert!(!back.status.success(), "decoded with the wrong M1");
    let e = stderr(&back);
    assert!(e.contains("wrong M1") && e.contains("--m1"), "{e}");
}

/// `-v` reports progress on stderr even when stderr is a pipe (as here): lines with the bytes in
/// and out, the ratio and MB/s, the last one at the totals; the data on stdout is unchanged.
#[test]
fn verbose_reports_progress_lines_on_a_piped_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, src) = m1_and_input(dir.path());
    let m = path_str(&ck);
    let z = terse(&[
        "compress",
        "--m1",
        m,
        "-v",
        "--chunk-bytes",
        "512",
        "-c",
        path_str(&src),
    ]);
    assert!(z.status.success(), "{}", stderr(&z));
    let err = stderr(&z);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("terse: compressing"))
        .collect();
    let last = lines
        .last()
        .unwrap_or_else(|| panic!("no progress line in\n{err}"));
    let mib = |b: usize| format!("{:.2} MiB", b as f64 / (1 << 20) as f64);
    assert!(
        last.contains(&format!("{} -> {}", mib(input.len()), mib(z.stdout.len()))),
        "{last}"
    );
    assert!(
        last.contains("bits/byte") && last.contains("MB/s"),
        "{last}"
    );
    let zfile = dir.path().join("v.terse");
    std::fs::write(&zfile, &z.stdout).unwrap();
    let back = terse(&["decompress", "--m1", m, "--verbose", "-c", path_str(&zfile)]);
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(back.stdout, input);
    assert!(
        stderr(&back).contains("terse: decompressing"),
        "{}",
        stderr(&back)
    );
    // Without -v nothing but the report reaches a piped stderr.
    let quiet = terse(&["compress", "--m1", m, "-c", path_str(&src)]);
    assert!(
        !stderr(&quiet).contains("terse: compressing"),
        "{}",
        stderr(&quiet)
    );
}

/// The peak resident memory (VmHWM from /proc, in kB) of process `pid`, polled until `done()`.
fn peak_memory_kb(pid: u32, done: impl Fn() -> bool) -> u64 {
    let status = format!("/proc/{pid}/status");
    let mut peak_kb = 0u64;
    while !done() {
        if let Ok(text) = std::fs::read_to_string(&status) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(peak_kb > 0, "VmHWM of {pid} was never read");
    peak_kb
}

/// Compressing holds a bounded amount of memory however large the piped input: with 1 KiB
/// chunks a batch holds 64 KiB, and 4 MiB of text (64 batches) piped through `terse compress -c -`
/// peaks within 2 MiB of what 256 KiB does, while the output's end record counts and checksums
/// every byte. (M1 codes every byte, so the input is kept small enough to run in a minute.)
#[test]
fn compressing_a_large_pipe_holds_bounded_memory() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (ck, _, _) = m1_and_input(dir.path());
    let m = path_str(&ck);
    let books = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/sample-books.txt"
    ))
    .unwrap();
    let compress = |len: usize| -> u64 {
        let args = ["compress", "--m1", m, "--chunk-bytes", "1024", "-c", "-"];
        let mut child = common::spawn_piped(&args);
        let mut pipe = child.stdin.take().unwrap();
        let input: Vec<u8> = books.iter().cycle().take(len).copied().collect();
        let crc = crc32fast::hash(&input);
        let writer = std::thread::spawn(move || pipe.write_all(&input));
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut z = Vec::new();
            out.read_to_end(&mut z).map(|_| z)
        });
        let peak_kb = peak_memory_kb(child.id(), || reader.is_finished());
        writer.join().unwrap().unwrap();
        let z = reader.join().unwrap().unwrap();
        let done = child.wait_with_output().unwrap();
        assert!(done.status.success(), "{}", stderr(&done));
        let end = &z[z.len() - 16..];
        assert_eq!(end[..4], u32::MAX.to_le_bytes(), "the end record");
        assert_eq!(end[4..12], (len as u64).to_le_bytes(), "its length");
        assert_eq!(end[12..], crc.to_le_bytes(), "its CRC-32");
        peak_kb
    };
    let (small, large) = (compress(256 << 10), compress(4 << 20));
    assert!(
        large < small + (2 << 10),
        "peak resident memory {large} kB for 4 MiB against {small} kB for 256 KiB"
    );
}

/// Decompressing holds a bounded amount of memory however large the stream: 64 MiB of stored
/// 16 KiB chunks piped into `terse decompress - -` come back whole while the process's peak
/// resident memory (VmHWM, polled from /proc) stays far below the stream's size.
#[test]
fn decompressing_a_large_pipe_holds_bounded_memory() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (ck, _, src) = m1_and_input(dir.path());
    let m = path_str(&ck);
    // The header of this M1's files (the first 33 bytes, the chunk size at 25..29).
    let small = terse(&["compress", "--m1", m, "-c", path_str(&src)]);
    assert!(small.status.success(), "{}", stderr(&small));
    let header = small.stdout[..33].to_vec();
    let chunk = u32::from_le_bytes(header[25..29].try_into().unwrap()) as usize;
    let chunks = (64 << 20) / chunk;
    let mut child = common::spawn_piped(&["decompress", "--m1", m, "--json", "-", "-"]);
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || -> std::io::Result<u32> {
        let mut crc = crc32fast::Hasher::new();
        pipe.write_all(&header)?;
        for i in 0..chunks {
            let body: Vec<u8> = (0..chunk).map(|k| (i * 7 + k * 13) as u8).collect();
            crc.update(&body);
            pipe.write_all(&0xFFFF_FFFEu32.to_le_bytes())?;
            pipe.write_all(&(chunk as u32).to_le_bytes())?;
            pipe.write_all(&body)?;
        }
        let crc = crc.finalize();
        pipe.write_all(&u32::MAX.to_le_bytes())?;
        pipe.write_all(&((chunks * chunk) as u64).to_le_bytes())?;
        pipe.write_all(&crc.to_le_bytes())?;
        Ok(crc)
    });
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut crc, mut n, mut buf) = (crc32fast::Hasher::new(), 0usize, vec![0u8; 1 << 16]);
        loop {
            match out.read(&mut buf).unwrap() {
                0 => return (crc.finalize(), n),
                k => {
                    crc.update(&buf[..k]);
                    n += k;
                }
            }
        }
    });
    let peak_kb = peak_memory_kb(child.id(), || reader.is_finished());
    let sent_crc = writer.join().unwrap().unwrap();
    let (got_crc, got_len) = reader.join().unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    assert_eq!((got_len, got_crc), (chunks * chunk, sent_crc));
    assert!(
        peak_kb < 40 << 10,
        "peak resident memory {peak_kb} kB for a 64 MiB stream"
    );
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

/// Runs `terse args`, waits until `writing` says its write is under way, lets it go on for
/// `settle_ms`, then kills it and waits for it to die: a kill in the middle of the write. Fails
/// if the command finishes first (its input is then too small to be caught mid-write).
fn kill_mid_write(args: &[&str], settle_ms: u64, writing: impl Fn() -> bool) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_terse"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !writing() {
        assert!(t.elapsed().as_secs() < 120, "{args:?}: no write began");
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended too soon"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(std::time::Duration::from_millis(settle_ms));
    assert!(
        child.try_wait().unwrap().is_none(),
        "{args:?} ended before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A compress killed mid-write leaves no output, only its hidden temp file, which the next run
/// into the same place removes (and says so).
#[test]
fn killed_compress_leaves_no_output_and_next_run_cleans_its_temp() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, src) = m1_and_input(dir.path());
    let big = dir.path().join("big.bin");
    std::fs::write(&big, input.repeat(4_000)).unwrap();
    let z = dir.path().join("out.terse");
    let args = ["--threads", "1", "compress", "--m1", path_str(&ck)];
    kill_mid_write(
        &[&args[..], &[path_str(&big), path_str(&z)]].concat(),
        300,
        || !hidden_temps(dir.path()).is_empty(),
    );
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

/// A decompress killed mid-write leaves no output, only its hidden temp file, which the next run
/// into the same place (of a small file) removes (and says so) before writing the exact bytes.
#[test]
fn killed_decompress_leaves_no_output_and_next_run_cleans_its_temp() {
    let dir = tempfile::tempdir().unwrap();
    // The built-in M1 and prose it codes better than xz, so the chunks are M1's and decoding
    // them takes long enough to be killed in the middle.
    let big = common::sample_prefix(dir.path(), 60_000);
    let input = std::fs::read(&big).unwrap()[..1500].to_vec();
    let src = dir.path().join("in.bin");
    std::fs::write(&src, &input).unwrap();
    let (z, small) = (dir.path().join("big.terse"), dir.path().join("small.terse"));
    for (from, to) in [(&big, &z), (&src, &small)] {
        let r = terse(&["compress", path_str(from), path_str(to)]);
        assert!(r.status.success(), "{}", stderr(&r));
    }
    let out = dir.path().join("out.bin");
    let args = ["--threads", "1", "decompress", path_str(&z)];
    kill_mid_write(&[&args[..], &[path_str(&out)]].concat(), 300, || {
        !hidden_temps(dir.path()).is_empty()
    });
    assert!(!out.exists(), "a killed decompress left output");
    assert_eq!(hidden_temps(dir.path()).len(), 1);
    let r = terse(&["decompress", path_str(&small), path_str(&out)]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("removed 1 temp file"), "{}", stderr(&r));
    assert!(hidden_temps(dir.path()).is_empty());
    assert_eq!(std::fs::read(&out).unwrap(), input);
}

/// A tokenize killed while writing tokens.bin leaves a directory that is not a dataset:
/// detokenize, train and eval refuse it, naming its missing metadata.json. The next tokenize into it
/// removes the stale temp file (and says so) and writes the dataset a clean run writes.
#[test]
fn killed_tokenize_leaves_no_dataset_and_next_run_cleans_its_temp() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, _) = m1_and_input(dir.path());
    let big = dir.path().join("big.txt");
    std::fs::write(&big, input.repeat(40)).unwrap();
    let ds = dir.path().join("ds");
    let (c, d) = (path_str(&ck), path_str(&ds));
    let args = [
        "--threads",
        "1",
        "tokenize",
        "--method",
        "equal-info",
        "--m1",
        c,
    ];
    kill_mid_write(
        &[&args[..], &["--data", path_str(&big), "--out", d]].concat(),
        300,
        || ds.exists() && !hidden_temps(&ds).is_empty(),
    );
    assert_eq!(hidden_temps(&ds).len(), 1);
    assert_eq!(std::fs::read_dir(&ds).unwrap().count(), 1, "only the temp");
    let not_a_dataset = format!("{d}/metadata.json: not found (not a token dataset?)");
    let back = dir.path().join("back.txt");
    assert_fails_with(
        &[
            "detokenize",
            "--data",
            d,
            "--m1",
            c,
            "--out",
            path_str(&back),
        ],
        &not_a_dataset,
    );
    assert!(!back.exists());
    let not_a_corpus =
        "not a token dataset (it has no metadata.json; an interrupted `terse tokenize`";
    let run = dir.path().join("m2");
    assert_fails_with(
        &[
            "train",
            "--preset",
            "tiny",
            "--data",
            d,
            "--out",
            path_str(&run),
        ],
        not_a_corpus,
    );
    assert_fails_with(&["eval", "--checkpoint", c, "--data", d], not_a_corpus);
    let bytes = ["tokenize", "--method", "bytes", "--data", path_str(&big)];
    let r = terse(&[&bytes[..], &["--out", d]].concat());
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("removed 1 temp file"), "{}", stderr(&r));
    assert!(hidden_temps(&ds).is_empty());
    let fresh = dir.path().join("fresh");
    let r = terse(&[&bytes[..], &["--out", path_str(&fresh)]].concat());
    assert!(r.status.success(), "{}", stderr(&r));
    for file in ["tokens.bin", "metadata.json"] {
        let read = |dir: &std::path::Path| std::fs::read(dir.join(file)).unwrap();
        assert!(
            read(&ds) == read(&fresh),
            "{file} differs from a clean run's"
        );
    }
}

/// A detokenize killed while streaming its output leaves no output, only its hidden temp file,
/// which the next run into the same place (of a small dataset) removes (and says so) before
/// writing the exact text.
#[test]
fn killed_detokenize_leaves_no_output_and_next_run_cleans_its_temp() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, input, _) = m1_and_input(dir.path());
    let (big, small) = (dir.path().join("big.txt"), dir.path().join("small.txt"));
    std::fs::write(&big, input.repeat(40)).unwrap();
    std::fs::write(&small, &input).unwrap();
    let (ds, small_ds) = (dir.path().join("ds"), dir.path().join("small_ds"));
    let m1 = ["--m1", path_str(&ck)];
    common::tokenize(&big, &ds, "equal-info", "16", "10240", &m1);
    common::tokenize(&small, &small_ds, "bytes", "8", "10240", &[]);
    let out = dir.path().join("out.txt");
    let o = ["--out", path_str(&out)];
    let args = ["--threads", "1", "detokenize", "--data", path_str(&ds)];
    kill_mid_write(&[&args[..], &m1, &o].concat(), 300, || {
        !hidden_temps(dir.path()).is_empty()
    });
    assert!(!out.exists(), "a killed detokenize left output");
    assert_eq!(hidden_temps(dir.path()).len(), 1);
    let r = terse(&[&["detokenize", "--data", path_str(&small_ds)][..], &o].concat());
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("removed 1 temp file"), "{}", stderr(&r));
    assert!(hidden_temps(dir.path()).is_empty());
    assert_eq!(std::fs::read(&out).unwrap(), input);
}

/// A train killed while saving a checkpoint (one each step), first in its early saves, then,
/// resumed, in a later save over a complete checkpoint, leaves each time a directory that still
/// loads (eval runs on it); --resume continues from it to weights bit-identical to an
/// uninterrupted run's, with one metrics.jsonl record per step and no staged files left behind.
#[test]
fn killed_train_mid_save_still_loads_and_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let (d, steps) = (path_str(&data), "40");
    let (run, whole) = (dir.path().join("run"), dir.path().join("whole"));
    let r = path_str(&run);
    let args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        d,
        "--batch",
        "1",
        "--seq",
        "16",
        "--steps",
        steps,
        "--heldout-bytes",
        "500",
        "--ckpt-every",
        "1",
        "--quiet",
        "--out",
        r,
    ];
    let hidden = |dir: &std::path::Path| -> Vec<String> {
        let names = std::fs::read_dir(dir).into_iter().flatten();
        let names = names.map(|e| e.unwrap().file_name().into_string().unwrap());
        names.filter(|n| n.starts_with('.')).collect()
    };
    let resume = ["train", "--resume", r, "--quiet"];
    // Files staged by a save this run has not seen yet: the kill lands in a new save.
    let mut seen = Vec::new();
    for cmd in [&args[..], &resume] {
        kill_mid_write(cmd, 0, || {
            run.join("manifest.json").exists()
                && hidden(&run)
                    .iter()
                    .any(|n| n.ends_with(".staged") && !seen.contains(n))
        });
        let o = terse(&["eval", "--checkpoint", r, "--data", d, "--max-bytes", "500"]);
        assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
        seen = hidden(&run);
    }
    let o = terse(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(hidden(&run).is_empty(), "{:?}", hidden(&run));
    common::train_tiny(&data, &whole, &["--steps", steps]);
    let weights = |ck: &std::path::Path| {
        let (_, p) = terse::checkpoint::load_model(ck).unwrap();
        p.data.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
    };
    assert!(weights(&run) == weights(&whole), "resumed weights differ");
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let logged: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(logged, (1..=40).collect::<Vec<u64>>(), "{log}");
}

/// Sets the last f32 of `path` (the end of the last tensor) to NaN and removes the manifest, so
/// only the value check can catch it.
fn poison_weights(ck: &std::path::Path) {
    let path = ck.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    std::fs::remove_file(ck.join("manifest.json")).unwrap();
}

/// One rule: a checkpoint whose weights hold NaN is refused by every command that loads it,
/// naming the checkpoint and the tensor (eval used to report "NaN bits/byte" with exit 0).
#[test]
fn nonfinite_weights_are_refused_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 8_000);
    let (m1, m2, ds) = (
        dir.path().join("m1"),
        dir.path().join("m2"),
        dir.path().join("ds"),
    );
    common::train_tiny(&data, &m1, &["--steps", "1"]);
    common::tokenize(&data, &ds, "bytes", "8", "2048", &[]);
    common::train_tiny(&ds, &m2, &["--steps", "1"]);
    poison_weights(&m1);
    poison_weights(&m2);
    let (d, m, m2s) = (
        data.to_str().unwrap(),
        m1.to_str().unwrap(),
        m2.to_str().unwrap(),
    );
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let m1_msg = format!("checkpoint {m} cannot be used");
    let m2_msg = format!("checkpoint {m2s} cannot be used");
    for (args, needle) in [
        (vec!["eval", "--checkpoint", m, "--data", d], &m1_msg),
        (vec!["compress", "--m1", m, d, o], &m1_msg),
        (
            vec![
                "tokenize", "--method", "ac", "--m1", m, "--data", d, "--out", o,
            ],
            &m1_msg,
        ),
        (
            vec!["train", "--resume", m, "--steps", "3", "--quiet"],
            &m1_msg,
        ),
        (vec!["generate", "--m2", m2s, "--max-bytes", "5"], &m2_msg),
        (
            vec!["eval", "--m2", m2s, "--data", ds.to_str().unwrap()],
            &m2_msg,
        ),
    ] {
        assert_fails_with(&args, needle);
        assert_fails_with(&args, "non-finite value (NaN) in tensor lm_head.weight");
    }
    assert!(!out.exists(), "a refused command left output");
}

/// Numeric flags out of range are refused up front, naming the flag, before any data is read
/// or any output written (`--weight-decay nan` and `--min-lr-frac 5` used to fail much later).
#[test]
fn numeric_flags_are_checked_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let out = dir.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    for (flag, value) in [
        ("--weight-decay", "nan"),
        ("--weight-decay", "-0.5"),
        ("--min-lr-frac", "5"),
        ("--min-lr-frac", "nan"),
        ("--lr", "inf"),
        ("--lr", "0"),
        ("--clip", "-1"),
        ("--clip", "inf"),
        ("--warmup", "50"),
        ("--time-budget", "nan"),
    ] {
        let set = format!("{flag}={value}");
        assert_fails_with(
            &[
                "train", "--preset", "tiny", "--data", d, "--steps", "10", &set, "--out", o,
            ],
            flag,
        );
        assert!(!out.exists(), "{set}: a refused run left output");
    }
    // generate checks its flags before it loads anything (the checkpoint here does not exist).
    for (set, flag) in [
        ("--temperature=nan", "--temperature"),
        ("--temperature=-1", "--temperature"),
        ("--temperature=inf", "--temperature"),
        ("--max-bytes=0", "--max-bytes"),
    ] {
        assert_fails_with(&["generate", "--m2", "nowhere", set], flag);
    }
    assert_fails_with(&["--threads", "0", "info"], "--threads must be at least 1");
    // demo's time budgets, before it writes anything.
    let demo_out = dir.path().join("demo");
    let demo_o = demo_out.to_str().unwrap();
    for (set, flag) in [
        ("--seconds=nan", "--seconds"),
        ("--m2-seconds=0", "--m2-seconds"),
    ] {
        assert_fails_with(&["demo", set, "--out", demo_o], flag);
    }
    assert!(!demo_out.exists(), "a refused demo left output");
}

/// A batch that cannot fit in memory is refused with what it needs and what there is, instead of
/// aborting in the allocator (exit 134, "memory allocation of 39321600000 bytes failed").
#[test]
fn train_refuses_a_batch_larger_than_memory() {
    let Some(available_kib) = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    }) else {
        eprintln!("SKIPPED: no /proc/meminfo here, so terse makes no memory check");
        return;
    };
    // tiny at 100000 x 256 bytes needs about 450 GiB.
    if available_kib > 400 << 20 {
        eprintln!("SKIPPED: this machine has room for the batch");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let out = dir.path().join("run");
    let args = [
        "train",
        "--preset",
        "tiny",
        "--data",
        data.to_str().unwrap(),
        "--batch",
        "100000",
        "--out",
        out.to_str().unwrap(),
    ];
    let r = terse(&args);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    let e = stderr(&r);
    assert!(
        e.contains("--batch 100000 x --seq 256 needs about")
            && e.contains("GiB available. Lower --batch or --seq"),
        "{e}"
    );
    assert!(!out.exists(), "a refused run left output");
}

/// `--threads` beyond the machine's cores is capped at the cores, with a note saying so.
#[test]
fn threads_beyond_the_cores_are_capped_with_a_note() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let r = terse(&["--threads", "100000", "info", "--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["backends"]["cpu"]["threads"], cores);
    assert!(
        stderr(&r).contains(&format!(
            "--threads 100000 is more than the {cores} cores this machine has; using {cores}"
        )),
        "{}",
        stderr(&r)
    );
    let r = terse(&["--threads", "1", "info", "--json"]);
    assert!(
        r.status.success() && !stderr(&r).contains("more than"),
        "{}",
        stderr(&r)
    );
}

/// `--stop-after 0` (and on resume, a step the checkpoint has already passed) is refused: it used
/// to print "checkpoint in DIR" over a directory holding only an empty metrics.jsonl. Resuming
/// such a directory says it is not a checkpoint, not that it "can be evaluated".
#[test]
fn stop_after_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let out = dir.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    assert_fails_with(
        &[
            "train",
            "--preset",
            "tiny",
            "--data",
            d,
            "--steps",
            "4",
            "--stop-after",
            "0",
            "--out",
            o,
        ],
        "--stop-after 0 would stop before the first step",
    );
    assert!(!out.exists(), "a refused run left output");
    common::train_tiny(&data, &out, &["--steps", "4", "--stop-after", "2"]);
    assert_fails_with(
        &["train", "--resume", o, "--stop-after", "2"],
        "the checkpoint is already at step 2",
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("metrics.jsonl"), b"").unwrap();
    let e = dir.path().join("empty");
    let o = terse(&["train", "--resume", e.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is not a checkpoint: it has no model.safetensors")
            && !stderr(&o).contains("can be evaluated"),
        "{}",
        stderr(&o)
    );
}

/// A FIFO named model.safetensors is refused at once instead of blocking the load forever.
#[test]
fn a_fifo_named_model_safetensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let ck = dir.path().join("ck");
    common::train_tiny(&data, &ck, &["--steps", "1"]);
    let model = ck.join("model.safetensors");
    std::fs::remove_file(&model).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&model)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("SKIPPED: mkfifo is not available here");
        return;
    }
    let (c, d) = (ck.to_str().unwrap(), data.to_str().unwrap());
    for args in [
        vec!["eval", "--checkpoint", c, "--data", d],
        vec!["eval", "--checkpoint", model.to_str().unwrap(), "--data", d],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_terse"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("{args:?}: still blocked on the FIFO after 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let r = child.wait_with_output().unwrap();
        assert!(!r.status.success());
        assert!(
            stderr(&r).contains("model.safetensors is a FIFO, not a regular file"),
            "{}",
            stderr(&r)
        );
    }
}

/// `eval --seq` beyond the context the model was trained with is refused, naming the context;
/// without --seq, eval uses the model's context when it is shorter than the default.
#[test]
fn eval_seq_beyond_the_trained_context_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let ck = dir.path().join("ck");
    common::train_tiny(&data, &ck, &["--steps", "1"]); // --seq 16
    let (c, d) = (ck.to_str().unwrap(), data.to_str().unwrap());
    assert_fails_with(
        &["eval", "--checkpoint", c, "--data", d, "--seq", "17"],
        &format!("--seq 17 is longer than the context of {c} (16 positions"),
    );
    for extra in [&["--seq", "16"][..], &[]] {
        let mut args = vec!["eval", "--checkpoint", c, "--data", d, "--max-bytes", "500"];
        args.extend(extra);
        let r = terse(&args);
        assert!(r.status.success(), "{extra:?}: {}", stderr(&r));
    }
}

/// A run that failed before its first checkpoint (here: divergence) leaves only metrics.jsonl;
/// a new run may go into that directory, and its log holds only its own steps.
#[test]
fn a_new_run_goes_into_a_dir_left_by_a_failed_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 4_000);
    let out = dir.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let r = terse(&[
        "train",
        "--preset",
        "tiny",
        "--data",
        d,
        "--steps",
        "20",
        "--batch",
        "1",
        "--seq",
        "16",
        "--heldout-bytes",
        "500",
        "--lr",
        "1e30",
        "--clip",
        "0",
        "--out",
        o,
        "--quiet",
    ]);
    assert!(!r.status.success(), "the run should diverge");
    assert!(stderr(&r).contains("not finite"), "{}", stderr(&r));
    assert!(!out.join("model.safetensors").exists());
    common::train_tiny(&data, &out, &["--steps", "2"]);
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
}

/// Finding 5 through the commands that read token datasets: one flipped bit in `tokens.bin` is
/// refused by detokenize, train and eval, naming the damaged example; nothing is written.
#[test]
fn damaged_dataset_is_refused_by_detokenize_train_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 6_000);
    let (ds, m2) = (dir.path().join("ds"), dir.path().join("m2"));
    common::tokenize(&data, &ds, "static-ac", "8", "2048", &[]);
    common::train_tiny(&ds, &m2, &["--steps", "1"]);
    let last = terse::tokenize::TokenDataset::open(&ds)
        .unwrap()
        .num_examples()
        - 1;
    let tokens = ds.join("tokens.bin");
    let mut raw = std::fs::read(&tokens).unwrap();
    let at = raw.len() - 3;
    raw[at] ^= 0x10;
    std::fs::write(&tokens, &raw).unwrap();
    let out = dir.path().join("out");
    let (d, o) = (path_str(&ds), path_str(&out));
    for args in [
        vec!["detokenize", "--data", d, "--out", o],
        vec![
            "train", "--preset", "tiny", "--data", d, "--steps", "2", "--out", o,
        ],
        vec!["eval", "--m2", path_str(&m2), "--data", d],
    ] {
        assert_fails_with(&args, &format!("tokens.bin: example {last} "));
        assert_fails_with(&args, "is damaged");
        assert!(!out.exists(), "{args:?}: a refused command left output");
    }
}

/// `eval --int8` scores an M1 on its exact path (contract 2) and quantised to int8 (contract 3,
/// post-training): on a tiny M1 trained for a few hundred steps, over held-out text, int8 costs
/// less than 1% more bits/byte.
#[test]
fn eval_int8_costs_under_one_percent_on_a_trained_tiny_m1() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample-books.txt"),
    )
    .unwrap();
    let (train, heldout) = (dir.path().join("train.txt"), dir.path().join("heldout.txt"));
    std::fs::write(&train, &text[..300_000]).unwrap();
    std::fs::write(&heldout, &text[1_000_000..1_016_384]).unwrap();
    let ck = dir.path().join("m1");
    let (t, c, h) = (
        train.to_str().unwrap(),
        ck.to_str().unwrap(),
        heldout.to_str().unwrap(),
    );
    let r = terse(&[
        "train",
        "--preset",
        "tiny",
        "--data",
        t,
        "--steps",
        "300",
        "--batch",
        "8",
        "--seq",
        "64",
        "--lr",
        "3e-3",
        "--heldout-bytes",
        "500",
        "--out",
        c,
        "--quiet",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let r = terse(&["eval", "--checkpoint", c, "--data", h, "--int8", "--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let (float, int8) = (
        j["float_bpb"].as_f64().unwrap(),
        j["int8_bpb"].as_f64().unwrap(),
    );
    assert_eq!(
        (j["bytes_scored"].as_u64(), j["window"].as_u64()),
        (Some(16_384), Some(64))
    );
    assert!(float < 4.0, "the M1 did not learn: {float} bits/byte");
    assert!(
        (int8 / float - 1.0).abs() < 0.01,
        "int8 {int8} vs float {float} bits/byte"
    );
    // Refused, each with its reason: the GPU (both contracts are scored on the CPU), and a
    // byte-level model whose context is beyond contract 3's proved bounds.
    assert_fails_with(
        &[
            "eval",
            "--checkpoint",
            c,
            "--data",
            h,
            "--int8",
            "--device",
            "cuda",
        ],
        "--int8 scores both contracts on the CPU; drop --device cuda",
    );
    assert_fails_with(
        &["eval", "--checkpoint", c, "--data", h, "--int4"],
        "--int4 scores M2 (a token dataset); M1 codes in int8 only (--int8)",
    );
    let mut cfg = terse::model::ModelConfig::preset("tiny", None).unwrap();
    cfg.context = Some(2048);
    let long = dir.path().join("long");
    let p = terse::model::ParamArena::init(&cfg, 1);
    terse::checkpoint::save_checkpoint(&long, &cfg, &p, None).unwrap();
    let long = long.to_str().unwrap();
    assert_fails_with(
        &["eval", "--checkpoint", long, "--data", h, "--int8", "--seq", "64"],
        "cannot be quantised to int8: contract 3 attends over at most 1024 positions; this model's context is 2048",
    );
}

/// `--init` starts from a checkpoint's weights and `--qat` fine-tunes them quantisation-aware:
/// the run records both, a run stopped and resumed ends on the very weights of one run straight
/// through, the start is the checkpoint's weights (a fine-tune ends nearer them than a fresh run
/// does), quantisation-aware steps differ from float ones, and neither flag can change on resume.
#[test]
fn init_and_qat_fine_tune_a_checkpoint_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 8_000);
    let base = dir.path().join("base");
    common::train_tiny(&data, &base, &["--steps", "3"]);
    let (d, b) = (path_str(&data), path_str(&base));
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["train", "--preset", "tiny", "--data", d, "--batch", "1"];
        args.extend([
            "--seq", "16", "--steps", "6", "--lr", "1e-3", "--warmup", "1",
        ]);
        args.extend(["--heldout-bytes", "500", "--quiet", "--out", path_str(&out)]);
        args.extend(extra);
        let r = terse(&args);
        assert!(r.status.success(), "{args:?}: {}", stderr(&r));
        out
    };
    let weights = |ck: &std::path::Path| terse::checkpoint::load_model(ck).unwrap().1.data;
    let whole = run("whole", &["--init", b, "--qat"]);
    let split = run("split", &["--init", b, "--qat", "--stop-after", "3"]);
    let saved = terse::train::saved_options(&split).unwrap().unwrap();
    assert_eq!(
        (saved.init.as_deref(), saved.qat),
        (Some(base.as_path()), true)
    );
    let r = terse(&["train", "--resume", path_str(&split), "--quiet"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let bits = |w: Vec<f32>| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(weights(&split)) == bits(weights(&whole)),
        "resumed weights differ"
    );
    let float = run("float", &["--init", b]);
    let fresh = run("fresh", &["--seed", "5"]);
    let from_base = |ck: &std::path::Path| {
        let w = weights(ck);
        let w0 = weights(&base);
        w.iter().zip(&w0).map(|(a, b)| (a - b).powi(2)).sum::<f32>()
    };
    assert!(
        from_base(&float) < from_base(&fresh) / 10.0,
        "--init did not start from base"
    );
    assert!(
        bits(weights(&float)) != bits(weights(&whole)),
        "--qat changed nothing"
    );
    for flag in [&["--qat"][..], &["--init", b]] {
        let mut args = vec!["train", "--resume", path_str(&split)];
        args.extend(flag);
        assert_fails_with(&args, &format!("{} cannot be changed on --resume", flag[0]));
    }
}

/// `--init` and `--qat` refuse what they cannot do, naming the path or flag: a checkpoint of
/// another preset (naming both), a missing or corrupt checkpoint, `--qat` on a token dataset
/// (M2 is never int8) and with `--device cuda` (the simulation is the CPU backend's).
#[test]
fn init_and_qat_refusals_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 8_000);
    let base = dir.path().join("base");
    common::train_tiny(&data, &base, &["--steps", "1"]);
    let (d, b) = (path_str(&data), path_str(&base));
    let out = dir.path().join("out");
    let o = path_str(&out);
    // A run on `data` (a corpus or a token dataset) with `extra` flags fails naming `needle`.
    let fails = |data: &str, extra: &[&str], needle: &str| {
        let mut args = vec!["train", "--data", data, "--steps", "2", "--batch", "1"];
        args.extend([
            "--seq",
            "16",
            "--heldout-bytes",
            "500",
            "--quiet",
            "--out",
            o,
        ]);
        args.extend(extra);
        assert_fails_with(&args, needle);
    };
    let m1_3m = ["--preset", "m1-3m", "--init", b];
    fails(d, &m1_3m, "is not the one --preset m1-3m trains");
    fails(d, &m1_3m, "give the checkpoint's preset, --preset tiny");
    let missing = dir.path().join("no-such-checkpoint");
    let init_missing = ["--preset", "tiny", "--init", path_str(&missing)];
    fails(d, &init_missing, &format!("--init {}", missing.display()));
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(base.join(f), corrupt.join(f)).unwrap();
    }
    let model = corrupt.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let init_corrupt = ["--preset", "tiny", "--init", path_str(&corrupt)];
    fails(d, &init_corrupt, &format!("--init {}", corrupt.display()));
    let tokens = dir.path().join("tokens");
    common::tokenize(&data, &tokens, "bytes", "8", "1024", &[]);
    fails(
        path_str(&tokens),
        &["--preset", "tiny", "--qat"],
        "is a token dataset, and M2 is never quantised",
    );
    fails(
        d,
        &["--preset", "tiny", "--qat", "--device", "cuda"],
        "runs on the CPU only: drop --device cuda",
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}
