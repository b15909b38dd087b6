//! `ac`: the paper's plain arithmetic-coding baseline, `AC[v]` (§3.3, Table 1). Each chunk (by
//! default 10,240 bytes, the paper's example length) is one whole-sequence arithmetic code under
//! M1's exact probabilities ([`Int8M1`]), with M1's context **never reset** inside the chunk: byte
//! `k` is coded with the distribution M1 gives after `WINDOW_START, x_0 .. x_{k-1}` (one key/value
//! cache, rotary positions up to the chunk length; each position attends over M1's sliding window
//! of `context` positions, its training length). The CDFs are M1's probabilities
//! quantised by [`CdfQuantizer`] (total `2^16`, floor 1), the coder is [`StreamEncoder`].
//!
//! # Tokens, termination and padding
//!
//! The coded stream's bytes become tokens, 8 bits each or 16 bits each MSB first. The stream is
//! terminated by [`StreamEncoder::finish`] (the value with the most trailing zeros in the final
//! interval, trailing `0x00` bytes dropped); an odd final byte at 16 bits is padded with `0x00`,
//! which the decoder reads anyway (it reads zeros past the end), so padding changes nothing.
//! There is no end-of-input symbol: the decoder is told the chunk's byte length, which a dataset
//! keeps in its examples table.
//!
//! # Rate
//!
//! `tokens × token_bits / bytes` of an `ac` dataset is "M1 bits/byte (plain AC)": M1's
//! cross-entropy on the chunks plus the quantisation floor (≤ 0.0056 bit/byte), termination
//! (≤ 9 bytes per chunk) and token padding.
//!
//! # Cost
//!
//! One M1 position per byte, attention over at most M1's context: the cost per position stays flat
//! along the chunk (m1-3m with a 256-position context: ~4,000 positions/s per core, one position
//! per step, on a 2-core AMD EPYC; unbounded attention gave ~540 over a 10,240-byte chunk).
//! Chunks run in parallel on the CPU's threads, or in lockstep on an [`M1Batch`]
//! ([`encode_chunks`], [`decode_chunks`]): the GPU's exact M1 advances hundreds of chunks per
//! step with the same bits. A single chunk is the lockstep code on a one-stream [`CpuM1Batch`], so
//! there is one implementation of each.

use crate::coder::{
    bytes_to_tokens, tokens_to_bytes, Cdf, CdfQuantizer, Contexts, ContextsRecipe, Repeats,
    StreamDecoder, StreamEncoder,
};
use crate::m1::{run_tasks, CpuM1Batch, Feed, Int8M1, M1Batch, StreamTask};
use anyhow::{ensure, Result};
use std::borrow::Cow;

/// The probabilities an `ac` code is made under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcModel {
    /// M1's own: the paper's baseline (what M2 trains on), and `terse compress` before format 4.
    M1,
    /// M1's mixed with the chunk's own repeats ([`Repeats`], one per chunk): `terse compress`
    /// in format 4.
    M1Repeats,
    /// That, mixed in turn with the chunk's own context statistics ([`Contexts`], one per
    /// chunk, by the recipe given): `terse compress` from format 5.
    M1RepeatsContexts(ContextsRecipe),
}

impl AcModel {
    /// The per-chunk models of a chunk of `len` bytes.
    fn chunk_models(self, len: usize) -> ChunkModels {
        let repeats = (self != AcModel::M1).then(|| Repeats::new(len));
        let contexts = match self {
            AcModel::M1RepeatsContexts(recipe) => Some(Contexts::new(recipe)),
            AcModel::M1 | AcModel::M1Repeats => None,
        };
        ChunkModels { repeats, contexts }
    }
}

/// What a chunk learns of itself as it is coded, on top of M1 (none under [`AcModel::M1`]).
struct ChunkModels {
    repeats: Option<Repeats>,
    contexts: Option<Contexts>,
}

/// The chunk models of one [`AcModel`], kept from one batch of chunks to the next: a chunk
/// takes a model another chunk has finished with, reset, so the tables' memory is taken once
/// for a whole file rather than freed and taken again (on whichever thread codes the chunk)
/// batch after batch.
pub struct ChunkModelStore {
    model: AcModel,
    spare: Vec<ChunkModels>,
}

impl ChunkModelStore {
    /// An empty store for chunks coded under `model`.
    pub fn new(model: AcModel) -> Self {
        ChunkModelStore {
            model,
            spare: Vec::new(),
        }
    }

    /// The models for a chunk of `len` bytes, as new.
    fn take(&mut self, len: usize) -> ChunkModels {
        match self.spare.pop() {
            Some(mut m) => {
                m.reset(len);
                m
            }
            None => self.model.chunk_models(len),
        }
    }
}

impl ChunkModels {
    /// Back to new, for a chunk of `len` bytes, keeping the models' memory.
    fn reset(&mut self, len: usize) {
        if let Some(r) = &mut self.repeats {
            r.reset(len);
        }
        if let Some(c) = &mut self.contexts {
            c.reset();
        }
    }

