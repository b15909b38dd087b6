//! `terse pack-m1`: an M1 checkpoint quantised once into an M1 pack, and what was written.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use terse::fsio::{check_output, Existing};
use terse::m1::Int8M1;

#[derive(Args)]
pub struct PackM1Args {
    /// The M1 to pack: a checkpoint (a byte-level model that records its context) or a pack.
    #[arg(long)]
    m1: PathBuf,
    /// Output file, written atomically; a symlink is followed, a device or FIFO written through.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it is an existing file (without this, an existing file is refused).
    #[arg(long)]
    force: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PackM1Args) -> Result<()> {
    let existing = Existing::replace_if(a.force);
    // An output that would be refused is refused before the checkpoint is loaded.
    check_output(&a.out, existing)?;
    let m1 = Int8M1::load(&a.m1)?;
    let bytes = m1.save_packed(&a.out, existing)?;
    let fingerprint = format!("{:016x}", m1.fingerprint());
    let cfg = m1.config();
    if a.json {
        let report = serde_json::json!({
            "out": a.out,
            "bytes": bytes,
            "fingerprint": fingerprint,
            "contract": terse::m1::CONTRACT_VERSION,
            "preset": cfg.preset,
            "context": cfg.context,
        });
        println!("{report}");
    } else {
        println!(
            "{} -> {}: {bytes} bytes, M1 fingerprint {fingerprint} (contract {}, {}, context {})",
            a.m1.display(),
            a.out.display(),
            terse::m1::CONTRACT_VERSION,
            cfg.preset,
            cfg.context.unwrap_or(0)
        );
    }
    Ok(())
}
