//! Checkpoints: the files a user keeps from training, and the crash-safe way they are written.
//!
//! # Layout
//!
//! A checkpoint is a directory:
//!
//! | file | contents |
//! |---|---|
//! | `model.safetensors` | every parameter tensor as little-endian F32 under its [`ParamArena::layout`] name and shape; metadata `{"format": "terse", "config": <config JSON>, "save_id": ..}`. Any safetensors reader (PyTorch's `safetensors.torch.load_file`) opens it. |
//! | `config.json` | the [`ModelConfig`], pretty-printed |
//! | `optimizer.safetensors` | only with training state: AdamW moments as tensors `m.<name>` and `v.<name>` |
//! | `trainer.json` | only with training state: `{"version": 1, "save_id": .., "state": <the trainer's JSON>}` |
//! | `manifest.json` | the commit record: `{"format": "terse-checkpoint", "version": 1, "save_id": .., "files": {name: {"bytes": n, "crc32": c}}}` |
//!
//! # How a save is made, and what it guarantees
//!
//! [`save_checkpoint`] is a small write-ahead protocol inside the directory:
//!
//! 1. **Stage.** Each payload file is written under a hidden name unique to this save
//!    (`.model.safetensors.<save_id>.staged`, ...), its length and CRC-32 computed while writing,
//!    then `fsync`ed; then the directory is `fsync`ed. The committed files are not touched.
//! 2. **Commit.** `manifest.json`, naming the save id and every file's length and CRC-32, replaces
//!    the old one by [`atomic_write`] (temp file, `fsync`, `rename`, directory `fsync`). That
//!    rename is the single instant at which the checkpoint switches from the old save to the new.
//! 3. **Roll forward.** Each staged file is renamed over its public name (`model.safetensors`,
//!    ...), the directory is `fsync`ed, and leftovers (other saves' staged or temp files, and
//!    `optimizer.safetensors`/`trainer.json` when this save has no training state) are removed.
//!
//! A loader reads the manifest and takes each file it lists from the staged name of the
//! manifest's save id when that exists, otherwise from the public name; every byte read is
//! checked against the manifest's length and CRC-32.
//!
//! **Guarantee.** If the process or the machine stops at any instant of a save, the directory
//! afterwards loads as exactly the previous checkpoint (stop before step 2's rename) or exactly
//! the new one (stop after it), bit for bit; nothing is lost and no repair step is needed. A save
//! that fails with an error (a full disk, say) before the commit removes what it wrote and leaves
//! the previous checkpoint as it was. This rests on the file system making `rename` atomic and
//! honouring `fsync` (ext4, xfs, btrfs, APFS do; some network file systems do not), and on one
//! save at a time per directory. The first save into an empty directory, if interrupted, leaves
//! no checkpoint (there was none to keep). Tools that read `model.safetensors` directly (not
//! through [`load_model`]) always see a complete file, but during step 3 possibly the previous
//! save's weights.
//!
//! **Detection.** A file changed, truncated or swapped in from another save after it was written
//! no longer matches the manifest: loading fails with an error naming the file. Without a
//! `manifest.json` (a directory assembled by hand or by another tool) files are still fully
//! validated for structure and shapes, and the `save_id`s recorded inside the files must agree,
//! but silent changes to tensor values cannot be detected.
//!
//! Loading never trusts a size in a header beyond the file's real length, allocates only after
//! the header has been checked against both the configuration and the file length, and reports
//! every problem as an error naming the path; it does not panic on any file content.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::{ModelConfig, ParamArena, TensorSpec};

/// Weights file inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// Model configuration file inside a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// AdamW moments file (training state only).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Trainer state file (training state only).
pub const TRAINER_FILE: &str = "trainer.json";
/// Commit record listing every file of the current save with its length and CRC-32.
pub const MANIFEST_FILE: &str = "manifest.json";

const PAYLOAD_FILES: [&str; 4] = [MODEL_FILE, CONFIG_FILE, OPTIMIZER_FILE, TRAINER_FILE];
const MANIFEST_FORMAT: &str = "terse-checkpoint";
const FORMAT_VERSION: u64 = 1;
/// The safetensors reference implementation refuses headers above 100 MB; so do we.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Training state saved beside the weights so that training can resume exactly.
///
/// `m` and `v` are the AdamW first and second moments in the [`ParamArena`] layout (same length
/// as the parameters); `state` is whatever the trainer needs (step, schedule, data order, RNG
/// state), stored verbatim and handed back unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub state: Value,
}

/// CRC-32 (IEEE 802.3, as zlib and gzip compute it).
type Crc32 = crc32fast::Hasher;

/// Length and CRC-32 of a file's whole content, as recorded in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileSum {
    bytes: u64,
    crc32: u32,
}

impl std::fmt::Display for FileSum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, crc32 {:08x}", self.bytes, self.crc32)
    }
}

struct SumWriter<W> {
    inner: W,
    crc: Crc32,
    bytes: u64,
}

impl<W: Write> Write for SumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct SumReader<R> {
    inner: R,
    crc: Crc32,
    bytes: u64,
}

impl<R: Read> SumReader<R> {
    fn new(inner: R) -> Self {
        SumReader {
            inner,
            crc: Crc32::new(),
            bytes: 0,
        }
    }

    fn sum(&self) -> FileSum {
        FileSum {
            bytes: self.bytes,
            crc32: self.crc.clone().finalize(),
        }
    }
}

impl<R: Read> Read for SumReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn sum_of_file(path: &Path) -> io::Result<FileSum> {
    let mut r = SumReader::new(BufReader::with_capacity(1 << 20, File::open(path)?));
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.sum())
}

// ---------------------------------------------------------------------------------------------
// Durable writes.

/// Wraps the destination file of a write; tests use it to inject failures (a full disk).
type WrapFn = dyn for<'w> Fn(&Path, &'w mut File) -> Box<dyn Write + 'w>;
type Body<'b> = &'b mut dyn FnMut(&mut dyn Write) -> io::Result<()>;

/// A name no other save or write (in this or another process) uses: hex digits only.
fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:016x}{:08x}{:04x}", std::process::id(), n & 0xffff)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `dir/.<name>.<id>.<ext>`
fn hidden_sibling(dir: &Path, name: &std::ffi::OsStr, id: &str, ext: &str) -> PathBuf {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(format!(".{id}.{ext}"));
    dir.join(s)
}

fn staged_path(dir: &Path, name: &str, save_id: &str) -> PathBuf {
    hidden_sibling(dir, name.as_ref(), save_id, "staged")
}

/// Makes the directory entry changes (create, rename, remove) inside `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
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

/// Creates `path` (which must not exist), writes `body` through it, flushes and `fsync`s it.
/// Leaves a partial file behind on error: the caller removes it.
fn write_new(path: &Path, wrap: Option<&WrapFn>, body: Body<'_>) -> io::Result<FileSum> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    let sum = {
        let raw: Box<dyn Write + '_> = match wrap {
            Some(w) => w(path, &mut file),
            None => Box::new(&mut file),
        };
        let mut w = SumWriter {
            inner: BufWriter::with_capacity(1 << 20, raw),
            crc: Crc32::new(),
            bytes: 0,
        };
        body(&mut w)?;
        w.flush()?;
        FileSum {
            bytes: w.bytes,
            crc32: w.crc.clone().finalize(),
        }
    };
    file.sync_all()?;
    Ok(sum)
}

