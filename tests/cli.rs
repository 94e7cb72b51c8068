//! The command line: diagnostics from fixture files with exact expected output, `ca export`,
//! the verbs `--help` offers, exit codes.

mod common;

use std::path::Path;

use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn mesh_file_diagnostics_match_the_fixtures_exactly() {
    let dir = root().join("tests/fixtures/mesh");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let rel = path.strip_prefix(root()).unwrap().to_string_lossy().to_string();
        let (code, _, err) = devmesh(&["validate", &rel], root());
        let expected_path = path.with_extension("out");
        if expected_path.exists() {
            let expected = std::fs::read_to_string(&expected_path).unwrap();
            assert_eq!(err, expected, "diagnostics of {rel}");
            assert_eq!(code, 1, "{rel} has errors");
        } else {
            assert_eq!(code, 0, "{rel} is valid: {err}");
        }
        checked += 1;
    }
    assert!(checked >= 5, "fixtures missing");
}

#[test]
fn validate_checks_istio_yaml_and_a_mesh_with_its_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {regex: \"[\"}}]\n    route: [{destination: {host: reviews}}]\n    timeout: 5\n",
    )
    .unwrap();
    let (code, _, err) = devmesh(&["validate", "bad.yaml"], dir.path());
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines[0].starts_with("bad.yaml:7:27: error: \"uri\": "), "{err}");
    assert!(lines[0].ends_with("Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"));
    assert_eq!(lines[1], "bad.yaml:9:14: error: time: missing unit in duration \"5\"");

    // A mesh folder: the files it lists are checked too, and unsupported features warn.
    std::fs::write(
        dir.path().join("devmesh.yaml"),
        "config: [routes.yaml]\nservices:\n  reviews:\n    ports: [{name: http, port: 9080}]\n    workloads: [{command: [x], labels: {version: v1}}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v9}}]\n  - route: [{destination: {host: ratings}}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {}\n",
    )
    .unwrap();
    let (code, _, err) = devmesh(&["validate", "."], dir.path());
    assert_eq!(code, 0, "{err}");
    let expected = [
        "routes.yaml:14:51: warning: subset v9 of reviews.default.svc.cluster.local is not defined by any DestinationRule",
        "routes.yaml:15:5: warning: virtualService rule #1 not used (route without matches defined before)",
        "routes.yaml:15:34: warning: host ratings.default.svc.cluster.local is neither a service of the mesh nor a ServiceEntry host",
        "routes.yaml:17:1: warning: PeerAuthentication default/default is stored but not honoured yet",
    ];
    for e in expected {
        assert!(err.contains(e), "missing {e:?} in\n{err}");
    }
    assert!(err.contains("ok: devmesh.yaml (1 services, 1 workloads, 3 Istio resources)"), "{err}");
}

#[test]
fn istio_bookinfo_gateway_loads_unchanged() {
    let reference = root().join("../shared/istio-reference/bookinfo/networking/bookinfo-gateway.yaml");
    if !reference.exists() {
        eprintln!("skipped: {} is absent (no ../shared in a fresh clone)", reference.display());
        return;
    }
    let (code, _, err) = devmesh(&["validate", &reference.to_string_lossy()], root());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("error"), "{err}");
}

