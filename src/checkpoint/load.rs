//! Loading a checkpoint: locating its files, checking them against the manifest and the
//! configuration, and reading them (module docs of [`crate::checkpoint`]).

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::safetensors::{read_header, read_tensors, Loaded, Want};
use super::{
    staged_path, Crc32, FileSum, Manifest, TrainerFile, TrainingState, CONFIG_FILE, FORMAT_VERSION,
    MANIFEST_FILE, MANIFEST_FORMAT, MODEL_FILE, OPTIMIZER_FILE, PAYLOAD_FILES, TRAINER_FILE,
};
use crate::fsio::parent_dir;
use crate::model::{ModelConfig, ParamArena, TensorSpec};

/// Passes reads through, counting their length and CRC-32.
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

/// Opens `path` for reading, refusing anything but a regular file (after following symlinks):
/// reading a FIFO blocks until some writer appears, a device may never end.
fn open_regular(path: &Path) -> io::Result<File> {
    let kind = fs::metadata(path)?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else {
            special_kind(&kind)
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {what}, not a regular file; a checkpoint's files must be regular files",
                path.display()
            ),
        ));
    }
    File::open(path)
}

#[cfg(unix)]
fn special_kind(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &fs::FileType) -> &'static str {
    "a special file"
}

/// The whole content of the regular file `path` ([`open_regular`]).
fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn sum_of_file(path: &Path) -> io::Result<FileSum> {
    let mut r = SumReader::new(BufReader::with_capacity(1 << 20, open_regular(path)?));
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.sum())
}

struct Checkpoint {
    dir: PathBuf,
    manifest: Option<Manifest>,
}

/// Refuses a file whose length and CRC-32 differ from what the manifest recorded.
fn check_sum(dir: &Path, name: &str, expected: FileSum, found: FileSum) -> Result<()> {
    if found != expected {
        return Err(inconsistent(dir, name, expected, &found.to_string(), None));
    }
    Ok(())
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
        let manifest = match read_regular(&mpath) {
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
        let bytes =
            read_regular(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if let Some(expected) = sum {
            let mut crc = Crc32::new();
            crc.update(&bytes);
            let found = FileSum {
                bytes: bytes.len() as u64,
                crc32: crc.finalize(),
            };
            check_sum(&self.dir, name, expected, found)?;
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
        let file =
            open_regular(&path).with_context(|| format!("cannot open {}", path.display()))?;
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
                check_sum(&self.dir, name, expected, r.sum())?;
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
                let file = open_regular(mpath)
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
        let path = model.0.clone();
        let (mut bufs, meta) =
            self.read_tensor_file(MODEL_FILE, model, &wants, 1, total, &cfg.preset)?;
        let data = bufs.pop().unwrap_or_default();
        check_finite(&self.dir, &path, &specs, "", &data)?;
        Ok((
            cfg,
            ParamArena { specs, data },
            meta.get("save_id").cloned(),
        ))
    }
}

/// Refuses values that are NaN or infinite, naming the checkpoint, the file and the first tensor
/// holding one (`prefix` is the tensor-name prefix of the file: `m.`/`v.` for AdamW moments).
fn check_finite(
    dir: &Path,
    file: &Path,
    specs: &[TensorSpec],
    prefix: &str,
    data: &[f32],
) -> Result<()> {
    let Some(i) = data.iter().position(|x| !x.is_finite()) else {
        return Ok(());
    };
    let tensor = specs
        .iter()
        .find(|s| s.range().contains(&i))
        .map_or_else(|| "?".to_string(), |s| format!("{prefix}{}", s.name));
    bail!(
        "checkpoint {} cannot be used: {} holds a non-finite value ({}) in tensor {tensor}; \
         the run diverged or the file was damaged. Load an earlier checkpoint or retrain",
        dir.display(),
        file.display(),
        data[i]
    )
}

/// Bounds checked before [`ModelConfig::validate`] (whose arithmetic assumes sane sizes) and
/// before any layout is computed from the configuration.
pub(crate) fn check_config(cfg: &ModelConfig) -> Result<()> {
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
/// `manifest.json` is present) any file whose length or CRC-32 differs from the manifest, and
/// weights holding NaN or infinities (naming the first such tensor). Values are returned bit for
/// bit as saved.
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
/// Refuses everything [`load_model`] refuses (non-finite weights included, and non-finite AdamW
/// moments), plus: a checkpoint saved without training state
/// ("checkpoint DIR has no training state (trainer.json); it can be evaluated but not resumed"),
/// a `trainer.json` that is not valid JSON or of an unknown version, an `optimizer.safetensors`
/// that is missing or whose `m.<name>`/`v.<name>` tensors do not match the layout, and files
/// that come from different saves.
pub fn load_training(dir: &Path) -> Result<(ModelConfig, ParamArena, TrainingState)> {
    let ck = Checkpoint::open(dir)?;
    let Some((tpath, tbytes)) = ck.read_small(TRAINER_FILE)? else {
        // A directory that is no checkpoint at all is not one that "can be evaluated".
        ck.require(MODEL_FILE)?;
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
    let opt_path = opt.0.clone();
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
    for (buf, prefix) in bufs.iter().zip(["m.", "v."]) {
        check_finite(dir, &opt_path, &arena.specs, prefix, buf)?;
    }
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
    use serde_json::json;

    use super::*;
    use crate::checkpoint::save_checkpoint;
    use crate::checkpoint::test_util::*;

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

    /// NaN or an infinity anywhere in the weights or the AdamW moments is refused on every load,
    /// with or without a manifest, naming the checkpoint, the file and the first bad tensor.
    #[test]
    fn nonfinite_weights_are_refused_naming_the_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_cfg();
        let specs = ParamArena::layout(&cfg);
        let qkv = specs
            .iter()
            .find(|s| s.name == "layers.0.attn.qkv.weight")
            .unwrap();
        for which in 0..3 {
            let mut p = params(&cfg, 1);
            nonfinite(&mut p.data, qkv.offset + 5, which);
            nonfinite(&mut p.data, specs.last().unwrap().offset, which);
            save_checkpoint(tmp.path(), &cfg, &p, Some(&training(&cfg, 1))).unwrap();
            for manifest in [true, false] {
                if !manifest {
                    fs::remove_file(tmp.path().join(MANIFEST_FILE)).unwrap();
                }
                for e in [err(load_model(tmp.path())), err(load_training(tmp.path()))] {
                    assert!(
                        e.contains(&format!(
                            "checkpoint {} cannot be used",
                            tmp.path().display()
                        )) && e.contains(MODEL_FILE)
                            && e.contains("non-finite value")
                            && e.contains("in tensor layers.0.attn.qkv.weight;"),
                        "{e}"
                    );
                }
            }
        }
        // Moments: the weights are fine, v is not.
        let p = params(&cfg, 1);
        let mut t = training(&cfg, 1);
        nonfinite(&mut t.v, specs[2].offset, 0);
        save_checkpoint(tmp.path(), &cfg, &p, Some(&t)).unwrap();
        load_model(tmp.path()).unwrap();
        let e = err(load_training(tmp.path()));
        assert!(
            e.contains(OPTIMIZER_FILE) && e.contains(&format!("in tensor v.{};", specs[2].name)),
            "{e}"
        );
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
}
