//! Fixtures shared by the checkpoint tests.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::Result;
use serde_json::json;

use super::{
    load_training, TrainingState, CONFIG_FILE, MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE,
    TRAINER_FILE,
};
use crate::model::{ModelConfig, ParamArena};

pub(super) fn small_cfg() -> ModelConfig {
    ModelConfig {
        preset: "test".into(),
        vocab: 32,
        d_model: 64,
        n_layers: 1,
        n_heads: 1,
        d_ff: 32,
        ..ModelConfig::preset("tiny", None).unwrap()
    }
}

/// Parameters with awkward finite values (the extremes, -0, subnormals) to prove bit exactness
/// (NaN and infinities are refused on load: [`nonfinite`]).
pub(super) fn params(cfg: &ModelConfig, seed: u64) -> ParamArena {
    let mut p = ParamArena::init(cfg, seed);
    let specials = [
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(0x8000_0001),
        -0.0,
        f32::from_bits(1),
    ];
    for (i, x) in specials.iter().enumerate() {
        p.data[i * 7] = *x;
    }
    p
}

/// NaN (with a payload) or an infinity at `at`.
pub(super) fn nonfinite(p: &mut [f32], at: usize, which: usize) {
    p[at] = [
        f32::from_bits(0x7fc0_1234),
        f32::INFINITY,
        f32::NEG_INFINITY,
    ][which % 3];
}

pub(super) fn training(cfg: &ModelConfig, seed: u64) -> TrainingState {
    let n = ParamArena::zeros(cfg).len();
    let m = (0..n)
        .map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let v = (0..n)
        .map(|i| ((i as u64 * 40503 + seed) % 977) as f32 * 1e-7)
        .collect();
    let state = json!({"step": seed, "lr": 0.001, "rng": [1u64, u64::MAX], "data": {"epoch": 2, "cursor": 12345}});
    TrainingState { m, v, state }
}

pub(super) fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

pub(super) fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

pub(super) fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

pub(super) const FULL: [&str; 5] = [
    MODEL_FILE,
    CONFIG_FILE,
    OPTIMIZER_FILE,
    TRAINER_FILE,
    MANIFEST_FILE,
];

pub(super) fn assert_training_eq(dir: &Path, cfg: &ModelConfig, p: &ParamArena, t: &TrainingState) {
    let (c2, p2, t2) = load_training(dir).unwrap();
    assert_eq!(&c2, cfg);
    assert_eq!(p2.specs, p.specs);
    assert_eq!(bits(&p2.data), bits(&p.data));
    assert_eq!(bits(&t2.m), bits(&t.m));
    assert_eq!(bits(&t2.v), bits(&t.v));
    assert_eq!(t2.state, t.state);
}

pub(super) fn err(r: Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}
