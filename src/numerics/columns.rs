//! The column split the batch-1 products share: with few input rows and many outputs, the
//! outputs are cut into runs of whole units (tiles, blocks), a few runs per thread, and each
//! task fills its own `[rows][run width]` part, copied into place after.

use rayon::prelude::*;

/// Fills `out` (`[rows][n]`) by runs of `units` output units of `unit` columns each (the last
/// unit may be partial: columns stop at `n`): `fill(part, c0, units)` computes columns
/// `c0..c0 + width` of every row into `part` (`[rows][width]`) for `units`.
pub(crate) fn by_column_runs<T: Copy + Default + Send>(
    out: &mut [T],
    rows: usize,
    n: usize,
    unit: usize,
    fill: impl Fn(&mut [T], usize, std::ops::Range<usize>) + Sync,
) {
    let units = n.div_ceil(unit);
    let per_task = units.div_ceil(4 * rayon::current_num_threads());
    let parts: Vec<(usize, Vec<T>)> = (0..units)
        .into_par_iter()
        .step_by(per_task)
        .map(|u0| {
            let u1 = units.min(u0 + per_task);
            let (c0, c1) = (u0 * unit, n.min(u1 * unit));
            let mut part = vec![T::default(); rows * (c1 - c0)];
            fill(&mut part, c0, u0..u1);
            (c0, part)
        })
        .collect();
    for (c0, part) in &parts {
        let width = part.len() / rows;
        for (r, p) in part.chunks_exact(width).enumerate() {
            out[r * n + c0..r * n + c0 + width].copy_from_slice(p);
        }
    }
}
