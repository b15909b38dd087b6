//! Classic compressor baselines in bits per byte, the yardsticks a neural compressor must beat.

use anyhow::{bail, Context, Result};
use std::io::Write;

/// Bits per byte (8 x compressed length / original length) of three classic compressors at their
/// strongest common settings: gzip -9 (with its 10-byte header and 8-byte trailer), xz -9
/// (CRC64 check, as the `xz` tool writes) and zstd -19. Each is a real, decodable file size.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baselines {
    pub gzip_bpb: f64,
    pub xz_bpb: f64,
    pub zstd_bpb: f64,
}

/// Compresses `bytes` three ways in memory. Refuses empty input (bits per byte is undefined).
pub fn baselines(bytes: &[u8]) -> Result<Baselines> {
    if bytes.is_empty() {
        bail!("cannot compute compression baselines of empty input");
    }
    let bpb = |compressed: usize| 8.0 * compressed as f64 / bytes.len() as f64;

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
    gz.write_all(bytes).context("gzip baseline")?;
    let gzip_len = gz.finish().context("gzip baseline")?.len();

    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 9);
    xz.write_all(bytes).context("xz baseline")?;
    let xz_len = xz.finish().context("xz baseline")?.len();

    let zstd_len = zstd::bulk::compress(bytes, 19)
        .context("zstd baseline")?
        .len();

    Ok(Baselines {
        gzip_bpb: bpb(gzip_len),
        xz_bpb: bpb(xz_len),
        zstd_bpb: bpb(zstd_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_corpus_readme_on_sample_books() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus/sample-books.txt");
        if !path.exists() {
            println!("skipped: {} not found", path.display());
            return;
        }
        let bytes = std::fs::read(&path).unwrap();
        let b = baselines(&bytes).unwrap();
        assert!((b.gzip_bpb - 2.972).abs() < 0.01, "gzip {}", b.gzip_bpb);
        assert!((b.xz_bpb - 2.454).abs() < 0.01, "xz {}", b.xz_bpb);
        assert!(
            b.zstd_bpb > b.xz_bpb && b.zstd_bpb < b.gzip_bpb,
            "zstd {}",
            b.zstd_bpb
        );
    }

    #[test]
    fn small_inputs_and_empty_input() {
        let b = baselines(&b"abcabcabc".repeat(1000)).unwrap();
        assert!(
            b.gzip_bpb < 0.2 && b.xz_bpb < 0.2 && b.zstd_bpb < 0.2,
            "{b:?}"
        );
        // Incompressible tiny input costs more than 8 bits per byte (headers).
        assert!(baselines(b"x").unwrap().gzip_bpb > 8.0);
        assert!(baselines(b"").is_err());
    }
}
