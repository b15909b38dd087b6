//! Durable file writing: the one way terse replaces a file.
//!
//! # The guarantee
//!
//! [`write_atomic`], [`write_atomic_with`], [`write_output_with`] and [`AtomicFile`] replace the
//! file at a path so that, whatever happens (an error, a killed process, a power cut), the path
//! holds either its old content (or stays absent) or exactly the new content, never a mixture or
//! a truncation; and once they return `Ok` the new content survives a power cut. They write a
//! temp file under a unique hidden name beside the target (`.<name>.<id>.tmp`, `<id>` hex digits
//! that include the writer's process id), `fsync` it, `rename` it over the target and `fsync` the
//! directory. On an error before the rename the temp file is removed and the target is
//! untouched; the one error possible after the rename is the directory `fsync`, which leaves the
//! new content in place but not yet durable.
//!
//! What the path names decides what "the target" is:
//!
//! - a symlink is followed to its final target, which is replaced as above (the temp file goes
//!   in the target's directory); the link stays a link;
//! - an existing regular file keeps its permission bits; a command's own output
//!   ([`Existing::Refuse`]: `compress`, `decompress`, `detokenize`) is not replaced at all unless
//!   asked to (`--force`), while the files inside directories terse owns (checkpoints, token
//!   datasets, experiment results) are always replaced;
//! - a device, FIFO or socket is written through: opened for writing, no temp file, no rename
//!   (a FIFO blocks until it has a reader). There the guarantee does not hold: a failed write
//!   leaves whatever was already sent;
//! - a directory is refused.
//!
//! A process killed while writing leaves its temp file behind; the next write of the same target
//! removes every `.<name>.<id>.tmp` beside it whose writer process is gone and says so in one line
//! on stderr ([`remove_stale_temps`]). Two processes writing the same target at once are not
//! supported.
//!
//! This rests on the file system making `rename` atomic and honouring `fsync` (ext4, xfs, btrfs,
//! APFS do; some network file systems do not). The target's directory must exist. Errors name
//! the path being written (a full disk included).
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

/// What [`AtomicFile::open`] does when its target already holds a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (keeping its permission bits).
    Replace,
    /// Refuse with an [`io::ErrorKind::AlreadyExists`] error that says `--force` replaces it.
    Refuse,
}

impl Existing {
    /// [`Replace`](Self::Replace) when `force`, else [`Refuse`](Self::Refuse).
    pub fn replace_if(force: bool) -> Existing {
        if force {
            Existing::Replace
        } else {
            Existing::Refuse
        }
    }
}

/// `path` with every symlink followed to its final target, and that target's metadata (`None`
/// when nothing is there yet: a new file, or a dangling link's target).
pub fn resolve(path: &Path) -> io::Result<(PathBuf, Option<fs::Metadata>)> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = fs::read_link(&p)?;
                p = if link.is_absolute() {
                    link
                } else {
                    parent_dir(&p).join(link)
                };
            }
            Ok(m) => return Ok((p, Some(m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((p, None)),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// The error [`AtomicFile::open`] gives for a target with metadata `m`, if any: a directory is
/// refused, and so is a regular file under [`Existing::Refuse`].
fn refusal(m: &fs::Metadata, existing: Existing) -> io::Result<()> {
    if m.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a directory: give a file path",
        ));
    }
    if m.is_file() && existing == Existing::Refuse {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "it already exists (--force replaces it)",
        ));
    }
    Ok(())
}

/// Refuses, naming `path`, what [`AtomicFile::open`] would refuse there, without writing
/// anything: for a command to check its output before its work.
pub fn check_output(path: &Path, existing: Existing) -> Result<()> {
    let meta = resolve(path)
        .map(|(_, m)| m)
        .with_context(|| format!("cannot write {}", path.display()))?;
    match meta {
        Some(m) => {
            refusal(&m, existing).with_context(|| format!("cannot write {}", path.display()))
        }
        None => Ok(()),
    }
}

/// Whether `file_name` is a temp file [`AtomicFile`] made for a target named `name`
/// (`.<name>.<id>.tmp`), and if so the id of the process that made it.
fn temp_writer_pid(file_name: &str, name: &str) -> Option<u32> {
    let id = file_name
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?
        .strip_suffix(".tmp")?;
    if id.len() != 28 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(&id[16..24], 16).ok()
}

