//! Token datasets: exact round trips for every method and width, property tests, validation
//! errors, and the `terse tokenize` command end to end.

mod common;
use common::tiny_m1;

use proptest::prelude::*;
use std::fs;
use std::path::Path;
use std::process::Command;
use terse::data::open_stream;
use terse::tokenize::static_ac::StaticAc;
use terse::tokenize::{
    decode_dataset, tokenize_corpus, BytesParams, Codec, DatasetError, Metadata, Method,
    MethodParams, TokenDataset, TokenDatasetWriter, DEFAULT_CHUNK_BYTES, METADATA_FILE,
    TOKENS_FILE,
};

/// A dataset's method parameters as `metadata.json` stores them, as plain JSON.
fn params(meta: &Metadata) -> serde_json::Value {
    serde_json::to_value(meta).unwrap()["params"].clone()
}

const METHODS: [Method; 3] = [Method::Bytes, Method::Gzip, Method::StaticAc];

fn sample_prefix(n: usize) -> Vec<u8> {
    let all = fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/sample-books.txt"
    ))
    .unwrap();
    all[..n.min(all.len())].to_vec()
}

/// The corpus's canonical byte stream (what a dataset covers).
fn canonical(path: &Path) -> Vec<u8> {
    let mut s = open_stream(path).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read_full(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return out;
        }
    }
}

fn xorshift(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Tokenizes `content` (as a .txt corpus) with every method and width and checks the exact
/// round trip and the dataset's bookkeeping.
fn roundtrip_all(content: &[u8], chunk_bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    fs::write(&corpus, content).unwrap();
    let want = canonical(&corpus);
    for method in METHODS {
        for bits in [8u32, 16] {
            let out = dir.path().join(format!("{}-{bits}", method.name()));
            let r = tokenize_corpus(method, &corpus, &out, bits, chunk_bytes, None, false).unwrap();
            assert_eq!(r.bytes, want.len() as u64);
            assert_eq!(r.chunks, want.len().div_ceil(chunk_bytes) as u64);
            let ds = TokenDataset::open(&out).unwrap();
            assert_eq!(ds.len() as u64, r.tokens);
            assert_eq!(ds.num_examples() as u64, r.chunks);
            assert_eq!(ds.metadata().method.to_string(), method.name());
            assert_eq!(ds.metadata().vocab, 1 << bits);
            assert_eq!(ds.metadata().m1_fingerprint, None);
            if let Some(last) = ds.num_examples().checked_sub(1) {
                let (toks, bytes) = ds.example(last).unwrap();
                assert_eq!(toks.end, ds.len());
                assert_eq!(bytes.end, want.len() as u64);
            }
            match bits {
                8 => assert_eq!(ds.as_u8().unwrap().len(), ds.len()),
                _ => assert_eq!(ds.as_u16().unwrap().len(), ds.len()),
            }
            assert_eq!(ds.tokens().count(), ds.len());
            let got = decode_dataset(&out).unwrap();
            assert!(
                got == want,
                "{} {bits}-bit: round trip differs",
                method.name()
            );
        }
    }
}

#[test]
fn roundtrip_sample_prefix() {
    roundtrip_all(&sample_prefix(100_000), DEFAULT_CHUNK_BYTES);
}

#[test]
fn roundtrip_random_binary() {
    roundtrip_all(&xorshift(7, 50_001), DEFAULT_CHUNK_BYTES);
}

#[test]
fn roundtrip_edge_sizes() {
    roundtrip_all(b"", DEFAULT_CHUNK_BYTES);
    roundtrip_all(b"x", DEFAULT_CHUNK_BYTES);
    roundtrip_all(&[0], DEFAULT_CHUNK_BYTES);
    // Ends mid-chunk, odd lengths everywhere, small chunks.
    roundtrip_all(&sample_prefix(25_003), DEFAULT_CHUNK_BYTES);
    roundtrip_all(&sample_prefix(1_001), 7);
    roundtrip_all(&sample_prefix(64), 1);
    // Runs of 0x00 code to no tokens at all with static-ac (examples with empty token ranges).
    let mut zeros = vec![0u8; 5_000];
    zeros.extend_from_slice(b"tail");
    roundtrip_all(&zeros, 1_000);
}

#[test]
fn empty_corpus_makes_an_empty_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("empty.txt");
    fs::write(&corpus, b"").unwrap();
    let out = dir.path().join("ds");
    let r = tokenize_corpus(Method::Gzip, &corpus, &out, 16, 10_240, None, false).unwrap();
    assert_eq!((r.bytes, r.tokens, r.chunks), (0, 0, 0));
    assert_eq!((r.bits_per_byte, r.bytes_per_token), (0.0, 0.0));
    let ds = TokenDataset::open(&out).unwrap();
    assert!(ds.is_empty());
    assert_eq!(ds.example(0), None);
    assert_eq!(decode_dataset(&out).unwrap(), b"");
}

