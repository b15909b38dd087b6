//! N steps, then resume for N more, gives bit-identical weights to 2N steps in one go.

mod common;

use terse::backend::Device;
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
    }
}

#[test]
fn resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    // Small enough that the run crosses an epoch boundary (~9 KB of training text, 96 bytes a step).
    let data = common::sample_prefix(dir.path(), 10_000);
    let o = options(data);
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
    let (ca, wa) = load_model(&a).unwrap();
    let (cb, wb) = load_model(&b).unwrap();
    // Exact inference will attend over the training length.
    assert_eq!((ca.context, cb.context), (Some(32), Some(32)));
    assert!(
        wa.data
            .iter()
            .zip(&wb.data)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "weights differ after resume"
    );
    let (_, _, sa) = load_training(&a).unwrap();
    let (_, _, sb) = load_training(&b).unwrap();
    assert_eq!(sa.m, sb.m);
    assert_eq!(sa.v, sb.v);
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
