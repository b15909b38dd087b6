//! Corpus readers, byte datasets, batching and held-out splits.
//!
//! - [`corpus`]: streaming documents and the canonical byte stream (documents joined by
//!   `"\n\n"`) from `.txt` / `.jsonl` / `.json` files, optionally `.gz` or `.zst` compressed.
//! - [`bytes`]: the byte-level dataset that trains M1: the held-out split rule, a shuffled,
//!   exactly resumable [`ByteLoader`], and evaluation windows.
//! - [`baselines`](mod@baselines): gzip / xz / zstd bits per byte, the classic yardsticks.

pub mod baselines;
pub mod bytes;
pub mod corpus;

pub use baselines::{baselines, Baselines};
pub use bytes::{
    eval_windows, read_heldout, ByteLoader, LoaderState, DEFAULT_BLOCK_SEQS, HELDOUT_EXTENSION_CAP,
};
pub use corpus::{
    detect_format, open_documents, open_stream, read_prefix, Compression, CorpusStream,
    DocumentReader, Layout, DOCUMENT_SEPARATOR, SUPPORTED_EXTENSIONS,
};
