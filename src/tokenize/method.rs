//! What a token dataset is: the method that made it, with the parameters it was made with, as
//! one typed description ([`MethodParams`]) and, with its token width, vocabulary, M1 and source,
//! a [`TokenSource`]. Tokenizing writes it into `metadata.json`, training stores it in the
//! checkpoint, and evaluation and generation rebuild the coder from it.
//!
//! On disk it is the pair `"method": "<name>", "params": {...}` (`docs/file-formats.md`); the
//! parameter structs list their fields in alphabetical order, the order in which the untyped
//! writer of earlier builds emitted them, so a dataset's `metadata.json` is unchanged.

use crate::coder::WindowRule;
use crate::model::ModelConfig;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A tokenization method, as chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Token = byte (16-bit: byte pairs).
    Bytes,
    /// zlib per chunk, default level, header kept.
    Gzip,
    /// Arithmetic coding with a static byte-unigram model.
    StaticAc,
    /// Arithmetic coding of each whole chunk under M1, context never reset (needs `--m1`).
    Ac,
    /// A 32k byte-level BPE trained on the corpus (or `--subword-train`); 16-bit tokens.
    Subword,
    /// Equal-Info windows of `--window-bits` under M1 (needs `--m1`; `--delay` for the paper's
    /// Delay rule).
    EqualInfo,
}

impl Method {
    /// The name stored in metadata and accepted on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::Bytes => "bytes",
            Method::Gzip => "gzip",
            Method::StaticAc => "static-ac",
            Method::Ac => "ac",
            Method::Subword => "subword",
            Method::EqualInfo => "equal-info",
        }
    }

    /// Whether the method codes with M1 (and so needs an [`super::M1Spec`]).
    pub fn needs_m1(self) -> bool {
        matches!(self, Method::Ac | Method::EqualInfo)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A method with the parameters a dataset was coded with: everything decoding needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "kebab-case")]
