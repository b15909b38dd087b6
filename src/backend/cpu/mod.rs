//! The CPU backend: f32 arithmetic, threads from rayon. It is the reference every CUDA kernel is
//! checked against (each op family here has a twin of the same name under `kernels/`) and the
//! fallback that runs the whole pipeline where no GPU is present.
//!
//! Every reduction runs in a fixed order over fixed-size blocks, so a step's results are
//! bit-identical across runs and thread counts; this is what makes `--resume` exact. With
//! [`GradReduction::SequenceTree`] the batch's gradient is a fixed-order sum of its sequences'
//! (`backend/reduce.rs`), which also makes it independent of how many ranks share the batch.

pub mod adamw;
pub mod attention;
pub mod classifier;
pub mod embed;
pub mod matmul;
mod model;
pub mod norm;
pub mod rope;
mod vecops;

use super::reduce::{halving_tree_sum, rank_share, sum_across_ranks, tree_depth, GradReduction};
use super::{Backend, OptimConfig, StepReport, StepStats};
use crate::dist::Group;
use crate::model::Batch;
use crate::model::{ModelConfig, ParamArena};
use adamw::{adamw, AdamWStep};
use anyhow::{ensure, Result};
pub use classifier::LossSums;
use model::{forward_backward, Activations};
use std::rc::Rc;

/// Model weights, gradients, AdamW moments and activations in host memory.
pub struct CpuBackend {
    cfg: ModelConfig,
    params: ParamArena,
    grads: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    acts: Option<Activations>,
    /// How a step sums its gradient over the batch, and the ranks that share each batch.
    reduction: GradReduction,
    group: Option<Rc<dyn Group>>,
    /// One sequence's activations and the halving tree's spare gradients (`SequenceTree`).
    leaf_acts: Option<Activations>,
    spare: Vec<Vec<f32>>,
    /// Quantisation-aware: every pass simulates contract 3 ([`CpuBackend::with_qat`]).
    qat: bool,
    /// Metrics of finished steps not yet taken (each step runs to the end when submitted).
    done: Vec<StepReport>,
}

impl CpuBackend {
    /// Takes ownership of the weights; `moments` restores AdamW state (`m`, `v`) on resume.
    pub fn new(
        cfg: &ModelConfig,
        params: ParamArena,
        moments: Option<(Vec<f32>, Vec<f32>)>,
    ) -> Result<Self> {
        let n = params.len();
        ensure!(
            n == cfg.total_params(),
            "weights hold {n} values, config expects {}",
            cfg.total_params()
        );
        let (m, v) = moments.unwrap_or_else(|| (vec![0.0; n], vec![0.0; n]));
        ensure!(
            m.len() == n && v.len() == n,
            "optimizer state does not match the weights"
        );
        Ok(CpuBackend {
            cfg: cfg.clone(),
            params,
            grads: vec![0.0; n],
            m,
            v,
            acts: None,
            reduction: GradReduction::WholeBatch,
            group: None,
            leaf_acts: None,
            spare: Vec::new(),
            qat: false,
            done: Vec::new(),
        })
    }

    /// The same backend training quantisation-aware: every forward pass (training steps and
    /// evaluation) computes on M1's contract-3 numbers (int8 weights with the RMSNorm gains
    /// folded in, int8 input rows, int8 q, k and v heads; fake quantisation, gradients taken
    /// straight through), so training fits the model `Int8M1` will run. Byte-level models only:
    /// contract 3 quantises M1.
    pub fn with_qat(mut self) -> Result<Self> {
        ensure!(
            self.cfg.vocab == 256,
            "quantisation-aware training simulates M1's int8 contract 3, which quantises byte-level models (vocab 256); this model has vocab {}",
            self.cfg.vocab
        );
        self.qat = true;
        self.acts = None;
        Ok(self)
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        batch.check(self.cfg.vocab)
    }

    /// Loss sums and the gradient of the mean loss for `params` (which need not be this backend's
    /// own weights): the entry point of the finite-difference gradient check.
    pub fn loss_and_grads(
        &mut self,
        params: &[f32],
        batch: &Batch,
    ) -> Result<(LossSums, Vec<f32>)> {
        self.check_batch(batch)?;
        let mut grads = vec![0.0; params.len()];
        let a = activations_for(&mut self.acts, &self.cfg, batch.batch, batch.seq, self.qat);
        let sums = forward_backward(
            &self.cfg,
            params,
            &batch.inputs,
            &batch.targets,
            a,
            Some(&mut grads),
            batch.inputs.len(),
        );
        Ok((sums, grads))
    }

    /// Loss sums only, for arbitrary `params`.
    pub fn loss(&mut self, params: &[f32], batch: &Batch) -> Result<LossSums> {
        self.check_batch(batch)?;
        let a = activations_for(&mut self.acts, &self.cfg, batch.batch, batch.seq, self.qat);
        Ok(forward_backward(
            &self.cfg,
            params,
            &batch.inputs,
            &batch.targets,
            a,
            None,
            batch.inputs.len(),
        ))
    }

