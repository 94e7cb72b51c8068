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
        let (Some(kind), Some(name)) = (&args.kind, &args.name) else {
            bail!("give -f FILE, or a KIND and a NAME (e.g. `devmesh delete vs reviews`)");
        };
        let Some(kind) = Kind::lookup(kind) else {
            bail!("the server doesn't have a resource type \"{kind}\"");
        };
        vec![ResourceKey {
            kind,
            namespace: args.namespace.clone().unwrap_or_else(|| MESH_NAMESPACE.into()),
            name: name.clone(),
        }]
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
        } else {
            failed = true;
            for e in strings(&v["errors"]) {
                eprintln!("Error from server (NotFound): {e}");
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_paths() {
        let k = ResourceKey { kind: Kind::VirtualService, namespace: "prod".into(), name: "reviews".into() };
        assert_eq!(delete_path(&k), "/resources/virtualservice/prod/reviews");
        let k = ResourceKey { kind: Kind::DestinationRule, namespace: MESH_NAMESPACE.into(), name: "r".into() };
        assert_eq!(delete_path(&k), "/resources/destinationrule/r");
    }
}
