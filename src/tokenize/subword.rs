//! `subword`: the paper's SentencePiece baseline, as a byte-level BPE of [`VOCAB_SIZE`] (32,000)
//! tokens trained with the Hugging Face `tokenizers` crate (no network, no regex engine needed).
//! Tokens are 16 bits (the vocabulary does not fit 8).
//!
//! # Every byte string round-trips
//!
//! BPE in `tokenizers` works on `&str`, which cannot hold invalid UTF-8. So the text is never
//! given to it as text: each byte is first mapped to one character by the GPT-2 byte-to-unicode
//! table ([`byte_char`]), a bijection between the 256 byte values and 256 printable characters,
//! and all 256 characters are in the initial alphabet. Any byte string (binary, invalid UTF-8,
//! NUL bytes) is then a valid string over that alphabet, every token is a string of mapped
//! characters, and decoding maps the token strings' characters back to bytes: exact by
//! construction, with no byte-fallback tokens needed.
//!
//! # Pre-tokenization
//!
//! Words (the units BPE merges within) are cut from the raw bytes by [`split_words`]: maximal
//! runs of one class (letters, digits and bytes >= 0x80; spaces; other whitespace; punctuation),
//! a single space joining the word after it (GPT-2 style), and at most [`MAX_WORD_BYTES`] bytes per
//! word (long runs of one byte are cut, which bounds the merge work). Cutting only affects which
//! tokens are chosen, never decodability.
//!
//! # Training
//!
//! On the corpus being tokenized (its first [`TRAIN_MAX_BYTES`], 50 MB, of canonical bytes) or on
//! a separate file, likewise capped. The trained model (vocabulary and merges, the `tokenizers`
//! BPE JSON) is stored in the dataset's metadata `params.tokenizer`, so decoding needs nothing else.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::{Model, Trainer};

/// Vocabulary size trained (the paper's SentencePiece vocabulary: 32k).
pub const VOCAB_SIZE: usize = 32_000;
/// Most bytes of training text read.
pub const TRAIN_MAX_BYTES: usize = 50 << 20;
/// Longest word handed to BPE, in bytes.
pub const MAX_WORD_BYTES: usize = 32;
/// Name of this pre-tokenization and byte mapping, stored in metadata.
pub const PRETOKENIZER: &str = "terse-bytes-v1";

/// The GPT-2 byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68 to
/// U+0100.. in order.
fn byte_table() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut extra = 0u32;
    for (b, slot) in t.iter_mut().enumerate() {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        *slot = if printable {
            char::from(b as u8)
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("in range")
        };
    }
    t
}

/// The character byte `b` stands as.
pub fn byte_char(b: u8) -> char {
    static T: std::sync::OnceLock<[char; 256]> = std::sync::OnceLock::new();
    T.get_or_init(byte_table)[b as usize]
}

/// The byte a mapped character stands for (`None` for characters outside the table).
pub fn char_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 256 {
        let b = u as u8;
        (byte_char(b) == c).then_some(b)
    } else if (256..256 + 68).contains(&u) {
        // The (u - 255)-th non-printable byte.
        static INV: std::sync::OnceLock<[u8; 68]> = std::sync::OnceLock::new();
        let inv = INV.get_or_init(|| {
            let mut inv = [0u8; 68];
            for b in 0..=255u8 {
                let c = byte_char(b) as u32;
                if c >= 256 {
                    inv[(c - 256) as usize] = b;
                }
            }
            inv
        });
        Some(inv[(u - 256) as usize])
    } else {
        None
    }
}

fn map_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_char(b)).collect()
}

fn class(b: u8) -> u8 {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' | 0x80..=0xFF => 0,
        b'0'..=b'9' => 1,
        b' ' => 2,
        b'\t' | b'\n' | b'\r' | 0x0B | 0x0C => 3,
        _ => 4,
    }
}

/// The words of `data` (module docs): they concatenate to `data`, each is non-empty and at most
/// [`MAX_WORD_BYTES`] long.
pub fn split_words(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let start = i;
        if data[i] == b' ' && i + 1 < data.len() && !matches!(class(data[i + 1]), 2 | 3) {
            i += 1; // one space joins the word after it
        }
        let c = class(data[i]);
        i += 1;
        while i < data.len() && class(data[i]) == c && i - start < MAX_WORD_BYTES {
            i += 1;
        }
        out.push(&data[start..i]);
    }
    out
}

/// A trained byte-level BPE.
pub struct Subword {
    bpe: BPE,
    vocab: usize,
}

impl std::fmt::Debug for Subword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Subword(BPE, vocab {})", self.vocab)
    }
}

fn tk(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("tokenizers: {e}")
}

