//! The classic coder a chunk falls back to when M1 codes it worse (source code, binaries: what
//! an M1 trained on prose has never seen): xz's LZMA2 at its strongest preset, with a dictionary
//! the size of a chunk (chunks are independent, so a larger one buys nothing and costs memory),
//! and no integrity check of its own (the file's end record holds the CRC-32 of every byte).

use anyhow::{anyhow, ensure, Result};
use std::io::Read;
use xz2::stream::{Check, Filters, LzmaOptions, Stream};

/// LZMA2 refuses dictionaries below 4 KiB.
const MIN_DICT: u32 = 4096;

/// `chunk` as an xz stream.
pub(super) fn xz_chunk(chunk: &[u8]) -> Result<Vec<u8>> {
    let mut opts = LzmaOptions::new_preset(9)?;
    opts.dict_size((chunk.len() as u32).max(MIN_DICT));
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let stream = Stream::new_stream_encoder(&filters, Check::None)?;
    let mut out = Vec::with_capacity(chunk.len() / 2 + 64);
    xz2::read::XzEncoder::new_stream(chunk, stream).read_to_end(&mut out)?;
    Ok(out)
}

/// The bytes of an xz stream `body` that must hold 1 to `max` bytes (refused otherwise, before
/// more than `max + 1` are produced), `what` naming the chunk in errors.
pub(super) fn unxz_chunk(body: &[u8], max: usize, what: &str) -> Result<Vec<u8>> {
    let stream = Stream::new_stream_decoder(64 << 20, 0)?;
    let mut out = Vec::with_capacity(max);
    xz2::read::XzDecoder::new_stream(body, stream)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| anyhow!("{what} is corrupt (its xz stream: {e})"))?;
    ensure!(
        (1..=max).contains(&out.len()),
        "{what} is corrupt (its xz stream holds {} bytes, a chunk at most {max})",
        if out.len() > max {
            format!("more than {max}")
        } else {
            out.len().to_string()
        }
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_damage_is_refused() {
        let text: Vec<u8> = b"fn main() {\n    println!(\"hi\");\n}\n".repeat(200);
        let z = xz_chunk(&text).unwrap();
        assert!(z.len() < text.len() / 10, "{} bytes", z.len());
        assert_eq!(unxz_chunk(&z, text.len(), "chunk 0").unwrap(), text);
        let e = unxz_chunk(&z, text.len() - 1, "chunk 0").unwrap_err();
        assert!(e.to_string().contains("chunk 0 is corrupt"), "{e}");
        let mut bad = z.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        match unxz_chunk(&bad, text.len(), "chunk 3") {
            Err(e) => assert!(e.to_string().contains("chunk 3 is corrupt"), "{e}"),
            // LZMA2 may decode a damaged stream to other bytes; the end record's CRC-32 catches it.
            Ok(back) => assert_ne!(back, text),
        }
        assert!(unxz_chunk(&z[..z.len() - 3], text.len(), "chunk 1").is_err());
    }
}
