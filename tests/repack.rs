//! Re-packing 8-bit datasets as 16-bit tokens gives exactly what tokenizing at 16 bits gives.

mod common;

use common::{sample_prefix, train_tiny};
use std::path::Path;

fn tokenize(corpus: &Path, out: &Path, method: &str, bits: &str, extra: &[&str]) {
    common::tokenize(corpus, out, method, bits, "3000", extra);
}

#[test]
fn repacked_datasets_equal_16_bit_tokenization() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = sample_prefix(dir.path(), 12_000);
    let m1 = dir.path().join("m1");
    train_tiny(&corpus, &m1, &["--steps", "3"]);
    let m1 = m1.to_str().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("bytes", vec![]),
        ("gzip", vec![]),
        ("static-ac", vec![]),
        ("equal-info", vec!["--m1", m1, "--window-bits", "16"]),
        ("equal-info", vec!["--m1", m1, "--window-bits", "32"]),
        ("ac", vec!["--m1", m1]),
    ];
    for (i, (method, extra)) in cases.iter().enumerate() {
        let (d8, d16, rp) = (
            dir.path().join(format!("{i}-8")),
            dir.path().join(format!("{i}-16")),
            dir.path().join(format!("{i}-rp")),
        );
        tokenize(&corpus, &d8, method, "8", extra);
        tokenize(&corpus, &d16, method, "16", extra);
        let meta = terse::tokenize::repack::repack_to_16(&d8, &rp).unwrap();
        let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
        assert_eq!(
            read(&rp, "tokens.bin"),
            read(&d16, "tokens.bin"),
            "{method} {extra:?}"
        );
        let direct = terse::tokenize::TokenDataset::open(&d16).unwrap();
        assert_eq!(&meta, direct.metadata(), "{method} {extra:?}");
    }
    // 16-bit input, and windows that are not whole 16-bit tokens, are refused.
    let e = terse::tokenize::repack::repack_to_16(&dir.path().join("0-16"), &dir.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("only 8-bit"), "{e}");
    let d24 = dir.path().join("ei24");
    tokenize(
        &corpus,
        &d24,
        "equal-info",
        "8",
        &["--m1", m1, "--window-bits", "24"],
    );
    let e = terse::tokenize::repack::repack_to_16(&d24, &dir.path().join("y"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not whole 16-bit tokens"), "{e}");
    // Subword tokens are vocabulary entries, not bits.
    let sw = dir.path().join("sw");
    tokenize(&corpus, &sw, "subword", "16", &[]);
    assert!(!terse::tokenize::repack::repackable(
        terse::tokenize::Method::Subword
    ));
    let e = terse::tokenize::repack::repack_to_16(&sw, &dir.path().join("z"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("16-bit tokens") || e.contains("not a bit stream"),
        "{e}"
    );
}
