//! Model configuration presets and the parameter arena.

mod arena;
mod config;

pub use arena::{ParamArena, TensorSpec};
pub use config::{ModelConfig, PRESETS};