    /// The gradient of `batch`'s mean loss into `self.grads`, summed as `self.reduction` says,
    /// and the batch's loss sums.
    fn batch_gradient(&mut self, batch: &Batch) -> Result<LossSums> {
        let rows_total = batch.inputs.len();
        if self.reduction == GradReduction::WholeBatch {
            self.grads.fill(0.0);
            let acts = activations_for(&mut self.acts, &self.cfg, batch.batch, batch.seq, self.qat);
            return Ok(forward_backward(
                &self.cfg,
                &self.params.data,
                &batch.inputs,
                &batch.targets,
                acts,
                Some(&mut self.grads),
                rows_total,
            ));
        }
        let share = rank_share(batch.batch, self.group.as_deref())?;
        let n = self.grads.len();
        self.spare
            .resize_with(tree_depth(share.len()), || vec![0.0; n]);
        let (cfg, params, t) = (&self.cfg, &self.params.data, batch.seq);
        let acts = activations_for(&mut self.leaf_acts, cfg, 1, t, self.qat);
        let mut sums = halving_tree_sum(
            share.start,
            share.end,
            &mut self.grads,
            &mut self.spare,
            &mut |i, buf| {
                buf.fill(0.0);
                let rows = i * t..(i + 1) * t;
                forward_backward(
                    cfg,
                    params,
                    &batch.inputs[rows.clone()],
                    &batch.targets[rows],
                    acts,
                    Some(buf),
                    rows_total,
                )
            },
        );
        if let Some(group) = &self.group {
            sum_across_ranks(group.as_ref(), &mut self.grads, &mut sums)?;
        }
        Ok(sums)
    }
}

/// The activation buffers for `batch` sequences of `seq`, reallocated only when the shape changes.
fn activations_for<'a>(
    acts: &'a mut Option<Activations>,
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    qat: bool,
) -> &'a mut Activations {
    if !acts.as_ref().is_some_and(|a| a.fits(batch, seq, qat)) {
        *acts = Some(Activations::new(cfg, batch, seq, qat));
    }
    acts.as_mut().expect("just set")
}

/// Host memory the CPU backend holds to train a model, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainingMemory {
    /// Activations of one batch (held for held-out evaluation, and for each step under
    /// [`GradReduction::WholeBatch`]) and, under `SequenceTree`, of one sequence.
    pub activations: u128,
    /// Weights, gradients and the two AdamW moments (four floats per parameter), and under
    /// `SequenceTree` the halving tree's spare gradients.
    pub state: u128,
}

impl TrainingMemory {
    pub fn total(&self) -> u128 {
        self.activations + self.state
    }
}

/// What training `cfg` on `batch` sequences of `seq` tokens (quantisation-aware with `qat`,
/// gradients summed by `reduction`) holds in host memory on the CPU backend in one process (the
/// same count as its allocations, checked by a test); ranks sharing the batch hold no more.
pub fn training_memory(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    qat: bool,
    reduction: GradReduction,
) -> TrainingMemory {
    let params = cfg.total_params() as u128;
    let (leaf, spare) = match reduction {
        GradReduction::WholeBatch => (0, 0),
        GradReduction::SequenceTree => (
            Activations::floats(cfg, 1, seq, qat),
            tree_depth(batch) as u128 * params,
        ),
    };
    TrainingMemory {
        activations: 4 * (Activations::floats(cfg, batch, seq, qat) + leaf),
        state: 16 * params + 4 * spare,
    }
}

/// Memory this machine can still give a process (`MemAvailable` in `/proc/meminfo`), in bytes;
/// `None` where that cannot be read.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn device(&self) -> super::Device {
        super::Device::Cpu
    }

    fn submit_step(&mut self, batch: &Batch, lr: f32, step: u64, opt: &OptimConfig) -> Result<()> {
        self.check_batch(batch)?;
        ensure!(step >= 1, "optimizer steps count from 1");
        let sums = self.batch_gradient(batch)?;
        let mut sq = 0f64;
        for s in &self.params.specs {
            sq += vecops::sum_sq_f64(&self.grads[s.range()]);
        }
        let grad_norm = sq.sqrt() as f32;
        ensure!(
            grad_norm.is_finite(),
            "gradient norm is not finite at step {step} (loss {})",
            sums.ce / sums.rows as f64
        );
        let grad_scale = if opt.clip > 0.0 && grad_norm > opt.clip {
            opt.clip / grad_norm
        } else {
            1.0
        };
        for s in &self.params.specs {
            let r = s.range();
            let h = AdamWStep {
                lr,
                beta1: opt.beta1,
                beta2: opt.beta2,
                eps: opt.eps,
                weight_decay: if s.shape.len() == 2 {
                    opt.weight_decay
                } else {
                    0.0
                },
                grad_scale,
                bias_corr1: 1.0 - opt.beta1.powi(step as i32),
                bias_corr2: 1.0 - opt.beta2.powi(step as i32),
            };
            adamw(
                &mut self.params.data[r.clone()],
                &self.grads[r.clone()],
                &mut self.m[r.clone()],
                &mut self.v[r],
                &h,
            );
        }
        self.done.push(StepReport {
            step,
            stats: StepStats::from_sums(&sums, grad_norm),
        });
        Ok(())
    }

    fn take_step_stats(&mut self, _wait: bool) -> Result<Vec<StepReport>> {
        Ok(std::mem::take(&mut self.done))
    }

    fn eval_batch(&mut self, batch: &Batch) -> Result<LossSums> {
        let params = std::mem::take(&mut self.params.data);
        let r = self.loss(&params, batch);
        self.params.data = params;
        r
    }

    fn params(&self) -> Result<ParamArena> {
        Ok(self.params.clone())
    }

    fn optimizer_state(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.m.clone(), self.v.clone()))
    }

    fn share_steps(
        &mut self,
        reduction: GradReduction,
        _passes: usize,
        group: Option<Rc<dyn Group>>,
    ) -> Result<()> {
        ensure!(
            group.is_none() || reduction == GradReduction::SequenceTree,
            "this run sums each step's gradient over its whole batch at once (it began before per-sequence reduction), which cannot be shared between ranks: continue it in one process"
        );
        self.reduction = reduction;
        self.group = group;
        Ok(())
    }
}
