//! Training: schedules and the loop (checkpoints are [`crate::checkpoint`]).

mod options;
pub mod schedule;
mod trainer;

pub use options::{load_m2, M2Checkpoint};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    is_token_dataset, saved_options, train, train_in_group, RunStart, TrainOptions, TrainSummary,
};
