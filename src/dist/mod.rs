//! Several processes of one run: which rank this process is, how many there are, and the two
//! collectives the rest of terse needs: every rank's bytes gathered on every rank in rank order,
//! and the all-to-all that lets each rank sum one slice of a vector instead of all of it.
//!
//! A run is launched by `mpirun` or Slurm's `srun`; [`join`] notices the launcher from its
//! environment and opens the MPI library then (`mpi.rs`), so a machine without MPI builds and
//! runs terse unchanged. What the ranks do with the gathered bytes (a fixed-order sum, so that
//! any number of ranks gives the bits of one process) is the caller's: see
//! `backend::reduce`.

mod mpi;

use anyhow::Result;
pub use mpi::Mpi;

/// The processes of one run. Every method is collective: each rank must make the same calls in
/// the same order, or the run hangs or fails.
pub trait Group: Send {
    /// This process's place, `0..size`.
    fn rank(&self) -> usize;
    /// How many processes the run has.
    fn size(&self) -> usize;
    /// Gathers every rank's `mine` (all of one length) into `all`, rank 0's first:
    /// `all[r * mine.len()..][..mine.len()]` is rank `r`'s.
    fn allgather(&self, mine: &[u8], all: &mut [u8]) -> Result<()>;
    /// Sends block `r` of `blocks` (one block per rank, all of one length) to rank `r`, and
    /// receives into `mine` every rank's block for this rank, rank 0's first.
    fn alltoall(&self, blocks: &[u8], mine: &mut [u8]) -> Result<()>;
}

/// An error every rank of the run reaches at the same point with the same message (settings that
/// disagree, a batch the ranks cannot share): the ranks can end together and each say why,
/// where any other error ends the whole run from the rank that met it (`Mpi::abort`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OnEveryRank(pub String);

/// The ranks' `value`s (one `u64` each), in rank order.
pub fn gather_u64(group: &dyn Group, value: u64) -> Result<Vec<u64>> {
    let mut all = vec![0u8; 8 * group.size()];
    group.allgather(&value.to_le_bytes(), &mut all)?;
    Ok(all
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// A fingerprint of `bytes` (a command's arguments or settings) for [`check_agreement`]: its
/// CRC-32 and length.
pub fn bytes_fingerprint(bytes: &[u8]) -> u64 {
    u64::from(crc32fast::hash(bytes)) | (bytes.len() as u64) << 32
}

/// Fails on every rank, naming the first rank that differs from rank 0, unless every rank gives
/// the same `fingerprint` (a hash of its settings). `what` names what was compared.
pub fn check_agreement(group: &dyn Group, fingerprint: u64, what: &str) -> Result<()> {
    let all = gather_u64(group, fingerprint)?;
    if let Some(r) = all.iter().position(|&f| f != all[0]) {
        return Err(OnEveryRank(format!(
            "rank {r} of {} was started with other {what} than rank 0; every rank of a run must be given the same command",
            all.len()
        ))
        .into());
    }
    Ok(())
}

/// Fails on every rank unless every rank was started with the same command line (the
/// commands whose ranks share work by index: `tokenize`, `compress --filelist`).
pub fn check_same_command(group: &dyn Group) -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    check_agreement(
        group,
        bytes_fingerprint(args.join("\0").as_bytes()),
        "flags",
    )
}

/// The run this process belongs to: `None` when it was not started by an MPI launcher (or by one
/// with a single process), else the joined group. Fails with a clear message where the launcher
/// is there but its MPI library cannot be used.
pub fn join() -> Result<Option<Mpi>> {
    match launched_size() {
        Some(n) if n > 1 => Mpi::init(n).map(Some),
        _ => Ok(None),
    }
}

/// This process's rank among those of its node, as the launcher announced it (Open MPI, Slurm,
/// MPICH's Hydra); `None` outside a launcher. Ranks of one node pick their GPU by it.
pub fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
        "MPI_LOCALRANKID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The process count an MPI launcher announced in the environment, if any: Open MPI's `mpirun`,
/// a PMI launcher (MPICH's, Slurm's PMI2), or Slurm's `srun --mpi=pmix`.
fn launched_size() -> Option<usize> {
    let var = |v: &str| std::env::var(v).ok()?.parse().ok();
    var("OMPI_COMM_WORLD_SIZE")
        .or_else(|| var("PMI_SIZE"))
        .or_else(|| std::env::var_os("PMIX_RANK").and_then(|_| var("SLURM_NTASKS")))
}
