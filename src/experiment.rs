//! The paper's pipeline as one library call: train (or reuse) M1, tokenize a corpus with every
//! method, train one M2 per method at the same number of steps and tokens, score each on the
//! same held-out text, and write the comparison (`results.json`, `results.md`, `results.svg`).
//! `terse demo` runs the same steps for two methods; `terse experiment` for a whole grid.
//!
//! Held-out text: the corpus is cut into chunks of `chunk_bytes` (10,240, the paper's example
//! length); every [`HELDOUT_EVERY`]-th chunk is held out. M1 trains on the other chunks only,
//! and every M2 is scored on exactly the held-out chunks, so no model is scored on text it or its
//! M1 saw.

use crate::backend::{create_backend, Device};
use crate::checkpoint::load_model;
use crate::data::{baselines, eval_windows, read_prefix, Baselines};
use crate::eval::score_windows;
use crate::eval::tokens::{evaluate_m2, token_counts, M2Report};
use crate::m1::{ExactModel, Int8M1};
use crate::tokenize::{
    tokenize_corpus, ChunkSplit, M1Spec, Method, TokenDataset, TokenEvalSet, TokenizeReport,
    HELDOUT_EVERY, M2_START,
};
use crate::train::{train, RunStart, TrainOptions, TrainSummary};
use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

mod report;

pub use report::markdown_table;
use report::write_results;

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scale {
    /// Seconds: 60 KB of text in 2 KB chunks, a few steps per model (CI).
    Smoke,
    /// About 16 minutes on 2 idle CPU cores (30 at most): 1 MB of the bundled sample, tiny models.
    Tiny,
    /// About 2 hours on 2 CPU cores, minutes on a GPU: m1-3m and m2-25m-sized M2s.
    Small,
    /// The paper's M2 budget (200,000 steps of 256 x 512 tokens): GPU-sized.
    Paper,
}

/// The budget a [`Scale`] stands for.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleSpec {
    /// Corpus bytes used (`None`: all).
    pub corpus_bytes: Option<u64>,
    /// Bytes per chunk (the unit each method codes independently; the paper's 10,240).
    pub chunk_bytes: usize,
    pub m1_preset: &'static str,
    pub m1_seconds: f64,
    pub m2_preset: &'static str,
    /// Steps of every M2 (matched: same steps x batch x seq tokens for every method).
    pub m2_steps: u64,
    pub m2_batch: usize,
    pub m2_seq: usize,
    pub m2_lr: f32,
}

impl Scale {
    pub fn spec(self) -> ScaleSpec {
        let (corpus_bytes, m1_preset, m1_seconds, m2_preset, m2_steps, m2_batch, m2_seq, m2_lr) =
            match self {
                Scale::Smoke => (Some(60_000), "tiny", 10.0, "tiny", 6, 2, 64, 3e-3),
                Scale::Tiny => (Some(1_000_000), "tiny", 180.0, "tiny", 120, 8, 128, 3e-3),
                Scale::Small => (None, "m1-3m", 1800.0, "m2-25m", 600, 16, 256, 1e-3),
                Scale::Paper => (None, "m1-3m", 7200.0, "m2-25m", 200_000, 256, 512, 1e-3),
            };
        ScaleSpec {
            corpus_bytes,
            chunk_bytes: if self == Scale::Smoke {
                2048
            } else {
                crate::tokenize::DEFAULT_CHUNK_BYTES
            },
            m1_preset,
            m1_seconds,
            m2_preset,
            m2_steps,
            m2_batch,
            m2_seq,
            m2_lr,
        }
    }
}

/// One method of the grid: a tokenization method and its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MethodSpec {
    pub method: Method,
    pub token_bits: u32,
    /// Equal-Info window width.
    pub window_bits: Option<u32>,
}

impl MethodSpec {
    pub fn new(method: Method, token_bits: u32) -> Self {
        MethodSpec {
            method,
            token_bits,
            window_bits: None,
        }
    }

    pub fn equal_info(window_bits: u32, token_bits: u32) -> Self {
        MethodSpec {
            method: Method::EqualInfo,
            token_bits,
            window_bits: Some(window_bits),
        }
    }