#[test]
fn rates_are_plausible_on_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("sample.txt");
    fs::write(&corpus, sample_prefix(400_000)).unwrap();
    let report = |m, bits| {
        tokenize_corpus(
            m,
            &corpus,
            &dir.path().join("ds"),
            bits,
            DEFAULT_CHUNK_BYTES,
            None,
            false,
        )
        .unwrap()
    };
    let b = report(Method::Bytes, 16);
    assert_eq!((b.bits_per_byte, b.bytes_per_token), (8.0, 2.0));
    // Paper: GZip[v=256] 2.23 bytes/token (3.59 bits/byte) on 10,240-byte C4 examples.
    let g = report(Method::Gzip, 8);
    assert!(
        (3.0..4.0).contains(&g.bits_per_byte),
        "gzip {}",
        g.bits_per_byte
    );
    // StaticAC costs the unigram entropy (~4.5 bits/byte on English) plus a little.
    for bits in [8, 16] {
        let s = report(Method::StaticAc, bits);
        let h = s.unigram_entropy.unwrap();
        assert!((4.2..4.9).contains(&h), "entropy {h}");
        assert!(
            s.bits_per_byte >= h && s.bits_per_byte < h + 0.02,
            "static-ac {}",
            s.bits_per_byte
        );
        assert!((s.bytes as f64 / s.tokens as f64 - s.bytes_per_token).abs() < 1e-9);
    }
}

#[test]
fn static_ac_decodes_from_metadata_alone() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    fs::write(&corpus, sample_prefix(30_000)).unwrap();
    let out = dir.path().join("ds");
    tokenize_corpus(Method::StaticAc, &corpus, &out, 16, 4096, None, false).unwrap();
    fs::remove_file(&corpus).unwrap();
    let meta = TokenDataset::open(&out).unwrap().metadata().clone();
    let counts: Vec<u64> = serde_json::from_value(params(&meta)["counts"].clone()).unwrap();
    assert_eq!(counts.iter().sum::<u64>(), 30_000);
    assert_eq!(decode_dataset(&out).unwrap(), sample_prefix(30_000));
}

// ---------------------------------------------------------------------------------------------
// Property tests: every method's chunk encode/decode, both widths.

fn byte_strings() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        // Long runs of one byte (the most and least likely bytes alike).
        (any::<u8>(), 0..20_000usize).prop_map(|(b, n)| vec![b; n]),
        // Runs mixed with noise.
        prop::collection::vec((any::<u8>(), 1..300usize), 0..20)
            .prop_map(|runs| runs.into_iter().flat_map(|(b, n)| vec![b; n]).collect()),
        // Text-like.
        prop::collection::vec(prop::sample::select(b" etaoinshrdlu\n.,".to_vec()), 0..2000),
    ]
}

fn check_codec(coder: &Codec, data: &[u8]) -> Result<(), TestCaseError> {
    for bits in [8u32, 16] {
        let t = coder.encode(data, bits).unwrap();
        prop_assert!(t.iter().all(|&x| (x as u32) < 1 << bits));
        let back = coder.decode(&t, bits, data.len()).unwrap();
        prop_assert_eq!(&back[..], data);
    }
    Ok(())
}

