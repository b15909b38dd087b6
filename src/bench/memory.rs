//! The CPU's copy bandwidth: the ceiling a memory-bound step (M2's batch-1 decode, which reads
//! every weight once) is measured against.

use rayon::prelude::*;
use std::time::Instant;

/// Bytes per buffer: far beyond any cache, so the copy runs from and to DRAM.
const BUFFER_BYTES: usize = 256 << 20;

/// The median over `reps` runs of copying a [`BUFFER_BYTES`] buffer into another on all
/// threads, as bytes moved per second (read plus written, STREAM's "copy" convention: a copy of
/// N bytes moves 2N). Both buffers are written once first, so no run pays for first touch.
pub fn copy_bandwidth(reps: usize) -> f64 {
    let n = BUFFER_BYTES / 8;
    let src: Vec<u64> = (0..n as u64).into_par_iter().collect();
    let mut dst = vec![0u64; n];
    let part = n.div_ceil(rayon::current_num_threads() * 4);
    let mut rates: Vec<f64> = (0..reps.max(1) + 1)
        .map(|_| {
            let t = Instant::now();
            dst.par_chunks_mut(part)
                .zip(src.par_chunks(part))
                .for_each(|(d, s)| d.copy_from_slice(s));
            2.0 * BUFFER_BYTES as f64 / t.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    assert_eq!(dst[n - 1], n as u64 - 1);
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}
