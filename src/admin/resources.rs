//! `/resources`: the Istio resources of the running mesh, kubectl style. `GET` lists them
//! (`?kind=&name=&namespace=`), `POST` applies YAML (raw YAML with `?source=NAME`, or JSON
//! `{"files": [{"name", "text"}]}`; `?dryRun=true` checks without changing anything),
//! `DELETE /resources/{kind}/{namespace}/{name}` (or `/{kind}/{name}` in the mesh namespace)
//! removes one.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::istio::{Kind, ResourceKey};
use crate::control::ControlPlane;
use crate::control::store::{Entry, Source};
use crate::telemetry::access_log::rfc3339;

/// Query parameters (`a=b&c=d`, percent-decoding `%XX` and `+`).
pub fn query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

pub fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// One resource as `kubectl get -o json` shows it.
pub fn to_json(e: &Entry) -> Value {
    let mut v = serde_json::to_value(&e.resource).unwrap_or(Value::Null);
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("creationTimestamp".into(), json!(rfc3339(e.created)));
        meta.insert("generation".into(), json!(e.generation));
    }
    if let Some(obj) = v.as_object_mut() {
        let source = match &e.source {
            Source::File(f) => f.to_string_lossy().into_owned(),
            Source::Api => "api".into(),
        };
        obj.insert("source".into(), json!(source));
    }
    v
}

pub fn list(cp: &ControlPlane, q: &[(String, String)]) -> Result<Value, String> {
    let kind = match param(q, "kind") {
        Some(k) => Some(Kind::lookup(k).ok_or_else(|| format!("the server doesn't have a resource type \"{k}\""))?),
        None => None,
    };
    let name = param(q, "name");
    let ns = param(q, "namespace");
    let items: Vec<Value> = cp
        .entries()
        .iter()
        .filter(|e| kind.is_none_or(|k| e.resource.kind == k))
        .filter(|e| name.is_none_or(|n| e.resource.metadata.name == n))
        .filter(|e| ns.is_none_or(|n| e.resource.metadata.namespace == n))
        .map(to_json)
        .collect();
    Ok(Value::Array(items))
}

#[derive(Deserialize)]
struct Files {
    files: Vec<FileText>,
}

#[derive(Deserialize)]
struct FileText {
    name: String,
    text: String,
}

/// Applies a body; `(status, reply)`.
pub fn apply(cp: &ControlPlane, q: &[(String, String)], json_body: bool, body: &[u8]) -> (u16, Value) {
    let sources: Vec<(Arc<str>, String)> = if json_body {
        match serde_json::from_slice::<Files>(body) {
            Ok(f) => f.files.into_iter().map(|f| (Arc::from(f.name), f.text)).collect(),
            Err(e) => return (400, json!({"errors": [format!("invalid JSON body: {e}")]})),
        }
    } else {
        let name = param(q, "source").unwrap_or("STDIN");
        vec![(Arc::from(name), String::from_utf8_lossy(body).into_owned())]
    };
    let dry_run = matches!(param(q, "dryRun"), Some("true" | "1" | "All"));
    match cp.apply(&sources, dry_run) {
        Ok(o) => (
            200,
            json!({
                "results": o.changes.iter().map(|c| json!({"line": c.line(), "kind": c.key.kind, "namespace": c.key.namespace, "name": c.key.name, "action": c.action})).collect::<Vec<_>>(),
                "warnings": o.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                "version": o.version,
                "took_us": o.took.as_micros() as u64,
                "dry_run": dry_run,
            }),
        ),
        Err(diags) => (422, json!({"errors": diags.iter().map(|d| d.to_string()).collect::<Vec<_>>()})),
    }
}

/// `DELETE /resources/{kind}/{namespace}/{name}` or `/resources/{kind}/{name}`.
pub fn delete(cp: &ControlPlane, rest: &str) -> (u16, Value) {
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (kind, ns, name) = match parts.as_slice() {
        [k, ns, n] => (*k, ns.to_string(), *n),
        [k, n] => (*k, cp.namespace().to_string(), *n),
        _ => return (400, json!({"errors": ["expected /resources/{kind}/{namespace}/{name}"]})),
    };
    let Some(kind) = Kind::lookup(kind) else {
        return (404, json!({"errors": [format!("the server doesn't have a resource type \"{kind}\"")]}));
    };
    let key = ResourceKey { kind, namespace: ns, name: name.to_string() };
    let (outcome, missing) = cp.delete(std::slice::from_ref(&key));
    if !missing.is_empty() {
        let plural = kind.plural();
        return (404, json!({"errors": [format!("{plural}.{} \"{}\" not found", kind.group(), key.name)]}));
    }
    (
        200,
        json!({
            "results": outcome.changes.iter().map(|c| json!({"line": c.line(), "action": c.action})).collect::<Vec<_>>(),
            "version": outcome.version,
            "took_us": outcome.took.as_micros() as u64,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q = query(Some("kind=vs&source=bookinfo%2Fnetworking%2Fa.yaml&dryRun=true&x"));
        assert_eq!(param(&q, "kind"), Some("vs"));
        assert_eq!(param(&q, "source"), Some("bookinfo/networking/a.yaml"));
        assert_eq!(param(&q, "x"), Some(""));
        assert_eq!(decode("a+b%zz%4"), "a b%zz%4");
    }
}