/// Replaces `path` with the content `body` writes, atomically; see [`atomic_write`].
fn atomic_write_with(path: &Path, wrap: Option<&WrapFn>, body: Body<'_>) -> Result<FileSum> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("cannot write {}: not a file path", path.display()))?;
    let dir = parent_dir(path);
    let tmp = hidden_sibling(&dir, name, &unique_id(), "tmp");
    let written = write_new(&tmp, wrap, body).and_then(|sum| fs::rename(&tmp, path).map(|_| sum));
    match written {
        Ok(sum) => {
            sync_dir(&dir).with_context(|| {
                format!(
                    "cannot sync directory {} after writing {}",
                    dir.display(),
                    path.display()
                )
            })?;
            Ok(sum)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(anyhow!(e).context(format!("cannot write {}", path.display())))
        }
    }
}

/// Replaces the file at `path` with `bytes` so that, whatever happens, `path` holds either its
/// old content or exactly `bytes`, never a mixture or a truncation.
///
/// Writes a temp file with a unique hidden name in the same directory, `fsync`s it, renames it
/// over `path` and `fsync`s the directory. On any error the temp file is removed, the old file is
/// left untouched, and the error names `path`. The directory must exist.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, None, &mut |w| w.write_all(bytes)).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// safetensors writing.

/// A safetensors header for F32 tensors stored back to back in the given order, padded with
/// spaces so the data starts 8-byte aligned (as the reference implementation writes it).
fn safetensors_header(
    entries: &[(String, &[usize])],
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    for (name, shape) in entries {
        let end = offset + shape.iter().product::<usize>() * 4;
        map.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = Value::Object(map).to_string().into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    header
}

fn write_f32s(w: &mut dyn Write, xs: &[f32]) -> io::Result<()> {
    if cfg!(target_endian = "little") {
        w.write_all(bytemuck::cast_slice(xs))
    } else {
        for chunk in xs.chunks(1 << 14) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_all(&bytes)?;
        }
        Ok(())
    }
}

/// The payload of a safetensors file holding, for each `(prefix, data)`, every tensor of
/// `specs` named `<prefix><name>`.
fn tensor_payload<'a>(
    specs: &[TensorSpec],
    prefixes: &[&str],
    data: &[&'a [f32]],
    meta: BTreeMap<String, String>,
) -> Payload<'a> {
    let mut entries = Vec::new();
    let mut chunks = Vec::new();
    for (p, d) in prefixes.iter().zip(data) {
        for s in specs {
            entries.push((format!("{p}{}", s.name), s.shape.as_slice()));
            chunks.push(&d[s.range()]);
        }
    }
    Payload::Tensors {
        header: safetensors_header(&entries, &meta),
        chunks,
    }
}

/// One file of a save, produced while it is written.
enum Payload<'a> {
    Tensors {
        header: Vec<u8>,
        chunks: Vec<&'a [f32]>,
    },
    Bytes(Vec<u8>),
}

impl Payload<'_> {
    fn write(&self, w: &mut dyn Write) -> io::Result<()> {
        match self {
            Payload::Tensors { header, chunks } => {
                w.write_all(&(header.len() as u64).to_le_bytes())?;
                w.write_all(header)?;
                for c in chunks {
                    write_f32s(w, c)?;
                }
                Ok(())
            }
            Payload::Bytes(b) => w.write_all(b),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Saving.

#[derive(Debug)]
struct SimulatedCrash;

impl std::fmt::Display for SimulatedCrash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated crash")
    }
}

impl std::error::Error for SimulatedCrash {}

/// Fault injection for tests: a writer wrapper and a step at which the save "dies" (returns at
/// once, cleaning nothing up, as a killed process would).
#[derive(Default)]
struct Hooks<'a> {
    wrap: Option<&'a WrapFn>,
    crash_at: Option<usize>,
    step: Cell<usize>,
}

impl Hooks<'_> {
    fn point(&self) -> Result<()> {
        let s = self.step.get();
        self.step.set(s + 1);
        if self.crash_at == Some(s) {
            return Err(SimulatedCrash.into());
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u64,
    save_id: String,
    files: BTreeMap<String, FileSum>,
}

#[derive(Serialize, Deserialize)]
struct TrainerFile {
    version: u64,
    #[serde(default)]
    save_id: Option<String>,
    state: Value,
}

/// Writes a checkpoint of `params` (and, when given, the training state) into `dir`, creating
/// the directory if needed and replacing any checkpoint already there.
///
/// Crash-safe: at every instant the directory loads as the previous checkpoint or as this one
/// (see the module documentation for the protocol and its assumptions). On error before the
/// commit nothing of this save is left behind. A save without training state removes the
/// previous save's `optimizer.safetensors` and `trainer.json`.
///
/// Refuses (before writing anything) a configuration failing [`ModelConfig::validate`], a
/// `params` whose layout or length differs from `ParamArena::layout(cfg)`, and moments whose
/// length differs from the parameters'.
pub fn save_checkpoint(
    dir: &Path,
    cfg: &ModelConfig,
    params: &ParamArena,
    training: Option<&TrainingState>,
) -> Result<()> {
    save_with(dir, cfg, params, training, &Hooks::default())
}

fn save_with(
    dir: &Path,
    cfg: &ModelConfig,
    params: &ParamArena,
    training: Option<&TrainingState>,
    hooks: &Hooks,
) -> Result<()> {
    cfg.validate()
        .context("cannot save checkpoint: invalid model config")?;
    let specs = ParamArena::layout(cfg);
    let total = specs.last().map_or(0, |s| s.offset + s.len());
    if params.specs != specs || params.data.len() != total {
        bail!(
            "cannot save checkpoint to {}: parameters ({} tensors, {} values) do not have the layout of config '{}' ({} tensors, {} values)",
            dir.display(),
            params.specs.len(),
            params.data.len(),
            cfg.preset,
            specs.len(),
            total
        );
    }
    if let Some(t) = training {
        if t.m.len() != total || t.v.len() != total {
            bail!(
                "cannot save checkpoint to {}: optimizer moments have {} and {} values, parameters {}",
                dir.display(),
                t.m.len(),
                t.v.len(),
                total
            );
        }
    }
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create checkpoint directory {}", dir.display()))?;
    let save_id = unique_id();

    let meta = |format: &str, extra: Option<String>| {
        let mut m = BTreeMap::from([
            ("format".to_string(), format.to_string()),
            ("save_id".to_string(), save_id.clone()),
        ]);
        if let Some(c) = extra {
            m.insert("config".into(), c);
        }
        m
    };
    let config_json = serde_json::to_string(cfg)?;
    let mut files: Vec<(&str, Payload)> = vec![(
        MODEL_FILE,
        tensor_payload(
            &specs,
            &[""],
            &[&params.data],
            meta("terse", Some(config_json)),
        ),
    )];
    if let Some(t) = training {
        files.push((
            OPTIMIZER_FILE,
            tensor_payload(
                &specs,
                &["m.", "v."],
                &[&t.m, &t.v],
                meta("terse-optimizer", None),
            ),
        ));
    }
    let mut config_pretty = serde_json::to_vec_pretty(cfg)?;
    config_pretty.push(b'\n');
    files.push((CONFIG_FILE, Payload::Bytes(config_pretty)));
    if let Some(t) = training {
        let trainer = TrainerFile {
            version: FORMAT_VERSION,
            save_id: Some(save_id.clone()),
            state: t.state.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&trainer)?;
        bytes.push(b'\n');
        files.push((TRAINER_FILE, Payload::Bytes(bytes)));
    }

    // 1. Stage.
    let mut staged: Vec<PathBuf> = Vec::new();
    let mut sums = BTreeMap::new();
    let stage = (|| -> Result<()> {
        for (name, payload) in &files {
            hooks.point()?;
            let path = staged_path(dir, name, &save_id);
            staged.push(path.clone());
            let sum =
                write_new(&path, hooks.wrap, &mut |w| payload.write(w)).with_context(|| {
                    format!(
                        "cannot save checkpoint: writing {name} into {} failed",
                        dir.display()
                    )
                })?;
            sums.insert(name.to_string(), sum);
        }
        hooks.point()?;
        sync_dir(dir).with_context(|| format!("cannot sync checkpoint directory {}", dir.display()))
    })();
    let remove_staged = |staged: &[PathBuf]| {
        for p in staged {
            let _ = fs::remove_file(p);
        }
    };
    if let Err(e) = stage {
        if !e.is::<SimulatedCrash>() {
            remove_staged(&staged);
        }
        return Err(e);
    }

    // 2. Commit.
    hooks.point()?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: FORMAT_VERSION,
        save_id: save_id.clone(),
        files: sums,
    };
    let mut manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
    manifest_bytes.push(b'\n');
    let manifest_path = dir.join(MANIFEST_FILE);
    let tmp = hidden_sibling(dir, MANIFEST_FILE.as_ref(), &unique_id(), "tmp");
    let committed = write_new(&tmp, hooks.wrap, &mut |w| w.write_all(&manifest_bytes))
        .and_then(|_| fs::rename(&tmp, &manifest_path));
    if let Err(e) = committed {
        let _ = fs::remove_file(&tmp);
        remove_staged(&staged);
        return Err(anyhow!(e).context(format!(
            "cannot save checkpoint: writing {}",
            manifest_path.display()
        )));
    }
    // From here on the directory loads as the new checkpoint; staged files must stay until moved.
    hooks.point()?;
    sync_dir(dir).with_context(|| {
        format!(
            "cannot sync checkpoint directory {} after commit",
            dir.display()
        )
    })?;

    // 3. Roll forward and clean up.
    for (name, _) in &files {
        hooks.point()?;
        fs::rename(staged_path(dir, name, &save_id), dir.join(name)).with_context(|| {
            format!(
                "checkpoint {} is saved, but its {name} could not be moved to its final name (it still loads)",
                dir.display()
            )
        })?;
    }
    hooks.point()?;
    sync_dir(dir).with_context(|| format!("cannot sync checkpoint directory {}", dir.display()))?;
    hooks.point()?;
    let keep: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale_payload =
                [OPTIMIZER_FILE, TRAINER_FILE].contains(&name) && !keep.contains(&name);
            if stale_payload || is_leftover(name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let _ = sync_dir(dir);
    Ok(())
}

/// Staged or temp files that an earlier save (interrupted, or superseded) left behind.
fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let ours = PAYLOAD_FILES
        .iter()
        .chain([&MANIFEST_FILE])
        .any(|f| rest.strip_prefix(f).is_some_and(|r| r.starts_with('.')));
    ours && (name.ends_with(".staged") || name.ends_with(".tmp"))
}

