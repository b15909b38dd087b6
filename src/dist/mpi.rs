//! Open MPI, opened at run time.
//!
//! terse calls seven MPI functions, so it binds them by hand from `libmpi.so.40` (Open MPI 3 to 5)
//! when a launcher started it, rather than linking MPI at build time: a build needs no MPI
//! headers, and a machine without MPI runs single-process training unchanged. Open MPI's handles
//! are the addresses of its predefined objects (`MPI_COMM_WORLD` is `&ompi_mpi_comm_world`), read
//! from the library's symbols. MPICH's ABI (integer handles, `libmpi.so.12`) is refused by name.
//! `TERSE_MPI_LIBRARY` names another file to open (an Open MPI outside the loader's path).

use super::Group;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::ffi::{c_int, c_void};

type Handle = *mut c_void;
/// `MPI_Allgather` and `MPI_Alltoall`, whose C signatures are the same.
type Exchange =
    unsafe extern "C" fn(*const c_void, c_int, Handle, *mut c_void, c_int, Handle, Handle) -> c_int;

const LIBRARY: &str = "libmpi.so.40";
const MPI_SUCCESS: c_int = 0;
/// `MPI_Allgather` counts in `int`s: larger payloads travel in pieces of this many bytes.
const MAX_PIECE: usize = 1 << 30;

struct Api {
    init: unsafe extern "C" fn(*mut c_int, *mut c_void) -> c_int,
    finalize: unsafe extern "C" fn() -> c_int,
    comm_rank: unsafe extern "C" fn(Handle, *mut c_int) -> c_int,
    comm_size: unsafe extern "C" fn(Handle, *mut c_int) -> c_int,
    allgather: Exchange,
    alltoall: Exchange,
    abort: unsafe extern "C" fn(Handle, c_int) -> c_int,
    comm_world: Handle,
    byte: Handle,
}

/// This process's membership of an Open MPI job: `MPI_Init` done, `MPI_Finalize` owed
/// ([`Mpi::finalize`] or [`Mpi::abort`]).
pub struct Mpi {
    api: Api,
    rank: usize,
    size: usize,
    /// Keeps the library mapped while `api` points into it.
    _lib: libloading::Library,
}

// SAFETY: the handles are addresses of Open MPI's static objects, valid for the library's life;
// terse makes MPI calls from one thread at a time (MPI_Init's default, MPI_THREAD_SINGLE, asks for
// no more).
unsafe impl Send for Mpi {}

impl Mpi {
    /// Opens Open MPI and joins the job the launcher started (`MPI_Init`).
    pub fn init() -> Result<Mpi> {
        let path = std::env::var("TERSE_MPI_LIBRARY").unwrap_or_else(|_| LIBRARY.to_string());
        let lib = open_global(&path).map_err(|e| {
            let e = anyhow::Error::new(e);
            anyhow!(
                "started by an MPI launcher, but terse cannot open Open MPI's library {path} ({e:#}); install Open MPI (Debian: openmpi-bin), or name the library in TERSE_MPI_LIBRARY. terse speaks Open MPI's ABI, not MPICH's"
            )
        })?;
        // SAFETY: each symbol is looked up by its Open MPI name and given its C signature from
        // mpi.h; the two objects are read only for their addresses.
        let api = Api {
            init: lookup(&lib, &path, "MPI_Init")?,
            finalize: lookup(&lib, &path, "MPI_Finalize")?,
            comm_rank: lookup(&lib, &path, "MPI_Comm_rank")?,
            comm_size: lookup(&lib, &path, "MPI_Comm_size")?,
            allgather: lookup(&lib, &path, "MPI_Allgather")?,
            alltoall: lookup(&lib, &path, "MPI_Alltoall")?,
            abort: lookup(&lib, &path, "MPI_Abort")?,
            comm_world: lookup(&lib, &path, "ompi_mpi_comm_world")?,
            byte: lookup(&lib, &path, "ompi_mpi_byte")?,
        };
        // SAFETY: MPI_Init with null argc/argv is allowed since MPI-2; out-pointers are valid.
        let (rank, size) = unsafe {
            check(
                (api.init)(std::ptr::null_mut(), std::ptr::null_mut()),
                "MPI_Init",
            )?;
            let (mut rank, mut size) = (0, 0);
            check((api.comm_rank)(api.comm_world, &mut rank), "MPI_Comm_rank")?;
            check((api.comm_size)(api.comm_world, &mut size), "MPI_Comm_size")?;
            (rank as usize, size as usize)
        };
        Ok(Mpi {
            api,
            rank,
            size,
            _lib: lib,
        })
    }

