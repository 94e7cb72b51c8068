//! Istio resources: kinds and versions as the CRDs define them, the resource envelope
//! (apiVersion, kind, metadata, spec), and reading them from YAML documents.

pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod validate;
pub mod virtual_service;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::diag::{Diagnostics, Pos};
use super::names;
use super::source::Documents;
use super::yaml::{self, Node, Spanned, Value};

pub use destination_rule::DestinationRuleSpec;
pub use gateway::GatewaySpec;
pub use service_entry::{ServiceEntrySpec, SidecarSpec};
pub use virtual_service::VirtualServiceSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    Sidecar,
    EnvoyFilter,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::EnvoyFilter,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => "security.istio.io",
            _ => "networking.istio.io",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::VirtualService => "virtualservices",
            Kind::DestinationRule => "destinationrules",
            Kind::Gateway => "gateways",
            Kind::ServiceEntry => "serviceentries",
            Kind::Sidecar => "sidecars",
            Kind::EnvoyFilter => "envoyfilters",
            Kind::PeerAuthentication => "peerauthentications",
            Kind::AuthorizationPolicy => "authorizationpolicies",
            Kind::RequestAuthentication => "requestauthentications",
        }
    }

    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::VirtualService => &["vs"],
            Kind::DestinationRule => &["dr"],
            Kind::Gateway => &["gw"],
            Kind::ServiceEntry => &["se"],
            Kind::PeerAuthentication => &["pa"],
            Kind::AuthorizationPolicy => &["ap"],
            Kind::RequestAuthentication => &["ra"],
            Kind::Sidecar | Kind::EnvoyFilter => &[],
        }
    }

    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::EnvoyFilter => &["v1alpha3"],
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => &["v1", "v1beta1"],
            _ => &["v1", "v1beta1", "v1alpha3"],
        }
    }

    pub fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }

    /// kubectl-style lookup: `VirtualService`, `virtualservice`, `virtualservices`, `vs`,
    /// `virtualservices.networking.istio.io`.
    pub fn lookup(word: &str) -> Option<Kind> {
        let w = word.to_ascii_lowercase();
        let w = w.split_once('.').map_or(w.as_str(), |(k, _)| k);
        Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(w) || k.plural() == w || k.short_names().contains(&w))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    /// kubectl's `virtualservice.networking.istio.io/reviews` form (namespace omitted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}/{}", self.kind.name().to_ascii_lowercase(), self.kind.group(), self.name)
    }
}

/// Where a resource was read from.
#[derive(Clone, Debug, Serialize)]
pub struct Origin {
    pub file: Arc<str>,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    VirtualService(Arc<VirtualServiceSpec>),
    Gateway(Arc<GatewaySpec>),
    DestinationRule(Arc<DestinationRuleSpec>),
    ServiceEntry(Arc<ServiceEntrySpec>),
    Sidecar(Arc<SidecarSpec>),
    /// A kind devmesh stores and shows but does not act on yet.
    Opaque(serde_json::Value),
}

