//! M1's exact inference path and the CPU training backend compute the same model: the exact
//! path's log-likelihood of a window matches the training forward pass's loss. (An integration
//! test because it spans two layers: `m1` and `backend`.)

use terse::backend::cpu::CpuBackend;
use terse::m1::{ExactM1, WINDOW_START};
use terse::model::{Batch, ModelConfig, ParamArena};

fn model() -> (ModelConfig, ParamArena) {
    let cfg = ModelConfig::preset("tiny", None).unwrap();
    let mut p = ParamArena::init(&cfg, 3);
    p.data.iter_mut().for_each(|x| *x *= 8.0); // sharper, more varied distributions
    (cfg, p)
}

#[test]
fn agrees_with_the_training_forward_pass() {
    let (cfg, p) = model();
    let m1 = ExactM1::new(&cfg, &p).unwrap();
    let window = b"Equal-Info windows reset M1 at every window.";
    let probs = m1.window_probs(window);
    let nll_exact: f64 = window
        .iter()
        .enumerate()
        .map(|(k, &b)| -(probs[k][b as usize] as f64).ln())
        .sum();
    let inputs: Vec<u32> = std::iter::once(WINDOW_START as u32)
        .chain(window.iter().map(|&b| b as u32))
        .take(window.len())
        .collect();
    let targets: Vec<u32> = window.iter().map(|&b| b as u32).collect();
    let batch = Batch {
        inputs,
        targets,
        batch: 1,
        seq: window.len(),
    };
    let sums = CpuBackend::new(&cfg, p.clone(), None)
        .unwrap()
        .loss(&p.data, &batch)
        .unwrap();
    assert!(
        (sums.ce - nll_exact).abs() < 1e-3 * nll_exact,
        "exact {nll_exact} vs training {}",
        sums.ce
    );
}