    /// The paper's name, e.g. `EqualInfoAC[b=16, v=65k]`.
    pub fn label(&self) -> String {
        let v = if self.token_bits == 16 { "65k" } else { "256" };
        match self.method {
            Method::Bytes => "Bytes".into(),
            Method::Subword => "BPE[32k]".into(),
            Method::Ac => format!("AC[v={v}]"),
            Method::Gzip => format!("GZip[v={v}]"),
            Method::StaticAc => format!("StaticAC[v={v}]"),
            Method::EqualInfo => {
                format!("EqualInfoAC[b={}, v={v}]", self.window_bits.unwrap_or(16))
            }
        }
    }

    /// A directory name.
    pub fn slug(&self) -> String {
        match self.window_bits {
            Some(b) => format!("{}-b{b}-t{}", self.method.name(), self.token_bits),
            None => format!("{}-t{}", self.method.name(), self.token_bits),
        }
    }

    /// Tokens per Equal-Info window (1 for other methods).
    pub fn tokens_per_window(&self) -> usize {
        self.window_bits
            .map_or(1, |b| (b / self.token_bits) as usize)
    }
}

/// The paper's comparison grid (Table 15 and Fig. 5), every method this build has.
pub fn paper_grid() -> Vec<MethodSpec> {
    let mut g = vec![
        MethodSpec::new(Method::Bytes, 8),
        MethodSpec::new(Method::Subword, 16),
    ];
    for method in [Method::Ac, Method::StaticAc] {
        for bits in [8, 16] {
            g.push(MethodSpec::new(method, bits));
        }
    }
    for b in [16, 32, 64, 128] {
        for bits in [8, 16] {
            g.push(MethodSpec::equal_info(b, bits));
        }
    }
    for bits in [8, 16] {
        g.push(MethodSpec::new(Method::Gzip, bits));
    }
    g
}

/// A corpus cut for the pipeline (see the module docs).
pub struct PreparedCorpus {
    /// The whole text, as one `.txt` file (what every method tokenizes).
    pub corpus: PathBuf,
    /// The text minus the held-out chunks (what M1 trains on).
    pub m1_train: PathBuf,
    /// The held-out chunks' bytes, in order.
    pub heldout: Vec<u8>,
    pub bytes: u64,
    pub chunk_bytes: usize,
}

/// Reads at most `max_bytes` of `data`'s canonical byte stream into `dir` and cuts it.
pub fn prepare_corpus(
    data: &Path,
    dir: &Path,
    max_bytes: Option<u64>,
    chunk_bytes: usize,
) -> Result<PreparedCorpus> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = read_prefix(data, max_bytes.unwrap_or(u64::MAX))?;
    let chunks = text.len().div_ceil(chunk_bytes);
    ensure!(
        chunks >= HELDOUT_EVERY,
        "{}: {} bytes make {chunks} chunks of {chunk_bytes}; the pipeline needs at least {HELDOUT_EVERY} (one held out)",
        data.display(),
        text.len()
    );
    let (mut train_text, mut heldout) = (Vec::new(), Vec::new());
    for (i, c) in text.chunks(chunk_bytes).enumerate() {
        if ChunkSplit::Heldout.keeps(i) {
            heldout.extend_from_slice(c);
        } else {
            train_text.extend_from_slice(c);
        }
    }
    let (corpus, m1_train) = (dir.join("corpus.txt"), dir.join("m1-train.txt"));
    std::fs::write(&corpus, &text).with_context(|| format!("cannot write {}", corpus.display()))?;
    std::fs::write(&m1_train, &train_text)
        .with_context(|| format!("cannot write {}", m1_train.display()))?;
    Ok(PreparedCorpus {
        corpus,
        m1_train,
        heldout,
        bytes: text.len() as u64,
        chunk_bytes,
    })
}

/// M1 as the pipeline used it.
#[derive(Clone, Debug, Serialize)]
pub struct M1Result {
    pub checkpoint: PathBuf,
    pub preset: String,
    /// Bits per byte on the held-out chunks, context reset every `seq` bytes.
    pub heldout_bpb: f64,
    pub seq: usize,
    /// `None` when an existing M1 was reused.
    pub train: Option<TrainSummary>,
    pub non_embedding_params: usize,
}

