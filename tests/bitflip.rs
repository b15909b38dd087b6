//! Bit flips in every artefact terse writes and later reads back: checkpoint directories (every
//! file a loader reads), token datasets of every method (`tokens.bin` and `metadata.json`) and
//! compressed `.terse` files. For each, one to three flipped bits (half of them in the first
//! bytes, where headers and lengths live) must give either a clear error that names the file's
//! directory, or exactly the result of the undamaged artefact: the same weights, optimizer state
//! and trainer state; the same tokens, metadata and decoded bytes; the same decompressed bytes.
//! Never a different result without an error.
//!
//! (`metrics.jsonl`, the training log, is not read back for any result and is not covered.)

mod common;

use common::{text_m1, tiny_m1};
use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use terse::fsio::Existing;
use terse::tokenize::{decode_dataset_with_m1, M1Spec, Method, TokenDataset};

/// Up to three flips: (from the start or anywhere, offset, bit).
fn flips() -> impl Strategy<Value = Vec<(bool, usize, u8)>> {
    prop::collection::vec((any::<bool>(), any::<usize>(), 0u8..8), 1..4)
}

/// Copies the files of `from` into a fresh directory and flips bits of `file` in the copy.
fn damaged_copy(from: &Path, file: &str, flips: &[(bool, usize, u8)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let target = dir.path().join(file);
    let mut bytes = fs::read(&target).unwrap();
    for &(head, at, bit) in flips {
        let i = if head {
            at % bytes.len().min(256)
        } else {
            at % bytes.len()
        };
        bytes[i] ^= 1 << bit;
    }
    fs::write(&target, &bytes).unwrap();
    dir
}

/// An error must say which artefact it is about.
fn assert_clear(err: &anyhow::Error, dir: &Path) -> Result<(), TestCaseError> {
    let msg = format!("{err:#}");
    prop_assert!(
        msg.contains(&dir.display().to_string()),
        "error does not name {}: {msg}",
        dir.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checkpoints.

/// Everything a checkpoint load yields, as comparable bits.
#[derive(Debug, PartialEq)]
struct Loaded {
    config: serde_json::Value,
    params: Vec<u32>,
    m: Vec<u32>,
    v: Vec<u32>,
    state: serde_json::Value,
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn load_all(dir: &Path) -> anyhow::Result<(Loaded, Loaded)> {
    let (cfg, params, training) = terse::checkpoint::load_training(dir)?;
    let full = Loaded {
        config: serde_json::to_value(&cfg)?,
        params: bits(&params.data),
        m: bits(&training.m),
        v: bits(&training.v),
        state: training.state,
    };
    let (cfg, params) = terse::checkpoint::load_model(dir)?;
    let model = Loaded {
        config: serde_json::to_value(&cfg)?,
        params: bits(&params.data),
        m: vec![],
        v: vec![],
        state: serde_json::Value::Null,
    };
    Ok((full, model))
}

/// A checkpoint with training state, trained by the real command (two steps of tiny), and what
/// it loads to.
fn checkpoint() -> &'static (tempfile::TempDir, PathBuf, (Loaded, Loaded)) {
    static C: OnceLock<(tempfile::TempDir, PathBuf, (Loaded, Loaded))> = OnceLock::new();
    C.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let data = common::sample_prefix(root.path(), 4_000);
        let ck = root.path().join("ck");
        common::train_tiny(&data, &ck, &["--steps", "2"]);
        let loaded = load_all(&ck).unwrap();
        (root, ck, loaded)
    })
}

const CHECKPOINT_FILES: [&str; 5] = [
    "model.safetensors",
    "config.json",
    "optimizer.safetensors",
    "trainer.json",
    "manifest.json",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn flipped_checkpoint_is_refused_or_loads_identically(
        file in 0..CHECKPOINT_FILES.len(),
        flips in flips(),
    ) {
        let (_, ck, clean) = checkpoint();
        let dir = damaged_copy(ck, CHECKPOINT_FILES[file], &flips);
        match load_all(dir.path()) {
            Ok(loaded) => prop_assert!(&loaded == clean, "{} {flips:?} loaded other values", CHECKPOINT_FILES[file]),
            Err(e) => assert_clear(&e, dir.path())?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Token datasets.

/// One dataset per method (8- and 16-bit tokens among them), with its tokens and decoded bytes.
struct Dataset {
    dir: PathBuf,
    tokens: Vec<u32>,
    metadata: terse::tokenize::Metadata,
    decoded: Vec<u8>,
}

fn datasets() -> &'static (tempfile::TempDir, Vec<Dataset>) {
    static D: OnceLock<(tempfile::TempDir, Vec<Dataset>)> = OnceLock::new();
    D.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let corpus = common::sample_prefix(root.path(), 2_500);
        let spec = M1Spec::new(tiny_m1(), 16);
        let sets = [
            (Method::Bytes, 8),
            (Method::Gzip, 16),
            (Method::StaticAc, 8),
            (Method::Ac, 16),
            (Method::EqualInfo, 8),
            (Method::Subword, 16),
        ]
        .into_iter()
        .map(|(method, token_bits)| {
            let dir = root.path().join(method.name());
            let m1 = matches!(method, Method::Ac | Method::EqualInfo).then_some(&spec);
            terse::tokenize::tokenize_corpus(method, &corpus, &dir, token_bits, 1_000, m1, false)
                .unwrap();
            let ds = TokenDataset::open(&dir).unwrap();
            Dataset {
                tokens: ds.tokens().collect(),
                metadata: ds.metadata().clone(),
                decoded: decode(&dir).unwrap(),
                dir,
            }
        })
        .collect();
        (root, sets)
    })
}

/// What `terse detokenize` does: decode with the tiny M1 (which non-M1 methods ignore).
fn decode(dir: &Path) -> anyhow::Result<Vec<u8>> {
    decode_dataset_with_m1(dir, Some(tiny_m1()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn flipped_dataset_is_refused_or_reads_identically(
        which in 0usize..6,
        metadata in any::<bool>(),
        flips in flips(),
    ) {
        let clean = &datasets().1[which];
        let file = if metadata { "metadata.json" } else { "tokens.bin" };
        if !metadata && clean.tokens.is_empty() {
            return Ok(());
        }
        let dir = damaged_copy(&clean.dir, file, &flips);
        // What training reads (tokens and metadata), and what detokenize writes.
        match TokenDataset::open(dir.path()) {
            Ok(ds) => {
                prop_assert!(ds.metadata() == &clean.metadata, "{file} {flips:?}: other metadata");
                prop_assert!(ds.tokens().eq(clean.tokens.iter().copied()), "{file} {flips:?}: other tokens");
            }
            Err(e) => assert_clear(&e.into(), dir.path())?,
        }
        match decode(dir.path()) {
            Ok(bytes) => prop_assert!(bytes == clean.decoded, "{file} {flips:?}: decoded other bytes"),
            Err(e) => assert_clear(&e, dir.path())?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compressed files.

fn compressed() -> &'static (tempfile::TempDir, PathBuf, Vec<u8>) {
    static Z: OnceLock<(tempfile::TempDir, PathBuf, Vec<u8>)> = OnceLock::new();
    Z.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let input = common::sample_prefix(root.path(), 600);
        let dir = root.path().join("z");
        fs::create_dir(&dir).unwrap();
        let z = dir.join("f.terse");
        let coding = terse::compress::Coding::AC;
        let rep = terse::compress::compress_file(
            &input,
            &z,
            &text_m1(),
            coding,
            211,
            Existing::Refuse,
            terse::compress::Progress::Off,
        )
        .unwrap();
        assert_eq!(
            rep.stored_chunks, 0,
            "every chunk coded, so flips land in codes"
        );
        let original = fs::read(&input).unwrap();
        (root, dir, original)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn flipped_compressed_file_is_refused_or_decompresses_identically(flips in flips()) {
        let (_, dir, original) = compressed();
        let copy = damaged_copy(dir, "f.terse", &flips);
        let out = copy.path().join("f.out");
        match terse::compress::decompress_file(&copy.path().join("f.terse"), &out, &text_m1(), Existing::Refuse, terse::compress::Progress::Off) {
            Ok(_) => prop_assert!(&fs::read(&out).unwrap() == original, "{flips:?}: other bytes"),
            Err(e) => {
                assert_clear(&e, copy.path())?;
                prop_assert!(!out.exists(), "{flips:?}: a refused file left output");
            }
        }
    }
}
