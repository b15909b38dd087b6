//! Model configuration presets, the parameter arena and the batch every backend steps on.

mod arena;
mod batch;
mod config;

pub use arena::{ParamArena, TensorSpec};
pub use batch::Batch;
pub use config::{ModelConfig, PRESETS};
