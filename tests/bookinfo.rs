//! The bookinfo sample end to end through the `devmesh` binary, using the project's own
//! `bookinfo/devmesh.yaml` (with the gateway on a free port and the debug build of the
//! services) and `bookinfo/networking/`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The bookinfo binary (debug), built once if this test run has not built it.
fn bookinfo_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin = devmesh_bin().parent().unwrap().join("bookinfo");
            let status = cargo_build(&["-p", "bookinfo"]).current_dir(root()).status().unwrap();
            assert!(status.success(), "cargo build -p bookinfo failed");
            bin
        })
        .clone()
}

/// `bookinfo/devmesh.yaml` as a user runs it, minus the release build: the services come
/// from this test build and the gateway listens on a free port.
fn start_bookinfo(extra_config: &[&str]) -> Mesh {
    let original = std::fs::read_to_string(root().join("bookinfo/devmesh.yaml")).unwrap();
    let networking = root().join("bookinfo/networking");
    let mut config = vec![networking.join("bookinfo-gateway.yaml")];
    config.extend(extra_config.iter().map(|f| networking.join(f)));
    let mut yaml = String::new();
    let mut skipping = false;
    for line in original.lines() {
        if line.starts_with("build:") || line.starts_with("config:") {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with("  -") {
            continue;
        }
        skipping = false;
        yaml.push_str(&line.replace("../target/release/bookinfo", &bookinfo_bin().to_string_lossy()));
        yaml.push('\n');
    }
    yaml.push_str("config:\n");
    for c in config {
        yaml.push_str(&format!("  - {}\n", c.display()));
    }
    yaml.push_str("gateways:\n  istio-ingressgateway:\n    labels: {istio: ingressgateway}\n    ports: {80: 0}\n");
    let m = Mesh::start(&yaml, &[]);
    m.wait_ready();
    m
}

/// Which reviews version rendered the page, and the star colours it shows.
fn reviews_on(page: &str) -> (String, BTreeSet<String>) {
    let served =
        page.split("Reviews served by: <u>").nth(1).and_then(|r| r.split("</u>").next()).unwrap_or("").to_string();
    let colours = page
        .match_indices("class=\"text-")
        .map(|(i, _)| page[i + 12..].split('-').next().unwrap_or("").to_string())
        .collect();
    (served, colours)
}

fn log_of(m: &Mesh, workload: &str) -> String {
    std::fs::read_to_string(m.state_dir().join(format!("logs/{workload}.log"))).unwrap_or_default()
}

#[test]
fn productpage_through_the_gateway_round_robins_the_three_reviews() {
    let m = start_bookinfo(&[]);
    let gw = m.gateway();
    let page = http(gw, Req::get("/productpage").host("bookinfo.local"));
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(page.header("server"), Some("istio-envoy"));
    let html = page.text();
    assert!(html.contains("<h1 id=\"title\">The Comedy of Errors</h1>"), "{html}");
    assert_eq!(html.matches("<blockquote>").count(), 2, "two reviews");
    assert!(
        html.contains("<dt>ISBN-10:</dt><dd>1234567890</dd>")
            && html.contains("<dt>Publisher:</dt><dd>PublisherA</dd>")
    );
    assert!(html.contains("Sign in"));

    // With no VirtualService for reviews, round robin over the three versions.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for _ in 0..30 {
        let r = http(gw, Req::get("/productpage"));
        assert_eq!(r.status, 200);
        let (served, colours) = reviews_on(&r.text());
        seen.entry(served).or_default().extend(colours);
    }
    let versions: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(versions, ["reviews-v1", "reviews-v2", "reviews-v3"], "{seen:?}");
    assert!(seen["reviews-v1"].is_empty(), "v1 shows no stars");
    assert_eq!(seen["reviews-v2"], ["black".to_string()].into(), "v2 shows black stars");
    assert_eq!(seen["reviews-v3"], ["red".to_string()].into(), "v3 shows red stars");

    // Only the gateway's routes are exposed: `/` belongs to productpage but is not routed.
    assert_eq!(http(gw, Req::get("/")).status, 404);
    let css = http(gw, Req::get("/static/bookinfo.css"));
    assert_eq!((css.status, css.header("content-type")), (200, Some("text/css")));
}

