//! The M1 pack: an [`Int8M1`] stored as contract 3 computes with it (int8 matrices with their
//! norm gains folded in, per-row power-of-two exponents, the f32 token embedding), so a coder
//! needs no float checkpoint and no quantising, and a build can carry its M1 in its binary
//! (`include_bytes!`). docs/file-formats.md, "M1 pack", gives the layout.
//!
//! The float weights are gone, so the pack records the fingerprint they gave ([`Int8M1::
//! fingerprint`]) and the loaded model reports exactly that: data coded with the checkpoint
//! decodes with its pack, and the reverse. Two CRC-32s guard it: one of the data section, one of
//! the metadata, so no flipped bit yields other weights, another configuration or another
//! fingerprint.

use super::quantise::QMatrix;
use super::weights::{WeightBits, Weights};
use super::{check_shape, Int8M1, Int8Model, QLayer};
use crate::checkpoint::check_config;
use crate::checkpoint::safetensors::{read_metadata, write_whole, Dtype, Entry, InMemory};
use crate::fsio::{write_output_with, Existing};
use crate::m1::{check_byte_level, CONTRACT_VERSION};
use crate::model::ModelConfig;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

/// The `format` an M1 pack's metadata names; [`Int8M1::load`] tells packs from checkpoints by it.
pub const PACK_FORMAT: &str = "terse-m1-int8";

/// The layout version this build writes and reads.
const PACK_VERSION: &str = "1";

/// The metadata key of the metadata's own CRC-32 (of the compact JSON of every other entry).
const METADATA_CRC: &str = "metadata_crc32";

/// What errors call a pack read from memory.
const IN_MEMORY: &str = "the M1 pack in memory";

/// Every quantised matrix of `cfg`'s model, in model order: the stem of its tensor names,
/// outputs and inputs.
fn matrices(cfg: &ModelConfig) -> Vec<(String, usize, usize)> {
    let (d, ff) = (cfg.d_model, cfg.d_ff);
    let mut out = Vec::with_capacity(4 * cfg.n_layers + 1);
    for l in 0..cfg.n_layers {
        for (part, n, inp) in [
            ("attn.qkv", 3 * d, d),
            ("attn.out", d, d),
            ("mlp.up", ff, d),
            ("mlp.down", d, ff),
        ] {
            out.push((format!("layers.{l}.{part}"), n, inp));
        }
    }
    out.push(("lm_head".into(), cfg.vocab, d));
    out
}

/// Every tensor of a pack of `cfg`, in data order: the embedding and the exponents (4-byte
/// values) first, then the int8 matrices, so each tensor starts aligned to its element size.
fn layout(cfg: &ModelConfig) -> Vec<Entry> {
    let ms = matrices(cfg);
    let entry = |name: String, dtype, shape| Entry { name, dtype, shape };
    let mut out = vec![entry(
        "tok_emb.weight".into(),
        Dtype::F32,
        vec![cfg.vocab, cfg.d_model],
    )];
    out.extend(
        ms.iter()
            .map(|(stem, n, _)| entry(format!("{stem}.exponent"), Dtype::I32, vec![*n])),
    );
    out.extend(
        ms.iter()
            .map(|(stem, n, inp)| entry(format!("{stem}.weight"), Dtype::I8, vec![*n, *inp])),
    );
    out
}

/// CRC-32 of `bytes` as the metadata records it: 8 lowercase hex digits.
fn crc_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// The CRC-32 of the metadata without its own entry (compact JSON, keys sorted).
fn metadata_crc(meta: &BTreeMap<String, String>) -> String {
    let mut rest = meta.clone();
    rest.remove(METADATA_CRC);
    crc_hex(
        serde_json::to_string(&rest)
            .expect("a map of strings")
            .as_bytes(),
    )
}

impl Int8M1 {
    /// Writes this M1 as an M1 pack to `w` and returns the bytes written. The pack loads
    /// ([`from_packed`](Self::from_packed), [`load`](Self::load)) as a model with the same
    /// probabilities, bit for bit, and the same fingerprint.
    pub fn pack(&self, mut w: impl Write) -> Result<u64> {
        let bytes = self.packed_bytes()?;
        w.write_all(&bytes).context("cannot write the M1 pack")?;
        Ok(bytes.len() as u64)
    }

