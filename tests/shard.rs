//! Sharded tokenization through the CLI: `terse tokenize --shard I/N` in N processes, then
//! `terse tokenize --merge`, gives the dataset one process writes, byte for byte; every way of
//! handing the merge a wrong set of shards is refused with the reason.

mod common;
use common::{stderr, terse, tokenize};
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.join("tokens.bin")).unwrap(),
        std::fs::read(dir.join("metadata.json")).unwrap(),
    )
}

/// Codes `corpus` whole and in `n` shards (with `extra` flags), merges the shards given in
/// reverse order, and checks both files are identical to the whole dataset's.
fn merge_equals_whole(
    dir: &Path,
    corpus: &Path,
    method: &str,
    chunk: &str,
    n: u32,
    extra: &[&str],
) {
    let whole = dir.join(format!("{method}-whole"));
    tokenize(corpus, &whole, method, "16", chunk, extra);
    let shards: Vec<PathBuf> = (0..n)
        .map(|i| {
            let out = dir.join(format!("{method}-shard{i}"));
            let shard = format!("{i}/{n}");
            tokenize(
                corpus,
                &out,
                method,
                "16",
                chunk,
                &[extra, &["--shard", &shard]].concat(),
            );
            out
        })
        .collect();
    let merged = dir.join(format!("{method}-merged"));
    let mut args = vec!["tokenize", "--out", merged.to_str().unwrap(), "--merge"];
    args.extend(shards.iter().rev().map(|p| p.to_str().unwrap()));
    let r = terse(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    let (want, got) = (files(&whole), files(&merged));
    assert!(want.0 == got.0, "{method}: tokens.bin differs");
    assert_eq!(
        String::from_utf8_lossy(&want.1),
        String::from_utf8_lossy(&got.1),
        "{method}: metadata.json differs"
    );
}

#[test]
fn merged_shards_equal_the_single_process_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = common::sample_prefix(dir.path(), 40_000);
    // More shards than fit evenly (10 chunks in 3 shards), and one shard with no chunk at all.
    merge_equals_whole(dir.path(), &corpus, "gzip", "4096", 3, &[]);
    merge_equals_whole(dir.path(), &corpus, "bytes", "30000", 3, &[]);
    merge_equals_whole(dir.path(), &corpus, "static-ac", "8192", 2, &[]);
    let m1 = dir.path().join("m1");
    common::train_tiny(&corpus, &m1, &["--steps", "1"]);
    let small = dir.path().join("small.txt");
    std::fs::write(&small, &std::fs::read(&corpus).unwrap()[..6000]).unwrap();
    let m = ["--m1", m1.to_str().unwrap()];
    merge_equals_whole(dir.path(), &small, "equal-info", "1000", 2, &m);
}

#[test]
fn a_wrong_set_of_shards_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = common::sample_prefix(d, 20_000);
    let shard = |name: &str, chunk: &str, s: &str| {
        let out = d.join(name);
        tokenize(&corpus, &out, "gzip", "16", chunk, &["--shard", s]);
        out
    };
    let (a0, a1, a2) = (
        shard("a0", "4096", "0/3"),
        shard("a1", "4096", "1/3"),
        shard("a2", "4096", "2/3"),
    );
    let b1 = shard("b1", "2048", "1/3");
    let whole = d.join("whole");
    tokenize(&corpus, &whole, "gzip", "16", "4096", &[]);
    let out = d.join("merged");
    let merge = |dirs: &[&PathBuf]| {
        let mut args = vec!["tokenize", "--out", out.to_str().unwrap(), "--merge"];
        args.extend(dirs.iter().map(|p| p.to_str().unwrap()));
        let r = terse(&args);
        assert!(!r.status.success(), "{dirs:?} merged");
        assert!(
            !out.join("metadata.json").exists(),
            "{dirs:?} left a dataset"
        );
        stderr(&r)
    };
    let e = merge(&[&a0, &a1]);
    assert!(
        e.contains("is a shard of 3, but 2 shards were given"),
        "{e}"
    );
    let e = merge(&[&a0, &a1, &a1]);
    assert!(e.contains("shard 1/3 is given twice"), "{e}");
    let e = merge(&[&a0, &b1, &a2]);
    assert!(e.contains("shards of different runs"), "{e}");
    // The same path, but the corpus changed between tasks.
    let text = std::fs::read(&corpus).unwrap();
    let mut changed = text.clone();
    changed[100] ^= 0x20;
    std::fs::write(&corpus, &changed).unwrap();
    let c1 = shard("c1", "4096", "1/3");
    std::fs::write(&corpus, &text).unwrap();
    let e = merge(&[&a0, &c1, &a2]);
    assert!(e.contains("shards of different runs"), "{e}");
    // The output is one of the shards, spelled another way.
    let mut args = vec!["tokenize", "--out", a0.to_str().unwrap(), "--merge"];
    let a0_again = d.join(".").join("a0");
    args.extend([
        a0_again.to_str().unwrap(),
        a1.to_str().unwrap(),
        a2.to_str().unwrap(),
    ]);
    let r = terse(&args);
    assert!(!r.status.success() && stderr(&r).contains("cannot be one of its shards"));
    let e = merge(&[&a0, &a1, &whole]);
    assert!(e.contains("a whole dataset, not a shard"), "{e}");
    let e = merge(&[&a0, &a1, &a2, &a0.join("nothing")]);
    assert!(e.contains("cannot open shard"), "{e}");
    let mut tampered = std::fs::read(a1.join("tokens.bin")).unwrap();
    tampered[3] ^= 1;
    std::fs::write(a1.join("tokens.bin"), tampered).unwrap();
    let e = merge(&[&a0, &a1, &a2]);
    assert!(e.contains(a1.to_str().unwrap()), "{e}");
    for bad in ["3/3", "0/0", "1", "x/2"] {
        let r = terse(&[
            "tokenize",
            "--method",
            "gzip",
            "--data",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--shard",
            bad,
        ]);
        assert!(
            !r.status.success() && stderr(&r).contains("a shard is i/N"),
            "{bad}: {}",
            stderr(&r)
        );
    }
}
