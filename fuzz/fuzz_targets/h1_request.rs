//! The in-task HTTP/1.1 server's request head parser, with the RFC 9112 target/Host checks,
//! at Envoy's 60 KiB limit and at a small one.
#![no_main]
use devmesh::dataplane::h1_server::{Next, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for limit in [60 * 1024, 64] {
        if let Next::Serve(req, head, body, _) = parse(data, limit) {
            assert!(head <= data.len() && head <= limit);
            assert!(body <= devmesh::dataplane::h1_server::MAX_BODY);
            let _ = devmesh::dataplane::headers::authority(&req);
        }
    }
});
