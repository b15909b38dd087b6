//! MPI, opened at run time: Open MPI, or MPICH and the libraries that share its ABI.
//!
//! terse calls seven MPI functions, so it binds them by hand when a launcher started it, rather
//! than linking MPI at build time: a build needs no MPI headers, and a machine without MPI runs
//! single-process training unchanged. The two ABIs differ in their handles: Open MPI's are the
//! addresses of its predefined objects (`MPI_COMM_WORLD` is `&ompi_mpi_comm_world`), read from
//! the library's symbols; MPICH's (`libmpich.so.12`, and Intel MPI's and MVAPICH's `libmpi.so.12`)
//! are integers that its `mpi.h` fixes. A library with Open MPI's objects is bound as Open MPI,
//! any other as MPICH. `TERSE_MPI_LIBRARY` names the file to open; else the launcher's own MPI is
//! tried first (Open MPI's under `mpirun` or PMIx, MPICH's under a PMI launcher such as Hydra).

use super::Group;
use anyhow::{anyhow, bail, ensure, Result};
use std::ffi::{c_int, c_void};

/// Where each ABI's library is looked for.
const OPEN_MPI: &[&str] = &["libmpi.so.40"];
const MPICH: &[&str] = &["libmpich.so.12", "libmpi.so.12"];
/// MPICH's `MPI_COMM_WORLD` and `MPI_BYTE` (`mpi.h`, the same since MPICH 3.1's ABI).
const MPICH_COMM_WORLD: c_int = 0x4400_0000;
const MPICH_BYTE: c_int = 0x4c00_010d;
const MPI_SUCCESS: c_int = 0;
/// `MPI_Allgather` counts in `int`s: larger payloads travel in pieces of this many bytes.
const MAX_PIECE: usize = 1 << 30;

/// `MPI_Allgather` and `MPI_Alltoall`, whose C signatures are the same, for handles `H`.
type Exchange<H> = unsafe extern "C" fn(*const c_void, c_int, H, *mut c_void, c_int, H, H) -> c_int;

/// The seven functions and two handles, with handles of type `H` (a pointer for Open MPI, an
/// `int` for MPICH).
struct Api<H> {
    init: unsafe extern "C" fn(*mut c_int, *mut c_void) -> c_int,
    finalize: unsafe extern "C" fn() -> c_int,
    comm_rank: unsafe extern "C" fn(H, *mut c_int) -> c_int,
    comm_size: unsafe extern "C" fn(H, *mut c_int) -> c_int,
    allgather: Exchange<H>,
    alltoall: Exchange<H>,
    abort: unsafe extern "C" fn(H, c_int) -> c_int,
    comm_world: H,
    byte: H,
}

impl<H: Copy> Api<H> {
    /// The functions of `lib` (at `path`), with the ABI's two handles.
    fn bind(lib: &libloading::Library, path: &str, comm_world: H, byte: H) -> Result<Self> {
        Ok(Api {
            init: lookup(lib, path, "MPI_Init")?,
            finalize: lookup(lib, path, "MPI_Finalize")?,
            comm_rank: lookup(lib, path, "MPI_Comm_rank")?,
            comm_size: lookup(lib, path, "MPI_Comm_size")?,
            allgather: lookup(lib, path, "MPI_Allgather")?,
            alltoall: lookup(lib, path, "MPI_Alltoall")?,
            abort: lookup(lib, path, "MPI_Abort")?,
            comm_world,
            byte,
        })
    }
}

/// Which collective [`Calls::exchange`] makes.
#[derive(Clone, Copy)]
enum Collective {
    Allgather,
    Alltoall,
}

/// The MPI calls terse makes, whichever ABI's handles they take.
trait Calls {
    /// `MPI_Init`, then this rank and the run's size.
    fn init(&self) -> Result<(usize, usize)>;
    fn finalize(&self) -> c_int;
    fn abort(&self, code: c_int);
    /// `op` on `count` bytes a block, from `send` into `recv`.
    ///
    /// # Safety
    /// `send` and `recv` hold `count` bytes per block (one block, or one per rank, sent; one
    /// per rank received).
    unsafe fn exchange(
        &self,
        op: Collective,
        send: *const u8,
        count: c_int,
        recv: *mut u8,
    ) -> c_int;
}

impl<H: Copy> Calls for Api<H> {
    fn init(&self) -> Result<(usize, usize)> {
        // SAFETY: MPI_Init with null argc/argv is allowed since MPI-2; out-pointers are valid.
        unsafe {
            check(
                (self.init)(std::ptr::null_mut(), std::ptr::null_mut()),
                "MPI_Init",
            )?;
            let (mut rank, mut size) = (0, 0);
            check(
                (self.comm_rank)(self.comm_world, &mut rank),
                "MPI_Comm_rank",
            )?;
            check(
                (self.comm_size)(self.comm_world, &mut size),
                "MPI_Comm_size",
            )?;
            Ok((rank as usize, size as usize))
        }
    }

    fn finalize(&self) -> c_int {
        // SAFETY: called once, after MPI_Init.
        unsafe { (self.finalize)() }
    }

    fn abort(&self, code: c_int) {
        // SAFETY: valid communicator; MPI_Abort does not return on success.
        unsafe { (self.abort)(self.comm_world, code) };
    }

