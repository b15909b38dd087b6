//! NCCL, opened at run time: the all-reduce that sums a data-parallel step's gradients on the
//! GPUs, without a trip through the host.
//!
//! terse calls five NCCL functions and binds them by hand from `libnccl.so.2` (or the file
//! `TERSE_NCCL_LIBRARY` names), as it binds MPI: cudarc's `nccl` feature looks only for
//! `libnccl.so` and versioned names NCCL does not use, where NCCL's runtime packages (Debian's
//! `libnccl2`, the `nvidia-nccl` wheels) install `libnccl.so.2` alone. A machine without NCCL
//! builds and runs terse unchanged; its ranks sum on the host instead.
//!
//! The communicator's unique id is made by rank 0 and handed to the others over MPI.

use crate::dist::{Group, OnEveryRank};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaStream, CudaViewMut, DevicePtrMut};
use std::ffi::{c_char, c_int, c_void, CStr};

const LIBRARY: &str = "libnccl.so.2";
const NCCL_SUCCESS: c_int = 0;
/// `ncclSum` of `nccl.h`'s `ncclRedOp_t`.
const NCCL_SUM: c_int = 0;

/// An element type NCCL sums, with its `ncclDataType_t`.
pub trait NcclFloat: cudarc::driver::DeviceRepr {
    const DATA_TYPE: c_int;
}
impl NcclFloat for f32 {
    const DATA_TYPE: c_int = 7; // ncclFloat32
}
impl NcclFloat for f64 {
    const DATA_TYPE: c_int = 8; // ncclFloat64
}

/// `ncclUniqueId`: opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [u8; 128],
}

type CommHandle = *mut c_void;

struct Api {
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut CommHandle, c_int, UniqueId, c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        CommHandle,
        *mut c_void,
    ) -> c_int,
    comm_abort: unsafe extern "C" fn(CommHandle) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    /// NCCL 2.13 and later; the reason behind a failed call.
    get_last_error: Option<unsafe extern "C" fn(CommHandle) -> *const c_char>,
}

/// The NCCL library, opened. Guarantees the five calls terse makes are there; refuses (with the
/// path) a file that is not NCCL.
pub struct Nccl {
    api: Api,
    path: String,
    /// Keeps the library mapped while `api` points into it.
    _lib: libloading::Library,
}

impl Nccl {
    /// Opens `TERSE_NCCL_LIBRARY`, else `libnccl.so.2` from the loader's path.
    pub fn open() -> Result<Nccl> {
        let path = std::env::var("TERSE_NCCL_LIBRARY").unwrap_or_else(|_| LIBRARY.to_string());
        // SAFETY: loading NCCL runs only its initialisers, which have no preconditions.
        let lib = unsafe { libloading::Library::new(&path) }
            .with_context(|| format!("cannot open NCCL's library {path}"))?;
        fn lookup<T: Copy>(lib: &libloading::Library, path: &str, name: &str) -> Result<T> {
            // SAFETY: each caller names an NCCL function with its signature from nccl.h.
            unsafe { crate::dynlib::symbol(lib, path, name, "NCCL") }
        }
        let api = Api {
            get_unique_id: lookup(&lib, &path, "ncclGetUniqueId")?,
            comm_init_rank: lookup(&lib, &path, "ncclCommInitRank")?,
            all_reduce: lookup(&lib, &path, "ncclAllReduce")?,
            comm_abort: lookup(&lib, &path, "ncclCommAbort")?,
            get_error_string: lookup(&lib, &path, "ncclGetErrorString")?,
            get_last_error: lookup(&lib, &path, "ncclGetLastError").ok(),
        };
        Ok(Nccl {
            api,
            path,
            _lib: lib,
        })
    }

    /// Where the library was opened from, for the backend's name.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn check(&self, code: c_int, call: &str, comm: CommHandle) -> Result<()> {
        if code == NCCL_SUCCESS {
            return Ok(());
        }
        // SAFETY: NCCL returns static, NUL-terminated strings (the last error lives in `comm`,
        // or in NCCL's thread state for a null one).
        let text = |p: *const c_char| {
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        };
        let what = text(unsafe { (self.api.get_error_string)(code) }).unwrap_or_default();
        let why = self
            .api
            .get_last_error
            .and_then(|f| text(unsafe { f(comm) }))
            .filter(|s| !s.is_empty());
        match why {
            Some(why) => bail!("{call} failed: {what} (NCCL error {code}): {why}"),
            None => bail!("{call} failed: {what} (NCCL error {code})"),
        }
    }
}

/// How a run's gradients are summed across ranks, as `TERSE_CUDA_ALLREDUCE` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AllReduceMode {
    /// NCCL where every rank can open it, else through the host (unset, or `auto`).
    Auto,
    /// NCCL, its absence an error (`nccl`).
    Nccl,
    /// Through the host, NCCL not even opened (`host`).
    Host,
}

impl AllReduceMode {
    /// The mode a value of `TERSE_CUDA_ALLREDUCE` names (`None`: unset); any other value is
    /// refused with the ones it may take.
    fn parse(value: Option<&str>) -> Result<AllReduceMode, String> {
        match value {
            None | Some("" | "auto") => Ok(AllReduceMode::Auto),
            Some("nccl") => Ok(AllReduceMode::Nccl),
            Some("host") => Ok(AllReduceMode::Host),
            Some(other) => Err(format!(
                "TERSE_CUDA_ALLREDUCE={other} is neither nccl, host nor auto"
            )),
        }
    }
}

