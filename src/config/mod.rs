//! Configuration: reading YAML with positions, the mesh file, Istio resources, validation.

pub mod diag;
pub mod yaml;
