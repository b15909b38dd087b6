//! Learning-rate schedules: linear warmup, then cosine or inverse-square-root decay.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Cosine from the peak to `min_lr_frac * peak` at the last step.
    Cosine,
    /// `peak * sqrt(warmup / step)` after warmup (the paper's M2 schedule), floored at `min_lr_frac * peak`.
    Rsqrt,
    Constant,
}

/// The learning rate as a pure function of the step (0-based), so resume reproduces it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak_lr: f32,
    pub warmup: u64,
    pub total: u64,
    pub min_lr_frac: f32,
}

impl Schedule {
    pub fn lr(&self, step: u64) -> f32 {
        let peak = self.peak_lr as f64;
        let floor = peak * self.min_lr_frac as f64;
        if step < self.warmup {
            return (peak * (step + 1) as f64 / self.warmup as f64) as f32;
        }
        let lr = match self.kind {
            ScheduleKind::Constant => peak,
            ScheduleKind::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let progress = ((step - self.warmup) as f64 / span).min(1.0);
                floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            ScheduleKind::Rsqrt => {
                (peak * (self.warmup.max(1) as f64 / (step + 1) as f64).sqrt()).max(floor)
            }
        };
        lr as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_floor() {
        let s = Schedule {
            kind: ScheduleKind::Cosine,
            peak_lr: 1.0,
            warmup: 10,
            total: 110,
            min_lr_frac: 0.1,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-6);
        assert!((s.lr(9) - 1.0).abs() < 1e-6);
        assert!((s.lr(10) - 1.0).abs() < 1e-6);
        assert!((s.lr(60) - 0.55).abs() < 1e-6);
        assert!((s.lr(110) - 0.1).abs() < 1e-6);
        assert!((s.lr(500) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn rsqrt_decays_and_floors() {
        let s = Schedule {
            kind: ScheduleKind::Rsqrt,
            peak_lr: 1.0,
            warmup: 100,
            total: 0,
            min_lr_frac: 0.2,
        };
        assert!((s.lr(399) - 0.5).abs() < 1e-6);
        assert!((s.lr(1_000_000) - 0.2).abs() < 1e-6);
    }
}
