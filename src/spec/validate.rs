//! Semantic validation.