    /// Writes this M1 as an M1 pack to `path` atomically (`crate::fsio`: a failed write leaves
    /// the old file or none); an existing file there is replaced only when `existing` says so.
    /// Returns the bytes written.
    pub fn save_packed(&self, path: &Path, existing: Existing) -> Result<u64> {
        let bytes = self.packed_bytes()?;
        write_output_with(path, existing, |f| f.write_all(&bytes))?;
        Ok(bytes.len() as u64)
    }

    /// The M1 an M1 pack holds (`bytes`: the whole file, as `include_bytes!` gives it), named by
    /// the fingerprint it records. Refuses, saying what is wrong: a truncated or malformed file;
    /// another format, version or numeric contract; data or metadata whose CRC-32 differs from
    /// the recorded one; a configuration that cannot serve as M1 (not byte-level, outside
    /// contract 3's bounds); a missing, extra or misshapen tensor; a non-finite embedding value;
    /// and int8 values or exponents contract 3's quantiser cannot produce.
    pub fn from_packed(bytes: &[u8]) -> Result<Self> {
        read(Path::new(IN_MEMORY), bytes)
    }

    /// The whole pack file.
    fn packed_bytes(&self) -> Result<Vec<u8>> {
        let lm = &self.lm;
        let mut ms: Vec<&QMatrix> = Vec::with_capacity(4 * lm.layers.len() + 1);
        for l in 0..lm.layers.len() {
            ms.extend(lm.layer_matrices(l).context("M1's matrices are int8")?);
        }
        ms.push(lm.head().context("M1's head is int8")?);
        let mut data: Vec<u8> = lm.tok_emb.iter().flat_map(|x| x.to_le_bytes()).collect();
        for m in &ms {
            data.extend(m.exponents().iter().flat_map(|e| e.to_le_bytes()));
        }
        for m in &ms {
            data.extend(m.rows().iter().map(|&v| v as u8));
        }
        let mut meta = BTreeMap::from([
            ("format".to_string(), PACK_FORMAT.to_string()),
            ("version".into(), PACK_VERSION.into()),
            ("contract".into(), CONTRACT_VERSION.to_string()),
            ("config".into(), serde_json::to_string(&lm.cfg)?),
            ("fingerprint".into(), format!("{:016x}", self.fingerprint)),
            ("data_crc32".into(), crc_hex(&data)),
        ]);
        meta.insert(METADATA_CRC.into(), metadata_crc(&meta));
        let mut file = Vec::with_capacity(data.len() + 4096);
        write_whole(&mut file, &layout(&lm.cfg), &data, &meta)?;
        Ok(file)
    }
}

/// Whether `path` is a regular file whose safetensors header names [`PACK_FORMAT`] (reading the
/// header only). Anything else, unreadable files included, is for the checkpoint loader to
/// judge.
pub(super) fn is_pack(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let Ok(file) = File::open(path) else {
        return false;
    };
    read_metadata(path, &mut BufReader::new(file), meta.len())
        .is_ok_and(|m| m.get("format").is_some_and(|f| f == PACK_FORMAT))
}

/// The M1 pack at `path` ([`Int8M1::from_packed`]'s checks, errors naming `path`).
pub(super) fn read_file(path: &Path) -> Result<Int8M1> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    read(path, &bytes)
}

