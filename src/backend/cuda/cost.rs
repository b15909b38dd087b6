//! The cost model of a bf16 training step: for each kernel at a preset's shapes, the bytes it
//! must move and the FLOPs it must do, how many times a step runs it, and the time those imply
//! at a card's measured ceilings. The sum over a step is the step's predicted floor; `terse
//! bench kernels` prints it alone without a GPU and beside each kernel's measured time with one,
//! so the gap between the two is the to-do list.
//!
//! Byte counts are the minimum traffic (each input read once, each output written once); FLOP
//! counts are `2 m n k` for GEMMs and, for causal attention, half the dense `4 B H T^2 64`
//! (forward) and 2.5 times the forward (backward). A kernel's predicted time is the larger of
//! bytes / copy ceiling and FLOPs / GEMM ceiling (a roofline with no launch or tail cost).

use crate::model::ModelConfig;
use serde::Serialize;

/// A GPU's measured ceilings: what a plain device-to-device copy moves (read + write) and what
/// cuBLASLt's bf16 GEMM does at 8192^3.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Card {
    pub name: &'static str,
    pub copy_bytes_per_s: f64,
    pub gemm_flops: f64,
}

/// H100 SXM, measured for this project before the first terse GPU run.
pub const H100: Card = Card {
    name: "H100",
    copy_bytes_per_s: 2.85e12,
    gemm_flops: 805e12,
};

/// H200, measured by `terse bench ceilings` on the lent H200 (2026-12-04): 4.262 TB/s and
/// 779.2 TFLOP/s.
pub const H200: Card = Card {
    name: "H200",
    copy_bytes_per_s: 4.262e12,
    gemm_flops: 779.2e12,
};

/// The cards with measured ceilings.
pub const CARDS: [Card; 2] = [H100, H200];

impl Card {
    /// The card a CUDA device name describes; the H100's ceilings for any other (the report
    /// names the card its percentages are relative to).
    pub fn for_device(device_name: &str) -> Card {
        CARDS
            .into_iter()
            .find(|c| device_name.contains(c.name))
            .unwrap_or(H100)
    }

    /// The card named `name` (case-insensitive), if its ceilings are known.
    pub fn by_name(name: &str) -> Option<Card> {
        CARDS
            .into_iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Roofline time of `bytes` moved and `flops` done, milliseconds.
    pub fn predicted_ms(&self, bytes: f64, flops: f64) -> f64 {
        1e3 * (bytes / self.copy_bytes_per_s).max(flops / self.gemm_flops)
    }
}

/// One kernel of the step at the bench's shapes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelCost {
    pub kernel: String,
    /// The shape it runs at, in words.
    pub shape: String,
    pub bytes: f64,
    pub flops: f64,
    /// Launches per training step (0: timed for comparison, not part of the step).
    pub per_step: usize,
}

