//! terse: train and serve language models over neurally compressed text.
//!
//! The crate is laid out as `docs/architecture.md` describes: `model` holds configurations and the
//! parameter arena, `backend` the compute (a CPU reference and, where a GPU is present, CUDA),
//! `data` the corpus readers and batching, `train` the optimiser, loop and checkpoints, `eval` the
//! scoring; `m1` and `coder` turn text into compressed tokens (`tokenize`, `compress`) and
//! `generate` turns M2's samples back into text. On top: `experiment` (the paper's comparison),
//! `demo`, `bench` and `tokenize_jobs` (what the command line's commands run).

pub mod backend;
pub mod bench;
pub mod coder;
pub mod compress;
pub mod data;
pub mod demo;
pub mod eval;
pub mod experiment;
pub mod generate;
pub mod m1;
pub mod model;
pub mod rng;
pub mod tokenize;
pub mod tokenize_jobs;
pub mod train;
