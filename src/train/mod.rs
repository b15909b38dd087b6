//! Training: schedules and the loop (checkpoints are [`crate::checkpoint`]).

pub mod schedule;
mod trainer;

pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    is_token_dataset, saved_options, train, RunStart, TokenSource, TrainOptions, TrainSummary,
};
