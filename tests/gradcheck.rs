//! Finite-difference check of every parameter tensor's gradient on the `tiny` preset.

use terse::backend::cpu::CpuBackend;
use terse::model::Batch;
use terse::model::{ModelConfig, ParamArena};
use terse::rng::Rng;

fn mean_loss(be: &mut CpuBackend, cfg: &ModelConfig, p: &[f32], b: &Batch) -> f64 {
    let s = be.loss(p, b).unwrap();
    (s.ce + cfg.z_loss as f64 * s.z) / s.rows as f64
}

#[test]
fn every_parameter_tensor_matches_finite_differences() {
    let cfg = ModelConfig::preset("tiny", None).unwrap();
    // Larger-than-default weights so every path carries a gradient well above f32 noise.
    let mut params = ParamArena::init(&cfg, 11);
    let mut r = Rng::new(5);
    for s in params.specs.clone() {
        if s.shape.len() == 2 {
            for x in &mut params.data[s.range()] {
                *x *= 4.0;
            }
        } else {
            for x in &mut params.data[s.range()] {
                *x += 0.3 * r.normal() as f32;
            }
        }
    }
    let (b, t) = (2, 12);
    let batch = Batch {
        inputs: (0..b * t).map(|_| r.below(256) as u32).collect(),
        targets: (0..b * t).map(|_| r.below(256) as u32).collect(),
        batch: b,
        seq: t,
    };
    let mut be = CpuBackend::new(&cfg, params.clone(), None).unwrap();
    let (_, grads) = be.loss_and_grads(&params.data, &batch).unwrap();
    let mut report = Vec::new();
    for spec in &params.specs {
        let g = &grads[spec.range()];
        let gnorm = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!(gnorm > 1e-6, "{}: gradient is zero", spec.name);
        // Directions: the gradient plus independent random parts of comparable size, so a wrong
        // direction or a wrong magnitude both show.
        for trial in 0..3 {
            let mut u: Vec<f64> = g
                .iter()
                .map(|x| *x as f64 / gnorm + r.normal() / (g.len() as f64).sqrt())
                .collect();
            let un = u.iter().map(|x| x * x).sum::<f64>().sqrt();
            u.iter_mut().for_each(|x| *x /= un);
            let analytic: f64 = g.iter().zip(&u).map(|(a, b)| *a as f64 * b).sum();
            let h = 2e-2;
            let mut p = params.data.clone();
            for (x, d) in p[spec.range()].iter_mut().zip(&u) {
                *x = (*x as f64 + h * d) as f32;
            }
            let lp = mean_loss(&mut be, &cfg, &p, &batch);
            let mut p = params.data.clone();
            for (x, d) in p[spec.range()].iter_mut().zip(&u) {
                *x = (*x as f64 - h * d) as f32;
            }
            let lm = mean_loss(&mut be, &cfg, &p, &batch);
            let fd = (lp - lm) / (2.0 * h);
            let rel = (fd - analytic).abs() / analytic.abs().max(1e-4);
            report.push(format!(
                "{:<28} trial {trial}: analytic {analytic:+.6e} fd {fd:+.6e} rel {rel:.1e}",
                spec.name
            ));
            assert!(rel < 2e-2, "{}\n{}", spec.name, report.join("\n"));
        }
    }
    println!("{}", report.join("\n"));
}