    unsafe fn exchange(
        &self,
        op: Collective,
        send: *const u8,
        count: c_int,
        recv: *mut u8,
    ) -> c_int {
        let call = match op {
            Collective::Allgather => self.allgather,
            Collective::Alltoall => self.alltoall,
        };
        call(
            send.cast(),
            count,
            self.byte,
            recv.cast(),
            count,
            self.byte,
            self.comm_world,
        )
    }
}

/// This process's membership of an MPI job: `MPI_Init` done, `MPI_Finalize` owed
/// ([`Mpi::finalize`] or [`Mpi::abort`]).
pub struct Mpi {
    calls: Box<dyn Calls>,
    rank: usize,
    size: usize,
    /// Keeps the library mapped while `calls` points into it.
    _lib: libloading::Library,
}

// SAFETY: the handles are Open MPI's static objects or MPICH's integers, valid for the library's
// life; terse makes MPI calls from one thread at a time (MPI_Init's default, MPI_THREAD_SINGLE,
// asks for no more).
unsafe impl Send for Mpi {}

impl Mpi {
    /// Opens MPI and joins the job the launcher started (`MPI_Init`), which it announced as
    /// `launched` processes; refuses a library that sees another number (not the launcher's
    /// MPI: each process would run alone).
    pub fn init(launched: usize) -> Result<Mpi> {
        let named = std::env::var("TERSE_MPI_LIBRARY").ok();
        let candidates: Vec<&str> = match &named {
            Some(path) => vec![path.as_str()],
            None if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some()
                || std::env::var_os("PMIX_RANK").is_some() =>
            {
                OPEN_MPI.iter().chain(MPICH).copied().collect()
            }
            None => MPICH.iter().chain(OPEN_MPI).copied().collect(),
        };
        let mut failures = Vec::new();
        let (lib, path) = candidates
            .iter()
            .find_map(|&path| match open_global(path) {
                Ok(lib) => Some((lib, path.to_string())),
                Err(e) => {
                    failures.push(format!("{path}: {:#}", anyhow::Error::new(e)));
                    None
                }
            })
            .ok_or_else(|| {
                anyhow!(
                    "started by an MPI launcher, but terse cannot open an MPI library ({}); install Open MPI (Debian: openmpi-bin) or MPICH (Debian: mpich), or name the library in TERSE_MPI_LIBRARY",
                    failures.join("; ")
                )
            })?;
        // SAFETY: each symbol is looked up by its MPI name and given its C signature from mpi.h;
        // Open MPI's two objects are read only for their addresses.
        let open_mpi = unsafe { lib.get::<*mut c_void>(b"ompi_mpi_comm_world") }.is_ok();
        let calls: Box<dyn Calls> = if open_mpi {
            Box::new(Api::<*mut c_void>::bind(
                &lib,
                &path,
                lookup(&lib, &path, "ompi_mpi_comm_world")?,
                lookup(&lib, &path, "ompi_mpi_byte")?,
            )?)
        } else {
            Box::new(Api::<c_int>::bind(
                &lib,
                &path,
                MPICH_COMM_WORLD,
                MPICH_BYTE,
            )?)
        };
        let (rank, size) = calls.init()?;
        if size != launched {
            calls.finalize();
            bail!(
                "the launcher started {launched} processes, but the MPI library {path} counts {size}: it is not the launcher's MPI (launch with the mpirun of the MPI terse opened, or name that MPI's library in TERSE_MPI_LIBRARY)"
            );
        }
        Ok(Mpi {
            calls,
            rank,
            size,
            _lib: lib,
        })
    }

    /// Leaves the job cleanly (`MPI_Finalize`, which waits for every rank).
    pub fn finalize(self) -> Result<()> {
        check(self.calls.finalize(), "MPI_Finalize")
    }

    /// Ends every rank of the job now (`MPI_Abort`), exiting with `code`: for an error met by this
    /// rank alone, whose partners would otherwise wait for it forever.
    pub fn abort(self, code: i32) -> ! {
        self.calls.abort(code);
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
        self.exchange(Collective::Allgather, "MPI_Allgather", mine, 1, all)
    }

    fn alltoall(&self, blocks: &[u8], mine: &mut [u8]) -> Result<()> {
        self.exchange(
            Collective::Alltoall,
            "MPI_Alltoall",
            blocks,
            self.size,
            mine,
        )
    }
}

impl Mpi {
    /// Runs `call` on `send` (`sends` blocks of one length: 1 for an all-gather, one per rank
    /// for an all-to-all) into `recv` (one block from each rank, rank 0's first), in pieces of
    /// at most [`MAX_PIECE`] bytes a block, since MPI counts in `int`s.
    fn exchange(
        &self,
        op: Collective,
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
                    self.calls
                        .exchange(op, out.as_ptr(), m as c_int, got.as_mut_ptr())
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
    // SAFETY: every caller names an MPI symbol with its type from mpi.h (functions) or asks for
    // an object's address only.
    unsafe { crate::dynlib::symbol(lib, path, name, "an MPI library") }
}

/// Opens `name` with its symbols global: Open MPI's own plugins resolve against them.
fn open_global(name: &str) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading MPI runs only its initialisers, which have no preconditions.
    unsafe { Library::open(Some(name), RTLD_NOW | RTLD_GLOBAL) }.map(Into::into)
}

fn check(code: c_int, call: &str) -> Result<()> {
    if code != MPI_SUCCESS {
        bail!("{call} failed with MPI error code {code}");
    }
    Ok(())
}
