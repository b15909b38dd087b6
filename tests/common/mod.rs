//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A small real corpus: the first `n` bytes of the bundled sample (cut at a newline).
pub fn sample_prefix(dir: &Path, n: usize) -> PathBuf {
    let text =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample-books.txt")).unwrap();
    let end = text[n..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(text.len(), |p| n + p);
    let p = dir.join("corpus.txt");
    std::fs::write(&p, &text[..end]).unwrap();
    p
}

/// Runs the `terse` binary with `args`.
pub fn terse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_terse"))
        .args(args)
        .output()
        .expect("run terse")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Trains a tiny model on `data` into `out` (1 x 16 bytes per step, 500 held-out bytes, plus
/// `extra` flags such as `--steps`), asserting success.
pub fn train_tiny(data: &Path, out: &Path, extra: &[&str]) {
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec![
        "train", "--preset", "tiny", "--data", d, "--batch", "1", "--seq", "16",
    ];
    args.extend(["--heldout-bytes", "500", "--out", o, "--quiet"]);
    args.extend(extra);
    let r = terse(&args);
    assert!(r.status.success(), "{}", stderr(&r));
}

/// Tokenizes `corpus` into `out` with `method` at `bits`-bit tokens in `chunk_bytes` chunks, plus
/// `extra` flags (`--m1`, `--window-bits`, ...), asserting success.
pub fn tokenize(
    corpus: &Path,
    out: &Path,
    method: &str,
    bits: &str,
    chunk_bytes: &str,
    extra: &[&str],
) {
    let mut args = vec![
        "tokenize",
        "--method",
        method,
        "--token-bits",
        bits,
        "--chunk-bytes",
        chunk_bytes,
        "--data",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let r = terse(&args);
    assert!(r.status.success(), "{}", stderr(&r));
}

/// The weights of [`tiny_m1`]: a tiny byte-level model (context 256) with random weights scaled
/// up, for sharp, varied distributions.
pub fn tiny_m1_weights() -> (terse::model::ModelConfig, terse::model::ParamArena) {
    let mut cfg = terse::model::ModelConfig::preset("tiny", None).unwrap();
    cfg.context = Some(256); // contract 3 attends over a recorded context
    let mut p = terse::model::ParamArena::init(&cfg, 21);
    p.data.iter_mut().for_each(|x| *x *= 8.0);
    (cfg, p)
}

/// A tiny M1 ([`tiny_m1_weights`]) built once per test binary: fixtures for the M1-based methods
/// that need no training.
pub fn tiny_m1() -> std::sync::Arc<terse::m1::Int8M1> {
    static M1: std::sync::OnceLock<std::sync::Arc<terse::m1::Int8M1>> = std::sync::OnceLock::new();
    M1.get_or_init(|| {
        let (cfg, p) = tiny_m1_weights();
        std::sync::Arc::new(terse::m1::Int8M1::new(&cfg, &p).unwrap())
    })
    .clone()
}

/// A tiny M1 trained for 80 steps on the sample's first 4,000 bytes (about 5 bits/byte on that
/// text), built once per test binary: it shrinks text and not random bytes, so compressed files
/// hold both coded and stored chunks.
pub fn text_m1() -> std::sync::Arc<terse::m1::Int8M1> {
    static M1: std::sync::OnceLock<std::sync::Arc<terse::m1::Int8M1>> = std::sync::OnceLock::new();
    M1.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = sample_prefix(dir.path(), 4_000);
        let ck = dir.path().join("m1");
        train_tiny(&data, &ck, &["--steps", "80"]);
        std::sync::Arc::new(terse::m1::Int8M1::load(&ck).unwrap())
    })
    .clone()
}

/// Starts the `terse` binary with `args`, its stdin, stdout and stderr piped.
pub fn spawn_piped(args: &[&str]) -> std::process::Child {
    use std::process::Stdio;
    Command::new(env!("CARGO_BIN_EXE_terse"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