// ---------------------------------------------------------------------------------------------
// safetensors reading.

struct StEntry {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    begin: u64,
    end: u64,
}

struct StHeader {
    metadata: BTreeMap<String, String>,
    /// Sorted by data offset (file order).
    entries: Vec<StEntry>,
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

fn parse_entry(path: &Path, name: &str, v: &Value) -> Result<StEntry> {
    let bad = |what: &str| {
        anyhow!(
            "{} has a corrupt header: tensor {name} {what}",
            path.display()
        )
    };
    let obj = v.as_object().ok_or_else(|| bad("is not a JSON object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["dtype", "shape", "data_offsets"].contains(&k.as_str()))
    {
        return Err(bad(&format!("has unknown field '{k}'")));
    }
    let dtype = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("has no string 'dtype'"))?
        .to_string();
    let shape = obj
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or_else(|| bad("has no 'shape' list of non-negative integers"))?;
    let offsets = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("has no 'data_offsets' pair of non-negative integers"))?;
    let (begin, end) = (offsets[0], offsets[1]);
    if begin > end {
        return Err(bad(&format!(
            "has data_offsets [{begin}, {end}] that run backwards"
        )));
    }
    let size = dtype_size(&dtype).ok_or_else(|| bad(&format!("has unknown dtype '{dtype}'")))?;
    let need = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
    if need != Some(end - begin) {
        return Err(bad(&format!(
            "with dtype {dtype} and shape {shape:?} does not fit its {} data bytes",
            end - begin
        )));
    }
    Ok(StEntry {
        name: name.to_string(),
        dtype,
        shape,
        begin,
        end,
    })
}

/// Reads and checks the header: every size is checked against `file_len` before use, tensors
/// must tile the data section exactly (no gap, overlap or trailing bytes).
fn read_header(path: &Path, r: &mut impl Read, file_len: u64) -> Result<StHeader> {
    if file_len < 8 {
        bail!(
            "{} is truncated: {file_len} bytes, too short for a safetensors header",
            path.display()
        );
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > file_len - 8 {
        bail!(
            "{} is truncated or corrupt: its header claims {n} bytes but only {} follow",
            path.display(),
            file_len - 8
        );
    }
    if n > MAX_HEADER_BYTES {
        bail!(
            "{} is corrupt: header of {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit",
            path.display()
        );
    }
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = serde_json::from_slice(&header).map_err(|e| {
        anyhow!(
            "{} has a corrupt header (not valid JSON: {e})",
            path.display()
        )
    })?;
    let Value::Object(map) = value else {
        bail!(
            "{} has a corrupt header (not a JSON object)",
            path.display()
        );
    };
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::new();
    for (k, v) in &map {
        if k == "__metadata__" {
            let obj = v.as_object().ok_or_else(|| {
                anyhow!(
                    "{} has a corrupt header: __metadata__ is not an object",
                    path.display()
                )
            })?;
            for (mk, mv) in obj {
                let s = mv.as_str().ok_or_else(|| {
                    anyhow!(
                        "{} has a corrupt header: metadata value '{mk}' is not a string",
                        path.display()
                    )
                })?;
                metadata.insert(mk.clone(), s.to_string());
            }
        } else {
            entries.push(parse_entry(path, k, v)?);
        }
    }
    entries.sort_by_key(|e| (e.begin, e.end));
    let data_len = file_len - 8 - n;
    let mut at = 0u64;
    for e in &entries {
        if e.begin != at {
            bail!(
                "{} has a corrupt header: tensor {} starts at data byte {} where {at} was expected (gap or overlap)",
                path.display(),
                e.name,
                e.begin
            );
        }
        at = e.end;
    }
    if at > data_len {
        bail!(
            "{} is truncated: its header describes {at} bytes of tensor data but the file holds {data_len}",
            path.display()
        );
    }
    if at < data_len {
        bail!(
            "{} is corrupt: {} unexpected bytes follow the last tensor",
            path.display(),
            data_len - at
        );
    }
    Ok(StHeader { metadata, entries })
}

/// Tensor buffers read from a file, and the file's metadata.
type Loaded = (Vec<Vec<f32>>, BTreeMap<String, String>);

/// A tensor the caller expects: where its values go.
struct Want<'a> {
    name: String,
    spec: &'a TensorSpec,
    buf: usize,
}

/// Checks the header against the wanted tensors, then streams the data into `n_bufs` buffers of
/// `buf_len` values each. Returns the buffers and the header metadata.
fn read_tensors<R: Read>(
    path: &Path,
    r: &mut R,
    file_len: u64,
    wants: &[Want],
    n_bufs: usize,
    buf_len: usize,
    preset: &str,
) -> Result<Loaded> {
    let header = read_header(path, r, file_len)?;
    let by_name: HashMap<&str, usize> = header
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_str(), i))
        .collect();
    let mut dest: Vec<Option<&Want>> = vec![None; header.entries.len()];
    for w in wants {
        let Some(&i) = by_name.get(w.name.as_str()) else {
            bail!(
                "{} has no tensor {} (config expects shape {:?})",
                path.display(),
                w.name,
                w.spec.shape
            );
        };
        let e = &header.entries[i];
        if e.dtype != "F32" {
            bail!(
                "{}: tensor {} has dtype {}, expected F32",
                path.display(),
                w.name,
                e.dtype
            );
        }
        if e.shape.len() != w.spec.shape.len()
            || e.shape
                .iter()
                .zip(&w.spec.shape)
                .any(|(&a, &b)| a != b as u64)
        {
            bail!(
                "{}: tensor {} has shape {:?}, config expects {:?}",
                path.display(),
                w.name,
                e.shape,
                w.spec.shape
            );
        }
        dest[i] = Some(w);
    }
    let extra: Vec<&str> = header
        .entries
        .iter()
        .zip(&dest)
        .filter(|(_, d)| d.is_none())
        .map(|(e, _)| e.name.as_str())
        .collect();
    if let Some(first) = extra.first() {
        bail!(
            "{} has unexpected tensor {first} ({} in all) not in the layout of config '{preset}'",
            path.display(),
            extra.len()
        );
    }
    // Every byte of the (length-checked) data section now maps to a wanted tensor, so these
    // allocations are bounded by the file's real size.
    let mut bufs: Vec<Vec<f32>> = (0..n_bufs).map(|_| vec![0f32; buf_len]).collect();
    for (e, w) in header.entries.iter().zip(&dest) {
        let w = w.expect("every entry matched above");
        let dst = &mut bufs[w.buf][w.spec.range()];
        r.read_exact(bytemuck::cast_slice_mut(dst))
            .with_context(|| {
                format!(
                    "{} is truncated or unreadable in tensor {}",
                    path.display(),
                    e.name
                )
            })?;
        if cfg!(target_endian = "big") {
            for x in dst.iter_mut() {
                *x = f32::from_bits(u32::from_le(x.to_bits()));
            }
        }
    }
    Ok((bufs, header.metadata))
}

