//! Criterion benches of the CPU backend's heaviest ops at the shapes of `tiny` and `m1-3m`
//! training: the linear layer (forward and backward) and causal attention (forward and backward);
//! and contract 3's int8 products (every kernel this machine has) at M1 coding shapes, beside the
//! f32 training product at the same shapes; and M2's batch-1 head product (65,536 outputs) with
//! int8 and 4-bit weights, whose throughput is in weight bytes read (the bound at batch 1).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use terse::backend::cpu::attention::{attention_backward, attention_forward, AttnShape};
use terse::backend::cpu::matmul::{matmul_backward, matmul_forward};
use terse::numerics::int4::{matmul_i4_with, I4Matrix, GROUP};
use terse::numerics::int8::{matmul_i8_with, I8Kernel, I8Matrix};
use terse::rng::Rng;

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

fn matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    // (rows = batch*seq, in, out): m1-3m's qkv and MLP projections at 16 x 256 tokens.
    for &(n, di, dout) in &[(4096, 256, 768), (4096, 256, 1024), (4096, 1024, 256)] {
        let (x, w, dy) = (rand(n * di, 1), rand(dout * di, 2), rand(n * dout, 3));
        let flops = 2 * n * di * dout;
        g.throughput(Throughput::Elements(flops as u64));
        let id = format!("{n}x{di}x{dout}");
        let mut y = vec![0.0; n * dout];
        g.bench_function(BenchmarkId::new("forward", &id), |b| {
            b.iter(|| matmul_forward(&mut y, &x, &w, n, di, dout))
        });
        let (mut dx, mut dw) = (vec![0.0; n * di], vec![0.0; dout * di]);
        g.throughput(Throughput::Elements(2 * flops as u64));
        g.bench_function(BenchmarkId::new("backward", &id), |b| {
            b.iter(|| matmul_backward(&mut dx, &mut dw, &dy, &x, &w, n, di, dout, false))
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    for &(batch, seq, heads) in &[(16, 256, 4), (4, 1024, 4)] {
        let s = AttnShape { batch, seq, heads };
        let d = heads * 64;
        let n = batch * seq;
        let qkv = rand(n * 3 * d, 4);
        let (mut out, mut lse) = (vec![0.0; n * d], vec![0.0; batch * heads * seq]);
        // Causal: about seq/2 keys per query, 2 x 64 multiply-adds each for scores and values.
        let flops = (batch * heads * seq * (seq + 1) / 2 * 64 * 4) as u64;
        let id = format!("b{batch}_t{seq}_h{heads}");
        g.throughput(Throughput::Elements(flops));
        g.bench_function(BenchmarkId::new("forward", &id), |b| {
            b.iter(|| attention_forward(&mut out, &mut lse, &qkv, s))
        });
        let dy = rand(n * d, 5);
        let mut dqkv = vec![0.0; n * 3 * d];
        g.throughput(Throughput::Elements(2 * flops));
        g.bench_function(BenchmarkId::new("backward", &id), |b| {
            b.iter(|| attention_backward(&mut dqkv, &dy, &out, &lse, &qkv, s))
        });
    }
    g.finish();
}

fn int8_matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("int8_matmul");
    g.sample_size(10);
    // (rows = positions coded at once, in, out): tiny's qkv, MLP up and down, and the byte head.
    for &(n, di, dout) in &[
        (256, 128, 384),
        (256, 128, 512),
        (256, 512, 128),
        (256, 128, 256),
    ] {
        let ops = (2 * n * di * dout) as u64;
        g.throughput(Throughput::Elements(ops));
        let id = format!("{n}x{di}x{dout}");
        let to_i8 = |v: Vec<f32>| -> Vec<i8> {
            v.iter()
                .map(|x| (x * 40.0).round().clamp(-127.0, 127.0) as i8)
                .collect()
        };
        let (x, w) = (to_i8(rand(n * di, 6)), to_i8(rand(dout * di, 7)));
        let m = I8Matrix::from_rows(&w, dout, di).unwrap();
        let mut y = vec![0i32; n * dout];
        for kernel in I8Kernel::available() {
            g.bench_function(BenchmarkId::new(kernel.name(), &id), |b| {
                b.iter(|| matmul_i8_with(kernel, &mut y, &x, &m))
            });
        }
        let (xf, wf) = (rand(n * di, 6), rand(dout * di, 7));
        let mut yf = vec![0.0; n * dout];
        g.bench_function(BenchmarkId::new("f32-training", &id), |b| {
            b.iter(|| matmul_forward(&mut yf, &xf, &wf, n, di, dout))
        });
    }
    g.finish();
}

fn decode_head(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_head");
    g.sample_size(20);
    let n = 65536;
    for inp in [128, 512] {
        let id = format!("1x{inp}x{n}");
        let x: Vec<i8> = (0..inp).map(|k| (k * 37 % 255) as i8 - 127).collect();
        let w: Vec<i8> = (0..n * inp).map(|k| (k * 13 % 255) as i8 - 127).collect();
        let m8 = I8Matrix::from_rows(&w, n, inp).unwrap();
        let codes: Vec<i8> = w.iter().map(|v| v >> 4).collect();
        let subs: Vec<u8> = (0..n * inp / GROUP).map(|k| (k % 255) as u8).collect();
        let m4 = I4Matrix::from_rows(&codes, &subs, &vec![1e-3; n], n, inp).unwrap();
        let (mut y8, mut y4) = (vec![0i32; n], vec![0f32; n]);
        for kernel in I8Kernel::available() {
            g.throughput(Throughput::Bytes((n * inp) as u64));
            g.bench_function(
                BenchmarkId::new(format!("int8-{}", kernel.name()), &id),
                |b| b.iter(|| matmul_i8_with(kernel, &mut y8, &x, &m8)),
            );
            g.throughput(Throughput::Bytes((n * inp * 17 / 32) as u64));
            g.bench_function(
                BenchmarkId::new(format!("int4-{}", kernel.name()), &id),
                |b| b.iter(|| matmul_i4_with(kernel, &mut y4, &x, &[1.0], &m4)),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, matmul, attention, int8_matmul, decode_head);
criterion_main!(benches);
