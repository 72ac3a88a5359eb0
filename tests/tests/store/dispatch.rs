//! The contract of the dispatch traits (being written).
