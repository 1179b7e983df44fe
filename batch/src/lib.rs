//! duet-batch
