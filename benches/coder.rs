//! Criterion benches of the coder alone: CDFs are precomputed (an order-1 toy model, one CDF per
//! previous byte, reset at window starts), so the figures are symbols (bytes) per second of the
//! integer coding work only. The data is sampled from the same model (about 2.4 bits per byte,
//! close to a byte-level LM on English text).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use terse::coder::{
    decode_windows, encode_windows, Cdf, CdfQuantizer, StreamDecoder, StreamEncoder,
};

const N: usize = 1 << 18;

struct Toy {
    /// CDF after each previous byte; index 256: the window start.
    table: Vec<Cdf>,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

impl Toy {
    fn new() -> Toy {
        let q = CdfQuantizer::default();
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let table = (0..257)
            .map(|_| {
                let mut p = [0.0005f32; 256];
                // A favourite next byte and a handful of plausible ones, text-like.
                p[(32 + xorshift(&mut s) % 95) as usize] += 0.55;
                for _ in 0..12 {
                    p[(32 + xorshift(&mut s) % 95) as usize] += 0.03;
                }
                q.quantize(&p).unwrap()
            })
            .collect();
        Toy { table }
    }

    fn cdf(&self, prefix: &[u8]) -> &Cdf {
        &self.table[prefix.last().map_or(256, |&x| x as usize)]
    }

    fn sample(&self, n: usize) -> Vec<u8> {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut out = Vec::with_capacity(n);
        let mut ctx = 256usize;
        for _ in 0..n {
            let cdf = &self.table[ctx];
            let t = (xorshift(&mut s) % cdf.total() as u64) as u32;
            let x = cdf.symbol_for(t);
            out.push(x);
            ctx = x as usize;
        }
        out
    }
}

fn window(c: &mut Criterion) {
    let toy = Toy::new();
    let data = toy.sample(N);
    let mut g = c.benchmark_group("window");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    for b in [16u32, 32, 128] {
        g.bench_function(BenchmarkId::new("encode", b), |bch| {
            bch.iter(|| encode_windows(b, &data, |p: &[u8]| toy.cdf(p)).unwrap())
        });
        let enc = encode_windows(b, &data, |p: &[u8]| toy.cdf(p)).unwrap();
        g.bench_function(BenchmarkId::new("decode", b), |bch| {
            let mut out = Vec::with_capacity(N);
            bch.iter(|| {
                out.clear();
                decode_windows(b, &enc.codes, &mut out, |p: &[u8]| toy.cdf(p)).unwrap();
                assert_eq!(out.len(), N);
            })
        });
    }
    g.finish();
}

fn stream(c: &mut Criterion) {
    let toy = Toy::new();
    let data = toy.sample(N);
    let mut g = c.benchmark_group("stream");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    let encode = || {
        let mut enc = StreamEncoder::new();
        let mut ctx = 256usize;
        for &x in &data {
            enc.encode(x, &toy.table[ctx]);
            ctx = x as usize;
        }
        enc.finish()
    };
    g.bench_function("encode", |bch| bch.iter(encode));
    let code = encode();
    g.bench_function("decode", |bch| {
        bch.iter(|| {
            let mut dec = StreamDecoder::new(&code);
            let mut ctx = 256usize;
            let mut sum = 0u64;
            for _ in 0..N {
                let x = dec.decode(&toy.table[ctx]);
                sum += x as u64;
                ctx = x as usize;
            }
            sum
        })
    });
    g.finish();
}

/// The integer CDF of one distribution (`CdfQuantizer::quantize`, 256 f32 probabilities to 257
/// cumulative counts): the host's cost per position when M1's probabilities arrive as floats.
fn quantize(c: &mut Criterion) {
    let q = CdfQuantizer::default();
    let mut s = 0x51_7CC1_B727_220Au64;
    let probs: Vec<[f32; 256]> = (0..1024)
        .map(|_| {
            let mut p = [0f32; 256];
            p.iter_mut()
                .for_each(|x| *x = (xorshift(&mut s) % 1000 + 1) as f32 * 1e-6);
            p[(xorshift(&mut s) % 256) as usize] += 0.6;
            let sum: f32 = p.iter().sum();
            p.iter_mut().for_each(|x| *x /= sum);
            p
        })
        .collect();
    let mut g = c.benchmark_group("cdf");
    g.throughput(Throughput::Elements(probs.len() as u64));
    g.bench_function("quantize", |bch| {
        bch.iter(|| {
            probs
                .iter()
                .map(|p| q.quantize(p).unwrap().freq(65))
                .sum::<u32>()
        })
    });
    g.finish();
}

criterion_group!(benches, window, stream, quantize);
criterion_main!(benches);