/// Whether process `pid` is running (Linux: `/proc/<pid>`; elsewhere assumed gone).
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the temp files an interrupted write of `dir/name` left (`.<name>.<id>.tmp` whose
/// writer process is gone) and says so in one line on stderr. Returns how many it removed.
pub fn remove_stale_temps(dir: &Path, name: &OsStr) -> usize {
    let Some(name) = name.to_str() else { return 0 };
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|f| temp_writer_pid(f, name)) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && !process_alive(pid) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        eprintln!(
            "note: removed {removed} temp file(s) an interrupted write of {} left behind",
            dir.join(name).display()
        );
    }
    removed
}

/// A file being written for a target path (module docs): for a regular file or nothing, under a
/// hidden temp name beside it, which [`commit`](Self::commit) renames over it (dropped without a
/// commit, the temp file is removed and the target untouched); for a device, FIFO or socket,
/// straight into it.
#[derive(Debug)]
pub struct AtomicFile {
    /// The final target (symlinks followed).
    target: PathBuf,
    /// The temp file; empty when writing through or once renamed.
    tmp: PathBuf,
    file: Option<File>,
}

/// A rename done by [`AtomicFile::rename`]: the target holds the new content, which
/// [`sync_dir`](Self::sync_dir) makes durable.
#[must_use = "the rename is not durable until the directory is synced"]
#[derive(Debug)]
pub struct Renamed {
    dir: Option<PathBuf>,
}

impl Renamed {
    /// `fsync`s the target's directory (nothing to do for a target written through).
    pub fn sync_dir(self) -> io::Result<()> {
        match &self.dir {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }
}

impl AtomicFile {
    /// [`open`](Self::open) replacing an existing file.
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        AtomicFile::open(target, Existing::Replace)
    }

    /// Starts writing `target` (module docs): follows symlinks to the final target; refuses a
    /// directory, and an existing regular file unless `existing` is [`Existing::Replace`]; opens a
    /// device, FIFO or socket for writing (a FIFO blocks until it has a reader); otherwise removes
    /// stale temp files of the target ([`remove_stale_temps`]) and creates
    /// `.<name>.<id>.tmp` beside it, with an existing file's permission bits.
    pub fn open(target: &Path, existing: Existing) -> io::Result<AtomicFile> {
        // A device, FIFO or socket however reached (`/dev/stdout`'s links into /proc included,
        // which name no path of their own) is written through.
        if let Ok(m) = fs::metadata(target) {
            if !m.is_file() && !m.is_dir() {
                let file = OpenOptions::new().write(true).open(target)?;
                return Ok(AtomicFile {
                    target: target.to_path_buf(),
                    tmp: PathBuf::new(),
                    file: Some(file),
                });
            }
        }
        let (target, meta) = resolve(target)?;
        if let Some(m) = &meta {
            refusal(m, existing)?;
            if !m.is_file() {
                let file = OpenOptions::new().write(true).open(&target)?;
                return Ok(AtomicFile {
                    target,
                    tmp: PathBuf::new(),
                    file: Some(file),
                });
            }
        }
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
        let dir = parent_dir(&target);
        remove_stale_temps(&dir, name);
        let tmp = hidden_sibling(&dir, name, &unique_id(), "tmp");
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if let Some(m) = &meta {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            options.mode(m.permissions().mode() & 0o777);
        }
        let file = options.open(&tmp)?;
        let atomic = AtomicFile {
            target,
            tmp,
            file: Some(file),
        };
        if let Some(m) = &meta {
            // Exactly the old bits (the mode given to open is masked by the umask).
            atomic
                .file
                .as_ref()
                .expect("just opened")
                .set_permissions(m.permissions())?;
        }
        Ok(atomic)
    }

    /// The path this file replaces on commit (symlinks followed).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The hidden temp file being written; the target itself when writing through.
    pub fn temp_path(&self) -> &Path {
        if self.writes_through() {
            &self.target
        } else {
            &self.tmp
        }
    }

    /// Whether this writes straight into its target (a device, FIFO or socket): no temp file,
    /// no rename, and a FIFO cannot seek.
    pub fn writes_through(&self) -> bool {
        self.tmp.as_os_str().is_empty()
    }

    /// The open temp file (or the target written through).
    pub fn file_mut(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed or dropped")
    }

