//! Tokenizing and detokenizing as the command line runs them: M1 loaded from a checkpoint and
//! run on the CPU or the GPU, a token dataset decoded back into a file.

use crate::backend::cuda::GpuInt8M1;
use crate::backend::GPU_M1_VALIDATED;
use crate::fsio::{check_output, AtomicFile, Existing};
use crate::m1::{Int8M1, M1Batch, M1BatchPair};
use crate::tokenize::{DatasetDecoder, M1Spec, Method, TokenDataset};
use anyhow::{bail, ensure, Context, Result};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// GPU memory `--gpu` gives M1's key/value caches, both batches together (a sixth of an H100's
/// 80 GB); m1-3m's `ac` at a 256-position context needs 3.4 GB for
/// [`MAX_STREAMS`](crate::backend::cuda::MAX_STREAMS) per batch.
const GPU_CACHE_BUDGET: usize = 12 << 30;

/// M1 on the GPU for `ac` and `equal-info` (`--gpu`): two of contract 3's GPU twins
/// ([`GpuInt8M1`], each on its own CUDA stream) as one [`M1BatchPair`] for
/// [`M1Spec::with_batch`], sized for `chunk_bytes`-byte chunks, so the GPU computes one's step
/// while the CPU codes the other's; refuses other methods and machines without a usable GPU.
/// Says on stderr how many streams it runs at once and, until [`GPU_M1_VALIDATED`] is set, that
/// its kernels have passed their parity tests on the CUDA emulator only (an explicit `--gpu` runs
/// them, as `--device cuda` runs the training backend).
pub fn gpu_m1_batch(
    method: &Method,
    m1: &Int8M1,
    chunk_bytes: usize,
) -> Result<Arc<Mutex<dyn M1Batch>>> {
    ensure!(
        method.needs_m1(),
        "--gpu runs M1 (ac, equal-info); {} runs on the CPU",
        method.name()
    );
    let half = || {
        GpuInt8M1::for_chunks(m1, chunk_bytes, GPU_CACHE_BUDGET / 2).context("--gpu: M1 on the GPU")
    };
    let (a, b) = (half()?, half()?);
    if !GPU_M1_VALIDATED {
        eprintln!(
            "note: M1's GPU kernels have changed since they last passed their bit-for-bit tests on a GPU (scripts/gpu-check.sh); decode a sample without --gpu to check the tokens"
        );
    }
    eprintln!(
        "M1 on the GPU: 2 x {} streams at a time, stepping in turn (positions up to {})",
        a.streams(),
        a.capacity()
    );
    Ok(Arc::new(Mutex::new(M1BatchPair::new(
        Box::new(a),
        Box::new(b),
    )?)))
}

/// What `method` (one that needs M1) codes with: the M1 checkpoint at `m1`, `window_bits`-bit
/// windows, the Delay rule when `delay`, and M1 on the GPU when `gpu` (for `chunk_bytes`-byte
/// chunks).
pub fn load_m1_spec(
    method: &Method,
    m1: &Path,
    window_bits: u32,
    delay: bool,
    gpu: bool,
    chunk_bytes: usize,
) -> Result<M1Spec> {
    let m1 = Int8M1::load(m1)?;
    let batch = match gpu {
        true => Some(gpu_m1_batch(method, &m1, chunk_bytes)?),
        false => None,
    };
    let spec = M1Spec::new(Arc::new(m1), window_bits).with_delay(delay);
    Ok(match batch {
        Some(b) => spec.with_batch(b),
        None => spec,
    })
}

/// What [`detokenize`] did.
#[derive(Clone, Copy, Debug)]
pub struct Detokenized {
    /// Bytes decoded (and written).
    pub bytes: usize,
    /// Seconds decoding and writing (loading M1 excluded).
    pub seconds: f64,
}

/// Decodes the token dataset `data` back to the exact bytes it covers and streams them to `out`
/// atomically ([`crate::fsio`]: an existing regular file there is replaced only when `existing`
/// says so). Equal-info and ac datasets need the M1 checkpoint they were coded with (`m1`);
/// `gpu` runs it on the GPU.
pub fn detokenize(
    data: &Path,
    m1: Option<&Path>,
    out: &Path,
    gpu: bool,
    existing: Existing,
) -> Result<Detokenized> {
    // An output that would be refused is refused before any decoding.
    check_output(out, existing)?;
    let m1 = m1.map(Int8M1::load).transpose()?.map(Arc::new);
    let batch = match (gpu, &m1) {
        (false, _) => None,
        (true, None) => bail!("--gpu runs M1: pass --m1"),
        (true, Some(m)) => {
            let meta = TokenDataset::open(data)?.metadata().clone();
            let method = meta.method.method();
            let chunk = meta.method.chunk_bytes() as usize;
            Some(gpu_m1_batch(&method, m, chunk)?)
        }
    };
    let t = Instant::now();
    let decoder = DatasetDecoder::open(data, m1, batch)?;
    // Opened only once the dataset is accepted, and streamed into as examples decode.
    let write_err = || format!("cannot write {}", out.display());
    let mut file = AtomicFile::open(out, existing).with_context(write_err)?;
    let mut w = BufWriter::with_capacity(1 << 20, &mut file);
    let mut bytes = 0;
    decoder.decode_into(|part| {
        bytes += part.len();
        w.write_all(part).with_context(write_err)
    })?;
    w.flush().with_context(write_err)?;
    drop(w);
    file.commit()?;
    Ok(Detokenized {
        bytes,
        seconds: t.elapsed().as_secs_f64(),
    })
}