/// Trains a fresh M1 of `preset` for about `seconds` on the corpus's training chunks into `dir`
/// (cleared first), then scores it on the held-out chunks.
pub fn train_m1(
    c: &PreparedCorpus,
    dir: &Path,
    preset: &str,
    seconds: f64,
    device: Device,
    progress: bool,
) -> Result<M1Result> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let o = TrainOptions {
        seq: 128,
        lr: 3e-3,
        warmup: 30,
        optim: crate::backend::OptimConfig {
            weight_decay: 0.0,
            ..Default::default()
        },
        heldout_bytes: 16 * 1024,
        eval_every: 0,
        eval_windows: 32,
        ckpt_every: 0,
        time_budget_s: Some(seconds),
        ..TrainOptions::new(c.m1_train.clone(), preset, 1_000_000)
    };
    let s = train(RunStart::Fresh(&o), None, dir, device, progress)?;
    let mut r = score_m1(c, dir, device)?;
    r.train = Some(s);
    Ok(r)
}

/// Scores an existing M1 at `checkpoint` on the held-out chunks.
pub fn score_m1(c: &PreparedCorpus, checkpoint: &Path, device: Device) -> Result<M1Result> {
    let (cfg, params) = load_model(checkpoint)?;
    ensure!(
        cfg.vocab == 256,
        "{} is not a byte-level M1",
        checkpoint.display()
    );
    let (mut be, _) = create_backend(device, &cfg, params, None)?;
    let seq = 128;
    let s = score_windows(be.as_mut(), &eval_windows(&c.heldout, seq, None), 16, None)?;
    Ok(M1Result {
        checkpoint: checkpoint.to_path_buf(),
        preset: cfg.preset.clone(),
        heldout_bpb: s.bits_per_byte,
        seq,
        train: None,
        non_embedding_params: cfg.non_embedding_params(),
    })
}

/// How each M2 trains.
#[derive(Clone, Debug, Serialize)]
pub struct M2Budget {
    pub preset: String,
    /// Steps (an upper bound when `seconds` is set).
    pub steps: u64,
    /// Fit the steps to this many seconds instead of running them all.
    pub seconds: Option<f64>,
    pub batch: usize,
    pub seq: usize,
    pub lr: f32,
    pub seed: u64,
}

/// One method's results.
#[derive(Clone, Debug, Serialize)]
pub struct MethodResult {
    pub label: String,
    pub spec: MethodSpec,
    /// The run that coded the text (for a re-packed 16-bit dataset, its 8-bit twin's run).
    pub tokenize: TokenizeReport,
    /// True when the dataset is the 8-bit one re-packed as 16-bit tokens (identical to coding
    /// at 16 bits, without running M1 again; see [`crate::tokenize::repack`]).
    pub repacked_from_8_bit: bool,
    pub train: TrainSummary,
    pub eval: M2Report,
    /// Top-1 accuracy of M2 on held-out tokens by position inside a window (Fig. 10): one entry
    /// per token of a window (a single entry for methods without windows).
    pub position_accuracy: Vec<f64>,
    /// KL(observed ‖ uniform) of the training tokens, bits per token (Fig. 11).
    pub kl_uniform_bits: f64,
    pub checkpoint: PathBuf,
    pub dataset: PathBuf,
    pub seconds: f64,
}

/// Everything a method run needs besides its spec.
pub struct Pipeline<'a> {
    pub corpus: &'a PreparedCorpus,
    pub m1: Option<Arc<Int8M1>>,
    pub out: PathBuf,
    pub device: Device,
    pub progress: bool,
    /// Datasets coded so far by this pipeline (their 16-bit twins are re-packed from them).
    pub coded: std::cell::RefCell<Vec<(MethodSpec, TokenizeReport)>>,
}

