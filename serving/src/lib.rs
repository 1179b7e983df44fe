//! duet-serving
