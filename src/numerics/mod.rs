//! The numeric contract's shared pieces, defined once for every backend and for M1's exact path
//! (see `docs/numeric-contract.md`): the one exponential, the rotary tables, the head width, and
//! contract 3's exact int8 matrix products (and the
//! 4-bit-weight products M2 may decode with).
//!
//! This is the bottom layer: it imports nothing from the crate.

mod columns;
mod exp;
pub mod int4;
pub mod int8;
mod rope;
mod workers;

pub use exp::exp_contract;
pub use rope::RopeTables;
pub use workers::on_a_worker;

/// Width of every attention head, in every model and on every backend.
pub const HEAD_DIM: usize = 64;
