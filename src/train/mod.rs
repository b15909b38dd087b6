//! Training: schedules, the loop, checkpoints.

pub mod checkpoint;
pub mod schedule;
mod trainer;

pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{train, RunStart, TrainOptions, TrainSummary};
