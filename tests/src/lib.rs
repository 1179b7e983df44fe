//! End-to-end tests for Duet live in `it/` (one integration binary); this library is empty.
