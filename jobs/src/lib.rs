//! duet-jobs
