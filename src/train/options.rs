//! A run's defaults ([`TrainOptions::new`], what `terse train` uses unless told otherwise) and
//! loading an M2 checkpoint with the options and token source it was trained on.

use super::schedule::ScheduleKind;
use super::trainer::{is_token_dataset, saved_options, TrainOptions};
use crate::backend::{GradReduction, OptimConfig};
use crate::checkpoint::load_model;
use crate::model::{ModelConfig, ParamArena};
use crate::tokenize::TokenSource;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

impl TrainOptions {
    /// The defaults of `terse train` for `steps` steps of `preset` on `data`: 16 sequences of
    /// 256 bytes (a corpus) or 512 tokens (a token dataset) per step, peak learning rate 1e-3
    /// with `min(100, steps / 10)` warmup steps (at least 1) and a cosine decay to a tenth,
    /// AdamW's defaults, 262,144 held-out bytes scored on 64 windows every 100 steps, a
    /// checkpoint every 500 steps, seed 0, no time budget, a seeded initialisation (no `init`),
    /// float training (no `qat`), one pass per step (`accum` 1), gradients summed per sequence
    /// ([`GradReduction::SequenceTree`]). Callers change fields as they need.
    pub fn new(data: PathBuf, preset: impl Into<String>, steps: u64) -> Self {
        let seq = if is_token_dataset(&data) { 512 } else { 256 };
        TrainOptions {
            preset: preset.into(),
            data,
            steps,
            batch: 16,
            seq,
            lr: 1e-3,
            warmup: (steps / 10).clamp(1, 100),
            schedule: ScheduleKind::Cosine,
            min_lr_frac: 0.1,
            optim: OptimConfig::default(),
            heldout_bytes: 262_144,
            eval_every: 100,
            eval_windows: 64,
            ckpt_every: 500,
            seed: 0,
            time_budget_s: None,
            heldout_data: None,
            tokens: None,
            init: None,
            qat: false,
            accum: 1,
            grad_reduction: GradReduction::SequenceTree,
        }
    }

    /// Refuses settings a run cannot use, before anything is read or allocated, naming the
    /// `terse train` flag that sets each field: `steps`, `batch` and `seq` must be positive;
    /// `lr` finite and positive; `warmup` at most `steps`; `min_lr_frac` in [0, 1];
    /// `weight_decay` and `clip` finite and not negative; `time_budget_s` finite and positive;
    /// AdamW's `beta1` and `beta2` in [0, 1) and `eps` finite and positive.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.seq == 0 || self.steps == 0 || self.accum == 0 {
            bail!("--batch, --accum, --seq and --steps must be positive");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be a positive number, not {}", self.lr);
        }
        if self.warmup > self.steps {
            bail!(
                "--warmup {} is longer than the run (--steps {}): the learning rate would never reach its peak",
                self.warmup,
                self.steps
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_frac) {
            bail!(
                "--min-lr-frac must be a fraction of the peak learning rate in [0, 1], not {}",
                self.min_lr_frac
            );
        }
        let o = &self.optim;
        for (flag, v) in [("--weight-decay", o.weight_decay), ("--clip", o.clip)] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("{flag} must be a finite number, 0 or more, not {v}");
            }
        }
        if let Some(t) = self.time_budget_s {
            if !(t > 0.0 && t.is_finite()) {
                bail!("--time-budget must be a positive number of seconds, not {t}");
            }
        }
        for (name, b) in [("beta1", o.beta1), ("beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("AdamW {name} must be in [0, 1), not {b}");
            }
        }
        if !(o.eps > 0.0 && o.eps.is_finite()) {
            bail!("AdamW eps must be a positive number, not {}", o.eps);
        }
        Ok(())
    }

    /// The preset `terse train` picks when none is named: `m2-25m` for a token dataset,
    /// `m1-3m` for a corpus.
    pub fn default_preset(data: &Path) -> &'static str {
        if is_token_dataset(data) {
            "m2-25m"
        } else {
            "m1-3m"
        }
    }
}

/// An M2 checkpoint: its weights, the options it was trained with and the tokens it was trained
/// on (what generation and scoring need to code text the same way).
pub struct M2Checkpoint {
    pub config: ModelConfig,
    pub params: ParamArena,
    pub options: TrainOptions,
    pub tokens: TokenSource,
}

/// Loads the M2 at `path` (a checkpoint directory or its `model.safetensors`); refuses a
/// checkpoint without training state and a byte-level model (M1).
pub fn load_m2(path: &Path) -> Result<M2Checkpoint> {
    let (config, params) = load_model(path)?;
    let options = saved_options(path)?.with_context(|| {
        format!(
            "checkpoint {} has no training state, so the tokens it was trained on are unknown",
            path.display()
        )
    })?;
    let tokens = options.tokens.clone().with_context(|| {
        format!(
            "checkpoint {} is a byte-level model (M1) trained on a corpus, not an M2 trained on tokens",
            path.display()
        )
    })?;
    Ok(M2Checkpoint {
        config,
        params,
        options,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every numeric setting out of range (NaN, infinite, negative, too large) is refused by the
    /// library before a run starts, naming the flag.
    #[test]
    fn out_of_range_options_are_refused_naming_the_flag() {
        let ok = TrainOptions::new("corpus.txt".into(), "tiny", 100);
        ok.validate().unwrap();
        type Edit = fn(&mut TrainOptions);
        let cases: Vec<(&str, Edit)> = vec![
            ("--lr", |o| o.lr = f32::NAN),
            ("--lr", |o| o.lr = f32::INFINITY),
            ("--lr", |o| o.lr = -1e-3),
            ("--min-lr-frac", |o| o.min_lr_frac = 5.0),
            ("--min-lr-frac", |o| o.min_lr_frac = -0.1),
            ("--min-lr-frac", |o| o.min_lr_frac = f32::NAN),
            ("--weight-decay", |o| o.optim.weight_decay = f32::NAN),
            ("--weight-decay", |o| o.optim.weight_decay = -0.1),
            ("--clip", |o| o.optim.clip = f32::INFINITY),
            ("--clip", |o| o.optim.clip = -1.0),
            ("--warmup", |o| o.warmup = 101),
            ("--time-budget", |o| o.time_budget_s = Some(f64::NAN)),
            ("--time-budget", |o| o.time_budget_s = Some(0.0)),
            ("--batch", |o| o.batch = 0),
            ("--accum", |o| o.accum = 0),
            ("--seq", |o| o.seq = 0),
            ("beta1", |o| o.optim.beta1 = 1.0),
            ("beta2", |o| o.optim.beta2 = f32::NAN),
            ("eps", |o| o.optim.eps = 0.0),
        ];
        for (flag, edit) in cases {
            let mut o = ok.clone();
            edit(&mut o);
            let e = format!("{:#}", o.validate().unwrap_err());
            assert!(e.contains(flag), "{flag}: {e}");
        }
        // The edges of the ranges are accepted.
        let mut o = ok.clone();
        (o.min_lr_frac, o.optim.weight_decay, o.optim.clip, o.warmup) = (1.0, 0.0, 0.0, 100);
        o.validate().unwrap();
        o.min_lr_frac = 0.0;
        o.warmup = 0;
        o.validate().unwrap();
    }
}
