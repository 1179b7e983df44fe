//! duet-speed
