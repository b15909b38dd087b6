//! The save protocol (module docs of [`crate::checkpoint`]): stage, commit, roll forward.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::safetensors::{tensor_payload, Payload};
use super::{
    staged_path, Crc32, FileSum, Manifest, TrainerFile, TrainingState, CONFIG_FILE, FORMAT_VERSION,
    MANIFEST_FILE, MANIFEST_FORMAT, MODEL_FILE, OPTIMIZER_FILE, PAYLOAD_FILES, TRAINER_FILE,
};
use crate::fsio::{self, AtomicFile};
use crate::model::{ModelConfig, ParamArena};

/// Passes writes through, counting their length and CRC-32.
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

/// Wraps the destination file of a write; tests use it to inject failures (a full disk).
type WrapFn = dyn for<'w> Fn(&Path, &'w mut File) -> Box<dyn Write + 'w>;
type Body<'b> = &'b mut dyn FnMut(&mut dyn Write) -> io::Result<()>;

/// Writes `body` into `file` (at `path`, for the wrapper), buffered, computing the length and
/// CRC-32 of what it writes; flushes but does not `fsync`.
fn write_summed(
    path: &Path,
    file: &mut File,
    wrap: Option<&WrapFn>,
    body: Body<'_>,
) -> io::Result<FileSum> {
    let raw: Box<dyn Write + '_> = match wrap {
        Some(w) => w(path, file),
        None => Box::new(file),
    };
    let mut w = SumWriter {
        inner: BufWriter::with_capacity(1 << 20, raw),
        crc: Crc32::new(),
        bytes: 0,
    };
    body(&mut w)?;
    w.flush()?;
    Ok(FileSum {
        bytes: w.bytes,
        crc32: w.crc.clone().finalize(),
    })
}

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
    let save_id = fsio::unique_id();

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
            let sum = fsio::write_new(&path, |f| {
                write_summed(&path, f, hooks.wrap, &mut |w| payload.write(w))
            })
            .with_context(|| {
                format!(
                    "cannot save checkpoint: writing {name} into {} failed",
                    dir.display()
                )
            })?;
            sums.insert(name.to_string(), sum);
        }
        hooks.point()?;
        fsio::sync_dir(dir)
            .with_context(|| format!("cannot sync checkpoint directory {}", dir.display()))
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
    let committed = AtomicFile::create(&manifest_path).and_then(|mut file| {
        let tmp = file.temp_path().to_path_buf();
        write_summed(&tmp, file.file_mut(), hooks.wrap, &mut |w| {
            w.write_all(&manifest_bytes)
        })?;
        file.rename()
    });
    let renamed = match committed {
        Ok(renamed) => renamed,
        Err(e) => {
            remove_staged(&staged);
            return Err(anyhow!(e).context(format!(
                "cannot save checkpoint: writing {}",
                manifest_path.display()
            )));
        }
    };
    // From here on the directory loads as the new checkpoint; staged files must stay until moved.
    hooks.point()?;
    renamed.sync_dir().with_context(|| {
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
    fsio::sync_dir(dir)
        .with_context(|| format!("cannot sync checkpoint directory {}", dir.display()))?;
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
    let _ = fsio::sync_dir(dir);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::test_util::*;
    use crate::checkpoint::{load_model, load_training};
    use crate::fsio::FullDisk;

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
        let st = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.names().len(), p.specs.len());
        for s in &p.specs {
            let view = st.tensor(&s.name).unwrap();
            assert_eq!(view.dtype(), ::safetensors::Dtype::F32);
            assert_eq!(view.shape(), s.shape.as_slice());
            assert_eq!(
                view.data(),
                bytemuck::cast_slice::<f32, u8>(&p.data[s.range()])
            );
        }
        let (_, meta) = ::safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["format"], "terse");
        assert_eq!(
            serde_json::from_str::<ModelConfig>(&meta["config"]).unwrap(),
            cfg
        );
        let obytes = fs::read(dir.join(OPTIMIZER_FILE)).unwrap();
        let ost = ::safetensors::SafeTensors::deserialize(&obytes).unwrap();
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

    fn wrap_fn<F: for<'w> Fn(&Path, &'w mut File) -> Box<dyn Write + 'w>>(f: F) -> F {
        f
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
