//! Checkpoints: the files a user keeps from training, and the crash-safe way they are written.
//!
//! # Layout
//!
//! A checkpoint is a directory:
//!
//! | file | contents |
//! |---|---|
//! | `model.safetensors` | every parameter tensor as little-endian F32 under its [`ParamArena::layout`](crate::model::ParamArena::layout) name and shape; metadata `{"format": "terse", "config": <config JSON>, "save_id": ..}`. Any safetensors reader (PyTorch's `safetensors.torch.load_file`) opens it. |
//! | `config.json` | the [`ModelConfig`](crate::model::ModelConfig), pretty-printed |
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
//!    the old one by an [`AtomicFile`](crate::fsio::AtomicFile) (temp file, `fsync`, `rename`,
//!    directory `fsync`). That
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
//!
//! # Where the code is
//!
//! - `safetensors`: the reader and writer of the safetensors format (also the int8 M1 pack's:
//!   [`crate::m1::Int8M1::pack`]).
//! - `save`: the save protocol above ([`save_checkpoint`]).
//! - `load`: locating, validating and loading ([`load_model`], [`load_training`],
//!   [`load_trainer_state`]).
//!
//! Durable file primitives (unique hidden names, `fsync` of files and directories, atomic
//! replace) come from [`crate::fsio`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod load;
pub(crate) mod safetensors;
mod save;
#[cfg(test)]
mod test_util;

pub(crate) use load::check_config;
pub use load::{load_model, load_trainer_state, load_training};
pub use save::save_checkpoint;

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

/// Training state saved beside the weights so that training can resume exactly.
///
/// `m` and `v` are the AdamW first and second moments in the [`ParamArena`](crate::model::ParamArena) layout (same length
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

/// `dir/.<name>.<save_id>.staged`: where a save stages a payload file before its commit.
fn staged_path(dir: &Path, name: &str, save_id: &str) -> PathBuf {
    crate::fsio::hidden_sibling(dir, name.as_ref(), save_id, "staged")
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
