//! Writing an experiment's results: `results.json` (everything), `results.md` (the paper's
//! Table 15 layout and the findings) and `results.svg` (bits/byte against FLOPs/byte).

use super::ExperimentResults;
use anyhow::{bail, Result};
use std::path::Path;

/// The Markdown table in the shape of the paper's Table 15 (one model size).
pub fn markdown_table(r: &ExperimentResults) -> String {
    let mut s = String::from(
        "| Method | bytes/token | M2 bits/byte | uniform | unigram | FLOPs/byte | KL(obs‖unif) bits | top-1 acc by window position |\n|---|---|---|---|---|---|---|---|\n",
    );
    for m in &r.methods {
        let acc: Vec<String> = m
            .position_accuracy
            .iter()
            .map(|a| format!("{:.3}", a))
            .collect();
        s += &format!(
            "| {} | {:.3} | {:.4} | {:.4} | {:.4} | {:.2}M | {:.4} | {} |\n",
            m.label,
            m.eval.bytes_per_token,
            m.eval.bits_per_byte,
            m.eval.uniform_bits_per_byte,
            m.eval.unigram_bits_per_byte,
            m.eval.flops_per_byte / 1e6,
            m.kl_uniform_bits,
            acc.join(" / ")
        );
    }
    s
}

pub(super) fn write_results(r: &ExperimentResults, out: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(r)?;
    crate::fsio::write_atomic(&out.join("results.json"), &json)?;
    let mut md = format!(
        "# terse experiment --scale {}\n\nCorpus {} ({} bytes; {} held-out bytes in {}-byte chunks). M1 {}: {:.4} bits/byte held-out. M2 {} for {} steps of {} x {} tokens each.\nBaselines on the held-out bytes: gzip -9 {:.4}, xz -9 {:.4}, zstd -19 {:.4} bits/byte.\n\n",
        serde_json::to_value(r.scale)?.as_str().unwrap_or("?"),
        r.source.display(),
        r.corpus_bytes,
        r.heldout_bytes,
        r.chunk_bytes,
        r.m1.preset,
        r.m1.heldout_bpb,
        r.m2_budget.preset,
        r.m2_budget.steps,
        r.m2_budget.batch,
        r.m2_budget.seq,
        r.baselines.gzip_bpb,
        r.baselines.xz_bpb,
        r.baselines.zstd_bpb,
    );
    md += &markdown_table(r);
    md += "\nFindings of the paper, checked on this run:\n\n";
    for f in &r.findings {
        md += &format!(
            "- [{}] {}: {}\n",
            if f.holds { "x" } else { " " },
            f.claim,
            f.detail
        );
    }
    crate::fsio::write_atomic(&out.join("results.md"), md.as_bytes())?;
    plot_svg(r, &out.join("results.svg"))
}

/// Bits/byte against inference FLOPs/byte, one labelled point per method (the paper's Fig. 3).
fn plot_svg(r: &ExperimentResults, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let pts: Vec<(f64, f64, &str)> = r
        .methods
        .iter()
        .map(|m| {
            (
                m.eval.flops_per_byte,
                m.eval.bits_per_byte,
                m.label.as_str(),
            )
        })
        .collect();
    if pts.is_empty() {
        bail!("no methods to plot");
    }
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 600)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("M2 bits/byte vs inference FLOPs/byte", ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (xmin * 0.7..xmax * 1.4).log_scale(),
                (ymin * 0.9).max(0.0)..ymax * 1.05,
            )
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("inference FLOPs/byte")
            .y_desc("bits/byte (held-out)")
            .draw()
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        chart
            .draw_series(pts.iter().map(|&(x, y, l)| {
                EmptyElement::at((x, y))
                    + Circle::new((0, 0), 4, BLUE.filled())
                    + Text::new(l.to_string(), (6, -6), ("sans-serif", 12))
            }))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    crate::fsio::write_atomic(path, svg.as_bytes())
}