/// The M1 pack `bytes`, read from `path` (named in errors).
fn read(path: &Path, bytes: &[u8]) -> Result<Int8M1> {
    let p = path.display();
    let file = InMemory::parse(path, bytes)?;
    let meta = file.metadata();
    let field = |key: &str| {
        meta.get(key)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("{p} is not a valid M1 pack: its metadata has no '{key}'"))
    };
    let format = meta.get("format").map_or("none", String::as_str);
    ensure!(
        format == PACK_FORMAT,
        "{p} is not an M1 pack: its format is '{format}', not '{PACK_FORMAT}'"
    );
    let version = field("version")?;
    ensure!(
        version == PACK_VERSION,
        "{p} is an M1 pack of version {version}; this build reads version {PACK_VERSION}"
    );
    let (recorded, found) = (field(METADATA_CRC)?, metadata_crc(meta));
    ensure!(
        recorded == found,
        "{p} is damaged: its metadata does not match its CRC-32 (recorded {recorded}, found {found})"
    );
    let (recorded, found) = (field("data_crc32")?, crc_hex(file.data()));
    ensure!(
        recorded == found,
        "{p} is damaged: its tensor data does not match its CRC-32 (recorded {recorded}, found {found})"
    );
    let contract = field("contract")?;
    ensure!(
        contract == CONTRACT_VERSION.to_string(),
        "{p} holds an M1 quantised under numeric contract {contract}; this build codes under contract {CONTRACT_VERSION}: pack it again from its float checkpoint with this build"
    );
    let cfg: ModelConfig = serde_json::from_str(field("config")?)
        .map_err(|e| anyhow!("{p}: the config in its metadata is not valid: {e}"))?;
    check_config(&cfg)
        .and_then(|()| check_byte_level(&cfg))
        .and_then(|()| check_shape(&cfg).map(drop))
        .with_context(|| format!("{p} cannot serve as M1"))?;
    let fingerprint = field("fingerprint")?;
    let fingerprint = u64::from_str_radix(fingerprint, 16)
        .ok()
        .filter(|_| fingerprint.len() == 16 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            anyhow!("{p} is not a valid M1 pack: fingerprint '{fingerprint}' is not 16 hex digits")
        })?;

    let tensors: HashMap<&str, _> = file.tensors().map(|t| (t.name, t)).collect();
    let want = layout(&cfg);
    if let Some(extra) = tensors
        .keys()
        .find(|name| !want.iter().any(|w| w.name == **name))
    {
        bail!(
            "{p} has unexpected tensor {extra}, not in the M1 pack of config '{}'",
            cfg.preset
        );
    }
    let bytes_of = |name: &str| -> Result<&[u8]> {
        let w = want
            .iter()
            .find(|w| w.name == name)
            .expect("a name of the layout");
        let t = tensors.get(name).ok_or_else(|| {
            anyhow!(
                "{p} has no tensor {name} ({} {:?} expected)",
                w.dtype.name(),
                w.shape
            )
        })?;
        ensure!(
            t.dtype == w.dtype.name(),
            "{p}: tensor {name} has dtype {}, expected {}",
            t.dtype,
            w.dtype.name()
        );
        ensure!(
            t.shape
                .iter()
                .map(|&s| s as usize)
                .eq(w.shape.iter().copied()),
            "{p}: tensor {name} has shape {:?}, config expects {:?}",
            t.shape,
            w.shape
        );
        Ok(t.bytes)
    };

    let tok_emb: Vec<f32> = bytes_of("tok_emb.weight")?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    if let Some(x) = tok_emb.iter().find(|x| !x.is_finite()) {
        bail!("{p} holds a non-finite value ({x}) in tensor tok_emb.weight");
    }
    let mut ms = matrices(&cfg)
        .into_iter()
        .map(|(stem, n, inp)| {
            let exps = bytes_of(&format!("{stem}.exponent"))?
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            let w: Vec<i8> = bytes_of(&format!("{stem}.weight"))?
                .iter()
                .map(|&b| b as i8)
                .collect();
            let m = QMatrix::from_parts(&w, exps, n, inp)
                .with_context(|| format!("{p}: tensors {stem}.weight and {stem}.exponent"))?;
            Ok(Weights::Int8(m))
        })
        .collect::<Result<Vec<_>>>()?;
    let head = ms.pop().expect("the head is the last matrix");
    let mut ms = ms.into_iter();
    let layers = (0..cfg.n_layers)
        .map(|_| {
            let mut next = || ms.next().expect("four matrices per layer");
            QLayer {
                qkv: next(),
                out: next(),
                up: next(),
                down: next(),
            }
        })
        .collect();
    Ok(Int8M1 {
        lm: Int8Model::assemble(&cfg, WeightBits::Int8, tok_emb, layers, head)?,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ParamArena;

    /// A tiny M1 with sharp, varied distributions.
    fn m1() -> (ModelConfig, ParamArena, Int8M1) {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(48);
        let mut p = ParamArena::init(&cfg, 11);
        p.data.iter_mut().for_each(|x| *x *= 8.0);
        let m = Int8M1::new(&cfg, &p).unwrap();
        (cfg, p, m)
    }

    fn packed(m: &Int8M1) -> Vec<u8> {
        let mut bytes = Vec::new();
        let n = m.pack(&mut bytes).unwrap();
        assert_eq!(n, bytes.len() as u64);
        bytes
    }

    const TEXT: &[u8] = b"An M1 pack codes exactly as the checkpoint it was quantised from, \
        across the sliding window of forty-eight positions and past it.";

    /// Every probability of a window (all at once and byte by byte), as bits.
    fn prob_bits(m: &Int8M1) -> Vec<u32> {
        let mut st = super::super::Int8State::default();
        let mut stepped = vec![m.start(&mut st)];
        stepped.extend(TEXT.iter().map(|&b| m.push(&mut st, b)));
        m.window_probs(TEXT)
            .iter()
            .chain(&stepped)
            .flat_map(|p| p.iter().map(|x| x.to_bits()))
            .collect()
    }

    fn refusal(bytes: &[u8]) -> String {
        format!("{:#}", Int8M1::from_packed(bytes).err().expect("refused"))
    }

    /// The pack's tensors and metadata, edited, written again with both CRC-32s made to match
    /// (so each check below meets its own case, not a checksum's).
    fn rewrite(
        bytes: &[u8],
        edit: impl FnOnce(&mut BTreeMap<String, String>, &mut Vec<(Entry, Vec<u8>)>),
    ) -> Vec<u8> {
        let file = InMemory::parse(Path::new("test"), bytes).unwrap();
        let mut meta = file.metadata().clone();
        let mut ts: Vec<(Entry, Vec<u8>)> = file
            .tensors()
            .map(|t| {
                let dtype = match t.dtype {
                    "F32" => Dtype::F32,
                    "I32" => Dtype::I32,
                    "I8" => Dtype::I8,
                    other => panic!("dtype {other}"),
                };
                let shape = t.shape.iter().map(|&s| s as usize).collect();
                let name = t.name.to_string();
                (Entry { name, dtype, shape }, t.bytes.to_vec())
            })
            .collect();
        edit(&mut meta, &mut ts);
        let data: Vec<u8> = ts.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        meta.insert("data_crc32".into(), crc_hex(&data));
        meta.insert(METADATA_CRC.into(), metadata_crc(&meta));
        let entries: Vec<Entry> = ts.into_iter().map(|(e, _)| e).collect();
        let mut out = Vec::new();
        write_whole(&mut out, &entries, &data, &meta).unwrap();
        out
    }

    fn tensor<'a>(ts: &'a mut [(Entry, Vec<u8>)], name: &str) -> &'a mut (Entry, Vec<u8>) {
        ts.iter_mut().find(|(e, _)| e.name == name).unwrap()
    }

    /// Packing then loading gives the quantised M1 itself: the same probabilities bit for bit
    /// (whole windows and byte by byte), the same fingerprint and configuration, and packing it
    /// again gives the same bytes.
    #[test]
    fn a_packed_m1_is_the_quantised_m1_bit_for_bit() {
        let (cfg, _, m) = m1();
        let bytes = packed(&m);
        let back = Int8M1::from_packed(&bytes).unwrap();
        assert_eq!(back.fingerprint(), m.fingerprint());
        assert_eq!(back.config(), &cfg);
        assert_eq!(prob_bits(&back), prob_bits(&m));
        assert_eq!(packed(&back), bytes);
    }

    /// `Int8M1::load` takes a pack under any name, and a checkpoint directory as before, and
    /// both give the same M1; errors about a pack file name its path.
    #[test]
    fn load_tells_packs_from_checkpoints_by_their_header() {
        let (cfg, p, m) = m1();
        let tmp = tempfile::tempdir().unwrap();
        crate::checkpoint::save_checkpoint(&tmp.path().join("ck"), &cfg, &p, None).unwrap();
        let want = (m.fingerprint(), prob_bits(&m));
        for name in ["m1.pack", "model.safetensors", "m1.bin"] {
            let path = tmp.path().join(name);
            assert_eq!(
                m.save_packed(&path, Existing::Refuse).unwrap(),
                std::fs::metadata(&path).unwrap().len()
            );
            let got = Int8M1::load(&path).unwrap();
            assert_eq!((got.fingerprint(), prob_bits(&got)), want, "{name}");
        }
        let ck = Int8M1::load(&tmp.path().join("ck")).unwrap();
        assert_eq!((ck.fingerprint(), prob_bits(&ck)), want);
        // What needs float weights refuses a pack by its format.
        let e = format!(
            "{:#}",
            crate::checkpoint::load_model(&tmp.path().join("m1.bin")).unwrap_err()
        );
        assert!(
            e.contains("is not a checkpoint's float tensors: its format is 'terse-m1-int8'"),
            "{e}"
        );

        let path = tmp.path().join("m1.pack");
        let e = format!("{:#}", m.save_packed(&path, Existing::Refuse).unwrap_err());
        assert!(e.contains("--force"), "{e}");
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", Int8M1::load(&path).err().unwrap());
        assert!(
            e.contains(&path.display().to_string()) && e.contains("CRC-32"),
            "{e}"
        );
    }

    /// Any safetensors reader opens a pack: the reference crate sees every tensor with its
    /// dtype, shape and values, and the metadata.
    #[test]
    fn any_safetensors_reader_opens_a_pack() {
        let (cfg, _, m) = m1();
        let bytes = packed(&m);
        let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want = layout(&cfg);
        assert_eq!(st.len(), want.len());
        for w in &want {
            let t = st.tensor(&w.name).unwrap();
            assert_eq!(format!("{:?}", t.dtype()), w.dtype.name(), "{}", w.name);
            assert_eq!(t.shape(), w.shape, "{}", w.name);
        }
        let head = st.tensor("lm_head.weight").unwrap();
        let rows: Vec<i8> = head.data().iter().map(|&b| b as i8).collect();
        assert_eq!(rows, m.lm.head().unwrap().rows());
        let exps = st.tensor("layers.1.mlp.down.exponent").unwrap();
        let exps: Vec<i32> = exps
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(exps, m.lm.layer_matrices(1).unwrap()[3].exponents());
        let (_, meta) = ::safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["format"], PACK_FORMAT);
        assert_eq!(meta["fingerprint"], format!("{:016x}", m.fingerprint()));
    }

    /// Damage to the bytes is refused: a flipped data byte by the data's CRC-32, an edited
    /// metadata value by the metadata's, a cut anywhere as truncated; a checkpoint's weights
    /// file is not a pack.
    #[test]
    fn damaged_or_truncated_packs_are_refused() {
        let (cfg, p, m) = m1();
        let bytes = packed(&m);
        let mut flipped = bytes.clone();
        let at = bytes.len() - 1000;
        flipped[at] ^= 0x10;
        assert!(refusal(&flipped).contains("its tensor data does not match its CRC-32"));

        let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&bytes[8..header_len]).into_owned();
        assert!(header.contains("10000.0"), "{header}");
        let edited = header.replacen("10000.0", "10001.0", 1);
        let mut edited_bytes = bytes[..8].to_vec();
        edited_bytes.extend(edited.as_bytes());
        edited_bytes.extend(&bytes[header_len..]);
        assert!(refusal(&edited_bytes).contains("its metadata does not match its CRC-32"));

        for cut in [
            0,
            7,
            8,
            100,
            header_len - 1,
            header_len,
            header_len + 5,
            bytes.len() - 1,
        ] {
            let e = refusal(&bytes[..cut]);
            assert!(
                e.contains(IN_MEMORY) && e.contains("truncated"),
                "cut {cut}: {e}"
            );
        }

        let tmp = tempfile::tempdir().unwrap();
        crate::checkpoint::save_checkpoint(tmp.path(), &cfg, &p, None).unwrap();
        let weights = std::fs::read(tmp.path().join(crate::checkpoint::MODEL_FILE)).unwrap();
        assert!(refusal(&weights).contains("is not an M1 pack: its format is 'terse'"));
    }

    /// Each well-formed but wrong pack is refused saying what is wrong: metadata (format,
    /// version, contract, configuration, fingerprint) and tensors (missing, extra, dtype, shape,
    /// non-finite embedding, values and exponents the quantiser cannot produce).
    #[test]
    fn wrong_packs_are_refused_naming_the_problem() {
        let (_, _, m) = m1();
        let bytes = packed(&m);
        assert_eq!(
            rewrite(&bytes, |_, _| {}),
            bytes,
            "the rewriter is faithful"
        );
        let meta = |key: &'static str, value: &'static str| {
            move |m: &mut BTreeMap<String, String>, _: &mut Vec<(Entry, Vec<u8>)>| {
                m.insert(key.into(), value.into());
            }
        };
        let config = |edit: fn(&mut serde_json::Value)| {
            move |m: &mut BTreeMap<String, String>, _: &mut Vec<(Entry, Vec<u8>)>| {
                let mut c: serde_json::Value = serde_json::from_str(&m["config"]).unwrap();
                edit(&mut c);
                m.insert("config".into(), c.to_string());
            }
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (rewrite(&bytes, meta("format", "terse")), "is not an M1 pack: its format is 'terse'"),
            (rewrite(&bytes, meta("version", "2")), "an M1 pack of version 2; this build reads version 1"),
            (rewrite(&bytes, meta("contract", "2")), "numeric contract 2; this build codes under contract 3"),
            (rewrite(&bytes, meta("fingerprint", "12345")), "fingerprint '12345' is not 16 hex digits"),
            (rewrite(&bytes, |m, _| drop(m.remove("fingerprint"))), "its metadata has no 'fingerprint'"),
            (rewrite(&bytes, config(|c| c["vocab"] = 512.into())), "cannot serve as M1: M1 must be a byte-level model (vocab 256), this one has vocab 512"),
            (rewrite(&bytes, config(|c| c["context"] = 2000.into())), "cannot serve as M1: contract 3 attends over at most 1024 positions; this model's context is 2000"),
            (rewrite(&bytes, config(|c| drop(c.as_object_mut().unwrap().remove("context")))), "records no context"),
            (rewrite(&bytes, config(|c| c["n_heads"] = 3.into())), "cannot serve as M1: d_model 128 must equal n_heads 3"),
            (rewrite(&bytes, config(|c| c["d_model"] = (1u64 << 40).into())), "implausible sizes"),
            (rewrite(&bytes, config(|c| c["vocab"] = "many".into())), "the config in its metadata is not valid"),
            (rewrite(&bytes, |_, ts| ts.retain(|(e, _)| e.name != "lm_head.exponent")), "has no tensor lm_head.exponent (I32 [256] expected)"),
            (
                rewrite(&bytes, |_, ts| {
                    ts.push((Entry { name: "extra".into(), dtype: Dtype::I8, shape: vec![3] }, vec![0; 3]))
                }),
                "has unexpected tensor extra",
            ),
            (rewrite(&bytes, |_, ts| tensor(ts, "lm_head.exponent").0.dtype = Dtype::F32), "tensor lm_head.exponent has dtype F32, expected I32"),
            (rewrite(&bytes, |_, ts| tensor(ts, "lm_head.weight").0.shape = vec![128, 256]), "tensor lm_head.weight has shape [128, 256], config expects [256, 128]"),
            (
                rewrite(&bytes, |_, ts| tensor(ts, "tok_emb.weight").1[4..8].copy_from_slice(&f32::NAN.to_le_bytes())),
                "non-finite value (NaN) in tensor tok_emb.weight",
            ),
            (
                rewrite(&bytes, |_, ts| tensor(ts, "layers.0.attn.out.exponent").1[..4].copy_from_slice(&61i32.to_le_bytes())),
                "tensors layers.0.attn.out.weight and layers.0.attn.out.exponent: row 0 has scale exponent 61, outside contract 3's -60..=60",
            ),
            (
                // Row 2 stored at twice its scale, halved: the same weights, give or take a
                // rounding, but not as the quantiser stores them.
                rewrite(&bytes, |_, ts| {
                    let e = &mut tensor(ts, "layers.1.mlp.up.exponent").1;
                    let up = i32::from_le_bytes(e[8..12].try_into().unwrap()) + 1;
                    e[8..12].copy_from_slice(&up.to_le_bytes());
                    let w = &mut tensor(ts, "layers.1.mlp.up.weight").1;
                    w[2 * 128..3 * 128].iter_mut().for_each(|v| *v = (*v as i8 / 2) as u8);
                }),
                "tensors layers.1.mlp.up.weight and layers.1.mlp.up.exponent: row 2 has scale exponent",
            ),
            (rewrite(&bytes, |_, ts| tensor(ts, "lm_head.weight").1[5] = 0x80), "-128 is outside -127..=127"),
        ];
        for (bytes, want) in cases {
            let e = refusal(&bytes);
            assert!(e.contains(want), "expected '{want}' in: {e}");
        }
    }

    /// A flipped bit anywhere in a pack is refused or changes nothing: it never yields other
    /// probabilities or another fingerprint.
    #[test]
    fn no_flipped_bit_yields_another_m1() {
        let (_, _, m) = m1();
        let bytes = packed(&m);
        let want = (m.fingerprint(), prob_bits(&m));
        let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let mut rng = crate::rng::Rng::new(7);
        let mut refused = 0;
        for case in 0..300 {
            // Half the flips in the header, where the structure is parsed before any CRC-32.
            let span = if case % 2 == 0 {
                header_len
            } else {
                bytes.len() as u64
            };
            let mut b = bytes.clone();
            b[rng.below(span) as usize] ^= 1 << rng.below(8);
            match Int8M1::from_packed(&b) {
                Ok(got) => assert_eq!((got.fingerprint(), prob_bits(&got)), want),
                Err(_) => refused += 1,
            }
        }
        assert!(refused > 250, "{refused} of 300 refused");
    }
}