impl Subword {
    /// Trains a BPE of at most `vocab_size` tokens (at least the 256 byte characters, at most
    /// 65,536 so that ids fit 16 bits) on `text` (any bytes).
    pub fn train(text: &[u8], vocab_size: usize) -> Result<Subword> {
        if !(256..=65_536).contains(&vocab_size) {
            bail!("subword vocabulary {vocab_size} out of range 256..=65536");
        }
        let alphabet: HashSet<char> = (0..=255u8).map(byte_char).collect();
        let mut trainer = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(alphabet)
            .build();
        let pieces = text.chunks(1 << 16).map(map_bytes);
        trainer
            .feed(pieces, |s| {
                let bytes: Vec<u8> = s.chars().filter_map(char_byte).collect();
                Ok(split_words(&bytes).into_iter().map(map_bytes).collect())
            })
            .map_err(tk)?;
        let mut bpe = BPE::default();
        trainer.train(&mut bpe).map_err(tk)?;
        Subword::from_bpe(bpe)
    }

    fn from_bpe(bpe: BPE) -> Result<Subword> {
        let vocab = bpe.get_vocab_size();
        if vocab > 65_536 {
            bail!("subword vocabulary of {vocab} tokens does not fit 16-bit ids");
        }
        for b in 0..=255u8 {
            if bpe.token_to_id(&byte_char(b).to_string()).is_none() {
                bail!("subword vocabulary lacks byte {b:#04x}: not every input could be coded");
            }
        }
        Ok(Subword { bpe, vocab })
    }

    /// The model as JSON (the `tokenizers` BPE serialisation), for metadata.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(&self.bpe)?)
    }

    /// From [`to_json`](Self::to_json)'s value; refuses a model that cannot code every byte.
    pub fn from_json(v: &serde_json::Value) -> Result<Subword> {
        // The BPE deserialiser borrows strings, so it reads text rather than a `Value`.
        let bpe: BPE = serde_json::from_str(&v.to_string()).context("subword tokenizer JSON")?;
        Subword::from_bpe(bpe)
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The chunk's token ids (16-bit tokens only).
    pub fn encode(&self, chunk: &[u8], token_bits: u32) -> Result<Vec<u16>> {
        check_bits(token_bits)?;
        let mut out = Vec::with_capacity(chunk.len() / 3);
        for w in split_words(chunk) {
            for t in self.bpe.tokenize(&map_bytes(w)).map_err(tk)? {
                out.push(u16::try_from(t.id).context("subword id beyond 16 bits")?);
            }
        }
        Ok(out)
    }

    /// The bytes of `tokens`; refuses ids outside the vocabulary.
    pub fn decode(&self, tokens: &[u16], token_bits: u32) -> Result<Vec<u8>> {
        check_bits(token_bits)?;
        let mut out = Vec::with_capacity(tokens.len() * 4);
        for &t in tokens {
            let s = self
                .bpe
                .id_to_token(t as u32)
                .with_context(|| format!("subword token {t} is not in the vocabulary"))?;
            for c in s.chars() {
                out.push(
                    char_byte(c)
                        .with_context(|| format!("subword token {t} holds {c:?}, not a byte"))?,
                );
            }
        }
        Ok(out)
    }
}

fn check_bits(token_bits: u32) -> Result<()> {
    if token_bits != 16 {
        bail!("subword tokens are 16-bit ids (a 32k vocabulary): --token-bits {token_bits} refused, use 16");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let chars: HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(chars.len(), 256);
        for b in 0..=255u8 {
            assert_eq!(char_byte(byte_char(b)), Some(b));
        }
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(byte_char(b' '), '\u{120}'); // GPT-2's 'Ġ'
        assert_eq!(char_byte('\u{1000}'), None);
    }

    #[test]
    fn words_cover_the_input() {
        for data in [
            &b"Hello,  world!\n\tx  y 12ab"[..],
            &[b'a'; 100],
            &[0xFF, b' ', 0xC3, 0x28, b' ', b' '],
            b"",
        ] {
            let w = split_words(data);
            assert_eq!(w.concat(), data);
            assert!(w.iter().all(|x| !x.is_empty() && x.len() <= MAX_WORD_BYTES));
        }
        assert_eq!(
            split_words(b"a bc, d"),
            vec![&b"a"[..], b" bc", b",", b" d"]
        );
    }

    #[test]
    fn trains_and_round_trips_any_bytes() {
        let text = &include_bytes!("../../data/sample-books.txt")[..200_000];
        let sw = Subword::train(text, 2_000).unwrap();
        assert!(sw.vocab_size() <= 2_000 && sw.vocab_size() > 1_000);
        let json = sw.to_json().unwrap();
        let sw = Subword::from_json(&json)
            .map_err(|e| format!("{e:#}"))
            .unwrap();
        let t = sw.encode(&text[..10_000], 16).unwrap();
        assert!(t.len() < 10_000 / 2, "{} tokens", t.len()); // ~2.9 bytes/token at 2k
        let binary: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 256) as u8).collect();
        for data in [
            &text[..10_000],
            &binary,
            b"",
            b"\xff",
            b"\xc3\x28 caf\xc3\xa9 \0\0",
        ] {
            let t = sw.encode(data, 16).unwrap();
            assert_eq!(sw.decode(&t, 16).unwrap(), data);
        }
        assert!(sw.encode(b"x", 8).is_err());
        assert!(sw.decode(&[60_000], 16).is_err());
    }
}
