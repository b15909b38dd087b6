//! M2 over token datasets: training, resume, scoring, generation, and the guarantee that every
//! token sequence M2 can emit decodes.

mod common;
use common::tiny_m1;

use common::{sample_prefix, stderr, terse};
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;
use terse::backend::{Device, GradReduction};
use terse::checkpoint::{load_model, load_training};
use terse::tokenize::{BytesParams, EqualInfoParams, MethodParams, TokenSource};
use terse::train::{train, RunStart, TrainOptions};

fn tokenize(corpus: &Path, out: &Path, method: &str, bits: &str) {
    common::tokenize(corpus, out, method, bits, "2048", &[]);
}

fn json_line(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn options(data: std::path::PathBuf) -> TrainOptions {
    TrainOptions {
        preset: "tiny".into(),
        data,
        steps: 6,
        batch: 3,
        seq: 64,
        lr: 3e-3,
        warmup: 2,
        schedule: terse::train::ScheduleKind::Cosine,
        min_lr_frac: 0.1,
        optim: Default::default(),
        heldout_bytes: 0,
        eval_every: 2,
        eval_windows: 8,
        ckpt_every: 0,
        seed: 7,
        time_budget_s: None,
        heldout_data: None,
        tokens: None,
        init: None,
        qat: false,
        accum: 1,
        grad_reduction: GradReduction::SequenceTree,
    }
}

#[test]
fn m2_trains_scores_and_generates_on_byte_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = sample_prefix(dir.path(), 50_000);
    let (ds, gz) = (dir.path().join("bytes8"), dir.path().join("gzip8"));
    tokenize(&corpus, &ds, "bytes", "8");
    tokenize(&corpus, &gz, "gzip", "8");
    let run = dir.path().join("m2");
    let s = json_line(&terse(&[
        "train",
        "--data",
        ds.to_str().unwrap(),
        "--preset",
        "tiny",
        "--steps",
        "12",
        "--batch",
        "4",
        "--seq",
        "64",
        "--lr",
        "3e-3",
        "--eval-every",
        "6",
        "--out",
        run.to_str().unwrap(),
        "--quiet",
        "--json",
    ]));
    // 12 small steps on bytes: well below the uniform 8 bits/byte.
    assert!(s["heldout_bpb"].as_f64().unwrap() < 6.0, "{s}");

    let e = json_line(&terse(&[
        "eval",
        "--m2",
        run.to_str().unwrap(),
        "--data",
        ds.to_str().unwrap(),
        "--split",
        "heldout",
        "--json",
    ]));
    let f = |k: &str| e[k].as_f64().unwrap();
    // 50 KB in 2 KB chunks: chunk 19 is the one held-out chunk, all of its bytes scored.
    assert_eq!(e["chunks"], 1);
    assert_eq!(e["bytes"], 2048);
    assert_eq!(e["tokens"], 2048);
    assert!((f("bits_per_byte") - f("bits_per_token") * f("tokens_per_byte")).abs() < 1e-9);
    assert!((f("uniform_bits_per_byte") - 8.0).abs() < 1e-12);
    assert!(
        f("unigram_bits_per_byte") < 6.0 && f("unigram_bits_per_byte") > 3.0,
        "{e}"
    );
    assert!((f("bits_per_byte") - s["heldout_bpb"].as_f64().unwrap()).abs() < 0.05);
    // No M1 in the bytes method: FLOPs/byte = 2 x non-embedding params.
    assert_eq!(
        f("flops_per_byte"),
        2.0 * e["m2_non_embedding_params"].as_f64().unwrap()
    );
    // `--int8` adds the int8 M2's score on the same rows (what generation runs): close to the
    // float model's, and the same float score beside it.
    let q = json_line(&terse(&[
        "eval",
        "--m2",
        run.to_str().unwrap(),
        "--data",
        ds.to_str().unwrap(),
        "--split",
        "heldout",
        "--int8",
        "--int4",
        "--json",
    ]));
    assert_eq!(q["bits_per_byte"], e["bits_per_byte"]);
    for (bits, bound) in [("int8", 0.02), ("int4", 0.05)] {
        let (score, loss) = (
            q[format!("{bits}_bits_per_byte")].as_f64().unwrap(),
            q[format!("{bits}_relative_loss")].as_f64().unwrap(),
        );
        assert!(loss.abs() < bound, "{bits}: {q}");
        assert!((score / f("bits_per_byte") - 1.0 - loss).abs() < 1e-12);
    }

    // Data tokenized another way is refused, by name.
    let r = terse(&[
        "eval",
        "--m2",
        run.to_str().unwrap(),
        "--data",
        gz.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("not tokenized like"), "{}", stderr(&r));

    // Generation: exactly the asked bytes, one byte per step for 8-bit byte tokens.
    let g = json_line(&terse(&[
        "generate",
        "--m2",
        run.to_str().unwrap(),
        "--prompt",
        "The ",
        "--max-bytes",
        "50",
        "--seed",
        "3",
        "--json",
    ]));
    assert_eq!(g["bytes"], 50);
    assert_eq!(g["steps"], 50);
    assert_eq!(g["prompt_tokens"], 4);
    // On the GPU: the CPU's sample with int8 weights, byte for byte, where a GPU is usable; a
    // clear refusal where none is. `--exact` and `--weights int4` run on the CPU only.
    let on = |device: &str, extra: &[&str]| {
        let m2 = run.to_str().unwrap();
        let mut args = vec![
            "generate",
            "--m2",
            m2,
            "--prompt",
            "The ",
            "--max-bytes",
            "50",
        ];
        args.extend(["--seed", "3", "--json", "--device", device]);
        args.extend(extra);
        terse(&args)
    };
    let int8 = json_line(&on("cpu", &["--weights", "int8"]));
    assert_eq!(int8["bytes"], 50);
    let r = on("cuda", &[]);
    match terse::backend::cuda::gpu_unavailable_reason() {
        Some(_) => {
            assert!(!r.status.success());
            assert!(
                stderr(&r).contains("--device cuda: no usable GPU"),
                "{}",
                stderr(&r)
            );
        }
        None => assert_eq!(json_line(&r)["text"], int8["text"]),
    }
    for (flag, says) in [
        (&["--exact"][..], "--exact runs M2 in f32 on the CPU only"),
        (
            &["--weights", "int4"][..],
            "--weights int4 runs M2 on the CPU only",
        ),
    ] {
        let r = on("cuda", flag);
        assert!(!r.status.success());
        assert!(stderr(&r).contains(says), "{}", stderr(&r));
    }
    // The CPU's default is 4-bit weights; --exact takes no --weights.
    assert_eq!(json_line(&on("cpu", &[]))["text"], g["text"]);
    assert_eq!(
        json_line(&on("cpu", &["--weights", "int4"]))["text"],
        g["text"]
    );
    let r = on("cpu", &["--exact", "--weights", "int8"]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("cannot be used with"), "{}", stderr(&r));
    let r = on("cpu", &["--weights", "int3"]);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("possible values: int8, int4"),
        "{}",
        stderr(&r)
    );
    // A byte-level M1 is not an M2.
    let m1 = dir.path().join("m1");
    common::train_tiny(&corpus, &m1, &["--steps", "2"]);
    let r = terse(&["generate", "--m2", m1.to_str().unwrap(), "--prompt", "x"]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("not an M2"), "{}", stderr(&r));
}

