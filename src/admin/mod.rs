//! The admin API: a loopback HTTP server over the running mesh, and its client.

pub mod client;
pub mod server;
