//! Training: optimiser, schedules, loop and checkpoints.

pub mod checkpoint;