impl Pipeline<'_> {
    /// Tokenizes the corpus with `spec`, trains an M2 on it with `budget` and scores it.
    pub fn run_method(&self, spec: &MethodSpec, budget: &M2Budget) -> Result<MethodResult> {
        let t0 = Instant::now();
        let label = spec.label();
        let dataset = self.out.join("tokens").join(spec.slug());
        let m1_spec = match spec.method {
            Method::Ac | Method::EqualInfo => Some(M1Spec::new(
                self.m1
                    .clone()
                    .context("this method codes with M1: none given")?,
                spec.window_bits.unwrap_or(16),
            )),
            _ => None,
        };
        let twin = MethodSpec {
            token_bits: 8,
            ..*spec
        };
        let coded_twin = (spec.token_bits == 16
            && crate::tokenize::repack::repackable(spec.method))
        .then(|| {
            self.coded
                .borrow()
                .iter()
                .find(|c| c.0 == twin)
                .map(|c| c.1.clone())
        })
        .flatten();
        let (tokenize, repacked_from_8_bit) = match coded_twin {
            Some(report) => {
                crate::tokenize::repack::repack_to_16(
                    &self.out.join("tokens").join(twin.slug()),
                    &dataset,
                )
                .with_context(|| format!("{label}: re-packing"))?;
                (report, true)
            }
            None => {
                let r = tokenize_corpus(
                    spec.method,
                    &self.corpus.corpus,
                    &dataset,
                    spec.token_bits,
                    self.corpus.chunk_bytes,
                    m1_spec.as_ref(),
                    self.progress,
                )
                .with_context(|| format!("{label}: tokenizing"))?;
                self.coded.borrow_mut().push((*spec, r.clone()));
                (r, false)
            }
        };
        let checkpoint = self.out.join("m2").join(spec.slug());
        if checkpoint.exists() {
            std::fs::remove_dir_all(&checkpoint)
                .with_context(|| format!("cannot clear {}", checkpoint.display()))?;
        }
        ensure!(
            budget.seq.is_multiple_of(spec.tokens_per_window()),
            "{label}: --seq {} is not a whole number of {}-token windows",
            budget.seq,
            spec.tokens_per_window()
        );
        let o = TrainOptions {
            batch: budget.batch,
            seq: budget.seq,
            lr: budget.lr,
            heldout_bytes: 0,
            eval_every: 0,
            eval_windows: 16,
            ckpt_every: 0,
            seed: budget.seed,
            time_budget_s: budget.seconds,
            ..TrainOptions::new(dataset.clone(), budget.preset.clone(), budget.steps)
        };
        if self.progress {
            eprintln!("== {label}: M2 {} on {}", budget.preset, dataset.display());
        }
        let train_summary = train(
            RunStart::Fresh(&o),
            None,
            &checkpoint,
            self.device,
            self.progress,
        )
        .with_context(|| format!("{label}: training M2"))?;
        let ds = TokenDataset::open(&dataset)?;
        let (cfg, params) = load_model(&checkpoint)?;
        let src = ds.metadata().identity.clone();
        let counts = token_counts(&ds, ChunkSplit::Train);
        let (mut be, _) = create_backend(self.device, &cfg, params.clone(), None)?;
        let eval = evaluate_m2(
            be.as_mut(),
            &cfg,
            &src,
            &ds,
            ChunkSplit::Heldout,
            budget.seq,
            budget.batch,
            Some((
                counts.clone(),
                format!("{} (training chunks)", dataset.display()),
            )),
        )
        .with_context(|| format!("{label}: scoring M2"))?;
        let lm = ExactModel::new(&cfg, &params)?;
        let position_accuracy = position_accuracy(&lm, &ds, budget.seq, spec.tokens_per_window());
        Ok(MethodResult {
            label,
            spec: *spec,
            tokenize,
            repacked_from_8_bit,
            train: train_summary,
            eval,
            position_accuracy,
            kl_uniform_bits: kl_from_uniform(&counts, spec.token_bits),
            checkpoint,
            dataset,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// KL(observed ‖ uniform over all `2^token_bits` values) in bits: `token_bits − H(observed)`,
/// with the Miller-Madow correction `(K − 1) / (2 N ln 2)` added to the plug-in entropy (`K`
/// values seen in `N` tokens): without it, 65,536-value tokens counted over a small corpus look
/// far from uniform only because most values were never drawn. Floored at 0.
pub fn kl_from_uniform(counts: &[u64], token_bits: u32) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let seen = counts.iter().filter(|&&c| c > 0).count();
    let plug_in: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    let h = plug_in + (seen as f64 - 1.0) / (2.0 * n as f64 * std::f64::consts::LN_2);
    (token_bits as f64 - h).max(0.0)
}

/// Tokens scored for the accuracy-by-position diagnostic.
const ACCURACY_TOKENS: usize = 2048;

/// M2's top-1 accuracy on held-out tokens by position inside a window (rows start at chunk
/// starts plus whole multiples of `seq`, so at window boundaries when `seq` is a multiple of the
/// window's tokens).
fn position_accuracy(
    lm: &ExactModel,
    ds: &TokenDataset,
    seq: usize,
    per_window: usize,
) -> Vec<f64> {
    let set = TokenEvalSet::new(ds, ChunkSplit::Heldout, seq, None);
    let (mut hits, mut seen) = (vec![0u64; per_window], vec![0u64; per_window]);
    let mut probs = vec![0f32; lm.config().vocab];
    let mut budget = ACCURACY_TOKENS;
    for row in &set.rows {
        if budget == 0 {
            break;
        }
        let mut state = lm.empty_state();
        let mut input = M2_START;
        for (j, &t) in row.iter().take(budget).enumerate() {
            lm.push_token(&mut state, input, &mut probs);
            let best = crate::generate::argmax(&probs);
            seen[j % per_window] += 1;
            hits[j % per_window] += (best == t as usize) as u64;
            input = t as u32;
        }
        budget -= row.len().min(budget);
    }
    hits.iter()
        .zip(&seen)
        .map(|(&h, &s)| h as f64 / s.max(1) as f64)
        .collect()
}

/// A qualitative finding of the paper and whether this run reproduces it.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub claim: String,
    pub holds: bool,
    pub detail: String,
}

/// The paper's §6 findings checked on `methods` (only those whose methods ran).
pub fn findings(methods: &[MethodResult]) -> Vec<Finding> {
    let find = |label: &str| methods.iter().find(|m| m.label == label);
    let mut out = Vec::new();
    for label in [
        "StaticAC[v=256]",
        "StaticAC[v=65k]",
        "AC[v=256]",
        "AC[v=65k]",
    ] {
        if let Some(m) = find(label) {
            let rel = m.eval.bits_per_byte / m.eval.uniform_bits_per_byte - 1.0;
            out.push(Finding {
                claim: format!("{label} M2 stays at its uniform bits/byte (within 2%)"),
                holds: rel.abs() <= 0.02,
                detail: format!(
                    "{:.4} vs uniform {:.4} ({:+.2}%)",
                    m.eval.bits_per_byte,
                    m.eval.uniform_bits_per_byte,
                    100.0 * rel
                ),
            });
        }
    }
    for label in ["EqualInfoAC[b=16, v=256]", "EqualInfoAC[b=16, v=65k]"] {
        if let Some(m) = find(label) {
            let rel = m.eval.bits_per_byte / m.eval.uniform_bits_per_byte - 1.0;
            out.push(Finding {
                claim: format!("{label} M2 falls clearly (> 5%) below its uniform bits/byte"),
                holds: rel < -0.05,
                detail: format!(
                    "{:.4} vs uniform {:.4} ({:+.2}%); unigram {:.4}",
                    m.eval.bits_per_byte,
                    m.eval.uniform_bits_per_byte,
                    100.0 * rel,
                    m.eval.unigram_bits_per_byte
                ),
            });
        }
    }
    if let (Some(a), Some(b)) = (
        find("EqualInfoAC[b=16, v=65k]"),
        find("EqualInfoAC[b=16, v=256]"),
    ) {
        out.push(Finding {
            claim: "EqualInfoAC[b=16]: v=65k beats v=256 in bits/byte".into(),
            holds: a.eval.bits_per_byte < b.eval.bits_per_byte,
            detail: format!(
                "v=65k {:.4} vs v=256 {:.4}",
                a.eval.bits_per_byte, b.eval.bits_per_byte
            ),
        });
    }
    out
}

/// What `terse experiment` writes to `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentResults {
    pub scale: Scale,
    pub spec: ScaleSpec,
    pub source: PathBuf,
    pub corpus_bytes: u64,
    pub heldout_bytes: usize,
    pub chunk_bytes: usize,
    pub m1: M1Result,
    /// gzip -9 / xz -9 / zstd -19 on the held-out chunks.
    pub baselines: Baselines,
    pub m2_budget: M2Budget,
    pub methods: Vec<MethodResult>,
    pub findings: Vec<Finding>,
    pub seconds: f64,
}

