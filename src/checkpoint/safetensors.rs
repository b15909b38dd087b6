//! The safetensors format: the writer of terse's tensor files (F32 checkpoints; the int8 M1
//! pack's I8, I32 and F32 tensors) and the one reader of their headers, streaming or in memory.
//!
//! A safetensors file is an 8-byte little-endian header length, a JSON header
//! (`{"__metadata__": {..}, name: {"dtype", "shape", "data_offsets"}, ..}`) and the tensors' bytes
//! back to back. The writer pads the header with spaces so the data starts 8-byte aligned, as the
//! reference implementation does; any safetensors reader opens the files.
//!
//! The reader is hand-written rather than taken from the `safetensors` crate, which needs the
//! whole file in memory (or mapped) before it checks anything. This one streams from disk through
//! the caller's reader (the loader's, which computes the file's CRC-32 as it goes, to check it
//! against the checkpoint's manifest), checks every size in the header against the file's real
//! length before allocating, reads tensors straight into the caller's buffers, and refuses a
//! damaged header, a gap, an overlap or trailing bytes with an error naming the path and the
//! problem. The `safetensors` crate is a dev-dependency: the tests use it as a second, reference
//! reader and writer of the same files.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::model::TensorSpec;

/// The `format` metadata of a checkpoint's tensor files (`model.safetensors`,
/// `optimizer.safetensors`); files from other writers have none.
const CHECKPOINT_FORMATS: [&str; 2] = ["terse", "terse-optimizer"];

/// The safetensors reference implementation refuses headers above 100 MB; so do we.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The element types terse writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    I32,
    I8,
}

impl Dtype {
    /// The header's name of the type.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::I32 => "I32",
            Dtype::I8 => "I8",
        }
    }

    /// Bytes per element.
    fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::I8 => 1,
        }
    }
}

/// A safetensors header for tensors stored back to back in the given order, padded with
/// spaces so the data starts 8-byte aligned (as the reference implementation writes it).
fn safetensors_header(
    entries: &[(String, Dtype, &[usize])],
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    for (name, dtype, shape) in entries {
        let end = offset + shape.iter().product::<usize>() * dtype.size();
        map.insert(
            name.clone(),
            json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = Value::Object(map).to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
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
pub(super) fn tensor_payload<'a>(
    specs: &[TensorSpec],
    prefixes: &[&str],
    data: &[&'a [f32]],
    meta: BTreeMap<String, String>,
) -> Payload<'a> {
    let mut entries = Vec::new();
    let mut chunks = Vec::new();
    for (p, d) in prefixes.iter().zip(data) {
        for s in specs {
            entries.push((format!("{p}{}", s.name), Dtype::F32, s.shape.as_slice()));
            chunks.push(&d[s.range()]);
        }
    }
    Payload::Tensors {
        header: safetensors_header(&entries, &meta),
        chunks,
    }
}

/// One file of a save, produced while it is written.
pub(super) enum Payload<'a> {
    Tensors {
        header: Vec<u8>,
        chunks: Vec<&'a [f32]>,
    },
    Bytes(Vec<u8>),
}

impl Payload<'_> {
    pub(super) fn write(&self, w: &mut dyn Write) -> io::Result<()> {
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

/// One tensor of a file written whole from memory ([`write_whole`]).
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
}

/// Writes a safetensors file whose data section, `data`, holds `entries` back to back in the
/// given order (little-endian values). Panics if `data` is not exactly their size.
pub(crate) fn write_whole(
    w: &mut dyn Write,
    entries: &[Entry],
    data: &[u8],
    metadata: &BTreeMap<String, String>,
) -> io::Result<()> {
    let table: Vec<(String, Dtype, &[usize])> = entries
        .iter()
        .map(|e| (e.name.clone(), e.dtype, e.shape.as_slice()))
        .collect();
    let size: usize = table
        .iter()
        .map(|(_, d, s)| s.iter().product::<usize>() * d.size())
        .sum();
    assert_eq!(size, data.len(), "the data section holds the entries");
    let header = safetensors_header(&table, metadata);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    w.write_all(data)
}

// ---------------------------------------------------------------------------------------------
// Reading.

struct StEntry {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    begin: u64,
    end: u64,
}

pub(super) struct StHeader {
    pub(super) metadata: BTreeMap<String, String>,
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

/// A header's metadata, its tensor entries unparsed, and its length in bytes.
type HeaderObject = (
    BTreeMap<String, String>,
    serde_json::Map<String, Value>,
    u64,
);

/// Reads the header's JSON: its length (checked against `file_len` before use), the object,
/// and `__metadata__` as strings.
fn read_header_object(path: &Path, r: &mut impl Read, file_len: u64) -> Result<HeaderObject> {
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
    let Value::Object(mut map) = value else {
        bail!(
            "{} has a corrupt header (not a JSON object)",
            path.display()
        );
    };
    let mut metadata = BTreeMap::new();
    if let Some(v) = map.remove("__metadata__") {
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
    }
    Ok((metadata, map, n))
}

/// The header's `__metadata__` alone, the tensor entries unchecked: enough to tell what kind of
/// file this is before reading it.
pub(crate) fn read_metadata(
    path: &Path,
    r: &mut impl Read,
    file_len: u64,
) -> Result<BTreeMap<String, String>> {
    Ok(read_header_object(path, r, file_len)?.0)
}

/// Reads and checks the header: every size is checked against `file_len` before use, tensors
/// must tile the data section exactly (no gap, overlap or trailing bytes).
pub(super) fn read_header(path: &Path, r: &mut impl Read, file_len: u64) -> Result<StHeader> {
    let (metadata, map, n) = read_header_object(path, r, file_len)?;
    let mut entries = map
        .iter()
        .map(|(k, v)| parse_entry(path, k, v))
        .collect::<Result<Vec<_>>>()?;
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

/// A safetensors file held whole in memory, its header checked as [`read_header`] checks it.
pub(crate) struct InMemory<'a> {
    header: StHeader,
    data: &'a [u8],
}

/// One tensor of an [`InMemory`] file: its header entry and its bytes.
pub(crate) struct TensorView<'a> {
    pub(crate) name: &'a str,
    pub(crate) dtype: &'a str,
    pub(crate) shape: &'a [u64],
    pub(crate) bytes: &'a [u8],
}

impl<'a> InMemory<'a> {
    /// Checks the header of `bytes`, the whole file read from `path` (named in errors).
    pub(crate) fn parse(path: &Path, bytes: &'a [u8]) -> Result<Self> {
        let header = read_header(path, &mut &bytes[..], bytes.len() as u64)?;
        let data_len = header.entries.last().map_or(0, |e| e.end) as usize;
        Ok(InMemory {
            header,
            data: &bytes[bytes.len() - data_len..],
        })
    }

    pub(crate) fn metadata(&self) -> &BTreeMap<String, String> {
        &self.header.metadata
    }

    /// The data section: every tensor's bytes, in file order.
    pub(crate) fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Every tensor, in file order.
    pub(crate) fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        self.header.entries.iter().map(|e| TensorView {
            name: &e.name,
            dtype: &e.dtype,
            shape: &e.shape,
            bytes: &self.data[e.begin as usize..e.end as usize],
        })
    }
}

