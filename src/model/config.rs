//! Transformer shapes. Presets follow the paper's Table 4 (non-embedding parameter counts).

use crate::numerics::HEAD_DIM;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Shape and numeric constants of a decoder-only transformer: pre-norm RMSNorm, rotary positions,
/// ReLU MLP, no biases, untied input and output embeddings, head dimension 64.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Preset name this configuration came from (informative only).
    pub preset: String,
    pub vocab: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_ff: usize,
    pub rope_theta: f32,
    pub norm_eps: f32,
    /// Weight of the z-loss term `z_loss * logsumexp(logits)^2` added to cross-entropy.
    pub z_loss: f32,
    /// The longest context the model attends over: the sequence length it was trained at. Exact
    /// inference (M1's coding, M2's generation) lets each position attend to at most this many
    /// positions, itself and the newest before it (a sliding window), so a model is never asked
    /// for relative distances it never saw in training; within one training sequence the window
    /// is the whole causal prefix, so training is unchanged. `None`: not recorded (checkpoints
    /// from before this field whose training state is gone), attention over the whole context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<usize>,
}

/// (name, d_model, n_layers, n_heads, d_ff, default vocab). Shapes are the paper's Table 4; with a
/// two-matrix MLP the non-embedding counts are 2.4M, 18.9M, 85.0M and 302M (the paper's labels
/// count three MLP matrices).
pub const PRESETS: [(&str, usize, usize, usize, usize, usize); 5] = [
    ("tiny", 128, 2, 2, 512, 256),
    ("m1-3m", 256, 3, 4, 1024, 256),
    ("m2-25m", 512, 6, 8, 2048, 65536),
    ("m2-113m", 768, 12, 12, 3072, 65536),
    ("m2-403m", 1024, 24, 16, 4096, 65536),
];

impl ModelConfig {
    /// A named preset with the given vocabulary (256 for bytes and 8-bit tokens, 65536 for 16-bit
    /// tokens); `None` keeps the preset's default. Unknown names are an error listing the choices.
    ///
    /// ```
    /// use terse::model::ModelConfig;
    /// let m1 = ModelConfig::preset("m1-3m", None).unwrap();
    /// assert_eq!((m1.d_model, m1.n_layers, m1.n_heads, m1.vocab), (256, 3, 4, 256));
    /// let m2 = ModelConfig::preset("m2-25m", Some(256)).unwrap();
    /// assert_eq!(m2.vocab, 256);
    /// assert!(ModelConfig::preset("m9", None).is_err());
    /// ```
    pub fn preset(name: &str, vocab: Option<usize>) -> Result<Self> {
        let Some(&(_, d, l, h, ff, v)) = PRESETS.iter().find(|p| p.0 == name) else {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            bail!(
                "unknown preset '{name}' (choose one of: {})",
                names.join(", ")
            );
        };
        let cfg = ModelConfig {
            preset: name.to_string(),
            vocab: vocab.unwrap_or(v),
            d_model: d,
            n_layers: l,
            n_heads: h,
            d_ff: ff,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            z_loss: 1e-4,
            context: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses shapes the kernels do not support.
    pub fn validate(&self) -> Result<()> {
        if self.vocab == 0 || self.vocab > 65536 {
            bail!("vocab {} out of range 1..=65536", self.vocab);
        }
        if self.n_heads == 0 || self.d_model != self.n_heads * HEAD_DIM {
            bail!(
                "d_model {} must equal n_heads {} x head dim {HEAD_DIM}",
                self.d_model,
                self.n_heads
            );
        }
        if self.n_layers == 0 || self.d_ff == 0 {
            bail!("n_layers and d_ff must be positive");
        }
        if self.context == Some(0) {
            bail!("context must be positive");
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Parameters outside the embedding and unembedding tables (the paper's model-size measure).
    pub fn non_embedding_params(&self) -> usize {
        let d = self.d_model;
        self.n_layers * (4 * d * d + 2 * d * self.d_ff + 2 * d) + d
    }

    pub fn total_params(&self) -> usize {
        self.non_embedding_params() + 2 * self.vocab * self.d_model
    }

    /// Training FLOPs per token: 6 x (all matmul params) plus attention's 6 x 2 x L x T x d
    /// (score and value products, forward and backward), as llm.c and PaLM count them.
    pub fn train_flops_per_token(&self, seq: usize) -> f64 {
        let matmul_params = self.n_layers
            * (4 * self.d_model * self.d_model + 2 * self.d_model * self.d_ff)
            + self.vocab * self.d_model;
        6.0 * matmul_params as f64 + 6.0 * (self.n_layers * seq * self.d_model) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_sizes() {
        // Counts include the RMSNorm gains. Plain two-matrix ReLU MLP, as this model and the PyTorch yardsticks use. The paper's size
        // labels (3m, 25m, 113m, 403m) count a third MLP matrix: 4d^2 + 3 d ff per layer.
        let cfg = |n| ModelConfig::preset(n, None).unwrap();
        let gated =
            |c: &ModelConfig| c.n_layers * (4 * c.d_model * c.d_model + 3 * c.d_model * c.d_ff);
        for (name, ours, paper) in [
            ("m1-3m", 2_361_088, 3.15e6),
            ("m2-25m", 18_881_024, 25.2e6),
            ("m2-113m", 84_953_856, 113.2e6),
            ("m2-403m", 302_040_064, 402.7e6),
        ] {
            let c = cfg(name);
            assert_eq!(c.non_embedding_params(), ours, "{name}");
            assert!((gated(&c) as f64 / paper - 1.0).abs() < 0.01, "{name}");
        }
        assert_eq!(cfg("m1-3m").total_params(), 2_361_088 + 2 * 256 * 256);
    }

    #[test]
    fn unknown_preset_lists_choices() {
        let e = ModelConfig::preset("huge", None).unwrap_err().to_string();
        assert!(
            e.contains("unknown preset 'huge'") && e.contains("m1-3m"),
            "{e}"
        );
    }

    #[test]
    fn zero_context_is_refused() {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(0);
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("context must be positive"), "{e}");
        cfg.context = Some(1);
        assert!(cfg.validate().is_ok());
    }
}