fn english_model() -> StaticAc {
    static MODEL: std::sync::OnceLock<StaticAc> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let mut counts = [0u64; 256];
            terse::tokenize::static_ac::count_bytes(&mut counts, &sample_prefix(100_000));
            StaticAc::from_counts(&counts).unwrap()
        })
        .clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn prop_bytes(data in byte_strings()) {
        check_codec(&Codec::Bytes, &data)?;
    }

    #[test]
    fn prop_gzip(data in byte_strings()) {
        check_codec(&Codec::Gzip, &data)?;
    }

    #[test]
    fn prop_static_ac(data in byte_strings(), skew in any::<bool>()) {
        // An English unigram model (rare bytes get the floor) and a skewed random one.
        let model = if skew {
            let mut counts = [1u64; 256];
            for (i, c) in counts.iter_mut().enumerate() {
                *c = (i as u64 * 7919) % 1000 * 1000 + 1;
            }
            StaticAc::from_counts(&counts).unwrap()
        } else {
            english_model()
        };
        check_codec(&Codec::StaticAc(Box::new(model)), &data)?;
    }

    /// Garbage tokens never panic any decoder.
    #[test]
    fn prop_decoders_total(tokens in prop::collection::vec(any::<u16>(), 0..100), len in 0..500usize) {
        for coder in [Codec::Bytes, Codec::Gzip, Codec::StaticAc(Box::new(english_model()))] {
            let _ = coder.decode(&tokens, 16, len);
            let narrow: Vec<u16> = tokens.iter().map(|t| t & 0xFF).collect();
            let _ = coder.decode(&narrow, 8, len);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation errors.

/// A small valid 16-bit dataset; returns its directory (inside `root`).
fn small_dataset(root: &Path) -> std::path::PathBuf {
    let corpus = root.join("c.txt");
    fs::write(&corpus, sample_prefix(3_000)).unwrap();
    let out = root.join("ds");
    tokenize_corpus(Method::Gzip, &corpus, &out, 16, 1_000, None, false).unwrap();
    out
}

fn edit_meta(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(METADATA_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Edits the metadata as a `Metadata` and re-seals its checksum, as a deliberate rewrite would.
fn edit_sealed(dir: &Path, f: impl FnOnce(&mut Metadata)) {
    let p = dir.join(METADATA_FILE);
    let mut meta: Metadata = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    f(&mut meta);
    meta.seal();
    fs::write(&p, serde_json::to_vec(&meta).unwrap()).unwrap();
}

fn open_err(dir: &Path) -> DatasetError {
    let e = TokenDataset::open(dir).unwrap_err();
    // Every error names the file it is about.
    let msg = e.to_string();
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    e
}

#[test]
fn validation_errors_are_specific() {
    let root = tempfile::tempdir().unwrap();
    let fresh = || {
        let d = root.path().join("ds");
        let _ = fs::remove_dir_all(&d);
        small_dataset(root.path())
    };

    let d = fresh();
    fs::remove_file(d.join(METADATA_FILE)).unwrap();
    assert!(
        matches!(open_err(&d), DatasetError::Missing { path } if path.ends_with(METADATA_FILE))
    );

    let d = fresh();
    fs::remove_file(d.join(TOKENS_FILE)).unwrap();
    assert!(matches!(open_err(&d), DatasetError::Missing { path } if path.ends_with(TOKENS_FILE)));

    let d = fresh();
    fs::write(d.join(METADATA_FILE), b"{\"format\": \"terse-tok").unwrap();
    assert!(matches!(open_err(&d), DatasetError::CorruptMetadata { .. }));

    let d = fresh();
    edit_meta(&d, |v| v["tokens"] = serde_json::json!("many"));
    assert!(matches!(open_err(&d), DatasetError::CorruptMetadata { .. }));

    let d = fresh();
    edit_meta(&d, |v| v["format"] = serde_json::json!("safetensors"));
    assert!(matches!(open_err(&d), DatasetError::WrongFormat { .. }));

    let d = fresh();
    edit_meta(&d, |v| v["version"] = serde_json::json!(3));
    assert!(matches!(
        open_err(&d),
        DatasetError::UnsupportedVersion { found: 3, .. }
    ));

    let d = fresh();
    edit_meta(&d, |v| v["token_bits"] = serde_json::json!(12));
    assert!(matches!(
        open_err(&d),
        DatasetError::TokenBits { bits: 12, .. }
    ));

    let d = fresh();
    edit_meta(&d, |v| v["vocab"] = serde_json::json!(70_000));
    assert!(matches!(open_err(&d), DatasetError::Vocab { .. }));

    // Truncated tokens.bin: by a whole token, and by half of one.
    let d = fresh();
    let raw = fs::read(d.join(TOKENS_FILE)).unwrap();
    fs::write(d.join(TOKENS_FILE), &raw[..raw.len() - 2]).unwrap();
    assert!(matches!(open_err(&d), DatasetError::LengthMismatch { .. }));
    fs::write(d.join(TOKENS_FILE), &raw[..raw.len() - 1]).unwrap();
    assert!(matches!(open_err(&d), DatasetError::OddLength { .. }));

    // Token >= vocab.
    let d = fresh();
    edit_sealed(&d, |m| m.identity.vocab = 256);
    match open_err(&d) {
        DatasetError::TokenOutOfRange { token, vocab, .. } => {
            assert!(token >= 256);
            assert_eq!(vocab, 256);
        }
        e => panic!("wrong error {e}"),
    }

    // Bad example offsets.
    type Edit = fn(&mut serde_json::Value);
    let bad_offsets: [Edit; 6] = [
        |v| v["examples"][0] = serde_json::json!([1, 0]),
        |v| v["examples"][1][1] = serde_json::json!(0),
        |v| v["examples"][2][0] = serde_json::json!(0),
        |v| v["examples"][2][1] = v["examples"][1][1].clone(),
        |v| v["examples"][2][0] = serde_json::json!(1_000_000),
        |v| v["examples"][2][1] = serde_json::json!(3_000),
    ];
    for edit in bad_offsets {
        let d = fresh();
        edit_meta(&d, edit);
        assert!(matches!(open_err(&d), DatasetError::Examples { .. }));
    }
    let d = fresh();
    edit_meta(&d, |v| v["examples"] = serde_json::json!([]));
    assert!(matches!(open_err(&d), DatasetError::Examples { .. }));

    // The untouched dataset opens.
    let d = fresh();
    assert!(TokenDataset::open(&d).is_ok());
}

#[test]
fn corrupt_tokens_fail_to_decode_without_panic() {
    let root = tempfile::tempdir().unwrap();
    let d = small_dataset(root.path());
    let p = d.join(TOKENS_FILE);
    let mut raw = fs::read(&p).unwrap();
    raw[10] ^= 0x55;
    fs::write(&p, &raw).unwrap();
    // Re-seal the damaged example so the checksum lets it through to the decoder.
    let ds = TokenDataset::open(&d).unwrap_err();
    assert!(matches!(ds, DatasetError::ExampleChecksum { index: 0, .. }));
    edit_sealed(&d, |m| {
        let end = m.examples[1][0];
        m.example_crc32.as_mut().unwrap()[0] = crc32fast::hash(&raw[..2 * end as usize]);
    });
    let e = decode_dataset(&d).unwrap_err();
    assert!(format!("{e:#}").contains("example 0"), "{e:#}");
}

/// Finding 5: one flipped bit anywhere in `tokens.bin` is refused on open, naming the example
/// (it used to decode to other bytes with exit 0 for every method but gzip).
#[test]
fn flipped_token_bit_is_refused_naming_its_example() {
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("c.txt");
    fs::write(&corpus, sample_prefix(3_000)).unwrap();
    for method in METHODS {
        let d = root.path().join(method.name());
        tokenize_corpus(method, &corpus, &d, 8, 1_000, None, false).unwrap();
        let clean = fs::read(d.join(TOKENS_FILE)).unwrap();
        let ds = TokenDataset::open(&d).unwrap();
        for at in [0, clean.len() / 2, clean.len() - 1] {
            let example = (0..ds.num_examples())
                .find(|&i| ds.example(i).unwrap().0.contains(&at))
                .unwrap();
            let mut raw = clean.clone();
            raw[at] ^= 1 << (at % 8);
            fs::write(d.join(TOKENS_FILE), &raw).unwrap();
            match open_err(&d) {
                DatasetError::ExampleChecksum { index, .. } => assert_eq!(index, example),
                e => panic!("{}: flip at {at} gave {e}", method.name()),
            }
            let msg = format!("{:#}", decode_dataset(&d).unwrap_err());
            assert!(msg.contains(&format!("example {example} ")), "{msg}");
            assert!(msg.contains("damaged"), "{msg}");
        }
        fs::write(d.join(TOKENS_FILE), &clean).unwrap();
        TokenDataset::open(&d).unwrap();
    }
}

/// Any change to `metadata.json` that still parses and validates (here the source path, and a
/// parameter) is refused by its checksum rather than read as another dataset.
#[test]
fn edited_metadata_is_refused_by_its_checksum() {
    let root = tempfile::tempdir().unwrap();
    let d = small_dataset(root.path());
    edit_meta(&d, |v| v["source"] = serde_json::json!("elsewhere.txt"));
    assert!(matches!(
        open_err(&d),
        DatasetError::MetadataChecksum { .. }
    ));
    let msg = open_err(&d).to_string();
    assert!(msg.contains("changed after it was written"), "{msg}");
    let d = small_dataset(root.path());
    edit_meta(&d, |v| v["params"]["chunk_bytes"] = serde_json::json!(999));
    assert!(matches!(
        open_err(&d),
        DatasetError::MetadataChecksum { .. }
    ));
    // Version 2 without its checksums is not a version 1 dataset.
    let d = small_dataset(root.path());
    edit_meta(&d, |v| {
        v.as_object_mut().unwrap().remove("metadata_crc32");
    });
    assert!(matches!(open_err(&d), DatasetError::CorruptMetadata { .. }));
}

/// Datasets written before checksums (version 1: no `example_crc32`, no `metadata_crc32`) still
/// open and decode to the same bytes.
#[test]
fn version_1_dataset_without_checksums_still_reads() {
    let root = tempfile::tempdir().unwrap();
    let d = small_dataset(root.path());
    let before = decode_dataset(&d).unwrap();
    edit_meta(&d, |v| {
        let o = v.as_object_mut().unwrap();
        o.remove("example_crc32");
        o.remove("metadata_crc32");
        o.insert("version".into(), serde_json::json!(1));
    });
    let ds = TokenDataset::open(&d).unwrap();
    assert!(!ds.metadata().has_checksums());
    assert_eq!(decode_dataset(&d).unwrap(), before);
    // ... but a version 1 file claiming checksums is refused.
    edit_meta(&d, |v| v["metadata_crc32"] = serde_json::json!(0));
    assert!(matches!(open_err(&d), DatasetError::CorruptMetadata { .. }));
}

#[test]
fn writer_leaves_no_partial_dataset() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("ds");
    {
        let mut w = TokenDatasetWriter::create(&d, 8).unwrap();
        w.push_example(&[1, 2, 3], 5).unwrap();
        assert!(w.push_example(&[300], 1).is_err(), "8-bit token too wide");
        assert!(w.push_example(&[1], 0).is_err(), "empty example");
        // Dropped without finish.
    }
    assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "temp file removed");
    assert!(matches!(
        TokenDataset::open(&d),
        Err(DatasetError::Missing { .. })
    ));

    // Overwriting an existing dataset replaces it.
    let mut w = TokenDatasetWriter::create(&d, 16).unwrap();
    w.push_example(&[0xFFFF, 2], 3).unwrap();
    w.push_example(&[], 2).unwrap();
    let meta = w
        .finish(
            MethodParams::Bytes(BytesParams { chunk_bytes: 3 }),
            65536,
            None,
            "x",
        )
        .unwrap();
    assert_eq!(meta.examples, vec![[0, 0], [2, 3]]);
    let ds = TokenDataset::open(&d).unwrap();
    assert_eq!(ds.tokens().collect::<Vec<_>>(), vec![0xFFFF, 2]);
    assert_eq!(ds.example(1), Some((2..2, 3..5)));
    assert_eq!(
        fs::read_dir(&d).unwrap().count(),
        2,
        "only tokens.bin and metadata.json"
    );
}

// ---------------------------------------------------------------------------------------------
// The command line.

#[test]
fn cli_tokenize_json_end_to_end() {
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("small.txt");
    fs::write(&corpus, sample_prefix(20_000)).unwrap();
    for method in ["bytes", "gzip", "static-ac"] {
        let out = root.path().join(method);
        let o = Command::new(env!("CARGO_BIN_EXE_terse"))
            .args(["tokenize", "--method", method, "--data"])
            .arg(&corpus)
            .arg("--out")
            .arg(&out)
            .args(["--token-bits", "8", "--chunk-bytes", "4096", "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["method"], method);
        assert_eq!(r["bytes"], 20_000);
        assert_eq!(r["chunks"], 5);
        assert_eq!(r["token_bits"], 8);
        for k in [
            "tokens",
            "bytes_per_token",
            "bits_per_byte",
            "seconds",
            "bytes_per_second",
        ] {
            assert!(r[k].is_number(), "{k}");
        }
        assert_eq!(decode_dataset(&out).unwrap(), sample_prefix(20_000));
    }
    // Refusals: a width other than 8/16, a method that needs M1, a missing corpus.
    let bad = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_terse"))
            .args(["tokenize", "--data"])
            .arg(&corpus)
            .arg("--out")
            .arg(root.path().join("bad"))
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} accepted");
    };
    bad(&["--method", "gzip", "--token-bits", "12"]);
    bad(&["--method", "equal-info"]);
    bad(&["--method", "ac"]);
    bad(&["--method", "gzip", "--delay"]);
    bad(&["--method", "gzip", "--chunk-bytes", "0"]);
    let o = Command::new(env!("CARGO_BIN_EXE_terse"))
        .args(["tokenize", "--method", "bytes", "--data"])
        .arg(root.path().join("nope.txt"))
        .arg("--out")
        .arg(root.path().join("bad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(!root.path().join("bad").join(METADATA_FILE).exists());
}

#[test]
fn equal_info_through_the_cli_round_trips_with_its_m1_only() {
    use terse::model::{ModelConfig, ParamArena};
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("c.txt");
    fs::write(&corpus, sample_prefix(6_000)).unwrap();
    let mut cfg = ModelConfig::preset("tiny", None).unwrap();
    cfg.context = Some(256); // contract 3 attends over a recorded context
    let mut p = ParamArena::init(&cfg, 9);
    p.data.iter_mut().for_each(|x| *x *= 8.0);
    let ck = root.path().join("m1");
    terse::checkpoint::save_checkpoint(&ck, &cfg, &p, None).unwrap();
    for (method, b, bits, delay) in [
        ("equal-info", "16", "16", false),
        ("equal-info", "32", "8", false),
        ("equal-info", "24", "8", false),
        ("equal-info", "16", "8", true),
        ("ac", "16", "16", false),
        ("ac", "16", "8", false),
    ] {
        let out = root.path().join(format!("{method}{b}-{bits}-{delay}"));
        let mut args = vec![
            "tokenize",
            "--method",
            method,
            "--window-bits",
            b,
            "--token-bits",
            bits,
            "--chunk-bytes",
            "1000",
            "--json",
        ];
        if delay {
            args.push("--delay");
        }
        let o = Command::new(env!("CARGO_BIN_EXE_terse"))
            .args(&args)
            .arg("--m1")
            .arg(&ck)
            .arg("--data")
            .arg(&corpus)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["method"], method);
        for k in [
            "tokens",
            "bytes_per_token",
            "bits_per_byte",
            "bytes_per_second",
        ] {
            assert!(r[k].is_number(), "{k}");
        }
        if method == "equal-info" {
            assert!(r["windows"].as_u64().unwrap() > 0);
            assert!(r["backoffs"].is_u64() && r["bytes_per_window"].is_number());
            let meta = TokenDataset::open(&out).unwrap().metadata().clone();
            assert_eq!(
                params(&meta)["window_rule"],
                if delay { "delay" } else { "designated" }
            );
        } else {
            assert!(r.get("windows").is_none() && r.get("backoffs").is_none());
        }
        let m1 = std::sync::Arc::new(terse::m1::Int8M1::new(&cfg, &p).unwrap());
        assert_eq!(
            terse::tokenize::decode_dataset_with_m1(&out, Some(m1)).unwrap(),
            sample_prefix(6_000)
        );
        let back = root
            .path()
            .join(format!("back{method}{b}-{bits}-{delay}.txt"));
        let o = Command::new(env!("CARGO_BIN_EXE_terse"))
            .args(["detokenize", "--m1"])
            .arg(&ck)
            .arg("--data")
            .arg(&out)
            .arg("--out")
            .arg(&back)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(fs::read(&back).unwrap(), sample_prefix(6_000));
        // Without M1, or with another one, decoding is refused.
        assert!(decode_dataset(&out).is_err());
        let mut other = p.clone();
        other.data[0] += 1.0;
        let wrong = std::sync::Arc::new(terse::m1::Int8M1::new(&cfg, &other).unwrap());
        let e = format!(
            "{:#}",
            terse::tokenize::decode_dataset_with_m1(&out, Some(wrong)).unwrap_err()
        );
        assert!(e.contains("wrong M1"), "{e}");
    }
}

fn short_byte_strings() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (any::<u8>(), 0..200usize).prop_map(|(b, n)| vec![b; n]),
        prop::collection::vec(prop::sample::select(b" etaoinshrdlu\n.,".to_vec()), 0..120),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Equal-Info through the exact M1 round-trips every input, for several window widths.
    #[test]
    fn prop_equal_info(data in short_byte_strings(), b in prop::sample::select(vec![16u32, 32, 64, 128])) {
        let spec = terse::tokenize::M1Spec::new(tiny_m1(), b);
        check_codec(&Codec::EqualInfo(spec), &data)?;
    }

    /// The paper's Delay rule round-trips every input too.
    #[test]
    fn prop_equal_info_delay(data in short_byte_strings(), b in prop::sample::select(vec![16u32, 32, 64, 128])) {
        let spec = terse::tokenize::M1Spec::new(tiny_m1(), b).with_delay(true);
        check_codec(&Codec::EqualInfo(spec), &data)?;
    }

    /// Plain AC under M1 (one context over the whole input) round-trips every input.
    #[test]
    fn prop_ac(data in m1_byte_strings()) {
        check_codec(&Codec::Ac(terse::tokenize::M1Spec::new(tiny_m1(), 16)), &data)?;
    }

    /// Garbage tokens never panic the M1 decoders, and they give the requested length.
    #[test]
    fn prop_m1_decoders_total(tokens in prop::collection::vec(any::<u16>(), 0..40), len in 0..200usize) {
        let spec = terse::tokenize::M1Spec::new(tiny_m1(), 16);
        for coder in [
            Codec::Ac(spec.clone()),
            Codec::EqualInfo(spec.clone()),
            Codec::EqualInfo(spec.clone().with_delay(true)),
        ] {
            if let Ok(out) = coder.decode(&tokens, 16, len) {
                prop_assert_eq!(out.len(), len);
            }
            let narrow: Vec<u16> = tokens.iter().map(|t| t & 0xFF).collect();
            let _ = coder.decode(&narrow, 8, len);
        }
    }
}

/// Inputs for the M1 coders: short random bytes, long runs of one byte (up to 2,000: `ac` codes
/// them under one growing context), text-like strings and invalid UTF-8.
fn m1_byte_strings() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (any::<u8>(), 0..2_000usize).prop_map(|(b, n)| vec![b; n]),
        prop::collection::vec(prop::sample::select(b" etaoinshrdlu\n.,".to_vec()), 0..300),
        prop::collection::vec(
            prop::sample::select(vec![0xC0u8, 0xFF, 0x80, 0xE2, b'a']),
            0..100
        ),
    ]
}