/// Tensor buffers read from a file, and the file's metadata.
pub(super) type Loaded = (Vec<Vec<f32>>, BTreeMap<String, String>);

/// A tensor the caller expects: where its values go.
pub(super) struct Want<'a> {
    pub(super) name: String,
    pub(super) spec: &'a TensorSpec,
    pub(super) buf: usize,
}

/// Checks the header against the wanted tensors, then streams the data into `n_bufs` buffers of
/// `buf_len` values each. Returns the buffers and the header metadata.
pub(super) fn read_tensors<R: Read>(
    path: &Path,
    r: &mut R,
    file_len: u64,
    wants: &[Want],
    n_bufs: usize,
    buf_len: usize,
    preset: &str,
) -> Result<Loaded> {
    let header = read_header(path, r, file_len)?;
    // Another kind of terse file (an M1 pack, say) is named as such, not by its first tensor.
    if let Some(format) = header.metadata.get("format") {
        if !CHECKPOINT_FORMATS.contains(&format.as_str()) {
            bail!(
                "{} is not a checkpoint's float tensors: its format is '{format}'",
                path.display()
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::checkpoint::test_util::*;
    use crate::checkpoint::{load_model, save_checkpoint, MANIFEST_FILE, MODEL_FILE};
    use crate::model::ParamArena;

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

    /// Builds weights with the reference safetensors writer, with edits.
    fn reference_file(
        p: &ParamArena,
        edit: impl Fn(&mut Vec<(String, ::safetensors::Dtype, Vec<usize>, Vec<u8>)>),
    ) -> Vec<u8> {
        let mut ts: Vec<(String, ::safetensors::Dtype, Vec<usize>, Vec<u8>)> = p
            .specs
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    ::safetensors::Dtype::F32,
                    s.shape.clone(),
                    bytemuck::cast_slice(&p.data[s.range()]).to_vec(),
                )
            })
            .collect();
        edit(&mut ts);
        let views: Vec<(String, ::safetensors::tensor::TensorView)> = ts
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    ::safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        ::safetensors::serialize(views, &None).unwrap()
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
                    ::safetensors::Dtype::F32,
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
                ts[1].1 = ::safetensors::Dtype::F16;
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
}
