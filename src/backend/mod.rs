//! Compute backends behind one trait: `cpu` (f32, rayon; the reference) and `cuda`.

pub mod cpu;
pub mod cuda;