// ---------------------------------------------------------------------------------------------
// Loading.

struct Checkpoint {
    dir: PathBuf,
    manifest: Option<Manifest>,
}

fn inconsistent(
    dir: &Path,
    name: &str,
    expected: FileSum,
    found: &str,
    detail: Option<&anyhow::Error>,
) -> anyhow::Error {
    let mut msg = format!(
        "checkpoint {} is inconsistent: {name} does not match {MANIFEST_FILE} (recorded {expected}, found {found}); \
         it was changed, truncated or replaced by a file from another save after it was written. \
         Restore the file or load an earlier checkpoint",
        dir.display()
    );
    if let Some(d) = detail {
        msg.push_str(&format!(" ({d:#})"));
    }
    anyhow!(msg)
}

impl Checkpoint {
    fn open(dir: &Path) -> Result<Self> {
        match fs::metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("checkpoint directory {} does not exist", dir.display())
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "cannot access checkpoint directory {}",
                    dir.display()
                )))
            }
            Ok(m) if !m.is_dir() => bail!("checkpoint path {} is not a directory", dir.display()),
            Ok(_) => {}
        }
        let mpath = dir.join(MANIFEST_FILE);
        let manifest = match fs::read(&mpath) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(anyhow!(e).context(format!("cannot read {}", mpath.display()))),
            Ok(bytes) => {
                let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow!("{} is corrupt (not a valid manifest: {e})", mpath.display())
                })?;
                let id_ok = !m.save_id.is_empty()
                    && m.save_id.len() <= 64
                    && m.save_id.bytes().all(|b| b.is_ascii_hexdigit());
                if m.format != MANIFEST_FORMAT || m.version != FORMAT_VERSION || !id_ok {
                    bail!(
                        "{} is not a terse checkpoint manifest of version {FORMAT_VERSION} (format '{}', version {}, save_id '{}')",
                        mpath.display(),
                        m.format,
                        m.version,
                        m.save_id
                    );
                }
                if let Some(k) = m
                    .files
                    .keys()
                    .find(|k| !PAYLOAD_FILES.contains(&k.as_str()))
                {
                    bail!(
                        "{} is corrupt: it lists unknown file '{k}'",
                        mpath.display()
                    );
                }
                let has = |n: &str| m.files.contains_key(n);
                if !has(MODEL_FILE) || !has(CONFIG_FILE) || has(OPTIMIZER_FILE) != has(TRAINER_FILE)
                {
                    bail!(
                        "{} is corrupt: it lists {:?}, which is not a complete checkpoint",
                        mpath.display(),
                        m.files.keys().collect::<Vec<_>>()
                    );
                }
                Some(m)
            }
        };
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Where the current content of `name` lives, and its recorded sum; `None` when the
    /// checkpoint does not include it.
    fn file(&self, name: &str) -> Result<Option<(PathBuf, Option<FileSum>)>> {
        let public = self.dir.join(name);
        let Some(m) = &self.manifest else {
            return Ok(public.exists().then_some((public, None)));
        };
        let Some(&sum) = m.files.get(name) else {
            return Ok(None);
        };
        let staged = staged_path(&self.dir, name, &m.save_id);
        if staged.exists() {
            return Ok(Some((staged, Some(sum))));
        }
        if !public.exists() {
            bail!(
                "checkpoint {} is missing {name}, which its {MANIFEST_FILE} lists",
                self.dir.display()
            );
        }
        Ok(Some((public, Some(sum))))
    }

    /// A whole small file (config, trainer state), checked against the manifest.
    fn read_small(&self, name: &str) -> Result<Option<(PathBuf, Vec<u8>)>> {
        let Some((path, sum)) = self.file(name)? else {
            return Ok(None);
        };
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if let Some(expected) = sum {
            let mut crc = Crc32::new();
            crc.update(&bytes);
            let found = FileSum {
                bytes: bytes.len() as u64,
                crc32: crc.finalize(),
            };
            if found != expected {
                return Err(inconsistent(
                    &self.dir,
                    name,
                    expected,
                    &found.to_string(),
                    None,
                ));
            }
        }
        Ok(Some((path, bytes)))
    }

    fn require(&self, name: &str) -> Result<(PathBuf, Option<FileSum>)> {
        self.file(name)?.ok_or_else(|| {
            let interrupted = fs::read_dir(&self.dir).is_ok_and(|rd| {
                rd.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&format!(".{name}.")) && n.ends_with(".staged")))
            });
            if interrupted {
                anyhow!(
                    "checkpoint {} holds no complete checkpoint: the first save into it was interrupted before it finished",
                    self.dir.display()
                )
            } else {
                anyhow!("{} is not a checkpoint: it has no {name}", self.dir.display())
            }
        })
    }

    /// Opens a tensor file, checks it against the manifest and the wanted layout, and reads it.
    /// When the manifest disagrees with the file, that (the root cause) is the error reported.
    fn read_tensor_file(
        &self,
        name: &str,
        (path, sum): (PathBuf, Option<FileSum>),
        wants: &[Want],
        n_bufs: usize,
        buf_len: usize,
        preset: &str,
    ) -> Result<Loaded> {
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let file_len = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        if let Some(s) = sum {
            if s.bytes != file_len {
                return Err(inconsistent(
                    &self.dir,
                    name,
                    s,
                    &format!("{file_len} bytes"),
                    None,
                ));
            }
        }
        let mut r = SumReader::new(BufReader::with_capacity(1 << 20, file));
        let res = read_tensors(&path, &mut r, file_len, wants, n_bufs, buf_len, preset);
        let Some(expected) = sum else { return res };
        match res {
            Ok(out) => {
                let found = r.sum();
                if found != expected {
                    return Err(inconsistent(
                        &self.dir,
                        name,
                        expected,
                        &found.to_string(),
                        None,
                    ));
                }
                Ok(out)
            }
            Err(e) => match sum_of_file(&path) {
                Ok(found) if found != expected => Err(inconsistent(
                    &self.dir,
                    name,
                    expected,
                    &found.to_string(),
                    Some(&e),
                )),
                _ => Err(e),
            },
        }
    }

    fn config(&self, model: &(PathBuf, Option<FileSum>)) -> Result<ModelConfig> {
        let (cfg, path) = match self.read_small(CONFIG_FILE)? {
            Some((path, bytes)) => {
                let cfg: ModelConfig = serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow!("{} is not a valid model config: {e}", path.display()))?;
                (cfg, path)
            }
            None => {
                // A lone weights file made by terse carries its config in the metadata.
                let (mpath, _) = model;
                let file = File::open(mpath)
                    .with_context(|| format!("cannot open {}", mpath.display()))?;
                let len = file.metadata()?.len();
                let header = read_header(mpath, &mut BufReader::new(file), len)?;
                let Some(json) = header.metadata.get("config") else {
                    bail!(
                        "checkpoint {} has no {CONFIG_FILE} (and {} records no config in its metadata)",
                        self.dir.display(),
                        mpath.display()
                    );
                };
                let cfg: ModelConfig = serde_json::from_str(json).map_err(|e| {
                    anyhow!(
                        "{}: the config in its metadata is not valid: {e}",
                        mpath.display()
                    )
                })?;
                (cfg, mpath.clone())
            }
        };
        check_config(&cfg)
            .with_context(|| format!("{} describes a model terse cannot load", path.display()))?;
        Ok(cfg)
    }

    fn model(
        &self,
        model_file: Option<&Path>,
    ) -> Result<(ModelConfig, ParamArena, Option<String>)> {
        let model = match model_file {
            Some(p) => (p.to_path_buf(), None),
            None => self.require(MODEL_FILE)?,
        };
        let cfg = self.config(&model)?;
        let specs = ParamArena::layout(&cfg);
        let total = specs.last().map_or(0, |s| s.offset + s.len());
        let wants: Vec<Want> = specs
            .iter()
            .map(|s| Want {
                name: s.name.clone(),
                spec: s,
                buf: 0,
            })
            .collect();
        let (mut bufs, meta) =
            self.read_tensor_file(MODEL_FILE, model, &wants, 1, total, &cfg.preset)?;
        let data = bufs.pop().unwrap_or_default();
        Ok((
            cfg,
            ParamArena { specs, data },
            meta.get("save_id").cloned(),
        ))
    }
}

