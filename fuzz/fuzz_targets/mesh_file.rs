//! The mesh file (`devmesh.yaml`): any text gives a mesh or located diagnostics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut diags = devmesh::config::diag::Diagnostics::new();
    let _ = devmesh::config::mesh::load_text(std::path::Path::new("/nonexistent/devmesh.yaml"), text, &mut diags);
    for d in diags.sorted() {
        let _ = d.to_string();
    }
});
