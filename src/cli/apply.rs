//! `devmesh apply -f FILE|DIR|-` and `devmesh delete -f FILE|-` / `devmesh delete KIND NAME`:
//! kubectl's verbs against the running mesh's admin API, with kubectl's output lines.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{ApplyArgs, DeleteArgs};
use crate::config::diag::Diagnostics;
use crate::config::istio::{Kind, ResourceKey};
use crate::config::{load, source};

/// Namespace placeholder for resources that name none: the server uses the mesh's.
const MESH_NAMESPACE: &str = "_";

/// (name for messages, text) of every `-f` argument: files, folders (their YAML files), `-`.
fn read_inputs(files: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for f in files {
        if f == Path::new("-") {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
            out.push(("STDIN".to_string(), text));
            continue;
        }
        if !f.exists() {
            bail!("the path \"{}\" does not exist", f.display());
        }
        for file in source::yaml_files(f).with_context(|| format!("reading {}", f.display()))? {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            out.push((source::display_name(&file).to_string(), text));
        }
    }
    if out.is_empty() {
        bail!("no YAML files in {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    Ok(out)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
}

pub async fn apply(args: &ApplyArgs) -> Result<ExitCode> {
    let inputs = read_inputs(&args.filename)?;
    let body =
        json!({"files": inputs.iter().map(|(name, text)| json!({"name": name, "text": text})).collect::<Vec<_>>()});
    let client = args.admin.client();
    let path = if args.dry_run { "/resources?dryRun=true" } else { "/resources" };
    let reply = client.post_json(path, Bytes::from(serde_json::to_vec(&body)?)).await?;
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    for w in strings(&v["warnings"]) {
        eprintln!("{w}");
    }
    if reply.status != 200 {
        let errors = strings(&v["errors"]);
        if errors.is_empty() {
            bail!("apply failed: {} {}", reply.status, String::from_utf8_lossy(&reply.body).trim());
        }
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!(
            "error: nothing was applied ({} error(s))",
            errors.iter().filter(|e| e.contains(": error: ")).count().max(1)
        );
        return Ok(ExitCode::from(1));
    }
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for r in v["results"].as_array().into_iter().flatten() {
        println!("{}{suffix}", r["line"].as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

fn delete_path(key: &ResourceKey) -> String {
    let kind = key.kind.name().to_ascii_lowercase();
    if key.namespace == MESH_NAMESPACE {
        format!("/resources/{kind}/{}", key.name)
    } else {
        format!("/resources/{kind}/{}/{}", key.namespace, key.name)
    }
}

pub async fn delete(args: &DeleteArgs) -> Result<ExitCode> {
    let keys: Vec<ResourceKey> = if !args.filename.is_empty() {
        let inputs = read_inputs(&args.filename)?;
        let mut diags = Diagnostics::new();
        let mut keys = Vec::new();
        for (name, text) in &inputs {
            let ns = args.namespace.as_deref().unwrap_or(MESH_NAMESPACE);
            keys.extend(load::text(Arc::from(name.as_str()), text, ns, &mut diags).iter().map(|r| r.key()));
        }
        if diags.has_errors() {
            for d in diags.sorted() {
                eprintln!("{d}");
            }
            return Ok(ExitCode::from(1));
        }
        keys
    } else {
        let Some(kind_arg) = &args.kind else {
            bail!("give -f FILE, or a KIND and NAMEs, --all or -l (e.g. `devmesh delete vs reviews ratings`)");
        };
        let Some(kind) = Kind::lookup(kind_arg) else {
            bail!("the server doesn't have a resource type \"{kind_arg}\"");
        };
        let namespace = args.namespace.clone().unwrap_or_else(|| MESH_NAMESPACE.into());
        if args.all || args.selector.is_some() {
            let selector = match &args.selector {
                Some(s) => Selector::parse(s)?,
                None => Selector::default(),
            };
            let listed = args.admin.client().get_json(&format!("/resources?kind={}", kind.plural())).await?;
            let mut keys: Vec<ResourceKey> = listed
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| args.namespace.is_none() || r["metadata"]["namespace"].as_str() == Some(namespace.as_str()))
                .filter(|r| selector.matches(&r["metadata"]["labels"]))
                .filter_map(|r| {
                    Some(ResourceKey {
                        kind,
                        namespace: r["metadata"]["namespace"].as_str()?.to_string(),
                        name: r["metadata"]["name"].as_str()?.to_string(),
                    })
                })
                .collect();
            keys.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            if keys.is_empty() {
                eprintln!("No resources found");
            }
            keys
        } else if args.names.is_empty() {
            bail!("give the NAMEs of the {} to delete, --all, or -l SELECTOR", kind.plural());
        } else {
            args.names
                .iter()
                .map(|name| ResourceKey { kind, namespace: namespace.clone(), name: name.clone() })
                .collect()
        }
    };
    let client = args.admin.client();
    let mut failed = false;
    for key in &keys {
        let reply = client.request(http::Method::DELETE, &delete_path(key), Bytes::new()).await?;
        let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        if reply.status == 200 {
            for r in v["results"].as_array().into_iter().flatten() {
                println!("{}", r["line"].as_str().unwrap_or_default());
            }
        } else if reply.status == 404 && args.ignore_not_found {
            // kubectl's --ignore-not-found: a missing resource is as good as deleted.
        } else {
            failed = true;
            for e in strings(&v["errors"]) {
                eprintln!("Error from server (NotFound): {e}");
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// A label selector as kubectl's equality-based one: `k=v`, `k==v`, `k!=v`, `k` (exists),
/// `!k` (does not), comma-separated, all required.
#[derive(Debug, Default)]
pub struct Selector(Vec<(String, Req)>);

#[derive(Debug)]
enum Req {
    Equals(String),
    NotEquals(String),
    Exists,
    Absent,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector> {
        let mut out = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, req) = if let Some((k, v)) = term.split_once("!=") {
                (k, Req::NotEquals(v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, Req::Equals(v.trim().to_string()))
            } else if let Some(k) = term.strip_prefix('!') {
                (k, Req::Absent)
            } else {
                (term, Req::Exists)
            };
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                bail!("invalid label selector {s:?}: expected key=value, key!=value, key or !key");
            }
            out.push((key.to_string(), req));
        }
        Ok(Selector(out))
    }

    /// Whether `labels` (a JSON object, or null for none) satisfies every requirement.
    pub fn matches(&self, labels: &Value) -> bool {
        self.0.iter().all(|(k, req)| {
            let v = labels.get(k).and_then(Value::as_str);
            match req {
                Req::Equals(want) => v == Some(want.as_str()),
                Req::NotEquals(no) => v != Some(no.as_str()),
                Req::Exists => v.is_some(),
                Req::Absent => v.is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_as_kubectl_reads_them() {
        let labels = serde_json::json!({"app": "web", "tier": "front"});
        let yes = |s: &str| Selector::parse(s).unwrap().matches(&labels);
        assert!(yes("app=web"));
        assert!(yes("app==web,tier"));
        assert!(yes("tier!=db,!canary"));
        assert!(!yes("app=api"));
        assert!(!yes("canary"));
        assert!(!yes("app=web,tier=back"));
        assert!(Selector::parse("").unwrap().matches(&Value::Null));
        assert!(!Selector::parse("app").unwrap().matches(&Value::Null));
        assert!(Selector::parse("a b=c").is_err());
    }

    #[test]
    fn delete_paths() {
        let k = ResourceKey { kind: Kind::VirtualService, namespace: "prod".into(), name: "reviews".into() };
        assert_eq!(delete_path(&k), "/resources/virtualservice/prod/reviews");
        let k = ResourceKey { kind: Kind::DestinationRule, namespace: MESH_NAMESPACE.into(), name: "r".into() };
        assert_eq!(delete_path(&k), "/resources/destinationrule/r");
    }
}
