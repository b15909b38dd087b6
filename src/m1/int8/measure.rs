//! What quantisation costs: bits/byte of a float M1 (contract 2) and its int8 quantisation
//! (contract 3) on the same text.

use super::Int8M1;
use crate::m1::{ExactM1, Probs};
use rayon::prelude::*;

/// Bits/byte of both contracts' M1 on one text.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantisationCost {
    /// Bytes scored.
    pub bytes: usize,
    /// Bytes per window (each from a fresh context, as Equal-Info windows and `terse eval` start).
    pub window: usize,
    /// The float model on the exact path (contract 2).
    pub float_bpb: f64,
    /// Its int8 quantisation (contract 3).
    pub int8_bpb: f64,
}

impl QuantisationCost {
    /// `int8 / float - 1`: the fraction more bits the int8 model needs.
    pub fn relative_loss(&self) -> f64 {
        self.int8_bpb / self.float_bpb - 1.0
    }
}

/// Scores `text` cut into windows of `window` bytes (the last may be shorter) under both
/// models: the mean of `-log2 p(byte)` over every byte, each window from a fresh context
/// (position 0 the window-start byte). Windows run in parallel; their sums are added in order.
/// Panics if `window` is 0.
pub fn quantisation_cost(
    float: &ExactM1,
    int8: &Int8M1,
    text: &[u8],
    window: usize,
) -> QuantisationCost {
    QuantisationCost {
        bytes: text.len(),
        window,
        float_bpb: bits_per_byte(text, window, |w| float.window_probs(w)),
        int8_bpb: bits_per_byte(text, window, |w| int8.window_probs(w)),
    }
}

/// The mean of `-log2 p(byte)` over `text` in windows, `probs` giving a window's distributions.
fn bits_per_byte(text: &[u8], window: usize, probs: impl Fn(&[u8]) -> Vec<Probs> + Sync) -> f64 {
    let per_window: Vec<f64> = text
        .par_chunks(window)
        .map(|w| {
            w.iter()
                .zip(&probs(w))
                .map(|(&b, p)| -(p[b as usize] as f64).log2())
                .sum()
        })
        .collect();
    per_window.iter().sum::<f64>() / text.len().max(1) as f64
}
