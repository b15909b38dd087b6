//! One contiguous f32 buffer holds every parameter (and, with the same layout, every gradient and
//! optimiser moment), described by a table of named tensor specs.

use super::ModelConfig;
use crate::rng::Rng;

/// A named tensor inside the arena: `len = shape.iter().product()` elements from `offset`.
/// Matrices are `[out, in]` (PyTorch `nn.Linear` layout: `y = x W^T`).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The parameter layout of a model plus one buffer in that layout. The same layout indexes
/// gradients and AdamW moments, so optimiser code runs over flat slices.
#[derive(Clone, Debug)]
pub struct ParamArena {
    pub specs: Vec<TensorSpec>,
    pub data: Vec<f32>,
}

impl ParamArena {
    /// The tensor table for `cfg`, in a fixed order (also the checkpoint order).
    pub fn layout(cfg: &ModelConfig) -> Vec<TensorSpec> {
        let (d, ff, v) = (cfg.d_model, cfg.d_ff, cfg.vocab);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![("tok_emb.weight".into(), vec![v, d])];
        for l in 0..cfg.n_layers {
            let p = format!("layers.{l}");
            shapes.push((format!("{p}.attn_norm.weight"), vec![d]));
            shapes.push((format!("{p}.attn.qkv.weight"), vec![3 * d, d]));
            shapes.push((format!("{p}.attn.out.weight"), vec![d, d]));
            shapes.push((format!("{p}.mlp_norm.weight"), vec![d]));
            shapes.push((format!("{p}.mlp.up.weight"), vec![ff, d]));
            shapes.push((format!("{p}.mlp.down.weight"), vec![d, ff]));
        }
        shapes.push(("final_norm.weight".into(), vec![d]));
        shapes.push(("lm_head.weight".into(), vec![v, d]));
        let mut offset = 0;
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let s = TensorSpec {
                    name,
                    shape,
                    offset,
                };
                offset += s.len();
                s
            })
            .collect()
    }

    /// A zero-filled arena for `cfg` (used for gradients and optimiser moments).
    pub fn zeros(cfg: &ModelConfig) -> Self {
        let specs = Self::layout(cfg);
        let n = specs.last().map_or(0, |s| s.offset + s.len());
        ParamArena {
            specs,
            data: vec![0.0; n],
        }
    }

    /// Seeded initialisation: norm gains 1, matrices N(0, 0.02), residual output projections
    /// scaled by 1/sqrt(2 L) (GPT-2's rule), embeddings N(0, 0.02). Same seed, same bits.
    pub fn init(cfg: &ModelConfig, seed: u64) -> Self {
        let mut arena = Self::zeros(cfg);
        let resid_scale = 1.0 / ((2 * cfg.n_layers) as f64).sqrt();
        for (i, spec) in arena.specs.iter().enumerate() {
            let mut rng = Rng::derive(seed, i as u64);
            let dst = &mut arena.data[spec.range()];
            if spec.name.ends_with("norm.weight") {
                dst.fill(1.0);
                continue;
            }
            let std = if spec.name.ends_with("attn.out.weight")
                || spec.name.ends_with("mlp.down.weight")
            {
                0.02 * resid_scale
            } else {
                0.02
            };
            for x in dst.iter_mut() {
                *x = (rng.normal() * std) as f32;
            }
        }
        arena
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn spec(&self, name: &str) -> Option<&TensorSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    pub fn tensor(&self, name: &str) -> &[f32] {
        let s = self
            .spec(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        &self.data[s.range()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_every_parameter_once() {
        let cfg = ModelConfig::preset("m1-3m", None).unwrap();
        let a = ParamArena::zeros(&cfg);
        assert_eq!(a.len(), cfg.total_params());
        for w in a.specs.windows(2) {
            assert_eq!(w[0].offset + w[0].len(), w[1].offset);
        }
    }

    #[test]
    fn init_is_seeded() {
        let cfg = ModelConfig::preset("tiny", None).unwrap();
        let a = ParamArena::init(&cfg, 1);
        assert_eq!(a.data, ParamArena::init(&cfg, 1).data);
        assert_ne!(a.data, ParamArena::init(&cfg, 2).data);
        assert!(a.tensor("final_norm.weight").iter().all(|&x| x == 1.0));
    }
}