    /// Leaves the job cleanly (`MPI_Finalize`, which waits for every rank).
    pub fn finalize(self) -> Result<()> {
        // SAFETY: called once, after MPI_Init; the library stays mapped until `self` drops.
        check(unsafe { (self.api.finalize)() }, "MPI_Finalize")
    }

    /// Ends every rank of the job now (`MPI_Abort`), exiting with `code`: for an error met by this
    /// rank alone, whose partners would otherwise wait for it forever.
    pub fn abort(self, code: i32) -> ! {
        // SAFETY: valid communicator; MPI_Abort does not return on success.
        unsafe { (self.api.abort)(self.api.comm_world, code) };
        std::process::exit(code)
    }
}

impl Group for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn allgather(&self, mine: &[u8], all: &mut [u8]) -> Result<()> {
        self.exchange(self.api.allgather, "MPI_Allgather", mine, 1, all)
    }

    fn alltoall(&self, blocks: &[u8], mine: &mut [u8]) -> Result<()> {
        self.exchange(self.api.alltoall, "MPI_Alltoall", blocks, self.size, mine)
    }
}

impl Mpi {
    /// Runs `call` on `send` (`sends` blocks of one length: 1 for an all-gather, one per rank
    /// for an all-to-all) into `recv` (one block from each rank, rank 0's first), in pieces of
    /// at most [`MAX_PIECE`] bytes a block, since MPI counts in `int`s.
    fn exchange(
        &self,
        call: Exchange,
        name: &str,
        send: &[u8],
        sends: usize,
        recv: &mut [u8],
    ) -> Result<()> {
        let block = send.len() / sends;
        ensure!(
            send.len() == block * sends && recv.len() == block * self.size,
            "{name}: {} bytes sent in {sends} blocks cannot fill {} bytes from {} ranks",
            send.len(),
            recv.len(),
            self.size
        );
        let step = MAX_PIECE.min(block.max(1));
        let (mut out, mut got) = (vec![0u8; step * sends], vec![0u8; step * self.size]);
        for start in (0..block).step_by(step) {
            let m = step.min(block - start);
            for b in 0..sends {
                out[b * m..][..m].copy_from_slice(&send[b * block + start..][..m]);
            }
            // SAFETY: `out` holds m bytes per block sent and `got` m per rank; m fits an int.
            check(
                unsafe {
                    call(
                        out.as_ptr().cast(),
                        m as c_int,
                        self.api.byte,
                        got.as_mut_ptr().cast(),
                        m as c_int,
                        self.api.byte,
                        self.api.comm_world,
                    )
                },
                name,
            )?;
            for r in 0..self.size {
                recv[r * block + start..][..m].copy_from_slice(&got[r * m..][..m]);
            }
        }
        Ok(())
    }
}

/// The symbol `name` of `lib` as a `T`: a function of `T`'s C signature, or (`T` a pointer) the
/// address of an object.
fn lookup<T: Copy>(lib: &libloading::Library, path: &str, name: &str) -> Result<T> {
    // SAFETY: every caller names an Open MPI symbol with its type from mpi.h (functions) or asks
    // for an object's address only.
    let s = unsafe { lib.get::<T>(name.as_bytes()) }
        .with_context(|| format!("{path} lacks {name}: is it Open MPI?"))?;
    Ok(*s)
}

/// Opens `name` with its symbols global: Open MPI's own plugins resolve against them.
fn open_global(name: &str) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading Open MPI runs only its initialisers, which have no preconditions.
    unsafe { Library::open(Some(name), RTLD_NOW | RTLD_GLOBAL) }.map(Into::into)
}

fn check(code: c_int, call: &str) -> Result<()> {
    if code != MPI_SUCCESS {
        bail!("{call} failed with MPI error code {code}");
    }
    Ok(())
}
