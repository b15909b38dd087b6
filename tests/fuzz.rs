//! Fuzz targets on stable Rust: the equivalent of cargo-fuzz targets, driven by proptest (thousands
//! of cases, shrinking on failure). Each target asserts "no panic, a clean error or an exact
//! result":
//!
//! - the Equal-Info window decoder on arbitrary codes and widths, both termination rules, with
//!   count-model CDFs and through M1 (`EqualInfo::decode_window`);
//! - the compressed-file parser (`decompress_file`) on arbitrary bytes and on structured mutations
//!   of a valid file: bit flips, truncation at every offset class, extension, length fields set
//!   to huge values; the unmutated file round-trips exactly;
//! - the token-dataset opener (and decoder) on mutated `metadata.json` and `tokens.bin`.

mod common;
use common::{text_m1, tiny_m1};

use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use terse::coder::{Cdf, WindowDecoder, WindowEncoder, WindowEnd, WindowRule};
use terse::tokenize::equal_info::EqualInfo;

fn sample(n: usize) -> Vec<u8> {
    let all = fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/sample-books.txt"
    ))
    .unwrap();
    all[..n].to_vec()
}

/// Count models: uniform, English unigram, and a very peaked one (long windows).
fn models() -> &'static [Cdf; 3] {
    static M: OnceLock<[Cdf; 3]> = OnceLock::new();
    M.get_or_init(|| {
        let mut counts = [0u64; 256];
        terse::tokenize::static_ac::count_bytes(&mut counts, &sample(50_000));
        let english = terse::tokenize::static_ac::quantize_counts(&counts, 16);
        let mut peaked = [1u32; 256];
        peaked[b'e' as usize] = 65_536 - 255;
        [
            Cdf::uniform(16).unwrap(),
            Cdf::from_frequencies(&english).unwrap(),
            Cdf::from_frequencies(&peaked).unwrap(),
        ]
    })
}

fn rule_of(delay: bool) -> WindowRule {
    if delay {
        WindowRule::Delay
    } else {
        WindowRule::Designated
    }
}

// ---------------------------------------------------------------------------------------------
// (a) The window decoder.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Any code of any supported width decodes without panicking, in bounded steps; a code that
    /// ends `Matched` is exactly what the encoder writes for the decoded bytes. Unsupported widths
    /// and too-wide codes are refused cleanly.
    #[test]
    fn fuzz_window_decoder(
        b in (0u32..=17).prop_map(|k| 8 * k),
        raw in any::<u128>(),
        model in 0usize..3,
        delay in any::<bool>(),
    ) {
        let rule = rule_of(delay);
        let cdf = &models()[model];
        let supported = terse::coder::window_bits_supported(b);
        let code = if b == 0 || b >= 128 { raw } else { raw & ((1u128 << b) - 1) };
        let Ok(mut dec) = WindowDecoder::with_rule(b, code, rule) else {
            prop_assert!(!supported);
            return Ok(());
        };
        prop_assert!(supported);
        let mut steps = 0;
        while !dec.is_done() {
            dec.step(cdf);
            steps += 1;
            prop_assert!(steps < 1_000_000, "decoder does not end");
        }
        if b < 128 {
            prop_assert!(WindowDecoder::with_rule(b, code | 1 << b, rule).is_err());
        }
        if dec.end() == Some(WindowEnd::Matched) {
            let bytes = dec.bytes().to_vec();
            let mut enc = WindowEncoder::with_rule(b, rule).unwrap();
            for &x in &bytes {
                prop_assert!(enc.push(cdf, x));
            }
            prop_assert_eq!(enc.window_len(), bytes.len());
            prop_assert_eq!(enc.finish().unwrap(), code);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// The same through M1's exact path (`EqualInfo::decode_window`), both rules.
    #[test]
    fn fuzz_window_decoder_m1(
        b in prop::sample::select(vec![16u32, 24, 32, 64, 128]),
        raw in any::<u128>(),
        delay in any::<bool>(),
    ) {
        let m1 = tiny_m1();
        let ei = EqualInfo::with_rule(&m1, b, rule_of(delay)).unwrap();
        let code = if b == 128 { raw } else { raw & ((1u128 << b) - 1) };
        let bytes = ei.decode_window(code).unwrap();
        prop_assert!(bytes.len() < 100_000);
        if b < 128 {
            prop_assert!(ei.decode_window(code | 1 << b).is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) The compressed-file parser.

/// Offsets of the header fields (see `terse::compress`, format 3): version 8, contract 10,
/// fingerprint 14, coding 22, window bits 23, chunk bytes 25, the header's CRC-32 29; chunk
/// records from 33; the end record's original length and CRC-32 are the file's last 12 bytes.
const HEADER_BYTES: usize = 33;

struct Valid {
    original: Vec<u8>,
    file: Vec<u8>,
}

/// A valid compressed file (Equal-Info, b = 16, 97-byte chunks) of 400 bytes of text and binary.
fn valid_file() -> &'static Valid {
    static V: OnceLock<Valid> = OnceLock::new();
    V.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut original = sample(300);
        original.extend((0..100u32).map(|i| (i * 131 % 256) as u8));
        let (inp, out) = (dir.path().join("in"), dir.path().join("out.terse"));
        fs::write(&inp, &original).unwrap();
        let coding = terse::compress::Coding::EqualInfo { window_bits: 16 };
        let rep = terse::compress::compress_file(
            &inp,
            &out,
            &text_m1(),
            coding,
            97,
            terse::fsio::Existing::Replace,
            terse::compress::Progress::Off,
        )
        .unwrap();
        // The text's chunks coded, the binary tail's stored: damage lands in both kinds.
        assert!(rep.stored_chunks > 0 && rep.stored_chunks < 5, "{rep:?}");
        let file = fs::read(&out).unwrap();
        Valid { original, file }
    })
}

/// Decompresses `bytes`: `Ok(output)` or `Err(message)`; never leaves an output file on error.
fn decompress(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("f.terse"), dir.path().join("f.out"));
    fs::write(&inp, bytes).unwrap();
    match terse::compress::decompress_file(
        &inp,
        &out,
        &text_m1(),
        terse::fsio::Existing::Replace,
        terse::compress::Progress::Off,
    ) {
        Ok(_) => Ok(fs::read(&out).unwrap()),
        Err(e) => {
            let left: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n != "f.terse")
                .collect();
            assert!(
                left.is_empty(),
                "output left behind after an error: {left:?}"
            );
            let msg = format!("{e:#}");
            assert!(!msg.is_empty());
            Err(msg)
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Flip bit `bit` of byte `at % len` (1 to 3 of them).
    Flips(Vec<(usize, u8)>),
    /// Keep the first `at` bytes; `class` picks inside the header, at a record boundary, inside a
    /// code, or anywhere.
    Truncate { class: u8, at: usize },
    /// Append bytes.
    Extend(Vec<u8>),
    /// Overwrite a length field with a huge (or zero) value.
    Field { which: u8, value: u64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), 0u8..8), 1..4).prop_map(Mutation::Flips),
        (0u8..4, any::<usize>()).prop_map(|(class, at)| Mutation::Truncate { class, at }),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (
            0u8..6,
            prop_oneof![
                Just(0u64),
                Just(u64::MAX),
                Just(u32::MAX as u64),
                Just(1 << 40),
                any::<u64>()
            ]
        )
            .prop_map(|(which, value)| Mutation::Field { which, value }),
    ]
}

