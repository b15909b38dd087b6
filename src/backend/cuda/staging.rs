//! Page-locked host buffers that know when their last copy has finished.
//!
//! The context runs with cudarc's event tracking off (`loader.rs`: one stream orders all work,
//! and graph capture needs it off). With it off a `PinnedHostSlice` never records its own event,
//! so its `as_slice` returns at once, before an asynchronous download into it has landed, and
//! its `as_mut_slice` lets the host overwrite it while an upload from it is still in flight. The
//! emulator runs every copy synchronously and cannot show this; the first GPU run did (losses one
//! step late, CDFs read as zeros). [`Staged`] records an event of its own after every copy and
//! waits on it before the host touches the memory; nothing else in the backend reads or writes
//! page-locked memory.

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DeviceRepr, PinnedHostSlice,
    ValidAsZeroBits,
};

/// A page-locked host buffer and the event recorded after the last copy into or out of it.
///
/// Guarantees: [`Staged::host_mut`] and [`Staged::read`] return only once that copy has
/// finished, so the host never sees a download half landed nor overwrites an upload's source.
/// Refuses: a copy longer than the buffer.
pub struct Staged<T> {
    host: PinnedHostSlice<T>,
    copied: CudaEvent,
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy + Default> Staged<T> {
    /// `len` elements, zeroed, for uploads: write-combined (fast for the device to read, slow
    /// for the host to read back).
    pub fn for_upload(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        Self::new(ctx, len, CU_MEMHOSTALLOC_WRITECOMBINED)
    }

    /// `len` elements, zeroed, for downloads the host reads (not write-combined).
    pub fn for_download(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        Self::new(ctx, len, 0)
    }

    fn new(ctx: &Arc<CudaContext>, len: usize, flags: u32) -> Result<Self> {
        // SAFETY: zeroed below, before anything can read it.
        let mut host = unsafe { ctx.alloc_pinned_with_flags::<T>(len, flags) }
            .with_context(|| format!("allocating {len} elements of page-locked host memory"))?;
        host.as_mut_slice()?.fill(T::default());
        let copied = ctx.new_event(None)?;
        Ok(Staged { host, copied })
    }

    /// The host's view to fill before an upload (waits for the last copy).
    pub fn host_mut(&mut self) -> Result<&mut [T]> {
        self.copied.synchronize()?;
        Ok(self.host.as_mut_slice()?)
    }

    /// Copies `data` to the front of the buffer (waits for the last copy).
    fn write(&mut self, data: &[T]) -> Result<()> {
        let len = self.host.len();
        ensure!(
            data.len() <= len,
            "{} elements into a stage of {len}",
            data.len()
        );
        self.host_mut()?[..data.len()].copy_from_slice(data);
        Ok(())
    }

    /// The host's view after a download (waits for it).
    pub fn read(&self) -> Result<&[T]> {
        self.copied.synchronize()?;
        Ok(self.host.as_slice()?)
    }

    /// Whether the last copy has finished (so [`read`](Self::read) would not wait).
    pub fn landed(&self) -> Result<bool> {
        Ok(self.copied.try_is_complete()?)
    }

    /// Copies `data` to the front of the buffer (waiting for the last copy), then enqueues the
    /// whole buffer's copy to `dst` on `s`.
    pub fn send(&mut self, s: &Arc<CudaStream>, data: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        self.write(data)?;
        self.upload(s, dst)
    }

    /// Enqueues a copy of the whole buffer to the front of `dst` on `s`.
    pub fn upload(&mut self, s: &Arc<CudaStream>, dst: &mut CudaSlice<T>) -> Result<()> {
        let (len, room) = (self.host.len(), dst.len());
        ensure!(
            len <= room,
            "upload of a stage of {len} into {room} elements"
        );
        s.memcpy_htod(&self.host, dst)?;
        self.copied.record(s)?;
        Ok(())
    }

    /// Enqueues a copy of `src` to the front of the buffer on `s`.
    pub fn download<Src: DevicePtr<T>>(&mut self, s: &Arc<CudaStream>, src: &Src) -> Result<()> {
        let (len, room) = (src.len(), self.host.len());
        ensure!(
            len <= room,
            "download of {len} elements into a stage of {room}"
        );
        s.memcpy_dtoh(src, &mut self.host)?;
        self.copied.record(s)?;
        Ok(())
    }
}
