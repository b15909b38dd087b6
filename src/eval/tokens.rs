//! Scoring M2 the paper's way (§3.8, App. D.4): bits per byte over the exact bytes of whole
//! chunks, inference FLOPs per byte, and the trivial models of its Table 3 (uniform and unigram
//! over the same tokens) beside it.

use super::score_rows;
use crate::backend::Backend;
use crate::dist::Group;
use crate::m1::{Int8Model, Int8State};
use crate::model::ModelConfig;
use crate::tokenize::TokenSource;
use crate::tokenize::{ChunkSplit, TokenDataset, TokenEvalSet, M2_START};
use anyhow::{ensure, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

/// A model's loss over tokens that cover a known number of source bytes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TokenScore {
    /// Sum of the per-token negative log-likelihood, nats.
    pub nll_nats: f64,
    pub tokens: u64,
    pub bytes: u64,
    /// `nll_nats / tokens / ln 2`.
    pub bits_per_token: f64,
    /// `(tokens / bytes) × mean NLL / ln 2` = `nll_nats / bytes / ln 2` (the paper's §3.8).
    pub bits_per_byte: f64,
}

impl TokenScore {
    pub fn new(nll_nats: f64, tokens: u64, bytes: u64) -> Self {
        let ln2 = std::f64::consts::LN_2;
        TokenScore {
            nll_nats,
            tokens,
            bytes,
            bits_per_token: if tokens > 0 {
                nll_nats / tokens as f64 / ln2
            } else {
                0.0
            },
            bits_per_byte: nll_nats / bytes.max(1) as f64 / ln2,
        }
    }
}

/// Scores every token of `set`: full rows `batch` at a time, each shorter row alone; shared by
/// `group` as [`score_rows`](super::score_rows) is.
pub fn score_tokens(
    set: &TokenEvalSet,
    backend: &mut dyn Backend,
    batch: usize,
    group: Option<&dyn Group>,
) -> Result<TokenScore> {
    ensure!(batch > 0, "batch must be positive");
    ensure!(set.bytes > 0, "nothing to score: the held-out set is empty");
    let rows: Vec<&[u16]> = set.rows.iter().map(|r| r.as_slice()).collect();
    let (nll, scored) = score_rows(backend, &rows, set.seq, M2_START, batch, group)?;
    debug_assert_eq!(scored, set.tokens);
    Ok(TokenScore::new(nll, scored, set.bytes))
}

/// Scores every token of `set` as [`score_tokens`] does (each row from a fresh context after the
/// start token), with M2 quantised ([`Int8Model`], int8 or 4-bit weights: what generation
/// runs), so its cost in bits/byte can be set beside the float model's. Rows run in parallel; their sums are added
/// in order.
pub fn score_tokens_quantised(set: &TokenEvalSet, m2: &Int8Model) -> Result<TokenScore> {
    ensure!(set.bytes > 0, "nothing to score: the held-out set is empty");
    let vocab = m2.config().vocab;
    let per_row: Vec<f64> = set
        .rows
        .par_iter()
        .filter(|row| !row.is_empty())
        .map(|row| {
            let inputs: Vec<u32> = std::iter::once(M2_START)
                .chain(row[..row.len() - 1].iter().map(|&t| t as u32))
                .collect();
            let x = m2.extend(&mut Int8State::default(), &inputs);
            let mut logits = vec![0f32; row.len() * vocab];
            m2.next_token_logits(&x, &mut logits);
            logits
                .chunks_exact(vocab)
                .zip(row)
                .map(|(l, &t)| nll_nats(l, t as usize))
                .sum()
        })
        .collect();
    Ok(TokenScore::new(per_row.iter().sum(), set.tokens, set.bytes))
}

/// `-ln softmax(logits)[target]`, in f64.
fn nll_nats(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}

/// Everything `terse eval` reports for an M2.
#[derive(Clone, Debug, Serialize)]
pub struct M2Report {
    pub method: String,
    pub token_bits: u32,
    pub vocab: u32,
    pub chunks: usize,
    pub tokens: u64,
    pub bytes: u64,
    pub tokens_per_byte: f64,
    /// Bytes per M2 step (per token).
    pub bytes_per_token: f64,
    pub bits_per_token: f64,
    pub bits_per_byte: f64,
    /// A model that gives every token `1 / vocab`.
    pub uniform_bits_per_byte: f64,
    /// A model that gives every token its frequency in `unigram_source` (add-½ smoothing).
    pub unigram_bits_per_byte: f64,
    pub unigram_source: String,
    pub m2_non_embedding_params: usize,
    /// Non-embedding parameters of the M1 the method runs, if any.
    pub m1_non_embedding_params: Option<usize>,
    pub flops_per_byte: f64,
}

/// Inference FLOPs per byte: `2 × N₂ × tokens/byte` for M2, plus `2 × N₁` (one M1 step per byte)
/// for methods that run M1; `N` counts non-embedding parameters (the paper's §3.8).
pub fn flops_per_byte(m2_params: f64, bytes_per_token: f64, m1_params: Option<f64>) -> f64 {
    2.0 * m2_params / bytes_per_token + m1_params.map_or(0.0, |p| 2.0 * p)
}

