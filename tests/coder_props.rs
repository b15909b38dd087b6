//! Property tests of the coder (`terse::coder`): CDF invariants, exact Equal-Info window round
//! trips for every supported window size under a context-dependent toy model, totality of the
//! window decoder on random codes, the stream coder and token packing. 3,000 cases each
//! (more with `PROPTEST_CASES`).

use proptest::prelude::*;
use terse::coder::{
    codes_to_tokens, decode_window, encode_windows, min_f_min, tokens_to_codes, Cdf, CdfQuantizer,
    StreamDecoder, StreamEncoder, WindowDecoder, WindowEncoder, WindowEnd,
};

const WINDOW_BITS: [u32; 5] = [16, 24, 32, 64, 128];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// 256 probabilities of one of several shapes, including degenerate ones.
fn probabilities(rng: &mut Rng) -> Vec<f32> {
    let mut p = vec![0.0f32; 256];
    match rng.below(8) {
        0 => p.iter_mut().for_each(|x| *x = rng.unit()),
        1 => {
            // All mass on one byte, exact zeros elsewhere.
            p[rng.below(256) as usize] = 1.0;
        }
        2 => {
            // Peaked: mass m on one byte, the rest spread.
            let m = [0.5f32, 0.9, 0.99, 0.999, 0.99999][rng.below(5) as usize];
            p.iter_mut().for_each(|x| *x = (1.0 - m) / 255.0);
            p[rng.below(256) as usize] = m;
        }
        3 => {
            // Sparse: a few bytes (text-like).
            for _ in 0..1 + rng.below(12) {
                p[rng.below(256) as usize] += rng.unit() + 1e-3;
            }
        }
        4 => {
            // Extreme magnitudes: subnormals, tiny and huge.
            p.iter_mut()
                .for_each(|x| *x = f32::from_bits(1 + rng.below(1 << 20) as u32));
            p[rng.below(256) as usize] = f32::MAX;
            p[rng.below(256) as usize] = 1e30;
        }
        5 => {} // all zeros: the uniform rule
        6 => {
            // Mass on the edges of the byte range (boundary positions 0 and T).
            p[0] = rng.unit() + 0.5;
            p[255] = rng.unit() + 0.5;
        }
        _ => p.iter_mut().for_each(|x| *x = rng.unit().powi(8)),
    }
    p
}

/// A quantiser: mostly the default, sometimes another total with the smallest legal floor or a
/// larger floor.
fn quantizer(rng: &mut Rng, only_default_total: bool) -> CdfQuantizer {
    if only_default_total || rng.below(4) != 0 {
        let f_min = [1, 1, 2, 4][rng.below(4) as usize];
        return CdfQuantizer::new(16, f_min).unwrap();
    }
    let bits = [8u32, 12, 14, 20, 24][rng.below(5) as usize];
    CdfQuantizer::new(bits, min_f_min(bits)).unwrap()
}

/// A deterministic "model": the CDF after a prefix depends on the prefix's last byte and its
/// length through a hash, over a table of random CDFs.
struct Toy {
    table: Vec<Cdf>,
    salt: u64,
}

impl Toy {
    fn new(seed: u64, only_default_total: bool) -> Toy {
        let mut rng = Rng(seed);
        let n = 1 + rng.below(24) as usize;
        let table = (0..n)
            .map(|_| {
                let q = quantizer(&mut rng, only_default_total);
                q.quantize(&probabilities(&mut rng)).unwrap()
            })
            .collect();
        Toy {
            table,
            salt: rng.next(),
        }
    }

    fn cdf(&self, prefix: &[u8]) -> &Cdf {
        let last = prefix.last().map_or(256u64, |&x| x as u64);
        let mut h = (last ^ self.salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= (prefix.len() as u64 % 5).wrapping_mul(0xD1B5_4A32_D192_ED03);
        h ^= h >> 29;
        &self.table[(h % self.table.len() as u64) as usize]
    }

    /// Text the model itself finds likely (a window's context, reset every `reset` bytes).
    fn sample(&self, rng: &mut Rng, n: usize, reset: usize) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::with_capacity(n);
        let mut start = 0;
        for i in 0..n {
            if i - start >= reset {
                start = i;
            }
            let cdf = self.cdf(&out[start..]);
            out.push(cdf.symbol_for(rng.below(cdf.total() as u64) as u32));
        }
        out
    }
}

