//! `terse experiment --scale smoke` end to end: every method of the paper's grid tokenized,
//! trained, scored; results.json, results.md and results.svg written.

mod common;

use common::{stderr, terse};

#[test]
fn smoke_experiment_writes_every_result() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let r = terse(&[
        "experiment",
        "--scale",
        "smoke",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let methods = j["methods"].as_array().unwrap();
    let labels: Vec<&str> = methods
        .iter()
        .map(|m| m["label"].as_str().unwrap())
        .collect();
    for want in [
        "Bytes",
        "StaticAC[v=256]",
        "EqualInfoAC[b=16, v=65k]",
        "EqualInfoAC[b=128, v=256]",
        "GZip[v=65k]",
    ] {
        assert!(labels.contains(&want), "{want} missing from {labels:?}");
    }
    for m in methods {
        let e = &m["eval"];
        let f = |k: &str| e[k].as_f64().unwrap();
        assert!(
            f("bits_per_byte").is_finite() && f("bits_per_byte") > 0.0,
            "{m}"
        );
        // Uniform bits/byte = log2(vocab) / bytes per token (token bits for the bit-stream
        // methods), as the paper's Table 3.
        let bits = m["spec"]["token_bits"].as_f64().unwrap();
        let uniform = f("vocab").log2() / f("bytes_per_token");
        assert!((f("uniform_bits_per_byte") - uniform).abs() < 1e-9, "{m}");
        if m["label"] != "BPE[32k]" {
            assert_eq!(f("vocab"), 2f64.powf(bits));
        }
        // Every held-out chunk is scored whole: the bytes are the held-out bytes.
        assert_eq!(e["bytes"], j["heldout_bytes"]);
        let per_window = m["position_accuracy"].as_array().unwrap().len() as u64;
        let b = m["spec"]["window_bits"].as_u64().unwrap_or(bits as u64);
        assert_eq!(per_window, (b / bits as u64).max(1), "{}", m["label"]);
    }
    // Equal-Info runs M1, so its FLOPs/byte include M1's 2 x N1.
    let ei = methods
        .iter()
        .find(|m| m["label"] == "EqualInfoAC[b=16, v=65k]")
        .unwrap();
    let n1 = j["m1"]["non_embedding_params"].as_f64().unwrap();
    let n2 = ei["eval"]["m2_non_embedding_params"].as_f64().unwrap();
    let bpt = ei["eval"]["bytes_per_token"].as_f64().unwrap();
    let flops = ei["eval"]["flops_per_byte"].as_f64().unwrap();
    assert!((flops - (2.0 * n2 / bpt + 2.0 * n1)).abs() < 1e-6 * flops);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| EqualInfoAC[b=16, v=65k] |"), "{md}");
    let svg = std::fs::read_to_string(out.join("results.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("GZip[v=256]"));
    // The last stdout line is the JSON summary.
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&r.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["methods"].as_array().unwrap().len(), methods.len());
}

#[test]
fn experiment_refuses_unknown_grids_and_too_small_corpora() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let r = terse(&[
        "experiment",
        "--grid",
        "nope",
        "--scale",
        "smoke",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("unknown grid \"nope\""),
        "{}",
        stderr(&r)
    );
    // 3 KB make 2 chunks of 2 KB: no chunk can be held out.
    let small = common::sample_prefix(dir.path(), 3_000);
    let r = terse(&[
        "experiment",
        "--scale",
        "smoke",
        "--data",
        small.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("needs at least 20"), "{}", stderr(&r));
    // A held-out token dataset goes only with a token dataset.
    let r = terse(&[
        "train",
        "--data",
        small.to_str().unwrap(),
        "--heldout",
        out.to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
        "--steps",
        "1",
    ]);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("--heldout takes a token dataset"),
        "{}",
        stderr(&r)
    );
}
