//! `terse experiment` and `terse demo`: their flags and what they print.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use terse::backend::Device;
use terse::demo::{run_demo, DemoOptions};
use terse::experiment::{markdown_table, paper_grid, run_experiment, ExperimentOptions, Scale};

/// The bundled sample corpus (six public-domain books; see data/README.md).
const SAMPLE: &[u8] = include_bytes!("../../data/sample-books.txt");

#[derive(Args)]
pub struct ExperimentArgs {
    /// Which comparison: `paper` (Table 15's methods and Fig. 5's window widths).
    #[arg(long, default_value = "paper")]
    grid: String,
    /// Budget: smoke (seconds, CI), tiny (~30 min on 2 cores), small, paper (GPU-sized).
    #[arg(long, value_enum, default_value = "tiny")]
    scale: Scale,
    /// Corpus [default: the bundled sample].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Reuse this M1 instead of training one.
    #[arg(long)]
    m1: Option<PathBuf>,
    /// Output directory (results.json, results.md, results.svg, datasets, checkpoints).
    #[arg(long, default_value = "runs/experiment")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run: auto (the GPU when usable, else the CPU), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Print results.json's summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Seconds of M1 training (the schedule is fitted to it); each M2 gets its own share.
    #[arg(long, default_value_t = 180.0)]
    seconds: f64,
    /// Seconds of training for the Equal-Info M2 (the bytes M2 gets half).
    #[arg(long, default_value_t = 240.0)]
    m2_seconds: f64,
    /// Corpus to use instead of the bundled sample.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Where to run: auto (the GPU when usable, else the CPU), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Last line of output is one JSON object with the results.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ExperimentArgs) -> Result<()> {
    if a.grid != "paper" {
        bail!("unknown grid {:?} (this build has: paper)", a.grid);
    }
    let data = corpus_or_sample(&a.out, a.data.as_ref())?;
    let r = run_experiment(&ExperimentOptions {
        scale: a.scale,
        data,
        out: a.out.clone(),
        m1: a.m1,
        grid: paper_grid(),
        device: a.device,
        seed: a.seed,
        progress: !a.json,
    })?;
    print!("{}", markdown_table(&r));
    for f in &r.findings {
        println!(
            "[{}] {}: {}",
            if f.holds { "x" } else { " " },
            f.claim,
            f.detail
        );
    }
    println!(
        "results: {0}/results.json, {0}/results.md, {0}/results.svg   ({1:.0} s)",
        a.out.display(),
        r.seconds
    );
    if a.json {
        let j = serde_json::json!({
            "m1_heldout_bpb": r.m1.heldout_bpb,
            "methods": r.methods.iter().map(|m| serde_json::json!({
                "label": m.label, "bytes_per_token": m.eval.bytes_per_token,
                "bits_per_byte": m.eval.bits_per_byte, "uniform_bits_per_byte": m.eval.uniform_bits_per_byte,
                "flops_per_byte": m.eval.flops_per_byte,
            })).collect::<Vec<_>>(),
            "findings": r.findings, "seconds": r.seconds,
        });
        println!("{j}");
    }
    Ok(())
}

/// Creates `out` and returns `data`, or where the bundled sample was written into `out`.
fn corpus_or_sample(out: &Path, data: Option<&PathBuf>) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    Ok(match data {
        Some(p) => p.clone(),
        None => {
            let p = out.join("sample-books.txt");
            std::fs::write(&p, SAMPLE).with_context(|| format!("cannot write {}", p.display()))?;
            p
        }
    })
}

pub fn demo(a: DemoArgs) -> Result<()> {
    for (flag, v) in [("--seconds", a.seconds), ("--m2-seconds", a.m2_seconds)] {
        if !(v > 0.0 && v.is_finite()) {
            bail!("{flag} must be a positive number of seconds, not {v}");
        }
    }
    let data = corpus_or_sample(&a.out, a.data.as_ref())?;
    let o = DemoOptions {
        data,
        out: a.out.clone(),
        m1_seconds: a.seconds,
        m2_seconds: a.m2_seconds,
        device: a.device,
        progress: !a.json,
    };
    let r = run_demo(&o, |stage| eprintln!("{stage}"))?;
    let (m1, ei, by, base, g) = (&r.m1, &r.equal_info, &r.bytes, &r.baselines, &r.generation);
    println!(
        "held-out: {} bytes ({} chunks of {} bytes never trained on by M1 or M2)",
        r.heldout_bytes, r.heldout_chunks, r.chunk_bytes
    );
    println!(
        "  {:<46} {:>9} {:>9} {:>11}",
        "model", "bits/byte", "uniform", "bytes/token"
    );
    println!(
        "  {:<46} {:>9.3}",
        format!(
            "M1 tiny ({} steps)",
            m1.train.as_ref().map_or(0, |t| t.steps_done)
        ),
        m1.heldout_bpb
    );
    for r in [ei, by] {
        println!(
            "  {:<46} {:>9.3} {:>9.3} {:>11.3}",
            format!("M2 tiny on {} ({} steps)", r.label, r.train.steps_done),
            r.eval.bits_per_byte,
            r.eval.uniform_bits_per_byte,
            r.eval.bytes_per_token
        );
    }
    println!("  {:<46} {:>9.3}", "gzip -9", base.gzip_bpb);
    println!("  {:<46} {:>9.3}", "xz -9", base.xz_bpb);
    println!("  {:<46} {:>9.3}", "zstd -19", base.zstd_bpb);
    println!(
        "sample (Equal-Info M2, {} steps, {:.2} bytes/step, {:.2} ms/byte):\n{}",
        g.steps, g.bytes_per_step, g.ms_per_byte, r.sample_text
    );
    println!(
        "outputs under {}   total time {:.1} s",
        a.out.display(),
        r.seconds
    );
    if a.json {
        let j = serde_json::json!({
            "m1_heldout_bpb": m1.heldout_bpb,
            "equal_info_bytes_per_token": ei.eval.bytes_per_token,
            "m2_equal_info_bpb": ei.eval.bits_per_byte,
            "m2_bytes_bpb": by.eval.bits_per_byte,
            "uniform_equal_info_bpb": ei.eval.uniform_bits_per_byte,
            "unigram_equal_info_bpb": ei.eval.unigram_bits_per_byte,
            "uniform_bytes_bpb": by.eval.uniform_bits_per_byte,
            "gzip_bpb": base.gzip_bpb, "xz_bpb": base.xz_bpb, "zstd_bpb": base.zstd_bpb,
            "heldout_bytes": r.heldout_bytes,
            "m1_steps": m1.train.as_ref().map(|t| t.steps_done),
            "m2_equal_info_steps": ei.train.steps_done, "m2_bytes_steps": by.train.steps_done,
            "sample_text": r.sample_text, "generation_ms_per_byte": g.ms_per_byte,
            "backend": ei.train.backend, "seconds": r.seconds,
        });
        println!("{j}");
    }
    Ok(())
}
