//! The cost model of M2's decode step on the GPU ([`super::GpuInt8Model`], `kernels/m1_int8.cu`):
//! for each kernel at a model's shape, `rows` streams each `position` tokens in, the bytes it must
//! move, the int8 multiply-adds it must do and how often a step launches it, and the time those
//! imply on a card. The sum is the step's predicted floor; `terse bench generate --gpu` prints it
//! alone without a GPU and beside the measured step with one.
//!
//! A launch costs the largest of: its bytes at the card's copy ceiling, its multiply-adds at the
//! `__dp4a` ceiling, its serial chain (contract 3's RMS sum: 16 threads each add `d / 16`
//! squares, a fixed order), and [`LAUNCH_FLOOR_US`], what a dependent kernel takes
//! inside a CUDA graph however little it does. At batch 1 that floor dominates: the step is many
//! small dependent kernels, and a persistent kernel (or fused layers) is what removes it.
//! The logits then cross PCIe to the host, where sampling runs.

use super::cost::Card;
use crate::model::ModelConfig;
use crate::numerics::HEAD_DIM;
use serde::Serialize;

/// Microseconds a dependent kernel takes in a CUDA graph on Hopper, launch to drain, when its
/// work is negligible: an assumption (not yet measured by terse) for the first GPU run to check.
pub const LAUNCH_FLOOR_US: f64 = 2.0;
/// Int8 multiply-adds per second by `__dp4a` on an H100 or H200 (the same 132 SMs at 1.98 GHz):
/// 64 dp4a per clock per SM x 4 multiply-adds, from the architecture's integer rate, not measured.
pub const DP4A_MACS_PER_S: f64 = 132.0 * 1.98e9 * 64.0 * 4.0;
/// Cycles per element of a one-thread serial chain (an fma and its load), at the SM's 1.98 GHz.
const SERIAL_CYCLES_PER_ELEMENT: f64 = 4.0;
const SM_CLOCK_HZ: f64 = 1.98e9;
/// Host-bound bytes per second over PCIe 5.0 x16 (page-locked), the logits' way to the sampler.
pub const PCIE_BYTES_PER_S: f64 = 50e9;

/// One kernel (or copy) of the decode step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecodeKernelCost {
    pub kernel: &'static str,
    /// What it works on, in words.
    pub what: String,
    /// Launches per step.
    pub launches: usize,
    /// Bytes per launch (each input read once, each output written once).
    pub bytes: f64,
    /// Int8 multiply-adds per launch.
    pub int8_macs: f64,
    /// Elements of the longest one-thread chain per launch.
    pub serial: f64,
    /// Whether the bytes cross PCIe (the logits' copy) rather than HBM.
    pub to_host: bool,
}

impl DecodeKernelCost {
    /// Predicted microseconds per launch on `card` (module docs).
    pub fn us_each(&self, card: &Card) -> f64 {
        if self.to_host {
            return 1e6 * self.bytes / PCIE_BYTES_PER_S;
        }
        let memory = 1e6 * self.bytes / card.copy_bytes_per_s;
        let compute = 1e6 * self.int8_macs / DP4A_MACS_PER_S;
        let serial = 1e6 * self.serial * SERIAL_CYCLES_PER_ELEMENT / SM_CLOCK_HZ;
        LAUNCH_FLOOR_US.max(memory).max(compute).max(serial)
    }
}

/// Every kernel of one decode step of `cfg` in int8 for `rows` streams, each attending over
/// `position + 1` cached positions after this step's (`GpuInt8Model`'s launch sequence).
pub fn decode_costs(cfg: &ModelConfig, rows: usize, position: usize) -> Vec<DecodeKernelCost> {
    let (r, d, ff, v, l) = (
        rows as f64,
        cfg.d_model as f64,
        cfg.d_ff as f64,
        cfg.vocab as f64,
        cfg.n_layers,
    );
    let heads = (cfg.d_model / HEAD_DIM) as f64;
    let seen = (position + 1) as f64;
    // A product of `n` outputs over `k` inputs, its f32 input rows quantised (normalised first
    // when `norm`) inside it: the int8 weights and their exponents once, each row's f32 input,
    // its f32 output (read too when added to the residual); the RMS sum's 16 lane chains of
    // k / 16 in parallel.
    let product = |what: &str, launches, k: f64, n: f64, norm: bool, adds: bool| DecodeKernelCost {
        kernel: "m1q_qlinear",
        what: format!("{}{what} {k} -> {n}", if norm { "norm + " } else { "" }),
        launches,
        bytes: n * k + 4.0 * n + r * 4.0 * k + r * 4.0 * n * if adds { 2.0 } else { 1.0 },
        int8_macs: r * n * k,
        serial: if norm { k / 16.0 } else { 0.0 },
        to_host: false,
    };
    vec![
        DecodeKernelCost {
            kernel: "m1x_embed",
            what: format!("{rows} rows of {d}"),
            launches: 1,
            bytes: r * 8.0 * d,
            int8_macs: 0.0,
            serial: 0.0,
            to_host: false,
        },
        product("qkv", l, d, 3.0 * d, true, false),
        DecodeKernelCost {
            kernel: "m1q_rope_attention",
            what: format!("{rows} rows x {heads} heads over {seen} positions"),
            launches: l,
            // q and k rotated in place; each head's new key and value written, then every cached
            // key, value and their exponents read; q, k, v in, the output row out.
            bytes: r * (heads * seen * (2.0 * 64.0 + 8.0) + 8.0 * 4.0 * d),
            int8_macs: r * heads * seen * 2.0 * 64.0,
            serial: 0.0,
            to_host: false,
        },
        product("out", l, d, d, false, true),
        product("up", l, d, ff, true, false),
        product("down", l, ff, d, false, true),
        product("head", 1, d, v, true, false),
        DecodeKernelCost {
            kernel: "logits to host",
            what: format!("{rows} x {v} f32"),
            launches: 1,
            bytes: r * 4.0 * v,
            int8_macs: 0.0,
            serial: 0.0,
            to_host: true,
        },
    ]
}

