//! duet-lake