fn apply(file: &[u8], m: &Mutation) -> Vec<u8> {
    let mut f = file.to_vec();
    match m {
        Mutation::Flips(flips) => {
            for &(at, bit) in flips {
                let i = at % f.len();
                f[i] ^= 1 << bit;
            }
        }
        Mutation::Truncate { class, at } => {
            let n = match class {
                0 => at % HEADER_BYTES,         // inside the header
                1 => HEADER_BYTES + at % 4,     // inside the first record's count
                2 => HEADER_BYTES + 4 + at % 9, // inside or between codes
                _ => at % f.len(),              // anywhere
            };
            f.truncate(n.min(f.len() - 1));
        }
        Mutation::Extend(extra) => f.extend_from_slice(extra),
        Mutation::Field { which, value } => {
            let v = *value;
            match which {
                0 => {
                    let at = f.len() - 12; // the end record's original length
                    f[at..at + 8].copy_from_slice(&v.to_le_bytes())
                }
                1 => f[25..29].copy_from_slice(&(v as u32).to_le_bytes()), // chunk bytes
                2 => f[23..25].copy_from_slice(&(v as u16).to_le_bytes()), // window bits
                3 => f[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&(v as u32).to_le_bytes()),
                4 => f[22] = v as u8, // coding
                _ => f[8..10].copy_from_slice(&(v as u16).to_le_bytes()), // format version
            }
        }
    }
    f
}

#[test]
fn valid_file_round_trips_exactly() {
    let v = valid_file();
    assert_eq!(decompress(&v.file).unwrap(), v.original);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// Mutated valid files: a clean error, or (a mutation the CRC cannot see, e.g. in a code's
    /// padding bits) exactly the original bytes.
    #[test]
    fn fuzz_compressed_file_mutations(m in mutation()) {
        let v = valid_file();
        let f = apply(&v.file, &m);
        if f == v.file {
            return Ok(());
        }
        if let Ok(out) = decompress(&f) {
            prop_assert_eq!(out, v.original.clone(), "{:?} decoded to other bytes", m);
        }
    }

    /// Arbitrary bytes, with and without a valid magic and header prefix: never a panic.
    #[test]
    fn fuzz_compressed_file_arbitrary(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        keep_header in 0usize..=HEADER_BYTES,
    ) {
        let mut f = valid_file().file[..keep_header].to_vec();
        f.extend_from_slice(&bytes);
        let _ = decompress(&f);
    }
}

