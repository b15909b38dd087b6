//! The scaling model of data-parallel training: what a step's gradient all-reduce costs over a
//! link, against the step's compute from the GPU cost model (`backend::cuda::cost`), giving the
//! fraction of N GPUs' time spent computing (`terse bench scaling`). A model on paper: no
//! multi-GPU machine has run terse, so its figures are predictions; the CPU points beside it in
//! BENCHMARKS.md are the part that could be measured.
//!
//! Assumptions, each stated where it is used: fp32 gradients (4 bytes a parameter, as the CUDA
//! backend keeps them); a ring all-reduce, moving `2 (N-1)/N` times the gradient through each
//! GPU's slowest link; 8 GPUs a node joined by NVLink, and beyond 8 the hierarchical form NCCL
//! uses (reduce-scatter inside the node, all-reduce of each GPU's eighth across nodes, all-gather
//! inside the node); weak scaling (each GPU keeps its own batch).

use crate::backend::cuda::cost::{predicted_step_ms, step_costs, Card};
use crate::model::ModelConfig;
use serde::Serialize;

/// GPUs a node holds (an HGX/DGX H100 or H200).
pub const GPUS_PER_NODE: usize = 8;

/// A link between GPUs, as one GPU sees it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Link {
    pub name: &'static str,
    /// Bytes a second one GPU can send (and at once receive) over it.
    pub bytes_per_s: f64,
    /// Per-message latency of one ring step, seconds.
    pub latency_s: f64,
}

/// NVLink 4 inside an H100/H200 node: 450 GB/s each way per GPU (NVIDIA's figure of 900 GB/s
/// both ways); NCCL reaches about 80% of it, which the ring below does not assume.
pub const NVLINK4: Link = Link {
    name: "NVLink 4",
    bytes_per_s: 450e9,
    latency_s: 5e-6,
};

/// InfiniBand NDR, one 400 Gb/s adapter per GPU (a DGX H100's eight): 50 GB/s each way.
pub const INFINIBAND_NDR: Link = Link {
    name: "InfiniBand NDR (400 Gb/s per GPU)",
    bytes_per_s: 50e9,
    latency_s: 10e-6,
};

/// 100 Gb/s Ethernet, one adapter per node shared by its 8 GPUs: 1.5625 GB/s each.
pub const ETHERNET_100G: Link = Link {
    name: "100 GbE (one per node)",
    bytes_per_s: 12.5e9 / GPUS_PER_NODE as f64,
    latency_s: 30e-6,
};

/// Seconds a ring all-reduce of `bytes` over `n` members joined by `link` takes.
pub fn ring_allreduce_s(bytes: f64, n: usize, link: &Link) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let steps = 2.0 * (n as f64 - 1.0);
    steps / n as f64 * bytes / link.bytes_per_s + steps * link.latency_s
}

/// Seconds to all-reduce `bytes` of gradient over `gpus` GPUs: inside one node a ring over
/// NVLink; across nodes NVLink inside each node and `between` for each GPU's eighth.
pub fn allreduce_s(bytes: f64, gpus: usize, between: &Link) -> f64 {
    if gpus <= GPUS_PER_NODE {
        return ring_allreduce_s(bytes, gpus, &NVLINK4);
    }
    let nodes = gpus.div_ceil(GPUS_PER_NODE);
    // Reduce-scatter and all-gather inside the node are each half a ring all-reduce.
    ring_allreduce_s(bytes, GPUS_PER_NODE, &NVLINK4)
        + ring_allreduce_s(bytes / GPUS_PER_NODE as f64, nodes, between)
}

/// One row of the model: a preset at N GPUs over one inter-node link.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingPoint {
    pub preset: String,
    pub params: usize,
    pub gpus: usize,
    pub link: &'static str,
    /// Gradient bytes all-reduced per step (fp32).
    pub allreduce_bytes: f64,
    pub compute_ms: f64,
    pub allreduce_ms: f64,
    /// compute / (compute + all-reduce): nothing overlapped.
    pub efficiency_serial: f64,
    /// With the all-reduce overlapped with the backward pass (two thirds of the compute), as
    /// bucketed DDP does; only what overflows it is exposed.
    pub efficiency_overlapped: f64,
}

/// The model for `cfg` at `batch x seq` tokens per GPU on `card`, at each of `gpus`, over `link`
/// between nodes.
pub fn scaling_points(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    card: &Card,
    gpus: &[usize],
    link: &Link,
) -> Vec<ScalingPoint> {
    let compute_ms = predicted_step_ms(&step_costs(cfg, batch, seq), card);
    let bytes = 4.0 * cfg.total_params() as f64;
    gpus.iter()
        .map(|&n| {
            let allreduce_ms = 1e3 * allreduce_s(bytes, n, link);
            let exposed = (allreduce_ms - compute_ms * 2.0 / 3.0).max(0.0);
            ScalingPoint {
                preset: cfg.preset.clone(),
                params: cfg.total_params(),
                gpus: n,
                link: link.name,
                allreduce_bytes: bytes,
                compute_ms,
                allreduce_ms,
                efficiency_serial: compute_ms / (compute_ms + allreduce_ms),
                efficiency_overlapped: compute_ms / (compute_ms + exposed),
            }
        })
        .collect()
}

/// The table `terse bench scaling` prints.
pub fn format_points(points: &[ScalingPoint]) -> String {
    let mut s = String::from(
        "| preset | GPUs | between nodes | all-reduce MB | compute ms | all-reduce ms | efficiency (serial) | efficiency (overlapped) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for p in points {
        s += &format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.0}% |\n",
            p.preset,
            p.gpus,
            if p.gpus <= GPUS_PER_NODE {
                "(one node: NVLink)"
            } else {
                p.link
            },
            p.allreduce_bytes / 1e6,
            p.compute_ms,
            p.allreduce_ms,
            100.0 * p.efficiency_serial,
            100.0 * p.efficiency_overlapped
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_moves_twice_the_data_less_one_share() {
        let link = Link {
            name: "test",
            bytes_per_s: 1e9,
            latency_s: 0.0,
        };
        assert_eq!(ring_allreduce_s(1e9, 1, &link), 0.0);
        assert!((ring_allreduce_s(1e9, 2, &link) - 1.0).abs() < 1e-12);
        assert!((ring_allreduce_s(1e9, 4, &link) - 1.5).abs() < 1e-12);
        // Across nodes each GPU sends only its eighth over the slow link.
        let within = ring_allreduce_s(8e9, 8, &NVLINK4);
        let across = allreduce_s(8e9, 16, &link) - within;
        assert!((across - 1.0).abs() < 1e-9, "{across}");
    }

    #[test]
    fn efficiency_falls_with_a_slower_link_and_more_gpus() {
        let cfg = ModelConfig::preset("m2-113m", None).unwrap();
        let card = crate::backend::cuda::cost::H100;
        let ib = scaling_points(&cfg, 64, 512, &card, &[8, 64, 512], &INFINIBAND_NDR);
        let eth = scaling_points(&cfg, 64, 512, &card, &[8, 64, 512], &ETHERNET_100G);
        assert!(ib[1].efficiency_serial > eth[1].efficiency_serial);
        assert!(ib[2].allreduce_ms >= ib[1].allreduce_ms);
        for p in ib.iter().chain(&eth) {
            assert!(p.efficiency_overlapped >= p.efficiency_serial);
            assert!(p.efficiency_serial > 0.0 && p.efficiency_overlapped <= 1.0);
        }
    }
}