#[test]
fn signed_in_user_is_shown_and_sent_downstream_as_end_user() {
    let m = start_bookinfo(&[]);
    let gw = m.gateway();
    let login = http(
        gw,
        Req::post("/login")
            .header("referer", "http://bookinfo.local/productpage")
            .header("content-type", "application/x-www-form-urlencoded")
            .with_body("username=jason&passwd=secret"),
    );
    assert_eq!(login.status, 302);
    assert_eq!(login.header("location"), Some("http://bookinfo.local/productpage"));
    let cookie = login.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("session="));
    // Enough pages for every reviews version to answer once.
    let mut pages = Vec::new();
    for _ in 0..3 {
        let r = http(gw, Req::get("/productpage").header("cookie", &cookie).header("x-request-id", "jason-request"));
        assert_eq!(r.status, 200);
        pages.push(r.text());
    }
    assert!(pages.iter().all(|p| p.contains("Signed in as <b id=\"signed-in-user\">jason</b>")));
    // Seen at the services: productpage added end-user, reviews forwarded it to ratings.
    let reviews_logs: String = ["reviews-v1", "reviews-v2", "reviews-v3"].iter().map(|w| log_of(&m, w)).collect();
    assert!(reviews_logs.contains("GET /reviews/0 200 end-user=jason x-request-id=jason-request"), "{reviews_logs}");
    assert!(log_of(&m, "details-v1").contains("GET /details/0 200 end-user=jason x-request-id=jason-request"));
    assert!(
        log_of(&m, "ratings-v1").contains("GET /ratings/0 200 end-user=jason"),
        "v2/v3 pass end-user on to ratings"
    );
    let logout = http(gw, Req::get("/logout").header("cookie", &cookie));
    assert_eq!(logout.status, 302);
    assert!(logout.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[test]
fn product_api_through_the_mesh() {
    let m = start_bookinfo(&[]);
    let gw = m.gateway();
    let list = http(gw, Req::get("/api/v1/products")).json();
    assert_eq!(list[0]["title"], "The Comedy of Errors");
    let details = http(gw, Req::get("/api/v1/products/0"));
    assert_eq!(details.status, 200);
    assert_eq!(details.json()["publisher"], "PublisherA");
    let bad = http(gw, Req::get("/api/v1/products/abc"));
    assert_eq!(bad.status, 400, "details' 400 comes back through productpage");
    assert_eq!(bad.json()["error"], "Sorry, product details are currently unavailable for this book.");
    let reviews = http(gw, Req::get("/api/v1/products/0/reviews")).json();
    assert_eq!(reviews["id"], "0");
    assert_eq!(reviews["reviews"].as_array().unwrap().len(), 2);
    let ratings = http(gw, Req::get("/api/v1/products/0/ratings")).json();
    assert_eq!(ratings, serde_json::json!({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}));
    // The services reached each other through their sidecars over mTLS.
    let log = wait_until("access log", Duration::from_secs(5), || {
        std::fs::read_to_string(m.state_dir().join("access.log")).ok().filter(|l| l.contains("GET /ratings/0"))
    });
    assert!(
        log.lines().any(|l| l.starts_with('[')
            && l.contains("productpage-v1 outbound \"GET /ratings/0")
            && l.ends_with("mtls")),
        "{log}"
    );
}

#[test]
fn the_projects_networking_files_all_validate() {
    // Istio's samples/bookinfo/networking, by name: files a user adds while following the
    // tutorial (its step 8 does) are theirs, not the test's.
    let dir = root().join("bookinfo/networking");
    let files: Vec<PathBuf> = ISTIO_NETWORKING_FILES.iter().map(|f| dir.join(f)).collect();
    for f in files {
        let (code, _, err) = devmesh(&["validate", &f.to_string_lossy()], root());
        assert_eq!(code, 0, "{}: {err}", f.display());
        assert!(!err.contains(": error:"), "{err}");
    }
    let (code, _, err) = devmesh(&["validate", "bookinfo"], root());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ok: bookinfo/devmesh.yaml (4 services, 6 workloads, "), "{err}");
}

/// The files of Istio's samples/bookinfo/networking (21), kept unchanged in bookinfo/networking.
const ISTIO_NETWORKING_FILES: [&str; 21] = [
    "bookinfo-gateway.yaml",
    "certmanager-gateway.yaml",
    "destination-rule-all-mtls.yaml",
    "destination-rule-all.yaml",
    "destination-rule-reviews.yaml",
    "egress-rule-google-apis.yaml",
    "fault-injection-details-v1.yaml",
    "virtual-service-all-v1.yaml",
    "virtual-service-details-v2.yaml",
    "virtual-service-ratings-db.yaml",
    "virtual-service-ratings-mysql-vm.yaml",
    "virtual-service-ratings-mysql.yaml",
    "virtual-service-ratings-test-abort.yaml",
    "virtual-service-ratings-test-delay.yaml",
    "virtual-service-reviews-50-v3.yaml",
    "virtual-service-reviews-80-20.yaml",
    "virtual-service-reviews-90-10.yaml",
    "virtual-service-reviews-jason-v2-v3.yaml",
    "virtual-service-reviews-test-v2.yaml",
    "virtual-service-reviews-v2-v3.yaml",
    "virtual-service-reviews-v3.yaml",
];

#[test]
fn istios_own_bookinfo_networking_files_load() {
    let dir = root().join("../shared/istio-reference/bookinfo/networking");
    if !dir.exists() {
        eprintln!("skipped: {} is absent (a fresh clone has no ../shared)", dir.display());
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut report = Vec::new();
    for f in &files {
        let (code, _, err) = devmesh(&["validate", &f.to_string_lossy()], root());
        let warnings = err.matches(": warning:").count();
        report.push(format!("{}: exit {code}, {warnings} warning(s)", f.file_name().unwrap().to_string_lossy()));
        assert_eq!(code, 0, "{} must load without error:\n{err}", f.display());
    }
    eprintln!("Istio's bookinfo networking files:\n{}", report.join("\n"));
    assert_eq!(files.len(), 21);
}

/// Signs in as `user` and returns the session cookie.
fn sign_in(m: &Mesh, user: &str) -> String {
    let login = http(
        m.gateway(),
        Req::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .with_body(&format!("username={user}&passwd=x")),
    );
    assert_eq!(login.status, 302);
    login.header("set-cookie").unwrap().split(';').next().unwrap().to_string()
}

fn page(m: &Mesh, cookie: Option<&str>) -> String {
    let mut req = Req::get("/productpage");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = http(m.gateway(), req);
    assert_eq!(r.status, 200);
    r.text()
}

/// `devmesh apply -f bookinfo/networking/<file>` (or `delete`), as the tutorial does.
fn kubectl(m: &Mesh, verb: &str, file: &str) -> String {
    let path = root().join("bookinfo/networking").join(file);
    let (code, out, err) = devmesh(&[verb, "-f", &path.to_string_lossy(), "--admin", &m.admin.to_string()], root());
    assert_eq!(code, 0, "{verb} {file}: {err}");
    out
}

fn versions(m: &Mesh, cookie: Option<&str>, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(reviews_on(&page(m, cookie)).0).or_default() += 1;
    }
    seen
}

#[test]
fn istio_request_routing_and_traffic_shifting_tasks() {
    let m = start_bookinfo(&[]);
    // Request routing: every service to v1.
    let out = kubectl(&m, "apply", "destination-rule-all.yaml");
    assert!(out.contains("destinationrule.networking.istio.io/reviews created"), "{out}");
    kubectl(&m, "apply", "virtual-service-all-v1.yaml");
    let seen = versions(&m, None, 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["reviews-v1"], "{seen:?}");
    assert!(reviews_on(&page(&m, None)).1.is_empty(), "v1: no stars");

    // Routing by user identity: jason sees v2 (black stars), everyone else v1.
    kubectl(&m, "apply", "virtual-service-reviews-test-v2.yaml");
    let jason = sign_in(&m, "jason");
    for _ in 0..10 {
        let p = page(&m, Some(&jason));
        assert_eq!(reviews_on(&p), ("reviews-v2".to_string(), ["black".to_string()].into()));
    }
    let other = sign_in(&m, "someone");
    assert_eq!(versions(&m, Some(&other), 10).keys().collect::<Vec<_>>(), ["reviews-v1"]);
    assert_eq!(versions(&m, None, 10).keys().collect::<Vec<_>>(), ["reviews-v1"]);

    // Traffic shifting: 50% to v3 (red stars), then all of it.
    kubectl(&m, "apply", "virtual-service-reviews-50-v3.yaml");
    let seen = versions(&m, None, 200);
    let v3 = seen.get("reviews-v3").copied().unwrap_or(0);
    assert_eq!(seen.len(), 2, "only v1 and v3: {seen:?}");
    assert!((70..=130).contains(&v3), "about half red: {seen:?}");
    kubectl(&m, "apply", "virtual-service-reviews-v3.yaml");
    for _ in 0..20 {
        assert_eq!(reviews_on(&page(&m, None)), ("reviews-v3".to_string(), ["red".to_string()].into()));
    }

    // Cleanup: without the VirtualServices, round robin over all three again.
    let out = kubectl(&m, "delete", "virtual-service-all-v1.yaml");
    assert!(out.contains("virtualservice.networking.istio.io/reviews deleted"), "{out}");
    assert_eq!(versions(&m, None, 30).len(), 3);
}

#[test]
fn istio_fault_injection_and_timeout_tasks() {
    let m = start_bookinfo(&[]);
    kubectl(&m, "apply", "destination-rule-all.yaml");
    kubectl(&m, "apply", "virtual-service-all-v1.yaml");
    kubectl(&m, "apply", "virtual-service-reviews-test-v2.yaml");
    let jason = sign_in(&m, "jason");

    // A 7 s delay to ratings for jason: productpage gives up on reviews after 3 s, twice.
    kubectl(&m, "apply", "virtual-service-ratings-test-delay.yaml");
    let t = std::time::Instant::now();
    let p = page(&m, Some(&jason));
    let took = t.elapsed();
    assert!(p.contains("Sorry, product reviews are currently unavailable for this book."), "{p}");
    assert!(took >= Duration::from_millis(5800) && took < Duration::from_millis(7500), "about 6 s: {took:?}");
    let t = std::time::Instant::now();
    let p = page(&m, None);
    assert!(t.elapsed() < Duration::from_secs(1) && !p.contains("Sorry"), "others are not affected");

    // An HTTP abort for jason: the ratings error shows at once.
    kubectl(&m, "apply", "virtual-service-ratings-test-abort.yaml");
    let t = std::time::Instant::now();
    let p = page(&m, Some(&jason));
    assert!(p.contains("Ratings service is currently unavailable"), "{p}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(!page(&m, None).contains("Ratings service is currently unavailable"));

    // Request timeouts: reviews → v2, ratings delayed 2 s for everyone, a 0.5 s timeout on
    // reviews: the page comes back in about 1 s (productpage tries twice) with the error.
    let admin = m.admin.to_string();
    let apply = |yaml: &str| {
        let (code, _, err) = devmesh_stdin(&["apply", "-f", "-", "--admin", &admin], root(), yaml);
        assert_eq!(code, 0, "{err}");
    };
    apply(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v2}}]\n",
    );
    apply(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - fault: {delay: {percentage: {value: 100}, fixedDelay: 2s}}\n    route: [{destination: {host: ratings, subset: v1}}]\n",
    );
    let t = std::time::Instant::now();
    let p = page(&m, None);
    assert!(t.elapsed() >= Duration::from_millis(1900), "the delay applies: {:?}", t.elapsed());
    assert!(p.contains("text-black-500"), "v2 answers, slowly");
    apply(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v2}}]\n    timeout: 0.5s\n",
    );
    let t = std::time::Instant::now();
    let p = page(&m, None);
    let took = t.elapsed();
    assert!(p.contains("Sorry, product reviews are currently unavailable for this book."), "{p}");
    assert!(took >= Duration::from_millis(950) && took < Duration::from_millis(1800), "about 1 s: {took:?}");
    m.wait_access(&["GET /reviews/0", " 504 UT "]);
}

#[test]
fn istios_own_bookinfo_networking_files_apply_to_a_running_mesh() {
    let dir = root().join("../shared/istio-reference/bookinfo/networking");
    if !dir.exists() {
        eprintln!("skipped: {} is absent (a fresh clone has no ../shared)", dir.display());
        return;
    }
    let m = start_bookinfo(&[]);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in &files {
        let (code, out, err) = devmesh(&["apply", "-f", &f.to_string_lossy(), "--admin", &m.admin.to_string()], root());
        assert_eq!(code, 0, "{} must apply: {err}", f.display());
        assert!(out.contains(".networking.istio.io/"), "{out}");
    }
    // The last word on each host wins; the page still renders through it all.
    let (code, out, _) = devmesh(&["get", "vs", "--admin", &m.admin.to_string()], root());
    assert_eq!(code, 0);
    assert!(out.contains("reviews") && out.contains("ratings"), "{out}");
    assert!(page(&m, None).contains("The Comedy of Errors"));
}
