//! The contract of the iam traits (being written).
