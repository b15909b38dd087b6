//! terse: train and serve language models over neurally compressed text.
//!
//! The crate is laid out as `docs/architecture.md` describes, in layers whose imports only point
//! down (`tests/layers.rs` checks it). At the bottom, `numerics` (the contract's shared
//! arithmetic), `fsio` (durable file writes), `rng`, `dynlib` (C libraries opened at run time)
//! and `dist` (the ranks of a run under MPI);
//! above them `coder` (the arithmetic coder) and `model` (configurations, the parameter arena, batches); `checkpoint` (saved models); `m1`
//! (exact inference, which coding runs) and `backend` (the compute: a CPU reference and, where a
//! GPU is present, CUDA); `data` (corpus readers, byte loaders) and `tokenize` (text into token
//! datasets, and their M2 examples); `train`, `eval`, `generate` and `compress`; on top
//! `experiment` (the paper's comparison), `demo`, `bench` and `tokenize_jobs` (what the command
//! line's commands run), and `serve` (M2 over HTTP).

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod coder;
pub mod compress;
pub mod data;
pub mod demo;
pub mod dist;
pub mod dynlib;
pub mod eval;
pub mod experiment;
pub mod fsio;
pub mod generate;
pub mod m1;
pub mod model;
pub mod numerics;
pub mod rng;
pub mod serve;
pub mod tokenize;
pub mod tokenize_jobs;
pub mod train;
