//! The in-task HTTP/1.1 client's upstream response parser and body decoder (content-length,
//! chunked with extensions and trailers, until-close).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for head_request in [false, true] {
        if let Ok((_, body)) = devmesh::dataplane::h1::read_response(data, head_request) {
            assert!(body <= data.len());
        }
    }
});
