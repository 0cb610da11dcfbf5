//! Tidewater's integration tests: one binary, one module per area.

mod cli;
mod common;
mod files;
mod frame;
mod options;
mod query;
mod stateless;
