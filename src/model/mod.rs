//! The compiled model: topology, host resolution, clusters, route tables, the snapshot.

pub mod cluster;
pub mod compile;
pub mod hosts;
pub mod lb;
pub mod policy;
pub mod registry;
pub mod routes;
pub mod scope;
pub mod snapshot;
pub mod support;
pub mod topology;
