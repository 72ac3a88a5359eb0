//! The contract of the builds traits (being written).