pub enum MethodParams {
    Bytes(BytesParams),
    Gzip(GzipParams),
    StaticAc(StaticAcParams),
    Ac(AcParams),
    Subword(SubwordParams),
    EqualInfo(EqualInfoParams),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BytesParams {
    pub chunk_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GzipParams {
    pub chunk_bytes: u64,
    /// Always `zlib` (header and trailer kept).
    pub container: String,
    pub level: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StaticAcParams {
    pub cdf_total_bits: u32,
    pub chunk_bytes: u64,
    /// The corpus's byte counts (informative: two corpora coded with one table differ here).
    pub counts: Vec<u64>,
    /// The quantised byte frequencies the coder used.
    pub freqs: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcParams {
    pub cdf_f_min: u32,
    pub cdf_total_bits: u32,
    pub chunk_bytes: u64,
    #[serde(serialize_with = "as_json_value")]
    pub m1_config: ModelConfig,
    /// Always "whole chunk, never reset".
    pub m1_context: String,
    pub m1_contract: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubwordParams {
    pub algorithm: String,
    pub chunk_bytes: u64,
    pub max_word_bytes: u64,
    pub pretokenizer: String,
    /// The trained tokenizer, in the tokenizers crate's own JSON.
    pub tokenizer: serde_json::Value,
    pub train_bytes: u64,
    pub train_source: String,
    pub vocab_size: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EqualInfoParams {
    pub cdf_f_min: u32,
    pub cdf_total_bits: u32,
    pub chunk_bytes: u64,
    #[serde(serialize_with = "as_json_value")]
    pub m1_config: ModelConfig,
    pub m1_contract: u32,
    pub window_bits: u32,
    /// Absent in datasets written before the Delay rule existed: the designated-code rule.
    #[serde(default, with = "rule_name")]
    pub window_rule: WindowRule,
}

/// Writes a value as its `serde_json::Value` form, as the untyped writer of earlier builds did
/// (object keys sorted, f32 fields widened to f64), so that `metadata.json` keeps its bytes.
fn as_json_value<T: Serialize, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    serde_json::to_value(v)
        .map_err(serde::ser::Error::custom)?
        .serialize(s)
}

/// [`WindowRule`] stored by its name.
mod rule_name {
    use crate::coder::WindowRule;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rule: &WindowRule, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(rule.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WindowRule, D::Error> {
        let name = String::deserialize(d)?;
        WindowRule::from_name(&name)
            .ok_or_else(|| D::Error::custom(format!("window_rule {name:?} is not known")))
    }
}

/// The method's name, as stored.
impl std::fmt::Display for MethodParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method().name())
    }
}

impl MethodParams {
    pub fn method(&self) -> Method {
        match self {
            MethodParams::Bytes(_) => Method::Bytes,
            MethodParams::Gzip(_) => Method::Gzip,
            MethodParams::StaticAc(_) => Method::StaticAc,
            MethodParams::Ac(_) => Method::Ac,
            MethodParams::Subword(_) => Method::Subword,
            MethodParams::EqualInfo(_) => Method::EqualInfo,
        }
    }

    /// The corpus chunk (example) size the dataset was cut into; the last may be shorter.
    pub fn chunk_bytes(&self) -> u64 {
        match self {
            MethodParams::Bytes(p) => p.chunk_bytes,
            MethodParams::Gzip(p) => p.chunk_bytes,
            MethodParams::StaticAc(p) => p.chunk_bytes,
            MethodParams::Ac(p) => p.chunk_bytes,
            MethodParams::Subword(p) => p.chunk_bytes,
            MethodParams::EqualInfo(p) => p.chunk_bytes,
        }
    }

    /// The configuration of the M1 the method coded with, if it ran one.
    pub fn m1_config(&self) -> Option<&ModelConfig> {
        match self {
            MethodParams::Ac(p) => Some(&p.m1_config),
            MethodParams::EqualInfo(p) => Some(&p.m1_config),
            _ => None,
        }
    }

    /// The numeric contract of the M1 the method coded with, if it ran one.
    pub fn m1_contract(&self) -> Option<u32> {
        match self {
            MethodParams::Ac(p) => Some(p.m1_contract),
            MethodParams::EqualInfo(p) => Some(p.m1_contract),
            _ => None,
        }
    }

    /// Whether a dataset with `other` was coded the same way. Static-ac's byte counts are corpus
    /// statistics, different between files coded with the same table; its frequencies must match.
    pub fn codes_like(&self, other: &MethodParams) -> bool {
        match (self, other) {
            (MethodParams::StaticAc(a), MethodParams::StaticAc(b)) => {
                a.cdf_total_bits == b.cdf_total_bits
                    && a.chunk_bytes == b.chunk_bytes
                    && a.freqs == b.freqs
            }
            _ => self == other,
        }
    }
}

/// A token dataset's identity: its metadata without the examples table. This is what a
/// checkpoint of M2 records, so that evaluation and generation code text as its tokens were.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenSource {
    #[serde(flatten)]
    pub method: MethodParams,
    pub token_bits: u32,
    pub vocab: u32,
    pub m1_fingerprint: Option<String>,
    pub source: String,
    pub bytes_covered: u64,
    pub tokens: u64,
}

impl TokenSource {
    /// The codec that decodes (and codes) tokens of this source; methods that ran M1 need the
    /// same M1, checked by fingerprint.
    pub fn codec(&self, m1: Option<std::sync::Arc<crate::m1::Int8M1>>) -> Result<super::Codec> {
        super::Codec::new(&self.method, self.m1_fingerprint.as_deref(), m1)
    }

    /// Tokens per source byte over the whole dataset.
    pub fn tokens_per_byte(&self) -> f64 {
        self.tokens as f64 / self.bytes_covered.max(1) as f64
    }

    /// Refuses a dataset at `dir` (metadata `m`) that was not tokenized like this source: another
    /// method, token width, vocabulary, M1 or coding parameters; the message names the first
    /// difference (`chunk_bytes 4096 vs 2048`).
    pub fn check_compatible(&self, m: &super::Metadata, dir: &Path) -> Result<()> {
        let same = self.token_bits == m.token_bits
            && self.vocab == m.vocab
            && self.m1_fingerprint == m.m1_fingerprint
            && self.method.codes_like(&m.method);
        if same {
            return Ok(());
        }
        bail!(
            "token dataset {} was not tokenized like the model's training data: {}",
            dir.display(),
            m.first_difference(self)
        )
    }

    /// The first thing in which this source (a dataset's) differs from `training`'s, with both
    /// values: `chunk_bytes 4096 in the dataset, 2048 in training`; a long value (a tokenizer, an
    /// M1 configuration, a frequency table) is named without being printed.
    fn first_difference(&self, training: &TokenSource) -> String {
        let both = |name: &str, mine: String, theirs: String| {
            format!("{name} {mine} in the dataset, {theirs} in training")
        };
        let fp = |f: &Option<String>| f.clone().unwrap_or_else(|| "none".into());
        if self.method.method() != training.method.method() {
            return both(
                "method",
                self.method.method().to_string(),
                training.method.method().to_string(),
            );
        }
        if self.token_bits != training.token_bits {
            return both(
                "token_bits",
                self.token_bits.to_string(),
                training.token_bits.to_string(),
            );
        }
        if self.vocab != training.vocab {
            return both("vocab", self.vocab.to_string(), training.vocab.to_string());
        }
        if self.m1_fingerprint != training.m1_fingerprint {
            return both(
                "M1 fingerprint",
                fp(&self.m1_fingerprint),
                fp(&training.m1_fingerprint),
            );
        }
        let params = |p: &MethodParams| match serde_json::to_value(p) {
            Ok(serde_json::Value::Object(mut o)) => match o.remove("params") {
                Some(serde_json::Value::Object(params)) => params,
                _ => serde_json::Map::new(),
            },
            _ => serde_json::Map::new(),
        };
        let (mine, theirs) = (params(&self.method), params(&training.method));
        let mut keys: Vec<&String> = mine.keys().chain(theirs.keys()).collect();
        keys.sort();
        keys.dedup();
        // Static-ac's byte counts are corpus statistics, not coding parameters.
        let counts_only = matches!(self.method, MethodParams::StaticAc(_));
        let show = |v: Option<&serde_json::Value>| v.map_or("none".into(), |v| v.to_string());
        for k in keys {
            if counts_only && k == "counts" {
                continue;
            }
            let (a, b) = (mine.get(k), theirs.get(k));
            if a != b {
                let (a, b) = (show(a), show(b));
                if a.len() > 40 || b.len() > 40 {
                    return format!("the {k} field differs from the training data's");
                }
                return both(k, a, b);
            }
        }
        "other parameters differ".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::dataset::{Metadata, FORMAT, VERSION};

    fn source(method: MethodParams) -> TokenSource {
        TokenSource {
            method,
            token_bits: 8,
            vocab: 256,
            m1_fingerprint: None,
            source: "corpus.txt".into(),
            bytes_covered: 100,
            tokens: 100,
        }
    }

    fn metadata(identity: TokenSource) -> Metadata {
        Metadata {
            format: FORMAT.into(),
            version: VERSION,
            identity,
            examples: vec![],
            shard: None,
            example_crc32: None,
            metadata_crc32: None,
        }
    }

    fn refusal(trained: &TokenSource, data: TokenSource) -> String {
        let e = trained.check_compatible(&metadata(data), Path::new("ds"));
        format!("{:#}", e.unwrap_err())
    }

    /// Datasets that differ in one parameter are refused with that parameter and both values,
    /// not a list of what is the same.
    #[test]
    fn incompatible_datasets_name_the_differing_parameter() {
        let bytes = |chunk_bytes| source(MethodParams::Bytes(BytesParams { chunk_bytes }));
        let trained = bytes(2048);
        trained
            .check_compatible(&metadata(bytes(2048)), Path::new("ds"))
            .unwrap();
        let e = refusal(&trained, bytes(4096));
        assert!(
            e == "token dataset ds was not tokenized like the model's training data: chunk_bytes 4096 in the dataset, 2048 in training",
            "{e}"
        );
        let e = refusal(
            &trained,
            TokenSource {
                token_bits: 16,
                vocab: 65536,
                ..bytes(2048)
            },
        );
        assert!(
            e.ends_with(": token_bits 16 in the dataset, 8 in training"),
            "{e}"
        );
        let gzip = source(MethodParams::Gzip(GzipParams {
            chunk_bytes: 2048,
            container: "zlib".into(),
            level: 6,
        }));
        let e = refusal(&trained, gzip.clone());
        assert!(
            e.ends_with(": method gzip in the dataset, bytes in training"),
            "{e}"
        );
        let e = refusal(
            &gzip,
            source(MethodParams::Gzip(GzipParams {
                level: 9,
                ..match &gzip.method {
                    MethodParams::Gzip(p) => p.clone(),
                    _ => unreachable!(),
                }
            })),
        );
        assert!(
            e.ends_with(": level 9 in the dataset, 6 in training"),
            "{e}"
        );
        // Static-ac: other corpus counts are fine, another frequency table is named, unprinted.
        let sac = |counts: u64, f: u32| {
            source(MethodParams::StaticAc(StaticAcParams {
                cdf_total_bits: 16,
                chunk_bytes: 2048,
                counts: vec![counts; 256],
                freqs: vec![f; 256],
            }))
        };
        sac(1, 1)
            .check_compatible(&metadata(sac(2, 1)), Path::new("ds"))
            .unwrap();
        let e = refusal(&sac(1, 1), sac(1, 2));
        assert!(
            e.ends_with(": the freqs field differs from the training data's"),
            "{e}"
        );
    }
}