#[test]
fn m2_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = sample_prefix(dir.path(), 30_000);
    let ds = dir.path().join("gzip16");
    tokenize(&corpus, &ds, "gzip", "16");
    let o = options(ds);
    let (a, b) = (dir.path().join("straight"), dir.path().join("split"));
    train(RunStart::Fresh(&o), None, &a, Device::Cpu, false).unwrap();
    train(RunStart::Fresh(&o), Some(3), &b, Device::Cpu, false).unwrap();
    let resumed = RunStart::Resume {
        dir: &b,
        steps: None,
    };
    let s = train(resumed, None, &b, Device::Cpu, false).unwrap();
    assert_eq!(s.steps_done, 6);
    let (cfg, wa) = load_model(&a).unwrap();
    let (_, wb) = load_model(&b).unwrap();
    assert_eq!(cfg.vocab, 65536, "vocab comes from the dataset");
    assert!(wa
        .data
        .iter()
        .zip(&wb.data)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    let (_, _, sa) = load_training(&a).unwrap();
    let (_, _, sb) = load_training(&b).unwrap();
    assert_eq!(sa.state, sb.state);
    assert_eq!(sa.state["options"]["tokens"]["method"], "gzip");
}

#[test]
fn too_short_chunks_are_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = sample_prefix(dir.path(), 20_000);
    let ds = dir.path().join("gzip16");
    tokenize(&corpus, &ds, "gzip", "16");
    let mut o = options(ds);
    o.seq = 4096;
    let e = train(
        RunStart::Fresh(&o),
        None,
        &dir.path().join("r"),
        Device::Cpu,
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no training chunk holds 4096 tokens"), "{e}");
}

fn source(method: &str, token_bits: u32, window_bits: u32) -> TokenSource {
    source_with_rule(method, token_bits, window_bits, "designated")
}