/// Every kernel `terse bench kernels` times, in its order, for a `batch x seq` bf16 step of
/// `cfg`, with its launches per step (`backend/step.rs`'s op sequence).
pub fn step_costs(cfg: &ModelConfig, batch: usize, seq: usize) -> Vec<KernelCost> {
    let (n, d, ff, v, h, l) = (
        batch * seq,
        cfg.d_model,
        cfg.d_ff,
        cfg.vocab,
        cfg.n_heads,
        cfg.n_layers,
    );
    let total = cfg.total_params() as f64;
    let b2 = 2.0; // bytes per bf16
    let nd = (n * d) as f64;
    let nff = (n * ff) as f64;
    let mut out = Vec::new();
    let mut add = |kernel: &str, shape: String, bytes: f64, flops: f64, per_step: usize| {
        out.push(KernelCost {
            kernel: kernel.to_string(),
            shape,
            bytes,
            flops,
            per_step,
        })
    };
    let rows = |s: String| format!("{s} (N={n})");
    add(
        "embed_forward",
        rows(format!("[{v},{d}] gather")),
        2.0 * nd * b2 + 4.0 * n as f64,
        0.0,
        1,
    );
    // Two norms per layer and the final one; backward the same.
    add(
        "rmsnorm_forward",
        rows(format!("d={d}")),
        2.0 * nd * b2,
        0.0,
        2 * l + 1,
    );
    // Timed for comparison: the step fuses its residual adds into the GEMMs instead.
    add(
        "fused_residual_rmsnorm_forward",
        rows(format!("d={d}")),
        4.0 * nd * b2,
        0.0,
        0,
    );
    add(
        "rmsnorm_backward",
        rows(format!("d={d}")),
        4.0 * nd * b2,
        0.0,
        2 * l + 1,
    );
    for (name, din, dout, per_step) in gemm_shapes(cfg) {
        let flops = 2.0 * n as f64 * din as f64 * dout as f64;
        let bytes = b2 * (n * din + din * dout + n * dout) as f64;
        let shape = format!("{n}x{din} . [{dout},{din}]^T");
        add(
            &format!("gemm_forward_{name}"),
            shape.clone(),
            bytes,
            flops,
            per_step,
        );
        add(
            &format!("gemm_dgrad_{name}"),
            shape.clone(),
            bytes,
            flops,
            per_step,
        );
        // wgrad accumulates into fp32
        let wbytes = b2 * (n * din + n * dout) as f64 + 4.0 * (din * dout) as f64;
        add(
            &format!("gemm_wgrad_{name}"),
            shape,
            wbytes,
            flops,
            per_step,
        );
    }
    // The rotary embedding is fused into the attention kernels (q and k rotated as they are loaded,
    // dq and dk rotated back as they are stored), so it moves no bytes of its own.
    let att_flops = attention_forward_flops(batch, seq, h);
    let att_shape = format!("B={batch} H={h} T={seq} hd=64 causal");
    for (suffix, per_step) in [("", l), ("_cudacore", 0)] {
        add(
            &format!("attention_forward{suffix}"),
            att_shape.clone(),
            b2 * (3.0 * nd + nd),
            att_flops,
            per_step,
        );
        add(
            &format!("attention_backward{suffix}"),
            att_shape.clone(),
            b2 * (3.0 * nd * 2.0 + 2.0 * nd),
            // The floor's five products; attention_tc.cu does seven (its dQ kernel recomputes S
            // and dP instead of adding dQ atomically, which would make the bits schedule-dependent).
            2.5 * att_flops,
            per_step,
        );
    }
    // Both run in the GEMMs' epilogues (Gemm::forward_relu_mask, Gemm::dgrad_relu_mask), so the
    // floor counts no launch of them; they do run, 1 per layer each, where ff is not a multiple of
    // 128 or cuBLASLt offers no such algorithm. The kernels are timed for reference.
    add(
        "relu_forward",
        rows(format!("ff={ff}")),
        2.0 * b2 * nff,
        0.0,
        0,
    );
    add(
        "relu_backward",
        rows(format!("ff={ff}")),
        3.0 * b2 * nff,
        0.0,
        0,
    );
    add(
        "classifier_forward_backward",
        format!("N={n} V={v}"),
        3.0 * b2 * (n * v) as f64,
        0.0,
        1,
    );
    // The step's loss and z-term: its rows' ce and lse (fp32) summed in a fixed order into fp64.
    add(
        "loss_sums",
        rows("ce, lse fp32".to_string()),
        2.0 * 4.0 * n as f64 + 16.0,
        0.0,
        1,
    );
    // A small vocabulary's embedding backward is a one-hot product (backend/step.rs); the bucket
    // kernel is then timed for comparison.
    let onehot = crate::backend::cuda::launch::embed_onehot_fits(v, b2 as usize); // bf16 rows
    add(
        "embed_backward",
        format!("N={n} V={v} d={d}"),
        nd * b2 + 2.0 * 4.0 * (v * d) as f64,
        0.0,
        usize::from(!onehot),
    );
    if onehot {
        let nv = (n * v) as f64;
        add("embed_onehot", format!("N={n} V={v}"), nv * b2, 0.0, 1);
        add(
            "gemm_wgrad_embed",
            format!("[{n},{v}]^T . {n}x{d}"),
            b2 * (nv + nd) + 2.0 * 4.0 * (v * d) as f64,
            2.0 * nv * d as f64,
            1,
        );
    }
    add(
        "global_norm",
        format!("{total} fp32 grads"),
        4.0 * total,
        0.0,
        1,
    );
    // fp32 master, grads, m, v read (16) and master, m, v written (12), bf16 copy written (2)
    add(
        "adamw_dev",
        format!("{total} params, bf16 working copy"),
        (16 + 12 + 2) as f64 * total,
        0.0,
        1,
    );
    // One thread appends the step's metrics to the device ring: a launch's latency, no bytes to
    // speak of (two fp64 sums, the norm and the cursor read, a slot and the cursor written).
    add(
        "step_stats_record",
        "1 thread, 3-float slot".to_string(),
        16.0 + 4.0 + 8.0 + 4.0 * crate::backend::cuda::launch::STEP_STATS_FLOATS as f64 + 8.0,
        0.0,
        1,
    );
    out
}