/// Every M1 method through whole datasets: empty, 1-byte, random binary and invalid UTF-8 inputs,
/// 8- and 16-bit tokens, with the fingerprint recorded and another M1 refused.
#[test]
fn m1_methods_round_trip_datasets() {
    use terse::tokenize::{decode_dataset_with_m1, M1Spec};
    let m1 = tiny_m1();
    let dir = tempfile::tempdir().unwrap();
    let mut invalid = b"caf\xc3\xa9 \xff\xfe\xc3\x28 \xed\xa0\x80 end".to_vec();
    invalid.extend(xorshift(3, 700).iter().map(|b| b | 0x80));
    let inputs: [(&str, Vec<u8>); 5] = [
        ("empty", vec![]),
        ("one", b"A".to_vec()),
        ("random", xorshift(11, 2_500)),
        ("invalid-utf8", invalid),
        ("text", sample_prefix(3_000)),
    ];
    let specs = [
        (Method::Ac, M1Spec::new(m1.clone(), 16)),
        (Method::EqualInfo, M1Spec::new(m1.clone(), 16)),
        (
            Method::EqualInfo,
            M1Spec::new(m1.clone(), 32).with_delay(true),
        ),
    ];
    let mut cfg = terse::model::ModelConfig::preset("tiny", None).unwrap();
    cfg.context = Some(256); // contract 3 attends over a recorded context
    let other = std::sync::Arc::new(
        terse::m1::Int8M1::new(&cfg, &terse::model::ParamArena::init(&cfg, 99)).unwrap(),
    );
    for (name, content) in &inputs {
        let corpus = dir.path().join(format!("{name}.txt"));
        fs::write(&corpus, content).unwrap();
        let want = canonical(&corpus);
        for (method, spec) in &specs {
            for bits in [8u32, 16] {
                let out =
                    dir.path()
                        .join(format!("{name}-{}-{bits}-{:?}", method.name(), spec.rule));
                let r = tokenize_corpus(*method, &corpus, &out, bits, 1_000, Some(spec), false)
                    .unwrap();
                assert_eq!(r.bytes, want.len() as u64);
                let ei = *method == Method::EqualInfo;
                assert_eq!(r.windows.is_some(), ei);
                assert_eq!(r.backoffs.is_some(), ei);
                if ei {
                    let w = r.windows.unwrap();
                    assert_eq!(r.tokens, w * spec.window_bits as u64 / bits as u64);
                }
                let meta = TokenDataset::open(&out).unwrap().metadata().clone();
                assert_eq!(
                    meta.m1_fingerprint,
                    Some(format!("{:016x}", m1.fingerprint()))
                );
                if ei {
                    assert_eq!(params(&meta)["window_rule"], spec.rule.name());
                }
                let got = decode_dataset_with_m1(&out, Some(m1.clone())).unwrap();
                assert!(
                    got == want,
                    "{name} {} {bits}: round trip differs",
                    method.name()
                );
                assert!(decode_dataset(&out).is_err());
                if !want.is_empty() {
                    let e = format!(
                        "{:#}",
                        decode_dataset_with_m1(&out, Some(other.clone())).unwrap_err()
                    );
                    assert!(e.contains("wrong M1"), "{e}");
                }
            }
        }
    }
    // M1 is refused by the methods without it, and required by those with it.
    let corpus = dir.path().join("one.txt");
    let spec = M1Spec::new(m1.clone(), 16);
    assert!(tokenize_corpus(
        Method::Gzip,
        &corpus,
        &dir.path().join("x"),
        16,
        100,
        Some(&spec),
        false
    )
    .is_err());
    assert!(tokenize_corpus(
        Method::Ac,
        &corpus,
        &dir.path().join("x"),
        16,
        100,
        None,
        false
    )
    .is_err());
}

