//! A short run of the benchmark harness itself (1 round, 1 s per measurement): it must print
//! the table and write JSON with non-zero numbers for every target. The full benchmark is
//! `scripts/bench`; this only proves the harness works. Skipped, with the reason printed,
//! where wrk, nginx or haproxy are missing (`.ci/run` installs them).

mod common;

use std::process::Command;

use common::*;

fn has(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

#[test]
fn bench_harness_produces_a_complete_table() {
    if let Some(missing) = ["wrk", "nginx", "haproxy"].into_iter().find(|t| !has(t)) {
        eprintln!("skipped: {missing} is not installed (scripts/bench and .ci/run install it)");
        return;
    }
    let bin_dir = devmesh_bin().parent().unwrap().to_path_buf();
    let bench = bin_dir.join("examples/bench");
    httpbin_bin();
    // Always (re)built: `cargo test --test bench_smoke` alone does not rebuild examples, and a
    // stale harness would test old code.
    let ok = cargo_build(&["--example", "bench"]).current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap().success();
    assert!(ok, "building the bench example failed");
    assert!(bench.exists(), "no {}", bench.display());
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(&bench)
        .args(["--smoke", "--bin-dir"])
        .arg(&bin_dir)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let table: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("target")).take(8).collect();
    assert_eq!(table.len(), 8, "header and seven rows:\n{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("latest.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "direct",
            "devmesh 1-hop passthrough",
            "devmesh 1-hop inbound plaintext",
            "devmesh sidecar pair (mTLS)",
            "devmesh gateway (mTLS)",
            "nginx 1-hop",
            "haproxy 1-hop"
        ]
    );
    for r in rows {
        for key in ["c32_rps", "c1_rps", "c32_p50_ms", "c1_p50_ms", "c32_p99_ms", "vs_direct_c32", "vs_nginx_c32"] {
            assert!(r[key].as_f64().unwrap_or(0.0) > 0.0, "{key} of {}: {r}", r["target"]);
        }
        if r["target"] != "direct" {
            for key in ["cpu_s_per_1k_req", "rss_under_load_mib"] {
                assert!(r[key].as_f64().unwrap_or(0.0) > 0.0, "{key} of {}: {r}", r["target"]);
            }
        }
        assert_eq!(r["errors"], 0, "{r}");
        // c=1 with everything on one vCPU (taskset, from util-linux, is on every Debian/Ubuntu).
        if has("taskset") {
            let pinned = &r["c1_one_vcpu"];
            for key in ["rps", "p50_ms", "mean_ms"] {
                assert!(pinned[key].as_f64().unwrap_or(0.0) > 0.0, "one-vCPU {key} of {}: {r}", r["target"]);
            }
            assert!(pinned["added_mean_ms"].is_f64() && pinned["mean_minus_nginx_ms"].is_f64(), "{r}");
            assert_eq!(pinned["errors"], 0, "{r}");
        }
        let rounds = r["vs_nginx_c32_rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 1, "one paired ratio per round: {r}");
        assert!(rounds[0].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
    assert!(report["startup"]["demo"]["first_200_ms"].as_f64().unwrap_or(0.0) > 0.0, "{report}");
    // The 1000-service reload ran under traffic: both applies took effect, nothing failed.
    let reload = &report["reload_1000_services"];
    let applies = reload["applies"].as_array().unwrap();
    assert_eq!(applies.len(), 2, "{reload}");
    assert_eq!(applies[0]["resources_changed"], 3000, "{reload}");
    assert_eq!(applies[1]["resources_changed"], 1000, "{reload}");
    assert!(applies.iter().all(|a| a["compile_and_swap_ms"].as_f64().unwrap_or(0.0) > 0.0), "{reload}");
    assert!(reload["requests"].as_f64().unwrap_or(0.0) > 0.0, "{reload}");
    assert_eq!(reload["failed_requests"], 0, "{reload}");
    assert!(stdout.contains("reload 1 (1000 services, 5000 routes"), "{stdout}");
    if has("taskset") {
        assert!(stdout.contains("c=1 with wrk, the proxy and the app on one vCPU"), "{stdout}");
    }
}
