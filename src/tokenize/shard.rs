//! Sharded tokenization: `terse tokenize --shard i/N` codes chunk `k` of the corpus only when
//! `k mod N = i`, so N processes (a job array's tasks, a launcher's ranks) share the coding, and
//! [`merge_shards`] interleaves their examples back into the dataset one process writes, byte for
//! byte. Every shard reads the whole corpus (reading is cheap beside coding) and records how many
//! chunks and bytes it saw, so the merge can tell a complete set of shards from a partial or
//! mixed one.

use super::dataset::{TokenDataset, TokenDatasetWriter};
use super::Metadata;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Shard `index` of `count` (`index < count`): the chunks `k` with `k mod count = index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Whether chunk `k` of the corpus is this shard's.
    pub fn takes(&self, k: u64) -> bool {
        k % self.count as u64 == self.index as u64
    }

    /// How many of `chunks` chunks are this shard's.
    pub fn chunks_of(&self, chunks: u64) -> u64 {
        (chunks + self.count as u64 - 1 - self.index as u64) / self.count as u64
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `i/N`, counting from 0: `0/4` to `3/4`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("a shard is i/N with 0 <= i < N (e.g. 0/4 to 3/4), not '{s}'");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What a shard's `metadata.json` adds (`"shard"`): which shard it is and the whole corpus's
/// chunk and byte counts. A dataset without it is whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: u32,
    pub count: u32,
    pub corpus_chunks: u64,
    pub corpus_bytes: u64,
    /// CRC-32 of the whole corpus byte stream: shards of one corpus, however its path was
    /// written, and never of a corpus changed between tasks.
    pub corpus_crc32: u32,
}

/// Writes into `out` the dataset that one process would have written, from the datasets of
/// every shard of one `terse tokenize --shard` run (in any order). Refuses a dataset that is not
/// a shard, a missing or repeated shard, shards of different runs (method, parameters, M1,
/// corpus or counts differ) and a shard whose examples do not add up; every example's checksum
/// is checked on the way.
pub fn merge_shards(dirs: &[PathBuf], out: &Path) -> Result<Metadata> {
    ensure!(
        !dirs.is_empty(),
        "--merge needs the shard datasets to merge"
    );
    let mut shards: Vec<(ShardInfo, TokenDataset)> = Vec::with_capacity(dirs.len());
    let out_id = std::fs::canonicalize(out).ok();
    for dir in dirs {
        ensure!(
            dir != out && (out_id.is_none() || std::fs::canonicalize(dir).ok() != out_id),
            "the merged dataset {} cannot be one of its shards",
            out.display()
        );
        let ds = TokenDataset::open(dir)
            .with_context(|| format!("cannot open shard {}", dir.display()))?;
        let Some(info) = ds.metadata().shard else {
            bail!(
                "{} is a whole dataset, not a shard of `terse tokenize --shard`",
                dir.display()
            );
        };
        shards.push((info, ds));
    }
    shards.sort_by_key(|(info, _)| info.index);
    let (first, first_ds) = (shards[0].0, &shards[0].1);
    let n = dirs.len() as u32;
    ensure!(
        first.count == n,
        "{} is a shard of {}, but {n} shards were given",
        first_ds.dir().display(),
        first.count
    );
    for pair in shards.windows(2) {
        let ((a, da), (b, db)) = (&pair[0], &pair[1]);
        ensure!(
            a.index != b.index,
            "shard {}/{} is given twice: {} and {}",
            a.index,
            a.count,
            da.dir().display(),
            db.dir().display()
        );
    }
    for (want, (info, ds)) in shards.iter().enumerate() {
        let name = ds.dir().display();
        ensure!(
            info.index as usize == want,
            "shard {want}/{n} is missing ({name} is shard {}/{})",
            info.index,
            info.count
        );
        ensure!(
            (
                info.count,
                info.corpus_chunks,
                info.corpus_bytes,
                info.corpus_crc32
            ) == (
                first.count,
                first.corpus_chunks,
                first.corpus_bytes,
                first.corpus_crc32
            ) && same_run(ds.metadata(), first_ds.metadata()),
            "{name} and {} are shards of different runs (method, parameters, M1, corpus or \
             counts differ)",
            first_ds.dir().display()
        );
        let shard = Shard {
            index: info.index,
            count: info.count,
        };
        ensure!(
            ds.num_examples() as u64 == shard.chunks_of(info.corpus_chunks),
            "{name} holds {} examples where shard {shard} of {} chunks holds {}",
            ds.num_examples(),
            info.corpus_chunks,
            shard.chunks_of(info.corpus_chunks)
        );
    }
    let meta = first_ds.metadata();
    let mut w = TokenDatasetWriter::create(out, meta.token_bits)?;
    for k in 0..first.corpus_chunks {
        let ds = &shards[(k % n as u64) as usize].1;
        let local = (k / n as u64) as usize;
        ds.verify_example(local)
            .with_context(|| format!("shard {}", ds.dir().display()))?;
        let (tokens, bytes) = ds.example(local).expect("counted above");
        w.push_example(&ds.tokens_u16(tokens), bytes.end - bytes.start)?;
    }
    ensure!(
        w.bytes() == first.corpus_bytes,
        "the shards cover {} bytes where the corpus has {}",
        w.bytes(),
        first.corpus_bytes
    );
    let id = &meta.identity;
    w.finish(
        id.method.clone(),
        id.vocab,
        id.m1_fingerprint.clone(),
        &id.source,
    )
    .with_context(|| format!("cannot write token dataset {}", out.display()))
}

/// Whether two shards' metadata describe the same run: everything but their own counts (the
/// corpus path as written may differ; its bytes, checked by CRC, may not).
fn same_run(a: &Metadata, b: &Metadata) -> bool {
    let (a, b) = (&a.identity, &b.identity);
    a.method == b.method
        && a.token_bits == b.token_bits
        && a.vocab == b.vocab
        && a.m1_fingerprint == b.m1_fingerprint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_the_chunks() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert_eq!(s.to_string(), "1/3");
        for bad in ["3/3", "0/0", "1", "a/2", "1/-2", "-1/2", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        for chunks in 0..10u64 {
            let taken: u64 = (0..3)
                .map(|index| {
                    let s = Shard { index, count: 3 };
                    assert_eq!(
                        s.chunks_of(chunks),
                        (0..chunks).filter(|&k| s.takes(k)).count() as u64
                    );
                    s.chunks_of(chunks)
                })
                .sum();
            assert_eq!(taken, chunks);
        }
    }
}
