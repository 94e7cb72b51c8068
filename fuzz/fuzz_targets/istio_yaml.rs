//! Istio YAML → typed, validated resources (`devmesh apply`, `validate`, watched files): any
//! text gives resources or located diagnostics, never a panic, a hang or unbounded memory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut diags = devmesh::config::diag::Diagnostics::new();
    let resources = devmesh::config::load::text("fuzz.yaml".into(), text, "default", &mut diags);
    for d in diags.sorted() {
        let _ = d.to_string();
    }
    // Resources that load are complete enough to print back (`get -o yaml`).
    for r in &resources {
        let _ = r.key().to_string();
    }
});
