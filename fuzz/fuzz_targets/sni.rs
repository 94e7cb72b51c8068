//! The TLS ClientHello reader behind SNI routing (`tls` routes, PERMISSIVE sniffing).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = devmesh::dataplane::sni::parse(data);
});
