//! Re-packing an 8-bit token dataset as 16-bit tokens without coding the text again.
//!
//! For the bit-stream methods (every method whose tokens are a chunk's compressed bits) a chunk's
//! 16-bit tokens are its 8-bit tokens taken in pairs, the first as the high byte (MSB first), with
//! a zero byte after an odd count: exactly what coding at 16 bits writes, since both widths pad a
//! chunk's bits with zeros (the tests check this against coding at 16 bits, method by method). It
//! halves the M1 work of an experiment that needs both vocabularies.
//!
//! Refuses datasets that are not 8-bit, subword datasets (their tokens are vocabulary entries,
//! not bits), and Equal-Info windows that are not a whole number of 16-bit tokens.

use super::{Metadata, Method, MethodParams, TokenDataset, TokenDatasetWriter};
use anyhow::{bail, ensure, Result};
use std::path::Path;

/// True for the methods whose tokens are a chunk's bits (all but subword).
pub fn repackable(method: Method) -> bool {
    match method {
        Method::Bytes | Method::Gzip | Method::StaticAc | Method::Ac | Method::EqualInfo => true,
        Method::Subword => false,
    }
}

/// Writes the 16-bit twin of the 8-bit dataset at `src` into `dst`; returns its metadata.
pub fn repack_to_16(src: &Path, dst: &Path) -> Result<Metadata> {
    let ds = TokenDataset::open(src)?;
    let meta = ds.metadata();
    ensure!(
        meta.token_bits == 8,
        "{}: holds {}-bit tokens; only 8-bit datasets re-pack to 16",
        src.display(),
        meta.token_bits
    );
    match &meta.method {
        MethodParams::EqualInfo(p) => {
            let b = Some(p.window_bits as u64);
            ensure!(
                b.is_some_and(|b| b % 16 == 0),
                "{}: {:?}-bit Equal-Info windows are not whole 16-bit tokens",
                src.display(),
                b
            );
        }
        p if repackable(p.method()) => {}
        p => bail!(
            "{}: method {:?} is not a bit stream; tokenize at 16 bits instead",
            src.display(),
            p.method().name()
        ),
    }
    let mut w = TokenDatasetWriter::create(dst, 16)?;
    for i in 0..ds.num_examples() {
        let (toks, bytes) = ds.example(i).expect("in range");
        let wide: Vec<u16> = ds
            .tokens_u16(toks)
            .chunks(2)
            .map(|p| p[0] << 8 | p.get(1).copied().unwrap_or(0))
            .collect();
        w.push_example(&wide, bytes.end - bytes.start)?;
    }
    w.finish(
        meta.method.clone(),
        65536,
        meta.m1_fingerprint.clone(),
        &meta.source,
    )
}