/// The step's GEMMs as (name, d_in, d_out, launches per step of each direction).
pub fn gemm_shapes(cfg: &ModelConfig) -> [(&'static str, usize, usize, usize); 5] {
    let (d, ff, v, l) = (cfg.d_model, cfg.d_ff, cfg.vocab, cfg.n_layers);
    [
        ("qkv", d, 3 * d, l),
        ("out", d, d, l),
        ("up", d, ff, l),
        ("down", ff, d, l),
        ("lm_head", d, v, 1),
    ]
}

/// Causal attention forward FLOPs: half of the dense `4 B H T^2 64`.
pub fn attention_forward_flops(batch: usize, seq: usize, heads: usize) -> f64 {
    4.0 * (batch * heads) as f64 * (seq as f64).powi(2) * 64.0 / 2.0
}

/// The step's predicted floor on `card`: the sum of launches x roofline time, milliseconds.
pub fn predicted_step_ms(costs: &[KernelCost], card: &Card) -> f64 {
    costs
        .iter()
        .map(|c| c.per_step as f64 * card.predicted_ms(c.bytes, c.flops))
        .sum()
}

/// The cost table alone (no GPU): each kernel's bytes, FLOPs, launches per step and roofline
/// time on `card`, then the step's floor.
pub fn format_costs(cfg: &ModelConfig, batch: usize, seq: usize, card: &Card) -> String {
    let costs = step_costs(cfg, batch, seq);
    let mut s = format!(
        "{} predicted on {} (copy {:.2} TB/s, bf16 GEMM {:.0} TFLOP/s): {batch} x {seq} tokens, \
         vocab {}, no GPU timed\n",
        cfg.preset,
        card.name,
        card.copy_bytes_per_s / 1e12,
        card.gemm_flops / 1e12,
        cfg.vocab
    );
    s += &format!(
        "{:<32} {:>10} {:>10} {:>6} {:>11} {:>11}  shape\n",
        "kernel", "MB", "GFLOP", "/step", "ms each", "ms/step"
    );
    for c in &costs {
        let each = card.predicted_ms(c.bytes, c.flops);
        s += &format!(
            "{:<32} {:>10.1} {:>10.1} {:>6} {:>11.4} {:>11.4}  {}\n",
            c.kernel,
            c.bytes / 1e6,
            c.flops / 1e9,
            c.per_step,
            each,
            each * c.per_step as f64,
            c.shape
        );
    }
    s += &format!(
        "predicted step floor: {:.3} ms\n",
        predicted_step_ms(&costs, card)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step's GEMM FLOPs (forward, dgrad, wgrad of every matrix) are 6 x tokens x matmul
    /// parameters, the count `train_flops_per_token` uses: the launch counts match the model.
    /// The one-hot embedding backward (vocab <= 256) is a product too, but of the embedding's
    /// gather, which the model's count leaves out: it is counted apart, 2 N V d FLOPs, and only
    /// where the vocabulary takes it.
    #[test]
    fn gemm_launches_cover_every_matrix_three_times() {
        for (preset, vocab, batch, seq) in [("m1-3m", None, 4, 64), ("m2-25m", Some(65536), 2, 32)]
        {
            let cfg = ModelConfig::preset(preset, vocab).unwrap();
            let costs = step_costs(&cfg, batch, seq);
            let gemm: f64 = costs
                .iter()
                .filter(|c| c.kernel.starts_with("gemm_") && c.kernel != "gemm_wgrad_embed")
                .map(|c| c.per_step as f64 * c.flops)
                .sum();
            let onehot: f64 = costs
                .iter()
                .filter(|c| c.kernel == "gemm_wgrad_embed")
                .map(|c| c.per_step as f64 * c.flops)
                .sum();
            let want_onehot = if cfg.vocab <= 256 {
                2.0 * (batch * seq * cfg.vocab * cfg.d_model) as f64
            } else {
                0.0
            };
            assert_eq!(onehot, want_onehot, "{preset}: one-hot embedding product");
            let matmul_params = cfg.n_layers
                * (4 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.d_ff)
                + cfg.vocab * cfg.d_model;
            assert_eq!(
                gemm,
                6.0 * (batch * seq) as f64 * matmul_params as f64,
                "{preset}"
            );
        }
    }

    #[test]
    fn floor_is_the_sum_of_rooflines_and_comparisons_cost_nothing() {
        let cfg = ModelConfig::preset("m1-3m", None).unwrap();
        let costs = step_costs(&cfg, 64, 1024);
        let floor = predicted_step_ms(&costs, &H100);
        let cudacore: Vec<_> = costs
            .iter()
            .filter(|c| c.kernel.ends_with("_cudacore"))
            .collect();
        assert_eq!(cudacore.len(), 2);
        assert!(cudacore.iter().all(|c| c.per_step == 0));
        let by_hand: f64 = costs
            .iter()
            .map(|c| {
                let t = (c.bytes / H100.copy_bytes_per_s).max(c.flops / H100.gemm_flops);
                c.per_step as f64 * t * 1e3
            })
            .sum();
        assert!((floor - by_hand).abs() <= 1e-12 * by_hand && floor > 0.0);
        // Doubling the batch doubles every kernel's work but the weights' and optimizer's.
        let twice = predicted_step_ms(&step_costs(&cfg, 128, 1024), &H100);
        assert!(
            twice > 1.5 * floor && twice < 2.0 * floor,
            "{floor} -> {twice}"
        );
    }

    #[test]
    fn cards_are_found_by_device_name() {
        assert_eq!(Card::for_device("NVIDIA H200").name, "H200");
        assert_eq!(Card::for_device("NVIDIA H100 80GB HBM3").name, "H100");
        assert_eq!(Card::for_device("terse CUDA emulator (CPU)").name, "H100");
        assert_eq!(Card::by_name("h200"), Some(H200));
        assert_eq!(Card::by_name("a100"), None);
    }
}
