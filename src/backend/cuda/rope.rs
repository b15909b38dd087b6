//! The rotary tables on the device: one upload of [`RopeTables`] that the training step's
//! attention kernels and M1's exact and int8 paths read.

use crate::numerics::RopeTables;
use anyhow::{Context, Result};
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// `cos` and `sin`, `[positions][HEAD_DIM / 2]` each, as [`RopeTables`] computed them on the host.
pub(super) struct DevRope {
    pub(super) cos: CudaSlice<f32>,
    pub(super) sin: CudaSlice<f32>,
}

impl DevRope {
    pub(super) fn upload(s: &Arc<CudaStream>, rope: &RopeTables) -> Result<Self> {
        let up = |x: &[f32]| s.clone_htod(x).context("uploading the rotary tables");
        Ok(DevRope {
            cos: up(&rope.cos)?,
            sin: up(&rope.sin)?,
        })
    }
}
