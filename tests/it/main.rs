//! Duet's end-to-end tests: real parts on 127.0.0.1, asserted on what a user sees.

mod agreement;
mod dirty;
mod e2e;
mod faults;
mod group;
mod lagging;
mod late;
mod property;
mod restart;
mod support;
mod verify;
