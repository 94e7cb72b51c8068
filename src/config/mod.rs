//! Configuration: reading YAML with positions, the mesh file, Istio resources, validation.

pub mod diag;
pub mod duration;
pub mod istio;
pub mod load;
pub mod mesh;
pub mod names;
pub mod source;
pub mod yaml;