/// The M1 configuration a token source's method ran (from its parameters), if it ran one.
pub fn m1_config(src: &TokenSource) -> Result<Option<ModelConfig>> {
    if src.m1_fingerprint.is_none() {
        return Ok(None);
    }
    let cfg = src
        .method
        .m1_config()
        .context("the method ran M1 but its parameters do not record M1's configuration")?;
    Ok(Some(cfg.clone()))
}

/// Unigram counts of the tokens of `ds`'s `split` chunks.
pub fn token_counts(ds: &TokenDataset, split: ChunkSplit) -> Vec<u64> {
    let mut counts = vec![0u64; ds.metadata().vocab as usize];
    if split == ChunkSplit::All {
        ds.tokens().for_each(|t| counts[t as usize] += 1);
        return counts;
    }
    for c in split.chunks(ds) {
        let (toks, _) = ds.example(c).expect("index from the split");
        for t in ds.tokens_u16(toks) {
            counts[t as usize] += 1;
        }
    }
    counts
}

/// Bits the unigram model with `counts` (add-½ smoothing) spends on `set`'s tokens.
fn unigram_bits(counts: &[u64], set: &TokenEvalSet) -> f64 {
    let total = counts.iter().sum::<u64>() as f64 + 0.5 * counts.len() as f64;
    set.rows
        .iter()
        .flatten()
        .map(|&t| -((counts[t as usize] as f64 + 0.5) / total).log2())
        .sum()
}

/// Scores `m2` (its configuration `cfg`, trained on `src`'s tokens with rows of `seq` tokens) on
/// the `split` chunks of `ds`. `unigram` gives the counts of the unigram model and their source's
/// name (`None`: counted on `ds` itself).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_m2(
    m2: &mut dyn Backend,
    cfg: &ModelConfig,
    src: &TokenSource,
    ds: &TokenDataset,
    split: ChunkSplit,
    seq: usize,
    batch: usize,
    unigram: Option<(Vec<u64>, String)>,
) -> Result<M2Report> {
    let set = TokenEvalSet::new(ds, split, seq, None);
    let score = score_tokens(&set, m2, batch, None)?;
    let (counts, unigram_source) = unigram.unwrap_or_else(|| {
        (
            token_counts(ds, ChunkSplit::All),
            ds.dir().display().to_string(),
        )
    });
    let bytes = set.bytes as f64;
    let tokens_per_byte = set.tokens as f64 / bytes;
    let m1 = m1_config(src)?.map(|c| c.non_embedding_params());
    let bytes_per_token = if set.tokens > 0 {
        bytes / set.tokens as f64
    } else {
        f64::INFINITY
    };
    let m2_params = cfg.non_embedding_params();
    Ok(M2Report {
        method: src.method.to_string(),
        token_bits: src.token_bits,
        vocab: src.vocab,
        chunks: set.chunks,
        tokens: set.tokens,
        bytes: set.bytes,
        tokens_per_byte,
        bytes_per_token,
        bits_per_token: score.bits_per_token,
        bits_per_byte: score.bits_per_byte,
        uniform_bits_per_byte: tokens_per_byte * (src.vocab as f64).log2(),
        unigram_bits_per_byte: unigram_bits(&counts, &set) / bytes,
        unigram_source,
        m2_non_embedding_params: m2_params,
        m1_non_embedding_params: m1,
        flops_per_byte: flops_per_byte(m2_params as f64, bytes_per_token, m1.map(|p| p as f64)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log-softmax is taken stably: huge logits give the same loss as small ones shifted.
    #[test]
    fn nll_of_logits() {
        let l = [0f32, (3f32).ln()];
        assert!((nll_nats(&l, 1) - (4.0f64 / 3.0).ln()).abs() < 1e-6);
        assert!((nll_nats(&[1000.0, 1000.0 + 3f32.ln()], 0) - 4f64.ln()).abs() < 1e-3);
    }

    #[test]
    fn bits_per_byte_by_hand() {
        // 4 tokens covering 10 bytes, each token given probability 1/4: 2 bits per token, so
        // (4 / 10) × 2 = 0.8 bits per byte.
        let s = TokenScore::new(4.0 * 4f64.ln(), 4, 10);
        assert!((s.bits_per_token - 2.0).abs() < 1e-12);
        assert!((s.bits_per_byte - 0.8).abs() < 1e-12);
    }

    #[test]
    fn flops_per_byte_matches_the_paper() {
        // Table 15: 25m on EqualInfoAC[b=16, v=65k] (5.31 bytes/token, M1 3m): 15.42M.
        let f = flops_per_byte(25e6, 5.31, Some(3e6));
        assert!((f / 1e6 - 15.42).abs() < 0.005, "{f}");
        // 25m on Bytes (1 byte/token, no M1): 50M.
        assert_eq!(flops_per_byte(25e6, 1.0, None), 50e6);
        // 25m on AC[v=256]: 8 bits per token at 1.457 bits/byte = 5.49 bytes/token, plus M1: 15.11M.
        let a = flops_per_byte(25e6, 8.0 / 1.457, Some(3e6));
        assert!((a / 1e6 - 15.11).abs() < 0.005, "{a}");
        // 25m on GZip[v=256] (2.23 bytes/token, no M1: gzip's cost is ignored): 22.42M.
        let g = flops_per_byte(25e6, 2.23, None);
        assert!((g / 1e6 - 22.42).abs() < 0.005, "{g}");
    }
}
