//! The weight formats an [`super::Int8Model`]'s matrices come in: contract 3's int8 (every
//! coding M1, and M2 on the GPU) or 4-bit codes with group sub-scales (M2 on the CPU, for the
//! fewest bytes per decode step). Both take contract 3's int8 input rows and sum in exact
//! integers, so each gives the same bits on every kernel.

use super::q4::{q4matmul, quantise_int4};
use super::quantise::{qmatmul, QMatrix};
use crate::numerics::int4::I4Matrix;
use crate::numerics::int8::I8Kernel;
use anyhow::Result;
use serde::Serialize;

/// How a quantised model stores its weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightBits {
    /// int8 per output channel: contract 3, what M1 codes with and the GPU decodes with.
    Int8,
    /// 4-bit codes, an 8-bit sub-scale per 32 inputs and an f32 scale per output (4.25 bits
    /// per weight): about half of int8's bytes per step. Not a coding contract; CPU only.
    Int4,
}

impl WeightBits {
    /// The name flags and reports use (`int8`, `int4`).
    pub fn name(self) -> &'static str {
        match self {
            WeightBits::Int8 => "int8",
            WeightBits::Int4 => "int4",
        }
    }
}

/// One quantised weight matrix.
pub(crate) enum Weights {
    Int8(QMatrix),
    Int4(I4Matrix),
}

impl Weights {
    /// Quantises the model's `[n, inp]` layout in `bits`, with the RMSNorm `gain` before the
    /// product folded in. Refuses a shape the format cannot sum exactly.
    pub(crate) fn quantise(
        bits: WeightBits,
        w: &[f32],
        n: usize,
        inp: usize,
        gain: Option<&[f32]>,
    ) -> Result<Self> {
        Ok(match bits {
            WeightBits::Int8 => Weights::Int8(QMatrix::from_rows(w, n, inp, gain)),
            WeightBits::Int4 => Weights::Int4(quantise_int4(w, n, inp, gain)?),
        })
    }

    /// `out = x · Wᵀ` for every row of `x`, each row quantised on its own.
    pub(crate) fn product(&self, kernel: I8Kernel, out: &mut [f32], x: &[f32]) {
        match self {
            Weights::Int8(m) => qmatmul(kernel, out, x, m),
            Weights::Int4(m) => q4matmul(kernel, out, x, m),
        }
    }

    /// The int8 matrix, if this is one (what the GPU uploads).
    pub(crate) fn int8(&self) -> Option<&QMatrix> {
        match self {
            Weights::Int8(m) => Some(m),
            Weights::Int4(_) => None,
        }
    }
}
