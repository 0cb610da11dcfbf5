//! Tidewater's integration tests: one binary, one module per area.

// A test that meets an unexpected error should stop right there, loudly.
#![allow(clippy::unwrap_used)]

mod aggregation;
mod chains;
mod checkpoint;
mod cli;
mod common;
mod crash;
mod database;
mod database_timeouts;
mod decode;
mod examples;
mod file_sink;
mod files;
mod frame;
mod options;
mod properties;
mod query;
mod ranges;
mod shell;
mod sinks;
mod slt;
mod socket;
mod stateless;
