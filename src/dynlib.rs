//! Symbols of a C library opened at run time (MPI, NCCL: found on the machine, never linked, so
//! a build runs where they are absent).

use anyhow::{Context, Result};

/// The symbol `name` of `lib` (opened from `path`) as a `T`: a function of `T`'s C signature, or
/// (`T` a pointer) the address of an object. A missing symbol is an error naming the file and
/// asking whether it is `what` (the library it was taken for).
///
/// # Safety
///
/// `T` must be the symbol's type as the library's header declares it (or a pointer, for an
/// object's address).
pub unsafe fn symbol<T: Copy>(
    lib: &libloading::Library,
    path: &str,
    name: &str,
    what: &str,
) -> Result<T> {
    // SAFETY: the caller vouches for `T`.
    let s = unsafe { lib.get::<T>(name.as_bytes()) }
        .with_context(|| format!("{path} lacks {name}: is it {what}?"))?;
    Ok(*s)
}