/// Input bytes of several kinds: random, runs of one byte (also the model's favourite or its
/// least likely), model samples, and mixtures.
fn input(seed: u64, toy: &Toy) -> Vec<u8> {
    let mut rng = Rng(seed ^ 0xA5A5_A5A5);
    let n = rng.below(600) as usize;
    match rng.below(6) {
        0 => (0..n).map(|_| rng.next() as u8).collect(),
        1 => vec![rng.next() as u8; rng.below(3000) as usize],
        2 => {
            // A run of the byte the start-of-window CDF likes most, or least.
            let cdf = toy.cdf(&[]);
            let best = (0..=255u8).max_by_key(|&s| cdf.freq(s)).unwrap();
            let worst = (0..=255u8).min_by_key(|&s| cdf.freq(s)).unwrap();
            let byte = if rng.below(2) == 0 { best } else { worst };
            vec![byte; rng.below(2500) as usize]
        }
        3 => {
            let reset = 1 + rng.below(40) as usize;
            toy.sample(&mut rng, n, reset)
        }
        4 => {
            let mut v = Vec::new();
            while v.len() < n {
                let run = 1 + rng.below(200) as usize;
                v.extend(std::iter::repeat_n(rng.next() as u8, run));
                let m = rng.below(50) as usize;
                v.extend(toy.sample(&mut rng, m, 7));
            }
            v
        }
        _ => (0..rng.below(4)).map(|_| rng.next() as u8).collect(),
    }
}

/// At least `cases` cases; `PROPTEST_CASES` can ask for more.
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: cases.max(default.cases),
        failure_persistence: None,
        ..default
    }
}

