//! N steps, then resume for N more, gives bit-identical weights to 2N steps in one go; gradient
//! accumulation gives bit-identical weights to the bigger batch in one pass.

mod common;

use terse::backend::{Device, GradReduction};
use terse::checkpoint::{load_model, load_training};
use terse::train::{train, RunStart, TrainOptions};

fn options(data: std::path::PathBuf) -> TrainOptions {
    TrainOptions {
        preset: "tiny".into(),
        data,
        steps: 8,
        batch: 3,
        seq: 32,
        lr: 3e-3,
        warmup: 2,
        schedule: terse::train::ScheduleKind::Cosine,
        min_lr_frac: 0.1,
        optim: Default::default(),
        heldout_bytes: 2_000,
        eval_every: 3,
        eval_windows: 4,
        ckpt_every: 0,
        seed: 42,
        time_budget_s: None,
        heldout_data: None,
        tokens: None,
        init: None,
        qat: false,
        accum: 1,
        grad_reduction: GradReduction::SequenceTree,
    }
}

/// Asserts that the checkpoints at `a` and `b` hold the same weights, AdamW moments and run
/// state, bit for bit.
fn assert_same_checkpoint(a: &std::path::Path, b: &std::path::Path) {
    let (_, wa) = load_model(a).unwrap();
    let (_, wb) = load_model(b).unwrap();
    assert!(
        wa.data
            .iter()
            .zip(&wb.data)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "weights differ"
    );
    let (_, _, sa) = load_training(a).unwrap();
    let (_, _, sb) = load_training(b).unwrap();
    assert_eq!(sa.m, sb.m);
    assert_eq!(sa.v, sb.v);
}

#[test]
fn resume_is_bit_identical() {
    // Runs saved before per-sequence reduction (whole batch) resume exactly too.
    for reduction in [GradReduction::SequenceTree, GradReduction::WholeBatch] {
        resume_is_bit_identical_with(reduction);
    }
}

fn resume_is_bit_identical_with(reduction: GradReduction) {
    let dir = tempfile::tempdir().unwrap();
    // Small enough that the run crosses an epoch boundary (~9 KB of training text, 96 bytes a step).
    let data = common::sample_prefix(dir.path(), 10_000);
    let o = TrainOptions {
        grad_reduction: reduction,
        ..options(data)
    };
    let (a, b) = (dir.path().join("straight"), dir.path().join("split"));
    train(RunStart::Fresh(&o), None, &a, Device::Cpu, false).unwrap();
    let first = train(RunStart::Fresh(&o), Some(4), &b, Device::Cpu, false).unwrap();
    assert_eq!(first.steps_done, 4);
    let second = train(
        RunStart::Resume {
            dir: &b,
            steps: None,
        },
        None,
        &b,
        Device::Cpu,
        false,
    )
    .unwrap();
    assert_eq!(second.steps_done, 8);
    let (ca, _) = load_model(&a).unwrap();
    let (cb, _) = load_model(&b).unwrap();
    // Exact inference will attend over the training length.
    assert_eq!((ca.context, cb.context), (Some(32), Some(32)));
    assert_same_checkpoint(&a, &b);
    let (_, _, sa) = load_training(&a).unwrap();
    let (_, _, sb) = load_training(&b).unwrap();
    assert_eq!(sa.state, sb.state);
    // The metrics log of the split run has each step once.
    let log = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
}

#[test]
fn accumulation_equals_the_bigger_batch_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 10_000);
    let base = TrainOptions {
        batch: 4,
        steps: 4,
        ..options(data)
    };
    let one_pass = dir.path().join("one-pass");
    train(RunStart::Fresh(&base), None, &one_pass, Device::Cpu, false).unwrap();
    for (batch, accum) in [(2, 2), (1, 4)] {
        let o = TrainOptions {
            batch,
            accum,
            ..base.clone()
        };
        let out = dir.path().join(format!("accum-{accum}"));
        train(RunStart::Fresh(&o), None, &out, Device::Cpu, false).unwrap();
        assert_same_checkpoint(&one_pass, &out);
    }
    // The same batch summed at once rounds differently: the comparison can fail.
    let whole = TrainOptions {
        grad_reduction: GradReduction::WholeBatch,
        ..base.clone()
    };
    let out = dir.path().join("whole-batch");
    train(RunStart::Fresh(&whole), None, &out, Device::Cpu, false).unwrap();
    let (_, wa) = load_model(&one_pass).unwrap();
    let (_, wb) = load_model(&out).unwrap();
    assert_ne!(wa.data, wb.data);
}

#[test]
fn training_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample_prefix(dir.path(), 60_000);
    let mut o = options(data);
    o.steps = 60;
    o.batch = 8;
    o.seq = 64;
    o.eval_every = 0;
    let out = dir.path().join("run");
    let s = train(RunStart::Fresh(&o), None, &out, Device::Cpu, false).unwrap();
    // Uniform over 256 bytes is 8 bits/byte; 60 small steps must reach well below that.
    assert!(s.final_train_bpb < 4.5, "train bpb {}", s.final_train_bpb);
    assert!(
        s.heldout_bpb.unwrap() < 4.8,
        "held-out bpb {:?}",
        s.heldout_bpb
    );
}