    /// The CDF to code the byte after `history` with, from M1's `cdf`.
    fn predict<'c>(&mut self, history: &[u8], cdf: &'c Cdf) -> Cow<'c, Cdf> {
        let cdf = match &mut self.repeats {
            Some(r) => r.predict(history, cdf),
            None => Cow::Borrowed(cdf),
        };
        match &mut self.contexts {
            Some(c) => Cow::Owned(c.predict(history, &cdf)),
            None => cdf,
        }
    }

    /// Learns from the byte just coded, the last of `history`.
    fn update(&mut self, history: &[u8]) {
        if let Some(r) = &mut self.repeats {
            r.update(history);
        }
        if let Some(c) = &mut self.contexts {
            c.update(history);
        }
    }
}

/// The chunk's arithmetic code under `m1` ([`AcModel::M1`]), as `token_bits`-bit tokens.
pub fn encode(m1: &Int8M1, chunk: &[u8], token_bits: u32) -> Result<Vec<u16>> {
    let mut coded = encode_chunks(
        &mut CpuM1Batch::new(m1, 1),
        &[chunk],
        token_bits,
        &mut ChunkModelStore::new(AcModel::M1),
    )?;
    Ok(coded.pop().expect("one chunk"))
}

/// The `byte_len` bytes coded by `tokens` under `m1` ([`AcModel::M1`]; any tokens decode to
/// some bytes).
pub fn decode(m1: &Int8M1, tokens: &[u16], token_bits: u32, byte_len: usize) -> Result<Vec<u8>> {
    let mut out = decode_chunks(
        &mut CpuM1Batch::new(m1, 1),
        &[tokens],
        token_bits,
        &[byte_len],
        &mut ChunkModelStore::new(AcModel::M1),
    )?;
    Ok(out.pop().expect("one chunk"))
}

/// The codes of many chunks at once on `batch` (built from the same M1), under the model of
/// `store` (whose models they use and give back), one stream per chunk, all advanced one byte
/// per step ([`run_tasks`]): under [`AcModel::M1`], the same tokens as [`encode`] chunk by
/// chunk.
pub fn encode_chunks(
    batch: &mut dyn M1Batch,
    chunks: &[&[u8]],
    token_bits: u32,
    store: &mut ChunkModelStore,
) -> Result<Vec<Vec<u16>>> {
    let tasks = chunks
        .iter()
        .map(|&chunk| Encoding {
            chunk,
            coded: 0,
            coder: StreamEncoder::new(),
            models: store.take(chunk.len()),
        })
        .collect();
    run_tasks(batch, &CdfQuantizer::default(), tasks)?
        .into_iter()
        .map(|e| {
            store.spare.push(e.models);
            Ok(bytes_to_tokens(&e.coder.finish(), token_bits)?)
        })
        .collect()
}

/// The chunks (`lens[i]` bytes from `tokens[i]`) that [`encode_chunks`] coded under the model
/// of `store`.
pub fn decode_chunks(
    batch: &mut dyn M1Batch,
    tokens: &[&[u16]],
    token_bits: u32,
    lens: &[usize],
    store: &mut ChunkModelStore,
) -> Result<Vec<Vec<u8>>> {
    ensure!(tokens.len() == lens.len(), "one length per chunk");
    let streams: Vec<Vec<u8>> = tokens
        .iter()
        .map(|t| Ok(tokens_to_bytes(t, token_bits)?))
        .collect::<Result<_>>()?;
    let tasks = streams
        .iter()
        .zip(lens)
        .map(|(bytes, &len)| Decoding {
            coder: StreamDecoder::new(bytes),
            out: Vec::with_capacity(len.min(1 << 20)), // the length may be corrupt
            len,
            models: store.take(len),
        })
        .collect();
    Ok(run_tasks(batch, &CdfQuantizer::default(), tasks)?
        .into_iter()
        .map(|d| {
            store.spare.push(d.models);
            d.out
        })
        .collect())
}

/// One chunk being coded: byte `coded` is next.
struct Encoding<'c> {
    chunk: &'c [u8],
    coded: usize,
    coder: StreamEncoder,
    models: ChunkModels,
}

impl StreamTask for Encoding<'_> {
    fn next_feed(&self) -> Feed {
        match self.coded {
            k if k == self.chunk.len() => Feed::Done,
            0 => Feed::Open,
            k => Feed::Byte(self.chunk[k - 1]),
        }
    }

    fn take(&mut self, cdf: &Cdf) -> Result<()> {
        let (k, byte) = (self.coded, self.chunk[self.coded]);
        self.coder
            .encode(byte, &self.models.predict(&self.chunk[..k], cdf));
        self.models.update(&self.chunk[..=k]);
        self.coded += 1;
        Ok(())
    }
}

