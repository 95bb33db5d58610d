//! Namespace test kit.
