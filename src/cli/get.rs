//! `devmesh get KIND [NAME] [-o yaml|json|wide]`: kubectl-style listings of a running mesh.

use std::process::ExitCode;

use anyhow::{Result, bail};
use serde_json::Value;

use super::{GetArgs, Output};
use crate::config::istio::Kind;

enum What {
    Workloads,
    Services,
    Istio(Kind),
}

fn what(kind: &str) -> Option<What> {
    match kind.to_ascii_lowercase().as_str() {
        "workloads" | "workload" | "wl" | "pods" | "pod" | "po" => Some(What::Workloads),
        "services" | "service" | "svc" => Some(What::Services),
        other => Kind::lookup(other).map(What::Istio),
    }
}

pub async fn run(args: &GetArgs) -> Result<ExitCode> {
    let Some(what) = what(&args.kind) else {
        bail!(
            "the server doesn't have a resource type \"{}\" (try workloads, services, or an Istio kind such as vs, dr, gw, se)",
            args.kind
        );
    };
    let client = args.admin.client();
    let items: Vec<Value> = match &what {
        What::Workloads => match client.get_json("/workloads").await? {
            Value::Array(a) => a,
            _ => vec![],
        },
        What::Services => {
            let dump = client.get_json("/config_dump").await?;
            services(&dump)
        }
        What::Istio(kind) => match client.get_json(&format!("/resources?kind={}", kind.plural())).await? {
            Value::Array(a) => a
                .into_iter()
                .map(|mut r| {
                    // Where it came from is devmesh's business; the output applies as is.
                    if let Some(o) = r.as_object_mut() {
                        o.remove("source");
                    }
                    r
                })
                .collect(),
            _ => vec![],
        },
    };
    // kubectl lists resources in the API server's order: by namespace, then name.
    let mut items = items;
    if let What::Istio(_) = what {
        items.sort_by(|a, b| {
            let ns = |v: &Value| v["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            (ns(a), name_of(a)).cmp(&(ns(b), name_of(b)))
        });
    }
    let items: Vec<Value> = match &args.name {
        Some(n) => items.into_iter().filter(|i| name_of(i) == n.as_str()).collect(),
        None => items,
    };
    if let Some(n) = &args.name
        && items.is_empty()
    {
        bail!("{} \"{n}\" not found", args.kind);
    }
    match args.output {
        Some(Output::Json) => {
            let v = if args.name.is_some() && items.len() == 1 {
                items[0].clone()
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Some(Output::Yaml) => {
            let v = if args.name.is_some() && items.len() == 1 {
                items[0].clone()
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
            };
            print!("{}", serde_saphyr::to_string(&v)?);
        }
        wide => print!("{}", table(&what, &items, matches!(wide, Some(Output::Wide)))),
    }
    Ok(ExitCode::SUCCESS)
}

fn name_of(v: &Value) -> &str {
    v["name"].as_str().or_else(|| v["metadata"]["name"].as_str()).unwrap_or("")
}

fn services(dump: &Value) -> Vec<Value> {
    let instances = dump["topology"]["instances"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (i, s) in dump["topology"]["services"].as_array().into_iter().flatten().enumerate() {
        let mine: Vec<&Value> = instances.iter().filter(|x| x["service"] == i).collect();
        let ready = mine.iter().filter(|x| x["status"]["ready"] == true).count();
        out.push(serde_json::json!({
            "name": s["name"],
            "fqdn": s["fqdn"],
            "ports": s["ports"],
            "serviceAccount": s["service_account"],
            "endpoints": {"ready": ready, "total": mine.len()},
        }));
    }
    out
}

/// Columns padded to their widest cell, three spaces apart (kubectl's layout).
pub(super) fn render(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(c, v)| format!("{v:<w$}", w = widths[c])).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// A JSON value as a table cell (`-` for null).
pub(super) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn mib(v: &Value) -> String {
    v.as_u64().filter(|b| *b > 0).map_or("-".into(), |b| format!("{:.1}Mi", b as f64 / (1024.0 * 1024.0)))
}

fn list(v: &Value) -> String {
    v.as_array().map_or("-".into(), |a| a.iter().map(s).collect::<Vec<_>>().join(","))
}

/// kubectl's AGE: `45s`, `12m`, `3h`, `2d`, from an RFC 3339 UTC timestamp.
fn age(ts: &Value) -> String {
    let Some(t) = ts.as_str().and_then(parse_rfc3339) else { return "-".into() };
    let secs = std::time::SystemTime::now().duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `2026-11-21T10:00:00.123Z` (what the admin API writes) to a time.
fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs).ok().map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
}

fn table(what: &What, items: &[Value], wide: bool) -> String {
    let mut rows: Vec<Vec<String>>;
    match what {
        What::Workloads => {
            rows = vec![
                ["NAME", "SERVICE", "STATE", "READY", "PID", "RESTARTS", "CPU", "MEMORY", "PORTS"]
                    .iter()
                    .map(|h| h.to_string())
                    .collect(),
            ];
            if wide {
                rows[0].push("IDENTITY".into());
            }
            for w in items {
                let ports = if w["kind"] == "gateway" {
                    w["listeners"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| format!("{}→{}", s(&l["server_port"]), s(&l["address"])))
                        .collect::<Vec<_>>()
                        .join(",")
                } else {
                    w["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| format!("{}→{}", s(&p["port"]), s(&p["app"]).rsplit(':').next().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let mut row = vec![
                    s(&w["name"]),
                    if w["kind"] == "gateway" { "(gateway)".into() } else { s(&w["service"]) },
                    s(&w["state"]),
                    if w["ready"] == true { "1/1".into() } else { "0/1".into() },
                    s(&w["pid"]),
                    if w["kind"] == "gateway" { "-".into() } else { s(&w["restarts"]) },
                    w["cpu_percent"].as_f64().map_or("-".into(), |c| format!("{c:.1}%")),
                    mib(&w["memory_bytes"]),
                    ports,
                ];
                if wide {
                    row.push(s(&w["identity"]));
                }
                rows.push(row);
            }
        }
        What::Services => {
            rows = vec![vec!["NAME".into(), "PORTS".into(), "ENDPOINTS".into(), "SERVICE ACCOUNT".into()]];
            for v in items {
                let ports = v["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}/{}", s(&p["port"]), s(&p["protocol"])))
                    .collect::<Vec<_>>()
                    .join(",");
                rows.push(vec![
                    s(&v["name"]),
                    ports,
                    format!("{}/{}", s(&v["endpoints"]["ready"]), s(&v["endpoints"]["total"])),
                    s(&v["serviceAccount"]),
                ]);
            }
        }
        What::Istio(kind) => {
            let mut header = vec!["NAMESPACE".to_string(), "NAME".to_string()];
            match kind {
                Kind::VirtualService => header.extend(["GATEWAYS".into(), "HOSTS".into()]),
                Kind::DestinationRule => header.push("HOST".into()),
                Kind::ServiceEntry => header.extend(["HOSTS".into(), "LOCATION".into(), "RESOLUTION".into()]),
                _ => {}
            }
            header.push("AGE".into());
            rows = vec![header];
            for r in items {
                let mut row = vec![s(&r["metadata"]["namespace"]), s(&r["metadata"]["name"])];
                let spec = &r["spec"];
                match kind {
                    Kind::VirtualService => row.extend([list(&spec["gateways"]), list(&spec["hosts"])]),
                    Kind::DestinationRule => row.push(s(&spec["host"])),
                    Kind::ServiceEntry => {
                        row.extend([list(&spec["hosts"]), s(&spec["location"]), s(&spec["resolution"])])
                    }
                    _ => {}
                }
                row.push(age(&r["metadata"]["creationTimestamp"]));
                rows.push(row);
            }
        }
    }
    if rows.len() == 1 {
        return "No resources found.\n".into();
    }
    render(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_table() {
        let items = vec![serde_json::json!({
            "kind": "workload", "name": "reviews-v1", "service": "reviews", "state": "Ready", "ready": true,
            "pid": 42, "restarts": 1, "cpu_percent": 0.5, "memory_bytes": 3145728,
            "ports": [{"port": 9080, "app": "127.0.0.1:41000"}]
        })];
        let t = table(&What::Workloads, &items, false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAME         SERVICE   STATE   READY   PID   RESTARTS   CPU    MEMORY   PORTS"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("reviews-v1   reviews   Ready   1/1     42    1          0.5%   3.0Mi    9080→41000"),
            "{t}"
        );
        assert_eq!(table(&What::Workloads, &[], false), "No resources found.\n");
        let t = parse_rfc3339("2026-11-21T10:00:00.123Z").unwrap();
        assert_eq!(crate::telemetry::access_log::rfc3339(t).get(..19), Some("2026-11-21T10:00:00"));
        assert_eq!(age(&serde_json::json!("garbage")), "-");
    }
}
