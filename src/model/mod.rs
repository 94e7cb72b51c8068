//! The compiled model: topology, host resolution, clusters, route tables, the snapshot.

pub mod cluster;
pub mod compile;
pub mod hosts;
pub mod routes;
pub mod snapshot;
pub mod support;
pub mod topology;
