//! Process wiring for the `duet` binary: the embedded Kafka, the event generator, the lake
//! sink, the scheduler, and starting every layer together.

pub mod app;
pub mod bench;
pub mod bench_serving;
pub mod bench_speed;
pub mod embedded;
pub mod generator;
pub mod lake_sink;
pub mod producer;
pub mod quarantine;
pub mod scheduler;
pub mod status;
pub mod supervise;
pub mod tansu;
pub mod verify;

/// The reference deployment (`config/examples/ecommerce.toml`), built in.
pub const REFERENCE_CONFIG: &str = include_str!("../../config/examples/ecommerce.toml");