fn source_with_rule(method: &str, token_bits: u32, window_bits: u32, rule: &str) -> TokenSource {
    let m1 = tiny_m1();
    let equal_info = method == "equal-info";
    TokenSource {
        method: if equal_info {
            MethodParams::EqualInfo(EqualInfoParams {
                cdf_f_min: 1,
                cdf_total_bits: 16,
                chunk_bytes: 10_240,
                m1_config: m1.config().clone(),
                m1_contract: terse::m1::CONTRACT_VERSION,
                window_bits,
                window_rule: terse::coder::WindowRule::from_name(rule).unwrap(),
            })
        } else {
            assert_eq!(method, "bytes");
            MethodParams::Bytes(BytesParams {
                chunk_bytes: 10_240,
            })
        },
        token_bits,
        vocab: 1 << token_bits,
        m1_fingerprint: equal_info.then(|| format!("{:016x}", m1.fingerprint())),
        source: "test".into(),
        bytes_covered: 1,
        tokens: 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any token sequence M2 can emit decodes: equal-info at every window width and token width,
    /// and bytes, with the exact byte count a bytes model implies.
    #[test]
    fn prop_every_m2_token_sequence_decodes(
        tokens in prop::collection::vec(any::<u16>(), 0..12),
        b in prop::sample::select(vec![16u32, 32, 64]),
        wide in any::<bool>(),
        delay in any::<bool>(),
    ) {
        let bits = if wide { 16 } else { 8 };
        let tokens: Vec<u16> = tokens.iter().map(|&t| if wide { t } else { t & 0xFF }).collect();
        let rule = if delay { "delay" } else { "designated" };
        let ei = source_with_rule("equal-info", bits, b, rule);
        terse::generate::decode_tokens(&ei, Some(tiny_m1()), &tokens).unwrap();
        let by = source("bytes", bits, 0);
        let text = terse::generate::decode_tokens(&by, None, &tokens).unwrap();
        prop_assert_eq!(text.len(), tokens.len() * bits as usize / 8);
    }
}

#[test]
fn random_m2_generates_exactly_through_equal_info() {
    // An untrained M2 samples near-uniform tokens: the hardest case for decoding.
    for (bits, b) in [(16, 16), (8, 16), (16, 32)] {
        let src = source("equal-info", bits, b);
        let cfg = terse::model::ModelConfig::preset("tiny", Some(1 << bits)).unwrap();
        let m2 =
            terse::m1::ExactModel::new(&cfg, &terse::model::ParamArena::init(&cfg, 1)).unwrap();
        let o = terse::generate::SampleOptions {
            max_bytes: 400,
            temperature: 1.0,
            top_k: 0,
            seed: bits as u64,
        };
        let mut text = Vec::new();
        let r = terse::generate::generate(&m2, &src, Some(tiny_m1()), 5, b"Once upon", &o, |t| {
            text.extend_from_slice(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(text.len(), 400);
        assert_eq!(r.bytes, 400);
        assert!(r.steps > 5 && r.context_restarts > 0, "{r:?}");
        // Without the M1 the tokens were coded with, generation is refused.
        let e = terse::generate::generate(&m2, &src, None, 16, b"", &o, |_| Ok(()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("M1"), "{e}");
    }
}

/// The int8 M2 (generation's default) streams the same way: exactly `max_bytes` bytes, context
/// restarts included, and a seeded run repeats itself.
#[test]
fn int8_m2_generates_exactly_through_equal_info_and_repeats_with_a_seed() {
    let src = source("equal-info", 16, 16);
    let mut cfg = terse::model::ModelConfig::preset("tiny", Some(1 << 16)).unwrap();
    cfg.context = Some(8);
    let m2 = terse::m1::Int8Model::new(&cfg, &terse::model::ParamArena::init(&cfg, 2)).unwrap();
    let o = terse::generate::SampleOptions {
        max_bytes: 300,
        temperature: 1.0,
        top_k: 50,
        seed: 4,
    };
    let run = || {
        let mut text = Vec::new();
        let r = terse::generate::generate(&m2, &src, Some(tiny_m1()), 8, b"Once upon", &o, |t| {
            text.extend_from_slice(t);
            Ok(())
        })
        .unwrap();
        (text, r)
    };
    let (text, r) = run();
    assert_eq!((text.len(), r.bytes), (300, 300));
    assert!(r.context_restarts > 0, "{r:?}");
    assert_eq!(run().0, text);
}

#[test]
fn prompt_tokens_decode_to_the_prompt_under_both_window_rules() {
    let prompt = b"It was a dark and stormy night; the rain fell in torrents.";
    for rule in ["designated", "delay"] {
        for (bits, b) in [(16, 16), (8, 16), (16, 32)] {
            let src = source_with_rule("equal-info", bits, b, rule);
            let tokens = src
                .codec(Some(tiny_m1()))
                .unwrap()
                .encode(prompt, bits)
                .unwrap();
            let text = terse::generate::decode_tokens(&src, Some(tiny_m1()), &tokens).unwrap();
            assert_eq!(text, prompt, "{rule} b={b} {bits}-bit");
        }
    }
}