// ---------------------------------------------------------------------------------------------
// (c) The token-dataset opener.

/// A valid static-ac dataset (16-bit tokens, 5 examples) and an equal-info one (8-bit).
fn datasets() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static D: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    D.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("c.txt");
        fs::write(&corpus, sample(2_000)).unwrap();
        let a = dir.path().join("static");
        terse::tokenize::tokenize_corpus(
            terse::tokenize::Method::StaticAc,
            &corpus,
            &a,
            16,
            400,
            None,
            false,
        )
        .unwrap();
        let b = dir.path().join("ei");
        let spec = terse::tokenize::M1Spec::new(tiny_m1(), 16);
        terse::tokenize::tokenize_corpus(
            terse::tokenize::Method::EqualInfo,
            &corpus,
            &b,
            8,
            400,
            Some(&spec),
            false,
        )
        .unwrap();
        (dir, vec![a, b])
    })
}

fn copy_dataset(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for f in [terse::tokenize::METADATA_FILE, terse::tokenize::TOKENS_FILE] {
        fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// A JSON value mutation: replace, delete or retype one field (top level or in `examples`).
#[derive(Debug, Clone)]
enum MetaEdit {
    Set(usize, serde_json::Value),
    Remove(usize),
    Example(usize, usize, u64),
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!(null)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(u64::MAX)),
        Just(json!(8)),
        Just(json!(16)),
        Just(json!(65536)),
        Just(json!("ac")),
        Just(json!("subword")),
        Just(json!("")),
        Just(json!([])),
        Just(json!([[0, 0]])),
        Just(json!({})),
        any::<u32>().prop_map(|x| json!(x)),
    ]
}

fn meta_edit() -> impl Strategy<Value = MetaEdit> {
    prop_oneof![
        (any::<usize>(), json_value()).prop_map(|(k, v)| MetaEdit::Set(k, v)),
        any::<usize>().prop_map(MetaEdit::Remove),
        (
            any::<usize>(),
            0usize..2,
            prop_oneof![Just(u64::MAX), Just(0u64), any::<u64>(), 0u64..3000]
        )
            .prop_map(|(i, j, v)| MetaEdit::Example(i, j, v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Mutated metadata and tokens: `TokenDataset::open` and decoding return clean errors or
    /// succeed; nothing panics.
    #[test]
    fn fuzz_dataset_opener(
        which in 0usize..2,
        edits in prop::collection::vec(meta_edit(), 0..3),
        token_flips in prop::collection::vec((any::<usize>(), 0u8..8), 0..3),
        truncate in prop::option::of(any::<usize>()),
        raw_meta in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
    ) {
        let (_, dirs) = datasets();
        let src = &dirs[which];
        let dir = tempfile::tempdir().unwrap();
        let ds = dir.path().join("ds");
        copy_dataset(src, &ds);
        let meta_path = ds.join(terse::tokenize::METADATA_FILE);
        let tok_path = ds.join(terse::tokenize::TOKENS_FILE);
        let mut meta: serde_json::Value =
            serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
        for e in &edits {
            let obj = meta.as_object_mut().unwrap();
            let keys: Vec<String> = obj.keys().cloned().collect();
            match e {
                MetaEdit::Set(k, v) => {
                    obj.insert(keys[k % keys.len()].clone(), v.clone());
                }
                MetaEdit::Remove(k) => {
                    obj.remove(&keys[k % keys.len()]);
                }
                MetaEdit::Example(i, j, v) => {
                    if let Some(ex) = obj.get_mut("examples").and_then(|x| x.as_array_mut()) {
                        if !ex.is_empty() {
                            let n = ex.len();
                            if let Some(row) = ex[i % n].as_array_mut() {
                                if *j < row.len() {
                                    row[*j] = serde_json::json!(v);
                                }
                            }
                        }
                    }
                }
            }
        }
        match &raw_meta {
            Some(raw) => fs::write(&meta_path, raw).unwrap(),
            None => fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap(),
        }
        let mut tokens = fs::read(&tok_path).unwrap();
        for &(at, bit) in &token_flips {
            if !tokens.is_empty() {
                let i = at % tokens.len();
                tokens[i] ^= 1 << bit;
            }
        }
        if let Some(t) = truncate {
            let n = t % (tokens.len() + 1);
            tokens.truncate(n);
        }
        fs::write(&tok_path, &tokens).unwrap();
        if let Ok(d) = terse::tokenize::TokenDataset::open(&ds) {
            let _ = d.tokens().count();
            let _ = d.example(0);
            let _ = terse::tokenize::decode_dataset_with_m1(&ds, Some(tiny_m1()));
        }
    }
}
