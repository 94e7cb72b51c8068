//! `devmesh proxy-config routes|clusters|endpoints|listeners WORKLOAD [-o json]`: what a
//! sidecar or gateway does with the running configuration, as tables like istioctl's.

use std::process::ExitCode;

use anyhow::{Result, bail};
use serde_json::Value;

use super::get::{render, s};
use super::{Output, ProxyConfigArgs, ProxyConfigWhat};

fn destinations(v: &Value) -> String {
    match v["action"].as_str() {
        Some("redirect") => "redirect".into(),
        Some("direct_response") => format!("direct response {}", s(&v["status"])),
        _ => v["destinations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let w = d["weight"].as_f64().unwrap_or(0.0);
                if (w - 100.0).abs() < f64::EPSILON { s(&d["cluster"]) } else { format!("{} {w}%", s(&d["cluster"])) }
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

pub fn table(what: ProxyConfigWhat, items: &[Value]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    match what {
        ProxyConfigWhat::Routes => {
            rows.push(["SERVICE", "ROUTE", "MATCH", "DESTINATIONS", "VIRTUAL SERVICE"].map(String::from).to_vec());
            for r in items {
                let port = r["port"].as_u64().unwrap_or(0);
                let service = if port == 0 { s(&r["service"]) } else { format!("{}:{port}", s(&r["service"])) };
                let matches =
                    r["match"].as_array().map(|m| m.iter().map(s).collect::<Vec<_>>().join(" || ")).unwrap_or_default();
                let vs = match r["virtual_service"].as_str() {
                    Some("") | None => "-".to_string(),
                    Some(vs) => vs.to_string(),
                };
                rows.push(vec![service, s(&r["route"]), matches, destinations(r), vs]);
            }
        }
        ProxyConfigWhat::Clusters => {
            rows.push(
                ["SERVICE FQDN", "PORT", "SUBSET", "LB", "TLS", "ENDPOINTS", "DESTINATION RULE"]
                    .map(String::from)
                    .to_vec(),
            );
            for c in items {
                let lb = match &c["lb"] {
                    Value::String(l) => l.clone(),
                    other => format!("{} ({})", s(&other["algorithm"]), s(&other["hash_key"]).replace('"', "")),
                };
                let eps = if c["missing_subset"] == true {
                    "no such subset".into()
                } else {
                    format!("{}/{}", s(&c["healthy"]), s(&c["endpoints"]))
                };
                rows.push(vec![
                    s(&c["host"]),
                    s(&c["port"]),
                    s(&c["subset"]),
                    lb,
                    s(&c["transport"]),
                    eps,
                    s(&c["destination_rule"]),
                ]);
            }
        }
        ProxyConfigWhat::Endpoints => {
            rows.push(["ENDPOINT", "STATUS", "INSTANCE", "CLUSTER"].map(String::from).to_vec());
            for e in items {
                rows.push(vec![s(&e["endpoint"]), s(&e["status"]), s(&e["instance"]), s(&e["cluster"])]);
            }
        }
        ProxyConfigWhat::Listeners => {
            rows.push(["ADDRESS", "DIRECTION", "WHAT"].map(String::from).to_vec());
            for l in items {
                rows.push(vec![s(&l["address"]), s(&l["kind"]), s(&l["what"])]);
            }
        }
    }
    if rows.len() == 1 {
        return "No resources found.\n".into();
    }
    render(rows)
}

pub async fn run(args: &ProxyConfigArgs) -> Result<ExitCode> {
    let what = match args.what {
        ProxyConfigWhat::Routes => "routes",
        ProxyConfigWhat::Clusters => "clusters",
        ProxyConfigWhat::Endpoints => "endpoints",
        ProxyConfigWhat::Listeners => "listeners",
    };
    let client = args.admin.client();
    let reply = client
        .request(http::Method::GET, &format!("/proxy-config/{what}/{}", args.workload), bytes::Bytes::new())
        .await?;
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    if reply.status != 200 {
        let msg = v["errors"].as_array().and_then(|e| e.first()).map(s).unwrap_or_else(|| reply.status.to_string());
        bail!("{msg}");
    }
    match args.output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&v)?),
        Some(Output::Yaml) => print!("{}", serde_saphyr::to_string(&v)?),
        _ => print!("{}", table(args.what, v.as_array().map(Vec::as_slice).unwrap_or_default())),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn route_table_shows_weights_and_origin() {
        let items = vec![json!({
            "service": "reviews.default.svc.cluster.local", "port": 9080, "route": "default/reviews#0",
            "virtual_service": "default/reviews", "index": 0, "match": ["header[end-user]=jason"], "action": "route",
            "destinations": [{"cluster": "outbound|9080|v1|reviews.default.svc.cluster.local", "weight": 50.0},
                             {"cluster": "outbound|9080|v3|reviews.default.svc.cluster.local", "weight": 50.0}]
        })];
        let t = table(ProxyConfigWhat::Routes, &items);
        assert!(t.contains("reviews.default.svc.cluster.local:9080"), "{t}");
        assert!(t.contains("outbound|9080|v1|reviews.default.svc.cluster.local 50%, outbound|9080|v3|reviews.default.svc.cluster.local 50%"), "{t}");
        assert!(t.contains("default/reviews#0") && t.trim_end().ends_with("default/reviews"), "{t}");
    }
}