/// Bounds checked before [`ModelConfig::validate`] (whose arithmetic assumes sane sizes) and
/// before any layout is computed from the configuration.
fn check_config(cfg: &ModelConfig) -> Result<()> {
    if cfg.n_heads > 1 << 12
        || cfg.d_model > 1 << 18
        || cfg.d_ff > 1 << 20
        || cfg.n_layers > 1 << 12
    {
        bail!(
            "implausible sizes (d_model {}, n_heads {}, n_layers {}, d_ff {})",
            cfg.d_model,
            cfg.n_heads,
            cfg.n_layers,
            cfg.d_ff
        );
    }
    cfg.validate()
}

/// Splits a user path into (checkpoint dir, explicit weights file when it is not the
/// checkpoint's own `model.safetensors`).
fn locate(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let meta = match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("checkpoint path {} does not exist", path.display())
        }
        Err(e) => return Err(anyhow!(e).context(format!("cannot access {}", path.display()))),
        Ok(m) => m,
    };
    if meta.is_dir() {
        return Ok((path.to_path_buf(), None));
    }
    let dir = parent_dir(path);
    if path.file_name().is_some_and(|n| n == MODEL_FILE) {
        Ok((dir, None))
    } else {
        Ok((dir, Some(path.to_path_buf())))
    }
}