#[derive(Clone, Debug, Serialize)]
pub struct Resource {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: Spec,
    #[serde(skip)]
    pub origin: Origin,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Resource {
    pub fn key(&self) -> ResourceKey {
        ResourceKey { kind: self.kind, namespace: self.metadata.namespace.clone(), name: self.metadata.name.clone() }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<S> {
    #[allow(dead_code)]
    api_version: Option<Spanned<String>>,
    #[allow(dead_code)]
    kind: Option<Spanned<String>>,
    metadata: Option<MetadataSpec>,
    spec: Option<S>,
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct MetadataSpec {
    #[serde(rename = "$pos", default)]
    at: yaml::Loc,
    name: Option<Spanned<String>>,
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    // Tolerated so `kubectl get -o yaml` output can be applied as is.
    uid: Option<serde_json::Value>,
    resource_version: Option<serde_json::Value>,
    generation: Option<serde_json::Value>,
    creation_timestamp: Option<serde_json::Value>,
    deletion_timestamp: Option<serde_json::Value>,
    deletion_grace_period_seconds: Option<serde_json::Value>,
    generate_name: Option<serde_json::Value>,
    managed_fields: Option<serde_json::Value>,
    finalizers: Option<serde_json::Value>,
    owner_references: Option<serde_json::Value>,
    self_link: Option<serde_json::Value>,
}

/// Reads every Istio resource of the given documents. Non-Istio kinds (a Kubernetes
/// Deployment, say) are skipped with a warning; resources without a namespace get
/// `default_namespace`.
pub fn read_resources(docs: &Documents, default_namespace: &str, diags: &mut Diagnostics) -> Vec<Resource> {
    let mut out = Vec::new();
    for doc in &docs.docs {
        // kubectl's `kind: List` (what `get -o yaml` prints for several): its items, in order.
        if doc.get("kind").and_then(Node::as_str) == Some("List")
            && doc.get("apiVersion").and_then(Node::as_str) == Some("v1")
        {
            match doc.get("items").map(|i| &i.value) {
                Some(Value::Seq(items)) => {
                    out.extend(items.iter().filter_map(|d| read_resource(d, &docs.name, default_namespace, diags)))
                }
                None => {}
                Some(_) => diags.error(&docs.name, doc.pos, "`items` of a List must be a sequence of resources"),
            }
            continue;
        }
        if let Some(r) = read_resource(doc, &docs.name, default_namespace, diags) {
            out.push(r);
        }
    }
    out
}

fn read_resource(doc: &Node, file: &Arc<str>, default_namespace: &str, diags: &mut Diagnostics) -> Option<Resource> {
    if !matches!(doc.value, Value::Map(_)) {
        diags.error(file, doc.pos, format!("expected a Kubernetes resource (a mapping), found {}", doc.describe()));
        return None;
    }
    let Some(kind_node) = doc.get("kind") else {
        diags.error(file, doc.pos, "missing field `kind`");
        return None;
    };
    let Some(api_node) = doc.get("apiVersion") else {
        diags.error(file, doc.pos, "missing field `apiVersion`");
        return None;
    };
    let kind_name = kind_node.as_str().unwrap_or_default();
    let api_version = api_node.as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let Some(kind) = Kind::from_name(kind_name) else {
        if group.ends_with("istio.io") {
            diags.error(
                file,
                kind_node.pos,
                format!("no matches for kind \"{kind_name}\" in version \"{api_version}\""),
            );
        } else {
            diags.warning(
                file,
                kind_node.pos,
                format!(
                    "skipping {kind_name} ({api_version}): devmesh reads Istio resources only; services and \
                     workloads come from the mesh file"
                ),
            );
        }
        return None;
    };
    if group != kind.group() || !kind.versions().contains(&version) {
        diags.error(file, api_node.pos, format!("no matches for kind \"{kind_name}\" in version \"{api_version}\""));
        return None;
    }
    // Read leniently: a structural error (an unknown field, a wrong type) leaves a placeholder
    // and the semantic checks still run on the rest, so `validate` reports every problem of a
    // file in one round. Such a resource is checked, then dropped (it is never applied).
    let mut structural = Diagnostics::new();
    let (metadata, spec) = match kind {
        Kind::VirtualService => {
            let env: Envelope<VirtualServiceSpec> = lenient(doc, file, &mut structural)?;
            (env.metadata, Spec::VirtualService(Arc::new(env.spec.unwrap_or_default())))
        }
        Kind::Gateway => {
            let env: Envelope<GatewaySpec> = lenient(doc, file, &mut structural)?;
            (env.metadata, Spec::Gateway(Arc::new(env.spec.unwrap_or_default())))
        }
        Kind::DestinationRule => {
            let env: Envelope<DestinationRuleSpec> = lenient(doc, file, &mut structural)?;
            (env.metadata, Spec::DestinationRule(Arc::new(env.spec.unwrap_or_default())))
        }
        Kind::ServiceEntry => {
            let env: Envelope<ServiceEntrySpec> = lenient(doc, file, &mut structural)?;
            (env.metadata, Spec::ServiceEntry(Arc::new(env.spec.unwrap_or_default())))
        }
        Kind::Sidecar => {
            let env: Envelope<SidecarSpec> = lenient(doc, file, &mut structural)?;
            (env.metadata, Spec::Sidecar(Arc::new(env.spec.unwrap_or_default())))
        }
        _ => {
            let env: Envelope<serde::de::IgnoredAny> = lenient(doc, file, &mut structural)?;
            let spec = doc.get("spec").map(to_json).unwrap_or(serde_json::Value::Object(Default::default()));
            (env.metadata, Spec::Opaque(spec))
        }
    };
    let broken: Vec<Pos> = structural.iter().map(|d| d.pos).collect();
    let failed = structural.has_errors();
    diags.extend(structural);
    let Some(meta) = metadata else {
        diags.error(file, doc.pos, "missing field `metadata`");
        return None;
    };
    let Some(name) = meta.name else {
        diags.error(file, meta.at.0, "missing field `name`");
        return None;
    };
    if !names::is_dns1123_subdomain(&name) {
        diags.error(
            file,
            name.pos,
            format!(
                "metadata.name: Invalid value: {:?}: a lowercase RFC 1123 subdomain must consist of lower case \
                 alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                name.value
            ),
        );
        return None;
    }
    let namespace = match meta.namespace {
        Some(ns) => {
            if !names::is_dns1123_label(&ns) {
                diags.error(file, ns.pos, format!("metadata.namespace: Invalid value: {:?}", ns.value));
                return None;
            }
            ns.value
        }
        None => default_namespace.to_string(),
    };
    let resource = Resource {
        api_version: api_version.to_string(),
        kind,
        metadata: Metadata { name: name.value, namespace, labels: meta.labels, annotations: meta.annotations },
        spec,
        origin: Origin { file: file.clone(), pos: doc.pos },
    };
    if failed {
        // Its semantic findings, less those about a node that holds a structural error (a
        // consequence of it: no cascades), then it is left out.
        let mut semantic = Diagnostics::new();
        validate::validate(&resource, &mut semantic);
        let mut extents = std::collections::HashMap::new();
        doc.extents(&mut extents);
        for d in semantic.sorted() {
            let end = extents.get(&d.pos).copied().unwrap_or(d.pos);
            if !broken.iter().any(|p| *p == d.pos || (d.pos <= *p && *p < end)) {
                diags.push_diagnostic(d);
            }
        }
        return None;
    }
    Some(resource)
}

/// [`yaml::from_node_lenient`] for a resource's envelope: the value, with placeholders where
/// the structure was wrong (its errors in `diags`), unless nothing could be read.
fn lenient<'a, T: serde::Deserialize<'a>>(doc: &'a Node, file: &Arc<str>, diags: &mut Diagnostics) -> Option<T> {
    yaml::from_node_lenient(doc, file, diags).0
}

/// A YAML node as JSON, typing plain scalars by the YAML 1.2 core schema.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Scalar(s) if !s.plain => J::String(s.text.clone()),
        Value::Scalar(_) if node.is_null() => J::Null,
        Value::Scalar(s) => match s.text.as_str() {
            "true" | "True" | "TRUE" => J::Bool(true),
            "false" | "False" | "FALSE" => J::Bool(false),
            t => {
                if let Ok(i) = t.parse::<i64>() {
                    J::from(i)
                } else if let Some(f) =
                    t.parse::<f64>().ok().filter(|f| f.is_finite() && t.bytes().any(|b| b.is_ascii_digit()))
                {
                    J::from(f)
                } else {
                    J::String(t.to_string())
                }
            }
        },
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            J::Object(entries.iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::source::parse_documents;

    fn read(text: &str) -> (Vec<Resource>, String) {
        let mut diags = Diagnostics::new();
        let docs = parse_documents(Arc::from("r.yaml"), text, &mut diags);
        let res = read_resources(&docs, "default", &mut diags);
        (res, diags.render())
    }

    #[test]
    fn kinds_resolve_like_kubectl() {
        assert_eq!(Kind::lookup("vs"), Some(Kind::VirtualService));
        assert_eq!(Kind::lookup("VirtualServices"), Some(Kind::VirtualService));
        assert_eq!(Kind::lookup("destinationrule"), Some(Kind::DestinationRule));
        assert_eq!(Kind::lookup("gateways.networking.istio.io"), Some(Kind::Gateway));
        assert_eq!(Kind::lookup("ap"), Some(Kind::AuthorizationPolicy));
        assert_eq!(Kind::lookup("pods"), None);
        let key = ResourceKey { kind: Kind::VirtualService, namespace: "default".into(), name: "reviews".into() };
        assert_eq!(key.to_string(), "virtualservice.networking.istio.io/reviews");
    }

    #[test]
    fn reads_typed_and_opaque_kinds_and_skips_foreign_ones() {
        let (res, d) = read(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: prod}\nspec: {host: reviews}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
        );
        assert_eq!(
            d,
            "r.yaml:16:7: warning: skipping Deployment (apps/v1): devmesh reads Istio resources only; services and workloads come from the mesh file\n"
        );
        assert_eq!(res.len(), 2);
        assert_eq!(res[0].metadata.namespace, "default");
        let Spec::VirtualService(vs) = &res[0].spec else { panic!("typed") };
        assert_eq!(vs.http[0].route[0].destination.as_ref().unwrap().subset.as_ref().unwrap().value, "v1");
        assert_eq!(res[1].metadata.namespace, "prod");
        assert!(matches!(&res[1].spec, Spec::DestinationRule(dr) if dr.host.value == "reviews"));
    }

    #[test]
    fn envelope_errors_are_located() {
        let (_, d) = read(
            "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: r}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualServise\nmetadata: {name: r}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: Bad_Name}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 80}, hostz: []}]}\n",
        );
        assert_eq!(
            d,
            "r.yaml:1:13: error: no matches for kind \"VirtualService\" in version \"networking.istio.io/v2\"\n\
             r.yaml:6:7: error: no matches for kind \"VirtualServise\" in version \"networking.istio.io/v1\"\n\
             r.yaml:11:18: error: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character\n\
             r.yaml:16:25: error: missing field `protocol`\n\
             r.yaml:16:25: error: port name must be set: missing field `name`\n\
             r.yaml:16:39: error: unknown field `hostz` (did you mean `hosts`?)\n",
            "the port's own errors come in the same round as the server's unknown field"
        );
    }
}
