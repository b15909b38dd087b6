//! A run's defaults ([`TrainOptions::new`], what `terse train` uses unless told otherwise) and
//! loading an M2 checkpoint with the options and token source it was trained on.

use super::schedule::ScheduleKind;
use super::trainer::{is_token_dataset, saved_options, TrainOptions};
use crate::backend::OptimConfig;
use crate::checkpoint::load_model;
use crate::model::{ModelConfig, ParamArena};
use crate::tokenize::TokenSource;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

impl TrainOptions {
    /// The defaults of `terse train` for `steps` steps of `preset` on `data`: 16 sequences of
    /// 256 bytes (a corpus) or 512 tokens (a token dataset) per step, peak learning rate 1e-3
    /// with `min(100, steps / 10)` warmup steps (at least 1) and a cosine decay to a tenth,
    /// AdamW's defaults, 262,144 held-out bytes scored on 64 windows every 100 steps, a
    /// checkpoint every 500 steps, seed 0, no time budget. Callers change fields as they need.
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
        }
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