fn check_same_save(dir: &Path, ids: &[(&str, Option<&String>)]) -> Result<()> {
    let present: Vec<(&str, &String)> = ids
        .iter()
        .filter_map(|(n, id)| id.map(|id| (*n, id)))
        .collect();
    if let Some(&(first, id0)) = present.first() {
        if let Some(&(other, _)) = present.iter().find(|(_, id)| *id != id0) {
            bail!(
                "checkpoint {} is inconsistent: {other} and {first} come from different saves; restore the files of one save",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Loads a model for evaluation or generation.
///
/// `path` is a checkpoint directory, or a weights file (`model.safetensors`, or another
/// safetensors file) whose directory holds `config.json`; a terse weights file without
/// `config.json` beside it uses the config recorded in its own metadata.
///
/// Refuses, with an error naming the path and the problem: a missing directory or file, a
/// `config.json` that is not valid JSON or fails [`ModelConfig::validate`], a corrupt or
/// truncated safetensors header or data section, a missing tensor, a tensor of another dtype
/// than F32 or another shape than the config's layout, unknown extra tensors, and (when
/// `manifest.json` is present) any file whose length or CRC-32 differs from the manifest.
/// Values are returned bit for bit as saved; NaN and infinities are not rejected.
pub fn load_model(path: &Path) -> Result<(ModelConfig, ParamArena)> {
    let (dir, model_file) = locate(path)?;
    let ck = Checkpoint::open(&dir)?;
    let (mut cfg, arena, model_id) = ck.model(model_file.as_deref())?;
    if cfg.context.is_none() {
        cfg.context = trained_seq(&ck)?;
    }
    if model_file.is_none() {
        let manifest_id = ck.manifest.as_ref().map(|m| m.save_id.clone());
        check_same_save(
            &dir,
            &[
                (MODEL_FILE, model_id.as_ref()),
                (MANIFEST_FILE, manifest_id.as_ref()),
            ],
        )?;
    }
    Ok((cfg, arena))
}

/// The sequence length a checkpoint's training state records (`options.seq`): the context of a
/// model saved before [`ModelConfig::context`] existed.
fn trained_seq(ck: &Checkpoint) -> Result<Option<usize>> {
    Ok(saved_state(ck)?.and_then(|st| {
        st["options"]["seq"]
            .as_u64()
            .filter(|&s| s > 0)
            .map(|s| s as usize)
    }))
}

/// The `state` of a checkpoint's `trainer.json`, if it has one.
fn saved_state(ck: &Checkpoint) -> Result<Option<Value>> {
    let Some((tpath, tbytes)) = ck.read_small(TRAINER_FILE)? else {
        return Ok(None);
    };
    let trainer: TrainerFile = serde_json::from_slice(&tbytes)
        .map_err(|e| anyhow!("{} is not valid trainer state: {e}", tpath.display()))?;
    Ok(Some(trainer.state))
}

/// The trainer's saved state (the `state` of `trainer.json`) without loading any tensor: what an
/// inference command needs to know about how a model was trained. `None` when the checkpoint was
/// saved without training state. Checked against the manifest like every other file.
pub fn load_trainer_state(path: &Path) -> Result<Option<Value>> {
    let (dir, _) = locate(path)?;
    saved_state(&Checkpoint::open(&dir)?)
}

/// Loads everything needed to resume training from the checkpoint directory `dir`: config,
/// parameters, AdamW moments and the trainer's state, all bit for bit as saved.
///
/// Refuses everything [`load_model`] refuses, plus: a checkpoint saved without training state
/// ("checkpoint DIR has no training state (trainer.json); it can be evaluated but not resumed"),
/// a `trainer.json` that is not valid JSON or of an unknown version, an `optimizer.safetensors`
/// that is missing or whose `m.<name>`/`v.<name>` tensors do not match the layout, and files
/// that come from different saves.
pub fn load_training(dir: &Path) -> Result<(ModelConfig, ParamArena, TrainingState)> {
    let ck = Checkpoint::open(dir)?;
    let Some((tpath, tbytes)) = ck.read_small(TRAINER_FILE)? else {
        bail!(
            "checkpoint {} has no training state ({TRAINER_FILE}); it can be evaluated but not resumed",
            dir.display()
        );
    };
    let trainer: TrainerFile = serde_json::from_slice(&tbytes)
        .map_err(|e| anyhow!("{} is not valid trainer state: {e}", tpath.display()))?;
    if trainer.version != FORMAT_VERSION {
        bail!(
            "{} has version {}, this build of terse reads version {FORMAT_VERSION}",
            tpath.display(),
            trainer.version
        );
    }
    let (cfg, arena, model_id) = ck.model(None)?;
    let opt = ck.file(OPTIMIZER_FILE)?.ok_or_else(|| {
        anyhow!(
            "checkpoint {} has {TRAINER_FILE} but no {OPTIMIZER_FILE}; it cannot be resumed",
            dir.display()
        )
    })?;
    let mut wants = Vec::with_capacity(2 * arena.specs.len());
    for (buf, prefix) in ["m.", "v."].iter().enumerate() {
        wants.extend(arena.specs.iter().map(|s| Want {
            name: format!("{prefix}{}", s.name),
            spec: s,
            buf,
        }));
    }
    let (mut bufs, meta) =
        ck.read_tensor_file(OPTIMIZER_FILE, opt, &wants, 2, arena.len(), &cfg.preset)?;
    let manifest_id = ck.manifest.as_ref().map(|m| m.save_id.clone());
    check_same_save(
        dir,
        &[
            (TRAINER_FILE, trainer.save_id.as_ref()),
            (MODEL_FILE, model_id.as_ref()),
            (OPTIMIZER_FILE, meta.get("save_id")),
            (MANIFEST_FILE, manifest_id.as_ref()),
        ],
    )?;
    let v = bufs.pop().unwrap_or_default();
    let m = bufs.pop().unwrap_or_default();
    Ok((
        cfg,
        arena,
        TrainingState {
            m,
            v,
            state: trainer.state,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn small_cfg() -> ModelConfig {
        ModelConfig {
            preset: "test".into(),
            vocab: 32,
            d_model: 64,
            n_layers: 1,
            n_heads: 1,
            d_ff: 32,
            ..ModelConfig::preset("tiny", None).unwrap()
        }
    }

    /// Parameters with awkward values (NaN payloads, infinities, -0, subnormals) to prove bit
    /// exactness.
    fn params(cfg: &ModelConfig, seed: u64) -> ParamArena {
        let mut p = ParamArena::init(cfg, seed);
        let specials = [
            f32::NAN,
            f32::from_bits(0x7fc0_1234),
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::from_bits(1),
        ];
        for (i, x) in specials.iter().enumerate() {
            p.data[i * 7] = *x;
        }
        p
    }

    fn training(cfg: &ModelConfig, seed: u64) -> TrainingState {
        let n = ParamArena::zeros(cfg).len();
        let m = (0..n)
            .map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let v = (0..n)
            .map(|i| ((i as u64 * 40503 + seed) % 977) as f32 * 1e-7)
            .collect();
        let state = json!({"step": seed, "lr": 0.001, "rng": [1u64, u64::MAX], "data": {"epoch": 2, "cursor": 12345}});
        TrainingState { m, v, state }
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    /// A model saved before `context` existed gets it from its training state's sequence length;
    /// one that records it keeps it; one without either stays unbounded.
    #[test]
    fn context_comes_from_the_config_or_the_training_length() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        assert_eq!(cfg.context, None);
        let mut t = training(&cfg, 1);
        t.state = json!({"options": {"seq": 77}});
        save_checkpoint(tmp.path(), &cfg, &params(&cfg, 1), Some(&t)).unwrap();
        assert_eq!(load_model(tmp.path()).unwrap().0.context, Some(77));
        let recorded = ModelConfig {
            context: Some(5),
            ..cfg.clone()
        };
        save_checkpoint(tmp.path(), &recorded, &params(&cfg, 1), Some(&t)).unwrap();
        assert_eq!(load_model(tmp.path()).unwrap().0.context, Some(5));
        save_checkpoint(tmp.path(), &cfg, &params(&cfg, 1), None).unwrap();
        assert_eq!(load_model(tmp.path()).unwrap().0.context, None);
        // A training state whose sequence length is missing, zero or not a number gives none.
        for seq in [json!(0), json!("256"), json!(-3), json!(null)] {
            t.state = json!({"options": {"seq": seq}});
            save_checkpoint(tmp.path(), &cfg, &params(&cfg, 1), Some(&t)).unwrap();
            assert_eq!(load_model(tmp.path()).unwrap().0.context, None, "{seq}");
        }
        // A config.json with a zero context is refused by name.
        let zero = ModelConfig {
            context: Some(0),
            ..cfg.clone()
        };
        save_checkpoint(tmp.path(), &cfg, &params(&cfg, 1), None).unwrap();
        fs::remove_file(tmp.path().join(MANIFEST_FILE)).unwrap();
        fs::write(
            tmp.path().join(CONFIG_FILE),
            serde_json::to_vec(&zero).unwrap(),
        )
        .unwrap();
        let e = err(load_model(tmp.path()));
        assert!(e.contains("context must be positive"), "{e}");
    }

    fn listing(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const FULL: [&str; 5] = [
        MODEL_FILE,
        CONFIG_FILE,
        OPTIMIZER_FILE,
        TRAINER_FILE,
        MANIFEST_FILE,
    ];

    fn assert_training_eq(dir: &Path, cfg: &ModelConfig, p: &ParamArena, t: &TrainingState) {
        let (c2, p2, t2) = load_training(dir).unwrap();
        assert_eq!(&c2, cfg);
        assert_eq!(p2.specs, p.specs);
        assert_eq!(bits(&p2.data), bits(&p.data));
        assert_eq!(bits(&t2.m), bits(&t.m));
        assert_eq!(bits(&t2.v), bits(&t.v));
        assert_eq!(t2.state, t.state);
    }

    fn err(r: Result<impl Sized>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn round_trip_is_bit_exact_and_readable_by_reference_safetensors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ck");
        let cfg = ModelConfig::preset("tiny", None).unwrap();
        let p = params(&cfg, 3);
        let t = training(&cfg, 5);
        save_checkpoint(&dir, &cfg, &p, Some(&t)).unwrap();
        assert_eq!(listing(&dir), set(&FULL));
        assert_training_eq(&dir, &cfg, &p, &t);
        let (c2, p2) = load_model(&dir).unwrap();
        assert_eq!(c2, cfg);
        assert_eq!(bits(&p2.data), bits(&p.data));

        // The reference implementation (what PyTorch's safetensors uses) reads the file.
        let bytes = fs::read(dir.join(MODEL_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.names().len(), p.specs.len());
        for s in &p.specs {
            let view = st.tensor(&s.name).unwrap();
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            assert_eq!(view.shape(), s.shape.as_slice());
            assert_eq!(
                view.data(),
                bytemuck::cast_slice::<f32, u8>(&p.data[s.range()])
            );
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["format"], "terse");
        assert_eq!(
            serde_json::from_str::<ModelConfig>(&meta["config"]).unwrap(),
            cfg
        );
        let obytes = fs::read(dir.join(OPTIMIZER_FILE)).unwrap();
        let ost = safetensors::SafeTensors::deserialize(&obytes).unwrap();
        assert_eq!(ost.tensor("v.lm_head.weight").unwrap().shape(), &[256, 128]);

        // Saving again over it, without training state, drops the old training state.
        let p3 = params(&cfg, 9);
        save_checkpoint(&dir, &cfg, &p3, None).unwrap();
        assert_eq!(
            listing(&dir),
            set(&[MODEL_FILE, CONFIG_FILE, MANIFEST_FILE])
        );
        assert_eq!(bits(&load_model(&dir).unwrap().1.data), bits(&p3.data));
    }

    #[test]
    fn loads_from_weights_file_path() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let p = params(&cfg, 1);
        save_checkpoint(tmp.path(), &cfg, &p, None).unwrap();
        let (c2, p2) = load_model(&tmp.path().join(MODEL_FILE)).unwrap();
        assert_eq!(c2, cfg);
        assert_eq!(bits(&p2.data), bits(&p.data));
        // A renamed weights file next to a config.json, and a lone weights file (config from
        // its metadata).
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::copy(
            tmp.path().join(MODEL_FILE),
            other.join("weights.safetensors"),
        )
        .unwrap();
        let (c3, p3) = load_model(&other.join("weights.safetensors")).unwrap();
        assert_eq!(c3, cfg);
        assert_eq!(bits(&p3.data), bits(&p.data));
        fs::copy(tmp.path().join(CONFIG_FILE), other.join(CONFIG_FILE)).unwrap();
        assert_eq!(
            bits(
                &load_model(&other.join("weights.safetensors"))
                    .unwrap()
                    .1
                    .data
            ),
            bits(&p.data)
        );
    }

    #[test]
    fn missing_training_state_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        save_checkpoint(tmp.path(), &cfg, &params(&cfg, 1), None).unwrap();
        let e = err(load_training(tmp.path()));
        let want = format!(
            "checkpoint {} has no training state (trainer.json); it can be evaluated but not resumed",
            tmp.path().display()
        );
        assert_eq!(e, want);
    }

    #[test]
    fn missing_paths_and_bad_config_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let nowhere = tmp.path().join("nowhere");
        assert!(err(load_model(&nowhere)).contains("does not exist"));
        assert!(err(load_training(&nowhere)).contains("does not exist"));
        assert!(err(load_model(tmp.path())).contains("has no model.safetensors"));

        let cfg = small_cfg();
        save_checkpoint(tmp.path(), &cfg, &params(&cfg, 1), None).unwrap();
        fs::remove_file(tmp.path().join(MANIFEST_FILE)).unwrap();
        fs::write(tmp.path().join(CONFIG_FILE), b"{\"vocab\": 3").unwrap();
        let e = err(load_model(tmp.path()));
        assert!(e.contains("config.json is not a valid model config"), "{e}");
        let bad = ModelConfig {
            d_model: 100,
            ..cfg.clone()
        };
        fs::write(
            tmp.path().join(CONFIG_FILE),
            serde_json::to_vec(&bad).unwrap(),
        )
        .unwrap();
        let e = err(load_model(tmp.path()));
        assert!(
            e.contains("config.json describes a model terse cannot load")
                && e.contains("d_model 100"),
            "{e}"
        );
        let huge = ModelConfig {
            n_heads: usize::MAX / 2,
            ..cfg
        };
        fs::write(
            tmp.path().join(CONFIG_FILE),
            serde_json::to_vec(&huge).unwrap(),
        )
        .unwrap();
        assert!(err(load_model(tmp.path())).contains("implausible sizes"));
    }

    #[test]
    fn config_from_another_preset_is_a_shape_error() {
        let tmp = tempfile::tempdir().unwrap();
        let tiny = ModelConfig::preset("tiny", None).unwrap();
        let other = ModelConfig::preset("m1-3m", None).unwrap();
        save_checkpoint(tmp.path(), &tiny, &params(&tiny, 1), None).unwrap();
        fs::write(
            tmp.path().join(CONFIG_FILE),
            serde_json::to_vec_pretty(&other).unwrap(),
        )
        .unwrap();
        // With the manifest, the swapped file itself is named.
        let e = err(load_model(tmp.path()));
        assert!(
            e.contains("inconsistent: config.json does not match manifest.json"),
            "{e}"
        );
        // Without it (a hand-assembled directory), the shapes are checked against the config.
        fs::remove_file(tmp.path().join(MANIFEST_FILE)).unwrap();
        let e = err(load_model(tmp.path()));
        assert!(
            e.contains("tensor tok_emb.weight has shape [256, 128], config expects [256, 256]"),
            "{e}"
        );
        assert!(e.contains(MODEL_FILE), "{e}");
    }

    #[test]
    fn truncated_weights_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let p = params(&cfg, 1);
        save_checkpoint(tmp.path(), &cfg, &p, None).unwrap();
        let path = tmp.path().join(MODEL_FILE);
        let full = fs::read(&path).unwrap();
        let n = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
        let manifest = fs::read(tmp.path().join(MANIFEST_FILE)).unwrap();
        for cut in [
            0,
            1,
            7,
            8,
            9,
            8 + n / 2,
            8 + n - 1,
            8 + n,
            8 + n + 1,
            8 + n + 4,
            full.len() / 2,
            full.len() - 4,
            full.len() - 1,
        ] {
            fs::write(&path, &full[..cut]).unwrap();
            fs::write(tmp.path().join(MANIFEST_FILE), &manifest).unwrap();
            let e = err(load_model(tmp.path()));
            assert!(
                e.contains(MODEL_FILE) && e.contains("inconsistent"),
                "cut {cut}: {e}"
            );
            fs::remove_file(tmp.path().join(MANIFEST_FILE)).unwrap();
            let e = err(load_model(tmp.path()));
            assert!(e.contains(MODEL_FILE), "cut {cut}: {e}");
        }
        fs::write(&path, &full).unwrap();
        assert_eq!(bits(&load_model(tmp.path()).unwrap().1.data), bits(&p.data));
    }

    #[test]
    fn header_byte_flips_never_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        save_checkpoint(tmp.path(), &cfg, &params(&cfg, 1), None).unwrap();
        let path = tmp.path().join(MODEL_FILE);
        let full = fs::read(&path).unwrap();
        let manifest = fs::read(tmp.path().join(MANIFEST_FILE)).unwrap();
        let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
        let mut rng = crate::rng::Rng::new(42);
        let mut loaded_without_manifest = 0;
        for case in 0..200 {
            let mut bytes = full.clone();
            for _ in 0..1 + case % 3 {
                let at = rng.below(header_end as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            if bytes == full {
                continue;
            }
            fs::write(&path, &bytes).unwrap();
            fs::write(tmp.path().join(MANIFEST_FILE), &manifest).unwrap();
            let e = err(load_model(tmp.path()));
            assert!(e.contains(MODEL_FILE), "{e}");
            fs::remove_file(tmp.path().join(MANIFEST_FILE)).unwrap();
            // Without a manifest a flip may land somewhere harmless (a digit of the metadata),
            // but the loader must answer, never panic.
            if load_model(tmp.path()).is_ok() {
                loaded_without_manifest += 1;
            }
        }
        assert!(loaded_without_manifest < 100, "{loaded_without_manifest}");
    }

    #[test]
    fn altered_or_mixed_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let cfg = small_cfg();
        save_checkpoint(&a, &cfg, &params(&cfg, 1), Some(&training(&cfg, 1))).unwrap();
        save_checkpoint(&b, &cfg, &params(&cfg, 2), Some(&training(&cfg, 2))).unwrap();
        // A value flipped inside the tensor data.
        let path = a.join(MODEL_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let e = err(load_model(&a));
        assert!(
            e.contains("inconsistent: model.safetensors does not match manifest.json"),
            "{e}"
        );
        bytes[last] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        load_model(&a).unwrap();
        // Optimizer state from another save (same size, other content).
        fs::copy(b.join(OPTIMIZER_FILE), a.join(OPTIMIZER_FILE)).unwrap();
        let e = err(load_training(&a));
        assert!(e.contains("inconsistent: optimizer.safetensors"), "{e}");
        // Without the manifest the save ids recorded inside the files catch it.
        fs::remove_file(a.join(MANIFEST_FILE)).unwrap();
        let e = err(load_training(&a));
        assert!(
            e.contains("inconsistent")
                && e.contains("optimizer.safetensors")
                && e.contains("different saves"),
            "{e}"
        );
    }

    /// Builds weights with the reference safetensors writer, with edits.
    fn reference_file(
        p: &ParamArena,
        edit: impl Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
    ) -> Vec<u8> {
        let mut ts: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = p
            .specs
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    safetensors::Dtype::F32,
                    s.shape.clone(),
                    bytemuck::cast_slice(&p.data[s.range()]).to_vec(),
                )
            })
            .collect();
        edit(&mut ts);
        let views: Vec<(String, safetensors::tensor::TensorView)> = ts
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, &None).unwrap()
    }

    #[test]
    fn foreign_files_are_checked_tensor_by_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let p = params(&cfg, 4);
        save_checkpoint(tmp.path(), &cfg, &p, None).unwrap();
        fs::remove_file(tmp.path().join(MANIFEST_FILE)).unwrap();
        let path = tmp.path().join(MODEL_FILE);
        // A file from the reference writer (different header order, no metadata) loads.
        fs::write(&path, reference_file(&p, |_| {})).unwrap();
        assert_eq!(bits(&load_model(tmp.path()).unwrap().1.data), bits(&p.data));

        fs::write(&path, reference_file(&p, |ts| drop(ts.remove(3)))).unwrap();
        let e = err(load_model(tmp.path()));
        assert!(
            e.contains("has no tensor layers.0.attn.out.weight (config expects shape [64, 64])"),
            "{e}"
        );

        fs::write(
            &path,
            reference_file(&p, |ts| {
                ts.push((
                    "extra.bias".into(),
                    safetensors::Dtype::F32,
                    vec![2],
                    vec![0; 8],
                ))
            }),
        )
        .unwrap();
        let e = err(load_model(tmp.path()));
        assert!(e.contains("unexpected tensor extra.bias"), "{e}");

        fs::write(
            &path,
            reference_file(&p, |ts| {
                ts[1].1 = safetensors::Dtype::F16;
                let half = ts[1].3.len() / 2;
                ts[1].3.truncate(half);
            }),
        )
        .unwrap();
        let e = err(load_model(tmp.path()));
        assert!(
            e.contains("tensor layers.0.attn_norm.weight has dtype F16, expected F32"),
            "{e}"
        );

        fs::write(
            &path,
            reference_file(&p, |ts| {
                ts[2].2 = vec![64, 192];
            }),
        )
        .unwrap();
        let e = err(load_model(tmp.path()));
        assert!(
            e.contains(
                "tensor layers.0.attn.qkv.weight has shape [64, 192], config expects [192, 64]"
            ),
            "{e}"
        );
    }

    fn wrap_fn<F: for<'w> Fn(&Path, &'w mut File) -> Box<dyn Write + 'w>>(f: F) -> F {
        f
    }

    /// A writer that accepts `left` bytes, then fails with ENOSPC.
    struct FullDisk<'w> {
        inner: &'w mut File,
        left: u64,
    }

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

    #[test]
    fn atomic_write_failure_keeps_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.bin");
        atomic_write(&path, b"old content").unwrap();
        let wrap = wrap_fn(|_: &Path, f: &mut File| -> Box<dyn Write + '_> {
            Box::new(FullDisk { inner: f, left: 5 })
        });
        let e = atomic_write_with(&path, Some(&wrap), &mut |w| w.write_all(&[7u8; 100_000]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("f.bin"), "{e:#}");
        assert_eq!(fs::read(&path).unwrap(), b"old content");
        assert_eq!(listing(tmp.path()), set(&["f.bin"]));
        atomic_write(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(listing(tmp.path()), set(&["f.bin"]));
    }

    #[test]
    fn full_disk_mid_save_keeps_previous_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let (pa, ta) = (params(&cfg, 1), training(&cfg, 1));
        let (pb, tb) = (params(&cfg, 2), training(&cfg, 2));
        save_checkpoint(tmp.path(), &cfg, &pa, Some(&ta)).unwrap();
        let sizes: BTreeMap<String, u64> = FULL
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    fs::metadata(tmp.path().join(n)).unwrap().len(),
                )
            })
            .collect();
        for target in FULL {
            for frac in [0.0, 0.01, 0.5, 0.99] {
                let left = (sizes[target] as f64 * frac) as u64;
                let wrap = wrap_fn(move |p: &Path, f: &mut File| -> Box<dyn Write + '_> {
                    let hit = p
                        .file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .starts_with(&format!(".{target}."));
                    Box::new(FullDisk {
                        inner: f,
                        left: if hit { left } else { u64::MAX },
                    })
                });
                let hooks = Hooks {
                    wrap: Some(&wrap),
                    ..Hooks::default()
                };
                let e = save_with(tmp.path(), &cfg, &pb, Some(&tb), &hooks).unwrap_err();
                let e = format!("{e:#}");
                assert!(
                    e.contains("No space left on device") && e.contains(target),
                    "{target}: {e}"
                );
                assert_eq!(listing(tmp.path()), set(&FULL), "{target} {frac}");
                assert_training_eq(tmp.path(), &cfg, &pa, &ta);
            }
        }
        save_checkpoint(tmp.path(), &cfg, &pb, Some(&tb)).unwrap();
        assert_training_eq(tmp.path(), &cfg, &pb, &tb);
    }

    #[test]
    fn crash_at_any_step_leaves_old_or_new() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let (pa, ta) = (params(&cfg, 1), training(&cfg, 1));
        let (pb, tb) = (params(&cfg, 2), training(&cfg, 2));
        let (pc, tc) = (params(&cfg, 3), training(&cfg, 3));
        let mut outcomes = Vec::new();
        for k in 0.. {
            let dir = tmp.path().join(format!("k{k}"));
            save_checkpoint(&dir, &cfg, &pa, Some(&ta)).unwrap();
            let hooks = Hooks {
                crash_at: Some(k),
                ..Hooks::default()
            };
            if save_with(&dir, &cfg, &pb, Some(&tb), &hooks).is_ok() {
                assert_eq!(listing(&dir), set(&FULL));
                break;
            }
            let (_, p, t) = load_training(&dir).unwrap();
            let is_new = bits(&p.data) == bits(&pb.data);
            if is_new {
                assert_training_eq(&dir, &cfg, &pb, &tb);
            } else {
                assert_training_eq(&dir, &cfg, &pa, &ta);
            }
            assert_eq!(bits(&t.m), bits(if is_new { &tb.m } else { &ta.m }));
            outcomes.push(is_new);
            // The next save succeeds and clears what the crashed one left.
            save_checkpoint(&dir, &cfg, &pc, Some(&tc)).unwrap();
            assert_training_eq(&dir, &cfg, &pc, &tc);
            assert_eq!(listing(&dir), set(&FULL), "after crash at {k}");
        }
        // Old up to the commit, new from then on.
        let first_new = outcomes.iter().position(|&n| n).unwrap();
        assert!(
            first_new >= 4 && outcomes[first_new..].iter().all(|&n| n),
            "{outcomes:?}"
        );
    }

    #[test]
    fn first_save_interrupted_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let hooks = Hooks {
            crash_at: Some(2),
            ..Hooks::default()
        };
        assert!(save_with(tmp.path(), &cfg, &params(&cfg, 1), None, &hooks).is_err());
        let e = err(load_model(tmp.path()));
        assert!(e.contains("interrupted"), "{e}");
    }

    #[test]
    fn save_refuses_mismatched_inputs() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let other = ModelConfig::preset("tiny", None).unwrap();
        let e = err(save_checkpoint(tmp.path(), &cfg, &params(&other, 1), None));
        assert!(e.contains("do not have the layout"), "{e}");
        let mut t = training(&cfg, 1);
        t.v.pop();
        let e = err(save_checkpoint(
            tmp.path(),
            &cfg,
            &params(&cfg, 1),
            Some(&t),
        ));
        assert!(e.contains("optimizer moments"), "{e}");
        assert!(listing(tmp.path()).is_empty());
    }
}
