//! M1 from a checkpoint.

use super::ExactM1;
use crate::checkpoint::load_model;
use anyhow::{Context, Result};
use std::path::Path;

impl ExactM1 {
    /// Loads the checkpoint at `path` (a directory or its `model.safetensors`) as M1; refuses
    /// a model that cannot serve as M1 (not byte-level).
    pub fn load(path: &Path) -> Result<Self> {
        let (cfg, params) = load_model(path)?;
        ExactM1::new(&cfg, &params)
            .with_context(|| format!("{} cannot serve as M1", path.display()))
    }
}