/// On text M1 predicts (sampled from it, context reset every 12 bytes), the Delay rule holds
/// fewer bytes per window than the designated-code rule (the paper: 2.66 -> 2.20 bytes per token
/// at b=16, v=256).
#[test]
fn delay_costs_compression() {
    use terse::tokenize::M1Spec;
    let m1 = tiny_m1();
    let mut rng = xorshift(5, 6_000).into_iter();
    let mut data = Vec::new();
    while data.len() < 6_000 {
        let mut st = terse::m1::Int8State::default();
        let mut probs = m1.start(&mut st);
        for _ in 0..12 {
            let u = (rng.next().unwrap() as f32 + 0.5) / 256.0;
            let (mut acc, mut byte) = (0f32, 255u8);
            for (i, &p) in probs.iter().enumerate() {
                acc += p;
                if acc > u {
                    byte = i as u8;
                    break;
                }
            }
            data.push(byte);
            probs = m1.push(&mut st, byte);
        }
    }
    let tokens = |c: Codec| c.encode(&data, 16).unwrap().len();
    let designated = tokens(Codec::EqualInfo(M1Spec::new(m1.clone(), 16)));
    let delay = tokens(Codec::EqualInfo(
        M1Spec::new(m1.clone(), 16).with_delay(true),
    ));
    assert!(
        delay > designated,
        "delay {delay} vs designated {designated}"
    );
}