    /// `fsync`s the temp file and renames it over the target; on error the temp file is removed
    /// and the target untouched. The rename is durable only after [`Renamed::sync_dir`]. A target
    /// written through is `fsync`ed where that means something (not a FIFO or character device).
    pub fn rename(mut self) -> io::Result<Renamed> {
        let file = self.file.take().expect("open until committed or dropped");
        if self.writes_through() {
            return match file.sync_all() {
                // EINVAL: the device or FIFO has nothing to sync.
                Err(e) if e.raw_os_error() != Some(22) => Err(e),
                _ => Ok(Renamed { dir: None }),
            };
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.target)?;
        // Renamed away: nothing left for Drop to remove.
        self.tmp = PathBuf::new();
        Ok(Renamed {
            dir: Some(parent_dir(&self.target)),
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
    write_output_with(path, Existing::Replace, body)
}

/// [`write_atomic_with`] for a command's output file: an existing regular file at `path` is
/// replaced only when `existing` says so.
pub fn write_output_with<T>(
    path: &Path,
    existing: Existing,
    body: impl FnOnce(&mut File) -> io::Result<T>,
) -> Result<T> {
    let mut file = AtomicFile::open(path, existing)
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
    #[cfg(unix)]
    use std::os::unix::fs::FileTypeExt;

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
    #[cfg(unix)]
    #[test]
    fn symlink_is_followed_and_stays_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let real_dir = tmp.path().join("real");
        fs::create_dir(&real_dir).unwrap();
        let target = real_dir.join("target.bin");
        fs::write(&target, b"old").unwrap();
        let link = tmp.path().join("link.bin");
        std::os::unix::fs::symlink("real/target.bin", &link).unwrap();
        write_atomic(&link, b"new content").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&target).unwrap(), b"new content");
        assert_eq!(listing(&real_dir), set(&["target.bin"]));
        assert_eq!(listing(tmp.path()), set(&["link.bin", "real"]));
        // A dangling link gets its target created.
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink("real/new.bin", &dangling).unwrap();
        write_atomic(&dangling, b"x").unwrap();
        assert_eq!(fs::read(real_dir.join("new.bin")).unwrap(), b"x");
    }

    #[cfg(unix)]
    #[test]
    fn fifo_is_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("pipe");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(ok.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read(fifo).unwrap())
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(listing(tmp.path()), set(&["pipe"]));
    }

    /// `/dev/stdout` when stdout is a pipe: a link into /proc whose target is no path.
    #[cfg(target_os = "linux")]
    #[test]
    fn pipe_reached_through_proc_is_written_through() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (mut reader, writer) = io::pipe().unwrap();
        let path = PathBuf::from(format!("/proc/self/fd/{}", writer.as_raw_fd()));
        write_output_with(&path, Existing::Refuse, |f| f.write_all(b"to the pipe")).unwrap();
        drop(writer);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"to the pipe");
    }

    #[cfg(unix)]
    #[test]
    fn replacement_keeps_permission_bits() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("secret");
        fs::write(&path, b"old").unwrap();
        for mode in [0o600, 0o640, 0o755] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            write_atomic(&path, b"new").unwrap();
            let got = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(got, mode, "{got:o} != {mode:o}");
        }
    }

    #[test]
    fn existing_file_refused_unless_replace_and_directory_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out");
        write_output_with(&path, Existing::Refuse, |f| f.write_all(b"first")).unwrap();
        let e = write_output_with(&path, Existing::Refuse, |f| f.write_all(b"second")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("out") && msg.contains("--force"), "{msg}");
        assert!(check_output(&path, Existing::Refuse).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        write_output_with(&path, Existing::Replace, |f| f.write_all(b"second")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let e = write_atomic(tmp.path(), b"x").unwrap_err();
        assert!(format!("{e:#}").contains("directory"), "{e:#}");
        assert_eq!(listing(tmp.path()), set(&["out"]));
    }

    #[test]
    fn stale_temps_of_a_gone_writer_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.bin");
        // Ids as unique_id makes them: 16 hex digits of time, 8 of process id, 4 of counter.
        let gone = format!(".f.bin.{:016x}{:08x}{:04x}.tmp", 7, u32::MAX - 1, 0);
        let alive = format!(".f.bin.{:016x}{:08x}{:04x}.tmp", 7, std::process::id(), 1);
        let other_name = format!(".g.bin.{:016x}{:08x}{:04x}.tmp", 7, u32::MAX - 1, 0);
        for name in [
            &gone,
            &alive,
            &other_name,
            &".f.bin.notmine.tmp".to_string(),
        ] {
            fs::write(tmp.path().join(name), b"partial").unwrap();
        }
        write_atomic(&path, b"done").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"done");
        let left = listing(tmp.path());
        assert!(!left.contains(&gone), "{left:?}");
        for kept in [&alive, &other_name, &".f.bin.notmine.tmp".to_string()] {
            assert!(left.contains(kept), "{kept} removed: {left:?}");
        }
        assert_eq!(temp_writer_pid(&gone, "f.bin"), Some(u32::MAX - 1));
        assert_eq!(temp_writer_pid(&gone, "f"), None);
    }
}
