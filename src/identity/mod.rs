//! Identity: the mesh CA, workload certificates with SPIFFE IDs, TLS configurations.

pub mod ca;
pub mod tls;