// ---------------------------------------------------------------------------------------------
// subword: a byte-level BPE; every input round-trips, 16-bit tokens only.

fn small_subword() -> std::sync::Arc<terse::tokenize::subword::Subword> {
    static SW: std::sync::OnceLock<std::sync::Arc<terse::tokenize::subword::Subword>> =
        std::sync::OnceLock::new();
    SW.get_or_init(|| {
        std::sync::Arc::new(
            terse::tokenize::subword::Subword::train(&sample_prefix(300_000), 4_000).unwrap(),
        )
    })
    .clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any bytes (long runs, noise, text-like, invalid UTF-8) round-trip through the BPE.
    #[test]
    fn prop_subword(data in byte_strings(), invalid in prop::collection::vec(0x80u8..=0xFF, 0..50)) {
        let coder = Codec::Subword(small_subword());
        let mut data = data;
        data.extend(invalid);
        let t = coder.encode(&data, 16).unwrap();
        prop_assert_eq!(coder.decode(&t, 16, data.len()).unwrap(), data.clone());
        prop_assert!(coder.encode(&data, 8).is_err());
    }

    /// Garbage ids never panic the subword decoder.
    #[test]
    fn prop_subword_decoder_total(tokens in prop::collection::vec(any::<u16>(), 0..100), len in 0..500usize) {
        let _ = Codec::Subword(small_subword()).decode(&tokens, 16, len);
    }
}

