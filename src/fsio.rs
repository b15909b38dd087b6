//! Durable file writing: the one way terse replaces a file.
//!
//! # The guarantee
//!
//! [`write_atomic`], [`write_atomic_with`] and [`AtomicFile`] replace the file at a path so that,
//! whatever happens (an error, a killed process, a power cut), the path holds either its old
//! content (or stays absent) or exactly the new content, never a mixture or a truncation; and once
//! they return `Ok` the new content survives a power cut. They write a temp file under a unique
//! hidden name beside the target (`.<name>.<id>.tmp`, `<id>` hex digits), `fsync` it, `rename` it
//! over the target and `fsync` the directory. On an error before the rename the temp file is
//! removed and the target is untouched; the one error possible after the rename is the directory
//! `fsync`, which leaves the new content in place but not yet durable.
//!
//! This rests on the file system making `rename` atomic and honouring `fsync` (ext4, xfs, btrfs,
//! APFS do; some network file systems do not). The target's directory must exist.
//!
//! [`write_new`] is the other building block: it creates a file that must not exist yet, writes
//! and `fsync`s it (the checkpoint's save protocol stages its files this way, then commits them
//! with an [`AtomicFile`]).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};

/// A name no other write (in this or another process) uses: hex digits only.
pub fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:016x}{:08x}{:04x}", std::process::id(), n & 0xffff)
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `dir/.<name>.<id>.<ext>`
pub fn hidden_sibling(dir: &Path, name: &OsStr, id: &str, ext: &str) -> PathBuf {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(format!(".{id}.{ext}"));
    dir.join(s)
}

/// Makes the directory entry changes (create, rename, remove) inside `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Creates `path` (which must not exist), lets `body` write into it, then `fsync`s it. On any
/// error the partial file is removed. The new directory entry is not yet durable: `sync_dir` the
/// directory once the files of a batch are written.
pub fn write_new<T>(path: &Path, body: impl FnOnce(&mut File) -> io::Result<T>) -> io::Result<T> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    let written = body(&mut file).and_then(|t| file.sync_all().map(|_| t));
    if written.is_err() {
        drop(file);
        let _ = fs::remove_file(path);
    }
    written
}

/// A file being written under a hidden temp name beside its target, which
/// [`commit`](Self::commit) renames over the target (module docs for the guarantee). Dropped
/// without a commit, it removes the temp file and leaves the target untouched.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

/// A rename done by [`AtomicFile::rename`]: the target holds the new content, which
/// [`sync_dir`](Self::sync_dir) makes durable.
#[must_use = "the rename is not durable until the directory is synced"]
#[derive(Debug)]
pub struct Renamed {
    dir: PathBuf,
}

impl Renamed {
    /// `fsync`s the target's directory.
    pub fn sync_dir(self) -> io::Result<()> {
        sync_dir(&self.dir)
    }
}

impl AtomicFile {
    /// Creates the temp file for `target` (`.<name>.<id>.tmp` in the target's directory).
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
        let tmp = hidden_sibling(&parent_dir(target), name, &unique_id(), "tmp");
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// The path this file replaces on commit.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The hidden temp file being written.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// The open temp file.
    pub fn file_mut(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed or dropped")
    }

    /// `fsync`s the temp file and renames it over the target; on error the temp file is removed
    /// and the target untouched. The rename is durable only after [`Renamed::sync_dir`].
    pub fn rename(mut self) -> io::Result<Renamed> {
        let file = self.file.take().expect("open until committed or dropped");
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.target)?;
        // Renamed away: nothing left for Drop to remove.
        self.tmp = PathBuf::new();
        Ok(Renamed {
            dir: parent_dir(&self.target),
        })
    }

    /// [`rename`](Self::rename), then the directory `fsync`: afterwards the target durably holds
    /// what was written. Errors name the target.
    pub fn commit(self) -> Result<()> {
        let target = self.target.clone();
        let dir = parent_dir(&target);
        self.rename()
            .with_context(|| format!("cannot write {}", target.display()))?
            .sync_dir()
            .with_context(|| {
                format!(
                    "cannot sync directory {} after writing {}",
                    dir.display(),
                    target.display()
                )
            })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file_mut().flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file_mut().seek(pos)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Replaces `path` with what `body` writes into the (unbuffered) temp file, atomically and
/// durably (module docs). On any error the old file is left untouched and the error names `path`.
pub fn write_atomic_with<T>(
    path: &Path,
    body: impl FnOnce(&mut File) -> io::Result<T>,
) -> Result<T> {
    let mut file = AtomicFile::create(path)
        .map_err(|e| anyhow!(e).context(format!("cannot write {}", path.display())))?;
    let t = body(file.file_mut()).with_context(|| format!("cannot write {}", path.display()))?;
    file.commit()?;
    Ok(t)
}

/// Replaces the file at `path` with `bytes` so that, whatever happens, `path` holds either its
/// old content or exactly `bytes`, never a mixture or a truncation (module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Tests' stand-in for a disk that fills up: accepts `left` bytes, then fails with ENOSPC.
#[cfg(test)]
pub(crate) struct FullDisk<'w> {
    pub inner: &'w mut File,
    pub left: u64,
}

#[cfg(test)]
impl Write for FullDisk<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::from_raw_os_error(28));
        }
        let n = buf.len().min(self.left as usize);
        self.left -= n as u64;
        self.inner.write(&buf[..n])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn listing(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn atomic_write_failure_keeps_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.bin");
        write_atomic(&path, b"old content").unwrap();
        let e = write_atomic_with(&path, |f| {
            FullDisk { inner: f, left: 5 }.write_all(&[7u8; 100_000])
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("f.bin"), "{e:#}");
        assert_eq!(fs::read(&path).unwrap(), b"old content");
        assert_eq!(listing(tmp.path()), set(&["f.bin"]));
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(listing(tmp.path()), set(&["f.bin"]));
    }

    #[test]
    fn atomic_file_streams_seeks_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out");
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(b"abandoned").unwrap();
            let name = f.temp_path().file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with(".out.") && name.ends_with(".tmp"),
                "{name}"
            );
            assert_eq!(listing(tmp.path()).len(), 1);
        }
        assert!(listing(tmp.path()).is_empty(), "temp removed on drop");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"xxxx-body").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"head").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"head-body");
        assert_eq!(listing(tmp.path()), set(&["out"]));
    }

    #[test]
    fn write_new_refuses_existing_and_removes_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("n");
        write_new(&path, |f| f.write_all(b"one")).unwrap();
        assert!(write_new(&path, |f| f.write_all(b"two")).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"one");
        let other = tmp.path().join("m");
        let e = write_new(&other, |f| {
            FullDisk { inner: f, left: 2 }.write_all(b"abcdef")
        });
        assert!(e.is_err());
        assert_eq!(listing(tmp.path()), set(&["n"]));
    }
}
