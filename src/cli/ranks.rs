//! A command as one rank of an MPI job: join the job when a launcher started this process, run,
//! and end the way the outcome asks (every rank together, or the whole job from one rank).

use anyhow::Result;
use std::rc::Rc;
use terse::dist::{Group, OnEveryRank};

/// Runs `command` alone (`None`) or, under `mpirun` or `srun`, as one rank of the job. An error
/// every rank meets ([`OnEveryRank`]) is printed by each rank, which then leave together; any
/// other error is printed by its rank, which ends the whole job (the others would wait for it
/// forever). Both exit with status 1.
pub fn run_ranked(command: impl FnOnce(Option<Rc<dyn Group>>) -> Result<()>) -> Result<()> {
    let Some(mpi) = terse::dist::join()? else {
        return command(None);
    };
    let (rank, size) = (mpi.rank(), mpi.size());
    let mpi = Rc::new(mpi);
    let result = command(Some(mpi.clone()));
    let Ok(mpi) = Rc::try_unwrap(mpi) else {
        unreachable!("the command has ended, so nothing else holds the group")
    };
    let Err(e) = result else {
        return mpi.finalize();
    };
    say_once(&format!("error: rank {rank} of {size}: {e:#}\n"));
    if e.is::<OnEveryRank>() {
        // Each rank has said why before any leaves (a rank that exited first would have mpirun
        // kill the others mid-sentence).
        mpi.finalize()?;
        std::process::exit(1)
    }
    mpi.abort(1)
}

/// Writes `line` to stderr in one write, so that ranks sharing mpirun's stderr do not interleave
/// their messages mid-line.
pub fn say_once(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(line.as_bytes());
}
