//! Launchers of `kernels/embed.cu`: the token embedding and its backward, either as buckets
//! planned on the host (large vocabularies) or as a one-hot product (M1's bytes).

use super::{grid_1d, int, need};
use crate::backend::cuda::loader::{GpuFloat, GpuKernels};
use crate::backend::cuda::Entry;
use anyhow::{ensure, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// `out[n, d] = table[tokens[n]]`. Grid: ceil(n * d / 256) blocks of 256, a thread per element.
pub fn embed_forward<T: GpuFloat>(
    k: &GpuKernels,
    out: &mut impl DevicePtrMut<T>,
    table: &impl DevicePtr<T>,
    tokens: &impl DevicePtr<u32>,
    n: usize,
    d: usize,
) -> Result<()> {
    need(out.len(), n * d, "embed out")?;
    need(tokens.len(), n, "tokens")?;
    ensure!(
        d > 0 && table.len() % d == 0,
        "embedding table of {} is not [V, {d}]",
        table.len()
    );
    if n == 0 {
        return Ok(());
    }
    let (ni, di) = (int(n, "n")?, int(d, "d")?);
    int(n * d, "n * d")?;
    let s = k.stream();
    let (p_out, _g0) = out.device_ptr_mut(s);
    let (p_tab, _g1) = table.device_ptr(s);
    let (p_tok, _g2) = tokens.device_ptr(s);
    let mut b =
        s.launch_builder(k.function(T::pick(Entry::embed_forward_f32, Entry::embed_forward_bf16)));
    b.arg(&p_out).arg(&p_tab).arg(&p_tok).arg(&ni).arg(&di);
    unsafe { b.launch(grid_1d(n * d, 256)) }?;
    Ok(())
}

/// Host-side bucketing of positions by token for [`embed_backward`] (a counting sort, as the CPU
/// twin does): upload the three arrays, then launch with `num_buckets()` blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedBackwardPlan {
    /// Positions grouped by bucket, ascending within each bucket.
    pub order: Vec<i32>,
    /// `num_buckets + 1` offsets into `order`.
    pub bucket_start: Vec<i32>,
    /// The table row of each bucket (0 for empty padding buckets).
    pub bucket_token: Vec<i32>,
}

impl EmbedBackwardPlan {
    /// The bucket count that fits every batch of `n` positions over `vocab` tokens: a fixed
    /// launch shape (for CUDA graphs) whatever the batch holds.
    pub fn max_buckets(n: usize, vocab: usize) -> usize {
        n.min(vocab).max(1)
    }

    /// Buckets `tokens`, largest bucket first (ties by token id), padded with empty buckets to
    /// `num_buckets`. Errors if a token is `>= vocab` or there are more distinct tokens than
    /// `num_buckets`.
    pub fn new(tokens: &[u32], vocab: usize, num_buckets: usize) -> Result<Self> {
        int(tokens.len(), "positions")?;
        let mut count = vec![0u32; vocab];
        for &t in tokens {
            ensure!(
                (t as usize) < vocab,
                "token {t} out of range for vocab {vocab}"
            );
            count[t as usize] += 1;
        }
        let mut used: Vec<u32> = (0..vocab as u32)
            .filter(|&t| count[t as usize] > 0)
            .collect();
        ensure!(
            used.len() <= num_buckets,
            "{} distinct tokens do not fit {num_buckets} buckets",
            used.len()
        );
        used.sort_by(|&a, &b| count[b as usize].cmp(&count[a as usize]).then(a.cmp(&b)));
        // Offsets per token in bucket order, then a stable scatter keeps positions ascending.
        let mut next = vec![0i32; vocab];
        let mut bucket_start = Vec::with_capacity(num_buckets + 1);
        let mut bucket_token = Vec::with_capacity(num_buckets);
        let mut off = 0i32;
        for &t in &used {
            bucket_start.push(off);
            bucket_token.push(t as i32);
            next[t as usize] = off;
            off += count[t as usize] as i32;
        }
        while bucket_token.len() < num_buckets {
            bucket_start.push(off);
            bucket_token.push(0);
        }
        bucket_start.push(off);
        let mut order = vec![0i32; tokens.len()];
        for (n, &t) in tokens.iter().enumerate() {
            order[next[t as usize] as usize] = n as i32;
            next[t as usize] += 1;
        }
        Ok(EmbedBackwardPlan {
            order,
            bucket_start,
            bucket_token,
        })
    }

    pub fn num_buckets(&self) -> usize {
        self.bucket_token.len()
    }
}

