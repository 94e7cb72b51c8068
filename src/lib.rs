//! devmesh as a library: every module of the binary (`main.rs` is only the command line), so
//! the fuzz targets in `fuzz/` reach the parsers they exercise.

#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod identity;
pub mod model;
pub mod supervisor;
pub mod telemetry;