/// `ca export` prints the state dir's root, or the running mesh's, and never creates a CA
/// (a CA made by `ca export` would be unrelated to any mesh: curl would trust the wrong one).
#[test]
fn ca_export_prints_the_meshs_root_and_never_creates_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devmesh.yaml"), "services: {}\n").unwrap();
    let (code, pem, err) = devmesh(&["ca", "export", "--admin", "127.0.0.1:1"], dir.path());
    assert_eq!(code, 1, "{pem}");
    assert!(err.contains("no CA in") && err.contains("devmesh up"), "{err}");
    assert!(!dir.path().join(".devmesh").exists(), "nothing was created");

    // A running mesh: its state dir's root, and from any folder through its admin API.
    let m = Mesh::start(ONE_SERVICE, &[]);
    m.wait_ready();
    let on_disk = std::fs::read_to_string(m.state_dir().join("ca/root-cert.pem")).unwrap();
    let (code, pem, err) = devmesh(&["ca", "export"], m.dir.path());
    assert_eq!((code, pem.as_str()), (0, on_disk.as_str()), "{err}");
    let (code, pem, err) = devmesh(&["ca", "export", "--admin", &m.admin.to_string()], dir.path());
    assert_eq!((code, pem.as_str()), (0, on_disk.as_str()), "{err}");
    assert!(!dir.path().join(".devmesh").exists());
    let (code, _, err) =
        devmesh(&["ca", "export", "--state-dir", &dir.path().join("none").to_string_lossy()], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("no CA in"), "{err}");
}

const ONE_SERVICE: &str = "gateways: {}\nservices:\n  web:\n    ports: [{name: http, port: 8000}]\n    workloads: [{command: [\"{httpbin}\"], readiness: {http: /health}}]\n";

#[test]
fn help_offers_only_what_exists_and_usage_errors_exit_2() {
    let (code, out, _) = devmesh(&["--help"], root());
    assert_eq!(code, 0);
    let verbs: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(verbs, ["up", "down", "apply", "delete", "get", "proxy-config", "validate", "ca", "help"]);
    let (code, _, err) = devmesh(&["frobnicate"], root());
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = devmesh(&["get", "workloads", "--admin", "127.0.0.1:1"], root());
    assert_eq!(code, 1);
    assert!(err.contains("no devmesh admin API at 127.0.0.1:1"), "{err}");
}

#[test]
fn up_refuses_an_invalid_mesh_with_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("devmesh.yaml"),
        "services:\n  web:\n    ports: [{name: http, port: 80}]\n    workloads: [{comand: [x]}]\n",
    )
    .unwrap();
    let (code, _, err) = devmesh(&["up", "--headless", "--admin", "127.0.0.1:0"], dir.path());
    assert_eq!(code, 1);
    assert_eq!(err, "devmesh.yaml:4:18: error: unknown field `comand` (did you mean `command`?)\n");
}

#[test]
fn a_misspelled_verb_gets_a_suggestion_and_exit_2() {
    for (typo, verb) in [("gte", "get"), ("aply", "apply"), ("vaildate", "validate"), ("dwon", "down")] {
        let (code, _, err) = devmesh(&[typo], root());
        assert_eq!(code, 2, "{typo}");
        assert!(err.contains(&format!("tip: a similar subcommand exists: '{verb}'")), "{typo}: {err}");
    }
    let (code, _, err) = devmesh(&["zzzzzz"], root());
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand") && !err.contains("tip:"), "{err}");
}

/// A structural error (an unknown field) no longer hides the semantic errors of the same
/// resource: `validate` reports every problem in one round, as it does for mesh files.
#[test]
fn validate_reports_structural_and_semantic_errors_of_a_resource_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vs.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hostz: [x]\n  hosts: [x]\n  http:\n  - route: [{destination: {host: x}}]\n    timeout: -3s\n    retries: {attempts: -1, perTryTimeout: banana}\n",
    )
    .unwrap();
    let (code, _, err) = devmesh(&["validate", "vs.yaml"], dir.path());
    assert_eq!(code, 1);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains(": error: ")).collect();
    assert!(errors[0].starts_with("vs.yaml:5:3: error: unknown field `hostz`"), "{err}");
    assert!(errors.iter().any(|l| l.starts_with("vs.yaml:9:14: error:")), "the timeout, in the same round: {err}");
    assert!(errors.iter().any(|l| l.starts_with("vs.yaml:10:25: error: attempts cannot be negative")), "{err}");
    assert!(
        errors.iter().any(|l| l.starts_with("vs.yaml:10:44: error: time: invalid duration")),
        "perTryTimeout: {err}"
    );
    assert!(err.contains("validation failed: 4 error(s)"), "{err}");
}