/// `dtable[t] += sum of dout[n] over positions n with token t` (ascending n; deterministic, no
/// atomics). `order`, `bucket_start`, `bucket_token` are an [`EmbedBackwardPlan`] on the device.
/// Grid: `num_buckets` blocks of 256 threads (a block per table row, threads over channels).
#[allow(clippy::too_many_arguments)]
pub fn embed_backward<T: GpuFloat>(
    k: &GpuKernels,
    dtable: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    order: &impl DevicePtr<i32>,
    bucket_start: &impl DevicePtr<i32>,
    bucket_token: &impl DevicePtr<i32>,
    num_buckets: usize,
    d: usize,
) -> Result<()> {
    need(bucket_start.len(), num_buckets + 1, "bucket_start")?;
    need(bucket_token.len(), num_buckets, "bucket_token")?;
    need(dout.len(), order.len() * d, "embed dout")?;
    ensure!(
        d > 0 && dtable.len() % d == 0,
        "dtable of {} is not [V, {d}]",
        dtable.len()
    );
    if num_buckets == 0 {
        return Ok(());
    }
    let di = int(d, "d")?;
    int(num_buckets, "num_buckets")?;
    let s = k.stream();
    let (p_dt, _g0) = dtable.device_ptr_mut(s);
    let (p_dout, _g1) = dout.device_ptr(s);
    let (p_ord, _g2) = order.device_ptr(s);
    let (p_start, _g3) = bucket_start.device_ptr(s);
    let (p_tok, _g4) = bucket_token.device_ptr(s);
    let mut b = s.launch_builder(k.function(T::pick(
        Entry::embed_backward_f32,
        Entry::embed_backward_bf16,
    )));
    b.arg(&p_dt)
        .arg(&p_dout)
        .arg(&p_ord)
        .arg(&p_start)
        .arg(&p_tok)
        .arg(&di);
    let cfg = LaunchConfig {
        grid_dim: (num_buckets as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// The largest vocabulary whose embedding backward runs as a one-hot product
/// ([`embed_onehot`] then `Gemm::wgrad`) rather than [`embed_backward`]'s buckets: M1's bytes,
/// where the space alone is about a sixth of all positions. The one-hot rows cost `N V` elements.
pub const EMBED_ONEHOT_MAX_VOCAB: usize = 256;

/// Whether a vocabulary takes the one-hot backward with `elem_bytes`-byte storage: at most
/// [`EMBED_ONEHOT_MAX_VOCAB`] and whole 16-byte packs per row.
pub fn embed_onehot_fits(vocab: usize, elem_bytes: usize) -> bool {
    vocab > 0 && vocab <= EMBED_ONEHOT_MAX_VOCAB && vocab.is_multiple_of(16 / elem_bytes)
}

/// `onehot[n, v] = 1` where `v == tokens[n]`, else 0 (`[n, vocab]`, exact in either storage type),
/// for `dtable += onehot^T dout` as one product. `vocab` at most [`EMBED_ONEHOT_MAX_VOCAB`] and a
/// multiple of a 16-byte pack (8 bf16, 4 f32); `onehot` 16-byte aligned; tokens below `vocab`
/// (the batch's check). Grid: ceil(n vocab / pack / 256) blocks of 256, a thread per pack.
pub fn embed_onehot<T: GpuFloat>(
    k: &GpuKernels,
    onehot: &mut impl DevicePtrMut<T>,
    tokens: &impl DevicePtr<u32>,
    n: usize,
    vocab: usize,
) -> Result<()> {
    let pack = 16 / std::mem::size_of::<T>();
    ensure!(
        embed_onehot_fits(vocab, std::mem::size_of::<T>()),
        "one-hot embedding backward: vocab {vocab} is not a multiple of {pack} up to \
         {EMBED_ONEHOT_MAX_VOCAB}"
    );
    need(onehot.len(), n * vocab, "embed onehot")?;
    need(tokens.len(), n, "tokens")?;
    if n == 0 {
        return Ok(());
    }
    let (ni, vi) = (int(n, "n")?, int(vocab, "vocab")?);
    int(n * vocab, "n * vocab")?;
    let s = k.stream();
    let (p_oh, _g0) = onehot.device_ptr_mut(s);
    let (p_tok, _g1) = tokens.device_ptr(s);
    ensure!(p_oh % 16 == 0, "one-hot rows not 16-byte aligned");
    let mut b =
        s.launch_builder(k.function(T::pick(Entry::embed_onehot_f32, Entry::embed_onehot_bf16)));
    b.arg(&p_oh).arg(&p_tok).arg(&ni).arg(&vi);
    unsafe { b.launch(grid_1d(n * vocab / pack, 256)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_plan_buckets_like_the_cpu_twin() {
        let tokens = [3u32, 1, 3, 0, 3, 1, 7];
        let p = EmbedBackwardPlan::new(&tokens, 8, EmbedBackwardPlan::max_buckets(7, 8)).unwrap();
        assert_eq!(p.num_buckets(), 7);
        // largest first: token 3 (3 positions), then 1 (2), then 0 and 7 (1 each, by id)
        assert_eq!(&p.bucket_token[..4], &[3, 1, 0, 7]);
        assert_eq!(&p.bucket_start[..5], &[0, 3, 5, 6, 7]);
        assert!(
            p.bucket_start[4..].iter().all(|&s| s == 7),
            "padding is empty"
        );
        assert_eq!(p.order, vec![0, 2, 4, 1, 5, 3, 6]);
        assert!(
            EmbedBackwardPlan::new(&tokens, 7, 7).is_err(),
            "token 7 >= vocab 7"
        );
        assert!(
            EmbedBackwardPlan::new(&tokens, 8, 3).is_err(),
            "4 distinct > 3 buckets"
        );
    }
}
