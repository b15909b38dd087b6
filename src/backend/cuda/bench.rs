//! `terse bench kernels` (filled in below).