/// Options of [`run_experiment`].
pub struct ExperimentOptions {
    pub scale: Scale,
    pub data: PathBuf,
    pub out: PathBuf,
    /// Reuse this M1 instead of training one.
    pub m1: Option<PathBuf>,
    pub grid: Vec<MethodSpec>,
    pub device: Device,
    pub seed: u64,
    pub progress: bool,
}

/// Runs the whole grid and writes `results.json`, `results.md` and `results.svg` into `o.out`.
pub fn run_experiment(o: &ExperimentOptions) -> Result<ExperimentResults> {
    let t0 = Instant::now();
    let spec = o.scale.spec();
    let corpus = prepare_corpus(
        &o.data,
        &o.out.join("corpus"),
        spec.corpus_bytes,
        spec.chunk_bytes,
    )?;
    let m1 = match &o.m1 {
        Some(p) => score_m1(&corpus, p, o.device)?,
        None => train_m1(
            &corpus,
            &o.out.join("m1"),
            spec.m1_preset,
            spec.m1_seconds,
            o.device,
            o.progress,
        )?,
    };
    let exact = Arc::new(Int8M1::load(&m1.checkpoint)?);
    let budget = M2Budget {
        preset: spec.m2_preset.into(),
        steps: spec.m2_steps,
        seconds: None,
        batch: spec.m2_batch,
        seq: spec.m2_seq,
        lr: spec.m2_lr,
        seed: o.seed,
    };
    let p = Pipeline {
        corpus: &corpus,
        m1: Some(exact),
        out: o.out.clone(),
        device: o.device,
        progress: o.progress,
        coded: Default::default(),
    };
    let mut methods = Vec::new();
    for m in &o.grid {
        let r = p.run_method(m, &budget)?;
        if o.progress {
            eprintln!(
                "   {}: {:.3} bytes/token, M2 {:.4} bits/byte (uniform {:.4}), {:.1} s",
                r.label,
                r.eval.bytes_per_token,
                r.eval.bits_per_byte,
                r.eval.uniform_bits_per_byte,
                r.seconds
            );
        }
        methods.push(r);
    }
    let results = ExperimentResults {
        scale: o.scale,
        spec,
        source: o.data.clone(),
        corpus_bytes: corpus.bytes,
        heldout_bytes: corpus.heldout.len(),
        chunk_bytes: corpus.chunk_bytes,
        baselines: baselines(&corpus.heldout)?,
        m1,
        m2_budget: budget,
        findings: findings(&methods),
        methods,
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_results(&results, &o.out)?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_uniform_and_of_a_point_mass() {
        // Uniform counts: plug-in entropy 2 bits plus the correction 3 / (2 x 4000 ln 2).
        let mm = 3.0 / (2.0 * 4000.0 * std::f64::consts::LN_2);
        assert!(kl_from_uniform(&[1000; 4], 2) < 1e-12);
        // One value only: the full 2 bits.
        assert!((kl_from_uniform(&[9, 0, 0, 0], 2) - 2.0).abs() < 1e-12);
        // 4 equally likely values of 256 possible: 8 - 2 bits, less the correction.
        assert!((kl_from_uniform(&[1000, 1000, 1000, 1000], 8) - (6.0 - mm)).abs() < 1e-12);
    }

    #[test]
    fn labels_follow_the_paper() {
        assert_eq!(
            MethodSpec::equal_info(16, 16).label(),
            "EqualInfoAC[b=16, v=65k]"
        );
        assert_eq!(MethodSpec::new(Method::Gzip, 8).label(), "GZip[v=256]");
        assert_eq!(MethodSpec::equal_info(32, 8).tokens_per_window(), 4);
    }
}
