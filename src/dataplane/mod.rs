//! The data plane: listeners, the inbound and outbound sides of each sidecar, gateways,
//! upstream connection pools, and Envoy-compatible failure handling.

pub mod addr_map;
pub mod admission;
pub mod body;
pub mod clock;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod h1;
pub mod h1_server;
pub mod headers;
pub mod inbound;
pub mod listen;
pub mod local_snapshot;
pub mod outbound;
pub mod pool;
pub mod resolve;
pub mod rewind;
pub mod sni;
pub mod tcp;
pub mod workers;