/// The step's predicted floor on `card`: the sum of launches x each launch's time, microseconds.
pub fn predicted_decode_us(costs: &[DecodeKernelCost], card: &Card) -> f64 {
    costs
        .iter()
        .map(|c| c.launches as f64 * c.us_each(card))
        .sum()
}

/// The per-kernel table and the floor, for `terse bench generate --gpu`.
pub fn format_decode_costs(cfg: &ModelConfig, rows: usize, position: usize, card: &Card) -> String {
    let costs = decode_costs(cfg, rows, position);
    let mut s = format!(
        "GPU decode step predicted on {} (copy {:.2} TB/s, dp4a {:.0} T int8 MAC/s, {LAUNCH_FLOOR_US} us per launch, PCIe {:.0} GB/s): {} vocab {}, {rows} streams at position {position}\n",
        card.name,
        card.copy_bytes_per_s / 1e12,
        DP4A_MACS_PER_S / 1e12,
        PCIE_BYTES_PER_S / 1e9,
        cfg.preset,
        cfg.vocab
    );
    s += &format!(
        "{:<18} {:>9} {:>9} {:>7} {:>9} {:>9}  what\n",
        "kernel", "MB", "M MAC", "/step", "us each", "us/step"
    );
    for c in &costs {
        let each = c.us_each(card);
        s += &format!(
            "{:<18} {:>9.3} {:>9.2} {:>7} {:>9.2} {:>9.2}  {}\n",
            c.kernel,
            c.bytes / 1e6,
            c.int8_macs / 1e6,
            c.launches,
            each,
            each * c.launches as f64,
            c.what
        );
    }
    let launches: usize = costs
        .iter()
        .filter(|c| !c.to_host)
        .map(|c| c.launches)
        .sum();
    s += &format!(
        "predicted step: {:.1} us ({launches} kernel launches)\n",
        predicted_decode_us(&costs, card)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::cost::H200;

    /// The products read every matrix once (the int8 weight count is the model's), and a step
    /// launches 2 + 5 per layer kernels: the count `GpuInt8Model::enqueue` makes fused
    /// (M2's decoding).
    #[test]
    fn decode_costs_follow_the_model_and_the_launch_sequence() {
        let cfg = ModelConfig::preset("m2-25m", Some(65536)).unwrap();
        let costs = decode_costs(&cfg, 1, 100);
        let weights: f64 = costs
            .iter()
            .filter(|c| c.kernel == "m1q_qlinear")
            .map(|c| c.launches as f64 * c.int8_macs)
            .sum();
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let matrices = cfg.n_layers * (4 * d * d + 2 * d * ff) + cfg.vocab * d;
        assert_eq!(weights, matrices as f64);
        let launches: usize = costs
            .iter()
            .filter(|c| !c.to_host)
            .map(|c| c.launches)
            .sum();
        assert_eq!(launches, 2 + 5 * cfg.n_layers);
        // At batch 1 every kernel is at least a launch; the head's 33.5 MB sit above it.
        let floor = predicted_decode_us(&costs, &H200);
        assert!(floor >= LAUNCH_FLOOR_US * launches as f64, "{floor}");
        let head = costs
            .iter()
            .find(|c| c.what.starts_with("norm + head"))
            .unwrap();
        assert!(head.us_each(&H200) > LAUNCH_FLOOR_US);
        // More streams add cache reads, products and logits, never less time.
        assert!(predicted_decode_us(&decode_costs(&cfg, 64, 100), &H200) > floor);
    }
}
