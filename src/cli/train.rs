//! `terse train`: its flags, the run they describe, the summary it prints.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::rc::Rc;
use terse::backend::{Device, GradReduction};
use terse::dist::Group;
use terse::train::{train_in_group, RunStart, ScheduleKind, TrainOptions, TrainSummary};

#[derive(Args)]
pub struct TrainArgs {
    /// Model preset: tiny, m1-3m, m2-25m, m2-113m, m2-403m.
    #[arg(long)]
    preset: Option<String>,
    /// Corpus (.txt or .jsonl in C4 layout, optionally .gz or .zst) to train a byte-level M1, or
    /// a token dataset directory (`terse tokenize` output) to train M2 on its tokens.
    #[arg(long)]
    data: Option<PathBuf>,
    /// M2: the held-out token dataset (the same method on a held-out file) [default: every 20th
    /// chunk of --data is held out].
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// Total optimiser steps (the schedule's length). On --resume, may extend the run.
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per pass [default: 16]; a step is --accum passes.
    #[arg(long)]
    batch: Option<usize>,
    /// Gradient accumulation: passes of --batch sequences summed into each step, so the global
    /// batch is --batch x --accum (on the CPU, bit for bit the same as --batch x --accum in one
    /// pass; on the GPU, within fp32 rounding, with one pass's activation memory) [default: 1].
    #[arg(long)]
    accum: Option<usize>,
    /// How the CPU sums a step's gradient: sequence-tree (each sequence alone, added by a fixed
    /// tree: the same bits at any --accum and rank count) or whole-batch (one pass over the
    /// batch, as runs begun before 2026-12-06 did; one process only) [default: sequence-tree].
    #[arg(long, value_enum)]
    reduction: Option<GradReduction>,
    /// Bytes (M1) or tokens (M2) per sequence [default: 256 bytes, 512 tokens].
    #[arg(long)]
    seq: Option<usize>,
    /// Peak learning rate [default: 1e-3].
    #[arg(long)]
    lr: Option<f32>,
    /// Linear warmup steps [default: min(100, steps/10)].
    #[arg(long)]
    warmup: Option<u64>,
    /// Decay after warmup [default: cosine].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Final learning rate as a fraction of the peak [default: 0.1].
    #[arg(long)]
    min_lr_frac: Option<f32>,
    /// AdamW decoupled weight decay on matrices [default: 0.1].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Global gradient-norm clip, 0 to disable [default: 1.0].
    #[arg(long)]
    clip: Option<f32>,
    /// Bytes at the head of the corpus held out for evaluation [default: 262144].
    #[arg(long)]
    heldout_bytes: Option<u64>,
    /// Held-out evaluation every N steps [default: 100].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Held-out windows per evaluation, 0 for all [default: 64].
    #[arg(long)]
    eval_windows: Option<usize>,
    /// Checkpoint every N steps (always at the end) [default: 500].
    #[arg(long)]
    ckpt_every: Option<u64>,
    /// Seed for initialisation and data order [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory: checkpoint files and metrics.jsonl [default: runs/<preset>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this checkpoint directory, exactly.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop this invocation after step N (saving a checkpoint); the schedule is unchanged.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Fit the schedule to this many seconds of training: --steps becomes an upper bound and
    /// the step count is set from the speed of steps 3..12 (saved, so a resume repeats it).
    #[arg(long)]
    time_budget: Option<f64>,
    /// Start from this checkpoint directory's weights (a model of --preset's configuration) with
    /// a fresh optimiser and schedule: fine-tuning. A resume repeats it.
    #[arg(long, value_name = "CHECKPOINT")]
    init: Option<PathBuf>,
    /// Quantisation-aware training of M1 (a corpus, not a token dataset): the forward pass
    /// computes on the int8 numbers M1 codes with (numeric contract 3: weights with RMSNorm
    /// gains folded in, input rows, q/k/v heads; gradients passed straight through). Runs on
    /// the CPU backend; use with --init to fine-tune a trained M1 for int8.
    #[arg(long)]
    qat: bool,
    /// Where to run: auto (the GPU when usable, else the CPU), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Runs `terse train`, as one rank of an MPI job when a launcher started it.
pub fn run(a: TrainArgs) -> Result<()> {
    super::ranks::run_ranked(|group| run_in(a, group))
}

fn run_in(a: TrainArgs, group: Option<Rc<dyn Group>>) -> Result<()> {
    let lead = group.as_ref().is_none_or(|g| g.rank() == 0);
    let progress = !a.quiet;
    let summary = if let Some(dir) = &a.resume {
        let fixed = [
            ("--preset", a.preset.is_some()),
            ("--data", a.data.is_some()),
            ("--batch", a.batch.is_some()),
            ("--accum", a.accum.is_some()),
            ("--reduction", a.reduction.is_some()),
            ("--seq", a.seq.is_some()),
            ("--lr", a.lr.is_some()),
            ("--warmup", a.warmup.is_some()),
            ("--schedule", a.schedule.is_some()),
            ("--min-lr-frac", a.min_lr_frac.is_some()),
            ("--weight-decay", a.weight_decay.is_some()),
            ("--clip", a.clip.is_some()),
            ("--heldout-bytes", a.heldout_bytes.is_some()),
            ("--eval-every", a.eval_every.is_some()),
            ("--eval-windows", a.eval_windows.is_some()),
            ("--ckpt-every", a.ckpt_every.is_some()),
            ("--seed", a.seed.is_some()),
            ("--heldout", a.heldout.is_some()),
            ("--time-budget", a.time_budget.is_some()),
            ("--init", a.init.is_some()),
            ("--qat", a.qat),
        ];
        if let Some((flag, _)) = fixed.iter().find(|f| f.1) {
            bail!("{flag} cannot be changed on --resume: the run's settings come from the checkpoint (only --steps, --stop-after, --out and --device may be given)");
        }
        let out = a.out.clone().unwrap_or_else(|| dir.clone());
        train_in_group(
            RunStart::Resume {
                dir,
                steps: a.steps,
            },
            a.stop_after,
            &out,
            a.device,
            progress,
            group,
        )?
    } else {
        let Some(data) = a.data.clone() else {
            bail!("--data is required (a corpus file), or --resume a checkpoint")
        };
        let preset = a
            .preset
            .clone()
            .unwrap_or_else(|| TrainOptions::default_preset(&data).into());
        let mut o = TrainOptions::new(data, preset.clone(), a.steps.unwrap_or(1000));
        o.heldout_data = a.heldout.clone();
        o.batch = a.batch.unwrap_or(o.batch);
        o.accum = a.accum.unwrap_or(o.accum);
        o.grad_reduction = a.reduction.unwrap_or(o.grad_reduction);
        o.seq = a.seq.unwrap_or(o.seq);
        o.lr = a.lr.unwrap_or(o.lr);
        o.warmup = a.warmup.unwrap_or(o.warmup);
        o.schedule = a.schedule.unwrap_or(o.schedule);
        o.min_lr_frac = a.min_lr_frac.unwrap_or(o.min_lr_frac);
        o.optim.weight_decay = a.weight_decay.unwrap_or(o.optim.weight_decay);
        o.optim.clip = a.clip.unwrap_or(o.optim.clip);
        o.heldout_bytes = a.heldout_bytes.unwrap_or(o.heldout_bytes);
        o.time_budget_s = a.time_budget;
        o.eval_every = a.eval_every.unwrap_or(o.eval_every);
        o.eval_windows = a.eval_windows.unwrap_or(o.eval_windows);
        o.ckpt_every = a.ckpt_every.unwrap_or(o.ckpt_every);
        o.seed = a.seed.unwrap_or(o.seed);
        o.init = a.init.clone();
        o.qat = a.qat;
        let out = a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&preset));
        train_in_group(
            RunStart::Fresh(&o),
            a.stop_after,
            &out,
            a.device,
            progress,
            group,
        )?
    };
    if !lead {
        return Ok(());
    }
    print_summary(&summary, a.json)
}

fn print_summary(s: &TrainSummary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
    } else {
        println!(
            "trained {}/{} steps on {} in {:.1} s: {:.0} tokens/s, train {:.3} bpb, held-out {}; checkpoint in {}",
            s.steps_done,
            s.steps_total,
            s.backend,
            s.seconds,
            s.tokens_per_s,
            s.final_train_bpb,
            s.heldout_bpb.map_or("not evaluated".into(), |b| format!("{b:.3} bpb")),
            s.out.display()
        );
    }
    Ok(())
}
