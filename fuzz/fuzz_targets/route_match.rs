//! Route matching: a VirtualService's `http[].match` (any YAML) compiled as the snapshot
//! compiles it, against a request built from the rest of the input (method, path, headers).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The YAML, then a line `---request---`, then a request head.
    let (yaml, request) = text.split_once("\n---request---\n").unwrap_or((text, "GET / HTTP/1.1\r\n\r\n"));
    let mut diags = devmesh::config::diag::Diagnostics::new();
    let resources = devmesh::config::load::text("fuzz.yaml".into(), yaml, "default", &mut diags);
    let Some(req) = (match devmesh::dataplane::h1_server::parse(request.as_bytes(), 60 * 1024) {
        devmesh::dataplane::h1_server::Next::Serve(req, ..) => Some(req),
        _ => None,
    }) else {
        return;
    };
    let labels = Default::default();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let view = devmesh::model::routes::RequestView {
        method: req.method().as_str(),
        scheme: "http",
        authority: req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or(""),
        path,
        headers: req.headers(),
        port: 80,
        source_labels: &labels,
        source_namespace: "default",
        gateway: None,
    };
    for r in &resources {
        if let devmesh::config::istio::Spec::VirtualService(vs) = &r.spec {
            for route in &vs.http {
                for m in &route.matches {
                    let compiled = devmesh::model::compile::http::compile_match(m, "default");
                    let _ = compiled.matches(&view);
                }
            }
        }
    }
});
