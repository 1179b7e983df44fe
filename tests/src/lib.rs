//! End-to-end tests for Duet.
