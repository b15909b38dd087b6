//! Corpus readers, byte datasets, batching and held-out splits.
