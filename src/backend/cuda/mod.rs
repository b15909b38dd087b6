//! CUDA backend: device discovery and embedded kernels.