/// One chunk being decoded, `len` bytes in all.
struct Decoding<'t> {
    coder: StreamDecoder<'t>,
    out: Vec<u8>,
    len: usize,
    models: ChunkModels,
}

impl StreamTask for Decoding<'_> {
    fn next_feed(&self) -> Feed {
        match self.out.last() {
            _ if self.out.len() == self.len => Feed::Done,
            None => Feed::Open,
            Some(&b) => Feed::Byte(b),
        }
    }

    fn take(&mut self, cdf: &Cdf) -> Result<()> {
        let byte = self.coder.decode(&self.models.predict(&self.out, cdf));
        self.out.push(byte);
        self.models.update(&self.out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::m1::WINDOW_START;
    use crate::model::{ModelConfig, ParamArena};

    #[test]
    fn round_trips_and_beats_uniform_on_text() {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(256); // contract 3 attends over a recorded context
        let mut p = ParamArena::init(&cfg, 5);
        p.data.iter_mut().for_each(|x| *x *= 8.0);
        let m1 = Int8M1::new(&cfg, &p).unwrap();
        let text = &include_bytes!("../../data/sample-books.txt")[..3000];
        let inputs: [&[u8]; 5] = [text, b"", b"x", &[0u8; 700], &[255, 0, 1, 128]];
        for data in inputs {
            for bits in [8, 16] {
                let t = encode(&m1, data, bits).unwrap();
                assert_eq!(decode(&m1, &t, bits, data.len()).unwrap(), data);
            }
        }
        // Garbage decodes to the requested length without panicking.
        assert_eq!(decode(&m1, &[1, 2, 3], 16, 50).unwrap().len(), 50);
    }

    #[test]
    fn batched_coding_equals_chunk_by_chunk() {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(256); // contract 3 attends over a recorded context
        let mut p = ParamArena::init(&cfg, 6);
        p.data.iter_mut().for_each(|x| *x *= 8.0);
        let m1 = Int8M1::new(&cfg, &p).unwrap();
        let text = &include_bytes!("../../data/sample-books.txt")[5000..6500];
        let chunks: Vec<&[u8]> = vec![&text[..700], b"", &text[700..701], &text[701..], &[9; 300]];
        // Two streams for five chunks: each stream takes the next chunk when its own ends.
        let mut batch = CpuM1Batch::new(&m1, 2);
        let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        for bits in [8, 16] {
            let coded = encode_chunks(
                &mut batch,
                &chunks,
                bits,
                &mut ChunkModelStore::new(AcModel::M1),
            )
            .unwrap();
            for (c, t) in chunks.iter().zip(&coded) {
                assert_eq!(t, &encode(&m1, c, bits).unwrap());
            }
            let toks: Vec<&[u16]> = coded.iter().map(Vec::as_slice).collect();
            let back = decode_chunks(
                &mut batch,
                &toks,
                bits,
                &lens,
                &mut ChunkModelStore::new(AcModel::M1),
            )
            .unwrap();
            assert_eq!(back, chunks);
        }
        // With repeats: each chunk's code is its own (one stream gives the same), it decodes,
        // and the repeated chunk (text twice) codes shorter than under M1 alone.
        let twice = [&text[..700], &text[..700]].concat();
        let chunks: Vec<&[u8]> = vec![&twice, b"", &text[700..701], &text[701..], &[9; 300]];
        let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        // A store's models, reset and reused from call to call (here those of chunks of other
        // lengths), code as new ones do.
        let mut store = ChunkModelStore::new(AcModel::M1Repeats);
        let coded = encode_chunks(&mut batch, &chunks, 8, &mut store).unwrap();
        let mut reversed = chunks.clone();
        reversed.reverse();
        encode_chunks(&mut batch, &reversed, 8, &mut store).unwrap();
        let fresh = &mut ChunkModelStore::new(AcModel::M1Repeats);
        let alone = encode_chunks(&mut CpuM1Batch::new(&m1, 1), &chunks, 8, fresh);
        assert_eq!(coded, alone.unwrap());
        assert_eq!(
            encode_chunks(&mut batch, &chunks, 8, &mut store).unwrap(),
            coded
        );
        let toks: Vec<&[u16]> = coded.iter().map(Vec::as_slice).collect();
        let back = decode_chunks(&mut batch, &toks, 8, &lens, &mut store).unwrap();
        assert_eq!(back, chunks);
        let plain = encode(&m1, &twice, 8).unwrap().len();
        assert!(
            coded[0].len() * 10 < plain * 8,
            "{} vs {plain}",
            coded[0].len()
        );
        // A stream fed twice in one step, or out of range, is refused.
        assert!(batch.step(&[(0, WINDOW_START), (0, WINDOW_START)]).is_err());
        assert!(batch.step(&[(2, WINDOW_START)]).is_err());
        batch.reset(0);
        assert!(
            batch.step(&[(0, b'a')]).is_err(),
            "must start with WINDOW_START"
        );
    }
}