/// Whether this rank's share of a step is summed by NCCL on the GPU or through the host, decided
/// alike on every rank of `group`: NCCL where every rank can open it, unless
/// `TERSE_CUDA_ALLREDUCE=host`; `TERSE_CUDA_ALLREDUCE=nccl` makes its absence an error. Fails on
/// every rank when some ranks have NCCL and others do not (their sums would never meet).
pub fn choose(group: &dyn Group) -> Result<Option<Nccl>> {
    let value = std::env::var("TERSE_CUDA_ALLREDUCE").ok();
    let mode = AllReduceMode::parse(value.as_deref()).map_err(OnEveryRank)?;
    let opened = match mode {
        AllReduceMode::Host => Err(anyhow!("TERSE_CUDA_ALLREDUCE=host")),
        AllReduceMode::Auto | AllReduceMode::Nccl => Nccl::open(),
    };
    let all = crate::dist::gather_u64(group, opened.is_ok() as u64)?;
    if let Some(r) = all.iter().position(|&ok| ok != all[0]) {
        let (with, without) = if all[0] == 1 { (0, r) } else { (r, 0) };
        return Err(OnEveryRank(format!(
            "rank {with} can open NCCL and rank {without} cannot: install NCCL on every node, or set TERSE_CUDA_ALLREDUCE=host on every rank"
        ))
        .into());
    }
    match opened {
        Ok(nccl) => Ok(Some(nccl)),
        Err(e) if mode == AllReduceMode::Nccl => Err(OnEveryRank(format!(
            "TERSE_CUDA_ALLREDUCE=nccl, but {e:#}; install NCCL (Debian: libnccl2) or name the library in TERSE_NCCL_LIBRARY"
        ))
        .into()),
        Err(_) => Ok(None),
    }
}

/// One NCCL communicator over the ranks of a run, on this rank's GPU. Dropping it aborts it
/// (every step has finished by then, so nothing is left in flight).
pub struct NcclComm {
    nccl: Nccl,
    comm: CommHandle,
}

// SAFETY: the communicator is used from one thread at a time, the trainer's.
unsafe impl Send for NcclComm {}

impl NcclComm {
    /// Joins every rank of `group` (collectively) in one communicator on `ctx`'s GPU: rank 0
    /// makes the unique id and every rank receives it over MPI. Fails on every rank when rank 0
    /// could not make the id.
    pub fn join(nccl: Nccl, group: &dyn Group, ctx: &CudaContext) -> Result<NcclComm> {
        ctx.bind_to_thread()?;
        // Byte 0 says whether rank 0 made an id; the others' bytes are ignored.
        let mut mine = [0u8; 129];
        let mut made = Ok(());
        if group.rank() == 0 {
            let mut id = UniqueId { internal: [0; 128] };
            // SAFETY: `id` is a valid out-pointer of the struct's size.
            let code = unsafe { (nccl.api.get_unique_id)(&mut id) };
            made = nccl.check(code, "ncclGetUniqueId", std::ptr::null_mut());
            if made.is_ok() {
                mine[0] = 1;
                mine[1..].copy_from_slice(&id.internal);
            }
        }
        let mut all = vec![0u8; 129 * group.size()];
        group.allgather(&mine, &mut all)?;
        if all[0] != 1 {
            let why = made.err().map(|e| format!(": {e:#}")).unwrap_or_default();
            return Err(OnEveryRank(format!("rank 0 could not start NCCL{why}")).into());
        }
        let mut id = UniqueId { internal: [0; 128] };
        id.internal.copy_from_slice(&all[1..129]);
        let mut comm: CommHandle = std::ptr::null_mut();
        // SAFETY: a valid out-pointer, the id every rank received, and this rank's place.
        let code = unsafe {
            (nccl.api.comm_init_rank)(&mut comm, group.size() as c_int, id, group.rank() as c_int)
        };
        nccl.check(code, "ncclCommInitRank", std::ptr::null_mut())?;
        Ok(NcclComm { nccl, comm })
    }

    /// Enqueues on `stream` the sum of every rank's `buf` into each rank's `buf`.
    pub fn all_reduce_sum<T: NcclFloat>(
        &self,
        buf: &mut CudaViewMut<'_, T>,
        stream: &CudaStream,
    ) -> Result<()> {
        let count = buf.len();
        let (ptr, _record) = buf.device_ptr_mut(stream);
        // SAFETY: `ptr` addresses `count` values of this GPU's memory, which `buf` borrows
        // mutably until the stream has run the call (the trainer waits for it before reusing).
        let code = unsafe {
            (self.nccl.api.all_reduce)(
                ptr as *const c_void,
                ptr as *mut c_void,
                count,
                T::DATA_TYPE,
                NCCL_SUM,
                self.comm,
                stream.cu_stream() as *mut c_void,
            )
        };
        self.nccl.check(code, "ncclAllReduce", self.comm)
    }

    /// Where NCCL was opened from.
    pub fn library(&self) -> &str {
        self.nccl.path()
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: `comm` came from ncclCommInitRank and is not used after this.
        unsafe { (self.nccl.api.comm_abort)(self.comm) };
    }
}

#[cfg(test)]
mod tests {
    use super::AllReduceMode;

    #[test]
    fn allreduce_mode_takes_its_three_values_and_refuses_others() {
        assert_eq!(AllReduceMode::parse(None), Ok(AllReduceMode::Auto));
        for (value, mode) in [
            ("", AllReduceMode::Auto),
            ("auto", AllReduceMode::Auto),
            ("nccl", AllReduceMode::Nccl),
            ("host", AllReduceMode::Host),
        ] {
            assert_eq!(AllReduceMode::parse(Some(value)), Ok(mode), "{value}");
        }
        for bad in ["NCCL", "gpu", "host "] {
            let e = AllReduceMode::parse(Some(bad)).unwrap_err();
            assert!(
                e.contains(&format!("={bad} is neither nccl, host nor auto")),
                "{e}"
            );
        }
    }
}