proptest! {
    #![proptest_config(config(3000))]

    /// Quantised CDFs: total exactly 2^P, monotone, every byte >= f_min, deterministic.
    #[test]
    fn cdf_invariants(seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let q = quantizer(&mut rng, false);
        let p = probabilities(&mut rng);
        let cdf = q.quantize(&p).unwrap();
        let c = cdf.cumulative();
        prop_assert_eq!(c[0], 0);
        prop_assert_eq!(c[256], 1u32 << q.total_bits());
        for s in 0..=255u8 {
            prop_assert!(cdf.freq(s) >= q.f_min());
            prop_assert!(c[s as usize] < c[s as usize + 1]);
            prop_assert_eq!(cdf.symbol_for(c[s as usize]), s);
            prop_assert_eq!(cdf.symbol_for(c[s as usize + 1] - 1), s);
        }
        prop_assert_eq!(q.quantize(&p).unwrap(), cdf.clone());
        // Each frequency is f_min plus the byte's share of the rest, within rounding.
        let total: f64 = p.iter().map(|&x| x as f64).sum();
        if total > 0.0 && total.is_finite() {
            let free = (cdf.total() - 256 * q.f_min()) as f64;
            for (s, &ps) in p.iter().enumerate() {
                let ideal = q.f_min() as f64 + free * ps as f64 / total;
                let got = cdf.freq(s as u8) as f64;
                prop_assert!((got - ideal).abs() <= 2.0 + ideal * 1e-6,
                    "byte {} freq {} ideal {}", s, got, ideal);
            }
        }
    }

    /// Refusals never panic: NaN, infinities and negative values are errors.
    #[test]
    fn cdf_refuses_bad_input(seed in any::<u64>(), bits in any::<u32>()) {
        let mut rng = Rng(seed);
        let mut p = probabilities(&mut rng);
        let i = rng.below(256) as usize;
        p[i] = f32::from_bits(bits);
        let r = CdfQuantizer::default().quantize(&p);
        let v = p[i];
        prop_assert_eq!(r.is_ok(), v.is_finite() && (v >= 0.0));
    }

    /// Every window size: the windows' codes decode to exactly the windows' bytes, the windows
    /// cover the input in order, each holds at least one byte, and greedy windows are full.
    #[test]
    fn windows_round_trip(model_seed in any::<u64>(), data_seed in any::<u64>()) {
        let toy = Toy::new(model_seed, false);
        let data = input(data_seed, &toy);
        let model = |prefix: &[u8]| toy.cdf(prefix);
        for b in WINDOW_BITS {
            let enc = encode_windows(b, &data, model).unwrap();
            prop_assert_eq!(enc.codes.len(), enc.lengths.len());
            let mut at = 0usize;
            for (w, (&code, &len)) in enc.codes.iter().zip(&enc.lengths).enumerate() {
                prop_assert!(len >= 1);
                prop_assert!(b == 128 || code >> b == 0);
                let got = decode_window(b, code, model).unwrap();
                prop_assert_eq!(&got[..], &data[at..at + len as usize], "b={} window {}", b, w);
                at += len as usize;
            }
            prop_assert_eq!(at, data.len());
            prop_assert!(enc.backoffs <= enc.codes.len() as u64);
        }
    }

    /// The incremental encoder: `bits()` is non-decreasing, at most b while accepted, and a
    /// refused byte leaves the window as it was (its code still decodes exactly).
    #[test]
    fn window_encoder_refusals_are_clean(model_seed in any::<u64>(), data_seed in any::<u64>(),
                                         b_ix in 0usize..5) {
        let b = WINDOW_BITS[b_ix];
        let toy = Toy::new(model_seed, false);
        let data = input(data_seed, &toy);
        let mut enc = WindowEncoder::new(b).unwrap();
        let mut bits = 0;
        let mut n = 0;
        for &x in data.iter().take(400) {
            let before = enc.code();
            if enc.push(toy.cdf(&data[..n]), x) {
                n += 1;
                prop_assert!(enc.bits() >= bits && enc.bits() <= b);
                bits = enc.bits();
            } else {
                prop_assert_eq!(enc.code(), before);
                prop_assert!(n >= 1);
                break;
            }
        }
        if n > 0 {
            let code = enc.finish().unwrap();
            prop_assert_eq!(decode_window(b, code, |p: &[u8]| toy.cdf(p)).unwrap(), &data[..n]);
        }
    }

    /// Any b-bit code decodes without error or panic; with CDF totals <= 2^16 to at least one
    /// byte; a code that ends by a designated match is what the encoder gives for those bytes.
    #[test]
    fn random_codes_decode(model_seed in any::<u64>(), hi in any::<u64>(), lo in any::<u64>(),
                           b_ix in 0usize..5, default_total in any::<bool>()) {
        let b = WINDOW_BITS[b_ix];
        let toy = Toy::new(model_seed, default_total);
        let raw = ((hi as u128) << 64) | lo as u128;
        let code = if b == 128 { raw } else { raw & ((1u128 << b) - 1) };
        let mut dec = WindowDecoder::new(b, code).unwrap();
        let mut steps = 0;
        while !dec.is_done() {
            dec.step(toy.cdf(dec.bytes()));
            steps += 1;
            prop_assert!(steps < 1_000_000);
        }
        let end = dec.end();
        let bytes = dec.into_bytes();
        if toy.table.iter().all(|c| c.total_bits() <= 16) {
            prop_assert!(!bytes.is_empty());
        }
        if end == Some(WindowEnd::Matched) {
            let mut enc = WindowEncoder::new(b).unwrap();
            for (i, &x) in bytes.iter().enumerate() {
                prop_assert!(enc.push(toy.cdf(&bytes[..i]), x));
            }
            prop_assert_eq!(enc.finish().unwrap(), code);
        }
        prop_assert!(WindowDecoder::new(b, raw).is_ok() == (b == 128 || raw >> b == 0));
    }

    /// The stream coder round-trips under the context-dependent model.
    #[test]
    fn stream_round_trip(model_seed in any::<u64>(), data_seed in any::<u64>()) {
        let toy = Toy::new(model_seed, false);
        let data = input(data_seed, &toy);
        let ctx = |i: usize| toy.cdf(&data[i.saturating_sub(3)..i]);
        let mut enc = StreamEncoder::new();
        for (i, &x) in data.iter().enumerate() {
            enc.encode(x, ctx(i));
        }
        let code = enc.finish();
        let mut dec = StreamDecoder::new(&code);
        for (i, &x) in data.iter().enumerate() {
            prop_assert_eq!(dec.decode(ctx(i)), x, "at {}", i);
        }
    }

    /// Garbage into the stream decoder: any bytes, any number of symbols, no panic.
    #[test]
    fn stream_garbage(model_seed in any::<u64>(), input in proptest::collection::vec(any::<u8>(), 0..64),
                      n in 0usize..2000) {
        let toy = Toy::new(model_seed, false);
        let mut dec = StreamDecoder::new(&input);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let x = dec.decode(toy.cdf(&out));
            out.push(x);
            if out.len() > 8 { out.remove(0); }
        }
    }

    /// Packing window codes into 8- or 16-bit tokens and back is the identity.
    #[test]
    fn pack_round_trip(seed in any::<u64>(), n in 0usize..40, b_ix in 0usize..5, wide in any::<bool>()) {
        let b = WINDOW_BITS[b_ix];
        let t = if wide { 16 } else { 8 };
        let mut rng = Rng(seed);
        let codes: Vec<u128> = (0..n)
            .map(|_| {
                let v = ((rng.next() as u128) << 64) | rng.next() as u128;
                if b == 128 { v } else { v & ((1u128 << b) - 1) }
            })
            .collect();
        let toks = codes_to_tokens(&codes, b, t).unwrap();
        prop_assert_eq!(toks.len(), (n * b as usize).div_ceil(t as usize));
        prop_assert_eq!(tokens_to_codes(&toks, b, t).unwrap(), codes);
    }
}
