//! The M1 built into terse, so that `terse compress` and `terse decompress` work with no model
//! at hand: an m1-3m trained on the project's Gutenberg training text, carried as its M1 pack
//! (`data/m1.pack`, 2.7 MB; `data/README.md` says how it was trained and what it scores).
//!
//! Guarantees: the same bits on every machine and every build that carries the same pack (it is
//! an ordinary [`Int8M1`], read through the pack reader and its CRC checks each time it loads);
//! its fingerprint, [`BUILTIN_M1_FINGERPRINT`], names it in every file it codes, so a file coded
//! with another M1 is refused by name rather than decoded wrong.

use super::Int8M1;
use anyhow::{ensure, Context, Result};

/// The pack's bytes, in the binary.
const PACK: &[u8] = include_bytes!("../../data/m1.pack");

/// The built-in M1's fingerprint (what `.terse` files and token datasets coded with it record).
pub const BUILTIN_M1_FINGERPRINT: u64 = 0xa124b74909300e4e;

/// The built-in M1, read from the pack in the binary.
pub fn builtin_m1() -> Result<Int8M1> {
    let m1 = Int8M1::from_packed(PACK).context("the built-in M1")?;
    ensure!(
        m1.fingerprint() == BUILTIN_M1_FINGERPRINT,
        "the built-in M1 has fingerprint {:016x}, this build expects {BUILTIN_M1_FINGERPRINT:016x}",
        m1.fingerprint()
    );
    Ok(m1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_m1_loads_as_documented() {
        let m1 = builtin_m1().unwrap();
        assert_eq!(m1.config().preset, "m1-3m");
        assert_eq!(m1.config().vocab, 256);
        let readme = include_str!("../../data/README.md");
        let hex = format!("{BUILTIN_M1_FINGERPRINT:016x}");
        assert!(
            readme.contains(&hex),
            "data/README.md does not name the built-in M1's fingerprint {hex}"
        );
    }
}