/// subword datasets: empty, 1-byte, random binary, invalid UTF-8 and text corpora round-trip from
/// the metadata alone; 8-bit tokens are refused; `--subword-train` trains on another file.
#[test]
fn subword_datasets_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut invalid = b"caf\xc3\xa9 \xff\xfe\xc3\x28 \xed\xa0\x80 \x00end".repeat(50);
    invalid.extend(xorshift(3, 5_000).iter().map(|b| b | 0x80));
    let inputs: [(&str, Vec<u8>); 5] = [
        ("empty", vec![]),
        ("one", vec![0xFF]),
        ("random", xorshift(11, 30_000)),
        ("invalid-utf8", invalid),
        ("text", sample_prefix(120_000)),
    ];
    for (name, content) in &inputs {
        let corpus = dir.path().join(format!("{name}.txt"));
        fs::write(&corpus, content).unwrap();
        let want = canonical(&corpus);
        let out = dir.path().join(format!("sw-{name}"));
        let r = tokenize_corpus(Method::Subword, &corpus, &out, 16, 10_240, None, false).unwrap();
        assert_eq!(r.bytes, want.len() as u64);
        let meta = TokenDataset::open(&out).unwrap().metadata().clone();
        assert_eq!(meta.method.to_string(), "subword");
        assert!(params(&meta)["tokenizer"].is_object());
        assert!(params(&meta)["vocab_size"].as_u64().unwrap() <= 32_000);
        assert_eq!(
            meta.vocab as u64,
            params(&meta)["vocab_size"].as_u64().unwrap()
        );
        assert!(decode_dataset(&out).unwrap() == want, "{name}");
        if *name == "text" {
            assert!(r.bytes_per_token > 3.0, "{}", r.bytes_per_token);
        }
        let e = tokenize_corpus(Method::Subword, &corpus, &out, 8, 10_240, None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("16-bit"), "{e}");
    }
    // Trained on one file, applied to another, through the CLI; detokenize needs no extra file.
    let train = dir.path().join("text.txt");
    let data = dir.path().join("random.txt");
    let out = dir.path().join("sw-cli");
    let o = Command::new(env!("CARGO_BIN_EXE_terse"))
        .args([
            "tokenize",
            "--method",
            "subword",
            "--json",
            "--subword-train",
        ])
        .arg(&train)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["method"], "subword");
    let meta = TokenDataset::open(&out).unwrap().metadata().clone();
    assert_eq!(params(&meta)["train_source"], train.display().to_string());
    let back = dir.path().join("back.bin");
    let o = Command::new(env!("CARGO_BIN_EXE_terse"))
        .args(["detokenize", "--data"])
        .arg(&out)
        .arg("--out")
        .arg(&back)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read(&back).unwrap(), canonical(&data));
    let o = Command::new(env!("CARGO_BIN_EXE_terse"))
        .args([
            "tokenize",
            "--method",
            "subword",
            "--token-bits",
            "8",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("16-bit"));
}

