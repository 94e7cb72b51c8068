//! The admin API: a loopback HTTP server over the running mesh, and its client.

pub mod client;
pub mod proxy_config;
pub mod resources;
pub mod server;
pub mod token;