/// Tokens coded under another numeric contract (an earlier build's contract 2) are refused before
/// any decoding, with a message naming both contracts, even when the M1 is the right one.
#[test]
fn datasets_of_another_contract_are_refused_naming_both() {
    use terse::tokenize::{decode_dataset_with_m1, M1Spec};
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    fs::write(&corpus, sample_prefix(1_500)).unwrap();
    for method in [Method::Ac, Method::EqualInfo] {
        let out = dir.path().join(method.name());
        let spec = M1Spec::new(tiny_m1(), 16);
        tokenize_corpus(method, &corpus, &out, 16, 500, Some(&spec), false).unwrap();
        assert!(decode_dataset_with_m1(&out, Some(tiny_m1())).is_ok());
        let mut meta = TokenDataset::open(&out).unwrap().metadata().clone();
        match &mut meta.identity.method {
            MethodParams::Ac(p) => p.m1_contract = 2,
            MethodParams::EqualInfo(p) => p.m1_contract = 2,
            other => panic!("{other:?}"),
        }
        meta.seal();
        fs::write(out.join(METADATA_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        let e = format!(
            "{:#}",
            decode_dataset_with_m1(&out, Some(tiny_m1())).unwrap_err()
        );
        assert!(
            e.contains(
                "coded under M1 numeric contract 2; this build codes and decodes under contract 3"
            ),
            "{e}"
        );
    }
}

/// M1 as each int8 kernel of this machine computes it (AVX-512 VNNI, AVX-VNNI, AVX2, portable),
/// from the weights of [`tiny_m1`].
fn tiny_m1_on_every_kernel() -> &'static [terse::m1::Int8M1] {
    static M1S: std::sync::OnceLock<Vec<terse::m1::Int8M1>> = std::sync::OnceLock::new();
    M1S.get_or_init(|| {
        let (cfg, p) = common::tiny_m1_weights();
        terse::numerics::int8::I8Kernel::available()
            .into_iter()
            .map(|k| {
                let m = terse::m1::Int8M1::new(&cfg, &p).unwrap();
                m.with_kernel(k).unwrap()
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Equal-Info windows and `ac` tokens are the same bits whatever computes M1: every int8
    /// kernel, 1 or 2 threads, each chunk alone or chunks in lockstep on a shared batch of
    /// 1 to 4 streams, or on a pair of batches stepping in turn (1 to 4 streams and 1 more);
    /// and every variant decodes them back.
    #[test]
    fn prop_m1_tokens_agree_across_kernels_threads_and_batches(
        chunks in prop::collection::vec(short_byte_strings(), 1..5),
        streams in 1usize..5,
        paired in any::<bool>(),
    ) {
        use terse::m1::{CpuM1Batch, M1Batch, M1BatchPair};
        use terse::tokenize::{ac, equal_info::EqualInfo};
        let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
        let m1s = tiny_m1_on_every_kernel();
        let reference = &m1s[m1s.len() - 1]; // the portable kernel comes last
        prop_assert_eq!(reference.kernel().name(), "portable");
        let ei_ref: Vec<Vec<u128>> = chunks
            .iter()
            .map(|c| EqualInfo::new(reference, 16).unwrap().encode(c).unwrap().codes)
            .collect();
        // `ac` with repeats: M1's CDFs and the chunk's own history, the same on every batch.
        let ac_ref = ac::encode_chunks(&mut CpuM1Batch::new(reference, 1), &chunks, 16, &mut ac::ChunkModelStore::new(ac::AcModel::M1Repeats)).unwrap();
        for m1 in m1s {
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (ei, ac_tokens, back) = pool.install(|| {
                    let coder = EqualInfo::new(m1, 16).unwrap();
                    let mut batch: Box<dyn M1Batch> = match paired {
                        false => Box::new(CpuM1Batch::new(m1, streams)),
                        true => Box::new(
                            M1BatchPair::new(
                                Box::new(CpuM1Batch::new(m1, streams)),
                                Box::new(CpuM1Batch::new(m1, 1)),
                            )
                            .unwrap(),
                        ),
                    };
                    let ei: Vec<Vec<u128>> = coder
                        .encode_chunks(&mut *batch, &chunks)
                        .unwrap()
                        .into_iter()
                        .map(|w| w.codes)
                        .collect();
                    let ac_tokens =
                        ac::encode_chunks(&mut *batch, &chunks, 16, &mut ac::ChunkModelStore::new(ac::AcModel::M1Repeats)).unwrap();
                    let back = coder.decode_codes(&mut *batch, &ei.concat()).unwrap().concat();
                    (ei, ac_tokens, back)
                });
                let at = format!("{} kernel, {threads} threads, {streams} streams, paired {paired}", m1.kernel().name());
                prop_assert_eq!(&ei, &ei_ref, "equal-info windows, {}", at);
                prop_assert_eq!(&ac_tokens, &ac_ref, "ac tokens, {}", at);
                prop_assert_eq!(back, chunks.concat(), "decoded, {}", at);
            }
        }
    }
}
