//! The mesh file (`devmesh.yaml`, DESIGN.md §2): its schema, checks, and the resolved [`Mesh`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::diag::{Diagnostics, Pos};
use super::names;
use super::source;
use super::yaml::{self, Loc, OrderedMap, Spanned};

// --- Schema, as written by the user. ---------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshFileSpec {
    #[serde(rename = "$pos", default)]
    at: Loc,
    namespace: Option<Spanned<String>>,
    mesh_config: Option<MeshConfigSpec>,
    #[serde(default)]
    build: Vec<Spanned<String>>,
    #[serde(default)]
    config: Vec<Spanned<String>>,
    gateways: Option<OrderedMap<Spanned<String>, GatewaySpec>>,
    services: Option<OrderedMap<Spanned<String>, ServiceSpec>>,
    proxy: Option<ProxySpec>,
    access_log: Option<AccessLogSpec>,
}

/// Limits of every listener (sidecars, gateways), Envoy's defaults where Envoy has one.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProxySpec {
    request_headers_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    stream_idle_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    max_request_headers_kb: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccessLogSpec {
    max_size: Option<Spanned<String>>,
    keep: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfigSpec {
    outbound_traffic_policy: Option<OutboundTrafficPolicySpec>,
}

#[derive(Debug, Deserialize)]
struct OutboundTrafficPolicySpec {
    mode: Option<OutboundMode>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    #[default]
    AllowAny,
    RegistryOnly,
}

#[derive(Debug, Deserialize)]
struct GatewaySpec {
    #[serde(rename = "$pos", default)]
    at: Loc,
    labels: Option<OrderedMap<Spanned<String>, Spanned<String>>>,
    ports: Option<OrderedMap<Spanned<i64>, Spanned<i64>>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(rename = "$pos", default)]
    at: Loc,
    #[serde(default)]
    ports: Vec<PortSpec>,
    service_account: Option<Spanned<String>>,
    #[serde(default)]
    workloads: Vec<WorkloadSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortSpec {
    #[serde(rename = "$pos", default)]
    at: Loc,
    name: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    app_protocol: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
struct WorkloadSpec {
    #[serde(rename = "$pos", default)]
    at: Loc,
    name: Option<Spanned<String>>,
    #[serde(default)]
    labels: OrderedMap<Spanned<String>, Spanned<String>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
    image: Option<Spanned<String>>,
    #[serde(default)]
    env: OrderedMap<Spanned<String>, String>,
    replicas: Option<Spanned<i64>>,
    readiness: Option<Spanned<ReadinessSpec>>,
    restart: Option<RestartPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
enum ReadinessSpec {
    Http(String),
    Tcp(bool),
    Exec(Vec<String>),
}

// --- The resolved mesh. ----------------------------------------------------------------------

/// Application protocol of a service port, selected as Istio does (`appProtocol`, else the
/// port name's prefix); `Unknown` means the sidecar sniffs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Mysql,
    Redis,
    Unknown,
}

impl Protocol {
    /// Parses a protocol name (case-insensitive), as Istio's `protocol.Parse`.
    pub fn parse(name: &str) -> Protocol {
        match name.to_ascii_lowercase().as_str() {
            "http" | "http_proxy" | "kubernetes.io/ws" | "kubernetes.io/wss" => Protocol::Http,
            "http2" | "kubernetes.io/h2c" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "mysql" => Protocol::Mysql,
            "redis" => Protocol::Redis,
            _ => Protocol::Unknown,
        }
    }

    /// From a Service port: `appProtocol` wins, else the name up to the first `-`.
    pub fn for_port(name: Option<&str>, app_protocol: Option<&str>) -> Protocol {
        if let Some(p) = app_protocol.map(Protocol::parse).filter(|p| *p != Protocol::Unknown) {
            return p;
        }
        match name {
            Some(n) => Protocol::parse(n.split('-').next().unwrap_or(n)),
            None => Protocol::Unknown,
        }
    }

    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// Whether the application itself speaks HTTP/2 (cleartext, prior knowledge) on this port.
    pub fn app_speaks_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Mesh {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub namespace: String,
    pub outbound_mode: OutboundMode,
    pub build: Vec<String>,
    pub config: Vec<PathBuf>,
    pub gateways: Vec<GatewayDef>,
    pub services: Vec<ServiceDef>,
    pub proxy: ProxyLimits,
    pub access_log: AccessLogLimits,
}

/// What every proxy listener allows a downstream connection (`proxy:` in the mesh file).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ProxyLimits {
    /// From a connection's start (first request) or a request's first byte (later ones) to the
    /// end of its head (and small body): Envoy's `request_headers_timeout`.
    pub request_headers_timeout: std::time::Duration,
    /// A kept-alive connection with no request in flight is closed after this (Istio: 1 h).
    pub idle_timeout: std::time::Duration,
    /// A connection that moves no bytes either way for this long is closed, requests in flight
    /// or not (Envoy's `stream_idle_timeout`, 5 min).
    pub stream_idle_timeout: std::time::Duration,
    /// Downstream connections from outside the mesh, across all listeners; `None`: derived
    /// from the open-file limit at start.
    pub max_connections: Option<u32>,
    /// Envoy's `max_request_headers_kb` (60): a larger request head gets 431, a larger
    /// upstream response head 502.
    pub max_request_headers_kb: u32,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            request_headers_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(3600),
            stream_idle_timeout: std::time::Duration::from_secs(300),
            max_connections: None,
            max_request_headers_kb: 60,
        }
    }
}

/// Rotation of the access log (`accessLog:` in the mesh file).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AccessLogLimits {
    /// Rotated when it would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (`access.log.1` newest).
    pub keep: u32,
}

impl Default for AccessLogLimits {
    fn default() -> Self {
        AccessLogLimits { max_bytes: 100 * 1024 * 1024, keep: 3 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GatewayDef {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// (Gateway server port, local port on 127.0.0.1; 0 = any free port)
    pub ports: Vec<(u16, u16)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceDef {
    pub name: String,
    pub ports: Vec<PortDef>,
    pub service_account: String,
    pub workloads: Vec<WorkloadDef>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortDef {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadDef {
    pub name: String,
    /// Includes `app: <service>`.
    pub labels: BTreeMap<String, String>,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub replicas: u32,
    pub readiness: Readiness,
    pub restart: RestartPolicy,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    Tcp,
    Http(String),
    Exec(Vec<String>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    #[default]
    OnFailure,
    Never,
}

/// A Kubernetes-style byte quantity: `4096`, `64Ki`, `100Mi`, `1Gi` (or `k`, `M`, `G`).
fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    let unit: u64 = match &s[digits..] {
        "" => 1,
        "k" | "K" => 1000,
        "Ki" => 1024,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}

pub const DEFAULT_GATEWAY: &str = "istio-ingressgateway";

/// Where `up`/`validate` find a mesh: a file, or a folder holding `devmesh.yaml`.
pub fn locate(path: &Path) -> PathBuf {
    if path.is_dir() {
        let yml = path.join("devmesh.yml");
        if !path.join("devmesh.yaml").exists() && yml.exists() {
            return yml;
        }
        return path.join("devmesh.yaml");
    }
    path.to_path_buf()
}

/// Loads and checks a mesh file. Every problem goes to `diags`; `None` when there are errors.
pub fn load(path: &Path, diags: &mut Diagnostics) -> Option<Mesh> {
    let abs = source::resolve(&std::env::current_dir().unwrap_or_default(), path);
    let docs = source::read_documents(&abs, diags)?;
    check(abs, docs, diags)
}

/// [`load`] of a mesh file's text, as if read from `path` (relative paths in it resolve
/// against its folder).
pub fn load_text(path: &Path, text: &str, diags: &mut Diagnostics) -> Option<Mesh> {
    let abs = source::resolve(&std::env::current_dir().unwrap_or_default(), path);
    let docs = source::parse_documents(source::display_name(&abs), text, diags);
    check(abs, docs, diags)
}

fn check(abs: PathBuf, docs: source::Documents, diags: &mut Diagnostics) -> Option<Mesh> {
    let name = docs.name.clone();
    let root = match docs.docs.as_slice() {
        [] => {
            if !diags.has_errors() {
                diags.error(&name, Pos::default(), "the mesh file is empty: it needs at least `services:`");
            }
            return None;
        }
        [one] => one,
        [_, second, ..] => {
            diags.error(
                &name,
                second.pos,
                "a mesh file holds one YAML document; put Istio resources in `config:` files",
            );
            return None;
        }
    };
    // Structure first; the checks then run on what was read (placeholders where it was wrong),
    // so every problem is reported at once. A check's finding about a node that holds a
    // structural error is a consequence of it, and is left out (no cascading errors).
    let mut structural = Diagnostics::new();
    let (spec, structure_failed) = yaml::from_node_lenient::<MeshFileSpec>(root, &name, &mut structural);
    let spec = spec?;
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut semantic = Diagnostics::new();
    let mut check = Checker { file: name, diags: &mut semantic, errors: 0 };
    let mesh = check.resolve(spec, abs.clone(), dir);
    let failed = structure_failed || check.errors > 0;
    let mut extents = std::collections::HashMap::new();
    root.extents(&mut extents);
    let broken: Vec<Pos> = structural.iter().map(|d| d.pos).collect();
    diags.extend(structural);
    for d in semantic.sorted() {
        let end = extents.get(&d.pos).copied().unwrap_or(d.pos);
        if !broken.iter().any(|p| *p == d.pos || (d.pos <= *p && *p < end)) {
            diags.push_diagnostic(d);
        }
    }
    if failed { None } else { Some(mesh) }
}

struct Checker<'d> {
    file: Arc<str>,
    diags: &'d mut Diagnostics,
    errors: usize,
}

impl Checker<'_> {
    fn error(&mut self, pos: Pos, msg: impl Into<String>) {
        self.errors += 1;
        self.diags.error(&self.file, pos, msg);
    }

    fn warning(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.warning(&self.file, pos, msg);
    }

    fn resolve(&mut self, spec: MeshFileSpec, file: PathBuf, dir: PathBuf) -> Mesh {
        let namespace = match &spec.namespace {
            Some(ns) => {
                if !names::is_dns1123_label(ns) || ns.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.error(
                        ns.pos,
                        format!("invalid namespace `{}`: must be a lower case DNS-1123 label", ns.value),
                    );
                }
                ns.value.clone()
            }
            None => "default".to_string(),
        };
        let outbound_mode =
            spec.mesh_config.and_then(|m| m.outbound_traffic_policy).and_then(|p| p.mode).unwrap_or_default();

        let mut build = Vec::new();
        for step in &spec.build {
            if step.trim().is_empty() {
                self.error(step.pos, "empty build step");
            }
            build.push(step.value.clone());
        }

        let mut config = Vec::new();
        for entry in &spec.config {
            let path = source::resolve(&dir, Path::new(&entry.value));
            if !path.exists() {
                self.error(entry.pos, format!("config path `{}` does not exist", entry.value));
            }
            config.push(path);
        }

        let gateways = self.gateways(spec.gateways);
        let services = match spec.services {
            Some(s) if !s.is_empty() => self.services(s),
            _ => {
                self.error(spec.at.0, "missing field `services` (a mesh needs at least one service)");
                Vec::new()
            }
        };
        let proxy = self.proxy(spec.proxy);
        let access_log = self.access_log(spec.access_log);
        Mesh { file, dir, namespace, outbound_mode, build, config, gateways, services, proxy, access_log }
    }

    fn duration(&mut self, d: &Option<Spanned<String>>, default: std::time::Duration) -> std::time::Duration {
        let Some(d) = d else { return default };
        match super::duration::parse_go(&d.value) {
            Ok(v) if v >= std::time::Duration::from_millis(1) => v,
            Ok(_) => {
                self.error(d.pos, "duration must be at least 1ms");
                default
            }
            Err(e) => {
                self.error(d.pos, e);
                default
            }
        }
    }

    fn bounded(&mut self, n: &Option<Spanned<i64>>, min: i64, max: i64, what: &str) -> Option<i64> {
        let n = n.as_ref()?;
        if n.value < min || n.value > max {
            self.error(n.pos, format!("{what} must be in the range {min}..{max}"));
            return None;
        }
        Some(n.value)
    }

    fn proxy(&mut self, spec: Option<ProxySpec>) -> ProxyLimits {
        let d = ProxyLimits::default();
        let Some(p) = spec else { return d };
        ProxyLimits {
            request_headers_timeout: self.duration(&p.request_headers_timeout, d.request_headers_timeout),
            idle_timeout: self.duration(&p.idle_timeout, d.idle_timeout),
            stream_idle_timeout: self.duration(&p.stream_idle_timeout, d.stream_idle_timeout),
            max_connections: self.bounded(&p.max_connections, 1, 10_000_000, "maxConnections").map(|n| n as u32),
            max_request_headers_kb: self
                .bounded(&p.max_request_headers_kb, 1, 8192, "maxRequestHeadersKb")
                .map_or(d.max_request_headers_kb, |n| n as u32),
        }
    }

    fn access_log(&mut self, spec: Option<AccessLogSpec>) -> AccessLogLimits {
        let d = AccessLogLimits::default();
        let Some(a) = spec else { return d };
        AccessLogLimits {
            max_bytes: match &a.max_size {
                None => d.max_bytes,
                Some(q) => match parse_quantity(&q.value) {
                    Some(n) if n >= 4096 => n,
                    _ => {
                        self.error(
                            q.pos,
                            format!("invalid size `{}`: a byte count of at least 4096, like 100Mi or 64Ki", q.value),
                        );
                        d.max_bytes
                    }
                },
            },
            keep: self.bounded(&a.keep, 0, 100, "keep").map_or(d.keep, |n| n as u32),
        }
    }

    fn gateways(&mut self, spec: Option<OrderedMap<Spanned<String>, GatewaySpec>>) -> Vec<GatewayDef> {
        let Some(spec) = spec else {
            return vec![GatewayDef {
                name: DEFAULT_GATEWAY.into(),
                labels: BTreeMap::from([("istio".into(), "ingressgateway".into())]),
                ports: vec![(80, 8080), (443, 8443)],
            }];
        };
        let mut local_ports: HashSet<u16> = HashSet::new();
        let mut out = Vec::new();
        for (name, gw) in spec.0 {
            if !names::is_dns1123_label(&name) {
                self.error(name.pos, format!("invalid gateway name `{}`: must be a DNS-1123 label", name.value));
            }
            let labels = match gw.labels {
                Some(l) => self.labels(&l),
                None => BTreeMap::from([("istio".into(), "ingressgateway".into())]),
            };
            let mut ports = Vec::new();
            match gw.ports {
                Some(p) if !p.is_empty() => {
                    for (server, local) in p.0 {
                        let server_port = self.port(&server, false);
                        let local_port = self.port(&local, true);
                        if local_port != 0 && !local_ports.insert(local_port) {
                            self.error(local.pos, format!("local port {local_port} is used by another gateway port"));
                        }
                        ports.push((server_port, local_port));
                    }
                }
                _ => self.error(gw.at.0, format!("missing field `ports` for gateway `{}`", name.value)),
            }
            out.push(GatewayDef { name: name.value, labels, ports });
        }
        out
    }

    fn port(&mut self, p: &Spanned<i64>, zero_ok: bool) -> u16 {
        match u16::try_from(p.value) {
            Ok(0) if zero_ok => 0,
            Ok(v) if v > 0 => v,
            _ => {
                self.error(p.pos, format!("port number {} must be in the range 1..65535", p.value));
                0
            }
        }
    }

    fn labels(&mut self, spec: &OrderedMap<Spanned<String>, Spanned<String>>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in spec.iter() {
            if let Err(e) = names::check_label_key(k) {
                self.error(k.pos, e);
            }
            if let Err(e) = names::check_label_value(v) {
                self.error(v.pos, e);
            }
            out.insert(k.value.clone(), v.value.clone());
        }
        out
    }

    fn services(&mut self, spec: OrderedMap<Spanned<String>, ServiceSpec>) -> Vec<ServiceDef> {
        let mut out = Vec::new();
        let mut workload_names: HashSet<String> = HashSet::new();
        for (name, svc) in spec.0 {
            if !names::is_dns1035_label(&name) {
                self.error(
                    name.pos,
                    format!(
                        "invalid service name `{}`: a DNS-1035 label must consist of lower case alphanumeric \
                         characters or '-', start with an alphabetic character, and end with an alphanumeric character",
                        name.value
                    ),
                );
            }
            let ports = self.service_ports(&name, &svc);
            let service_account = match &svc.service_account {
                Some(sa) => {
                    if !names::is_dns1123_subdomain(sa) {
                        self.error(
                            sa.pos,
                            format!("invalid serviceAccount `{}`: must be a lower case DNS-1123 name", sa.value),
                        );
                    }
                    sa.value.clone()
                }
                None => name.value.clone(),
            };
            if svc.workloads.is_empty() {
                self.warning(
                    svc.at.0,
                    format!("service `{}` has no workloads: requests to it get 503 (no healthy upstream)", name.value),
                );
            }
            let count = svc.workloads.len();
            let mut workloads = Vec::new();
            for (i, w) in svc.workloads.into_iter().enumerate() {
                if let Some(def) = self.workload(&name.value, i, count, w, &mut workload_names) {
                    workloads.push(def);
                }
            }
            out.push(ServiceDef { name: name.value, ports, service_account, workloads });
        }
        out
    }

    fn service_ports(&mut self, name: &Spanned<String>, svc: &ServiceSpec) -> Vec<PortDef> {
        if svc.ports.is_empty() {
            self.error(svc.at.0, format!("missing field `ports` for service `{}`", name.value));
            return Vec::new();
        }
        let mut seen_names = HashSet::new();
        let mut seen_ports = HashSet::new();
        let mut out = Vec::new();
        for p in &svc.ports {
            let port = match &p.port {
                Some(port) => self.port(port, false),
                None => {
                    self.error(p.at.0, "missing field `port`");
                    0
                }
            };
            if port != 0 && !seen_ports.insert(port) {
                self.error(p.at.0, format!("duplicate port {port}"));
            }
            if let Some(n) = &p.name {
                if !names::is_dns1123_label(n) {
                    self.error(n.pos, format!("invalid port name: {}", n.value));
                }
                if !seen_names.insert(n.value.clone()) {
                    self.error(n.pos, format!("duplicate port name `{}`", n.value));
                }
            } else if svc.ports.len() > 1 {
                self.error(p.at.0, "missing field `name` (required when a service has several ports)");
            }
            if let Some(proto) = &p.protocol
                && !proto.eq_ignore_ascii_case("TCP")
            {
                self.error(proto.pos, format!("unsupported protocol `{}`: only TCP ports are supported", proto.value));
            }
            let protocol =
                Protocol::for_port(p.name.as_ref().map(|n| n.as_str()), p.app_protocol.as_ref().map(|a| a.as_str()));
            if let Some(ap) = &p.app_protocol
                && Protocol::parse(ap) == Protocol::Unknown
            {
                self.warning(ap.pos, format!("unknown appProtocol `{}`: the protocol will be detected", ap.value));
            }
            out.push(PortDef { name: p.name.as_ref().map(|n| n.value.clone()), port, protocol });
        }
        out
    }

    fn workload(
        &mut self,
        service: &str,
        index: usize,
        count: usize,
        w: WorkloadSpec,
        taken: &mut HashSet<String>,
    ) -> Option<WorkloadDef> {
        let mut labels = self.labels(&w.labels);
        match labels.get("app") {
            Some(app) if app != service => {
                let pos = w.labels.iter().find(|(k, _)| k.as_str() == "app").map(|(_, v)| v.pos).unwrap_or(w.at.0);
                self.error(pos, format!("label `app: {app}` must be the service name `{service}` (devmesh sets it)"));
            }
            _ => {
                labels.insert("app".into(), service.to_string());
            }
        }
        let name = match &w.name {
            Some(n) => {
                if !names::is_dns1123_label(n) {
                    self.error(n.pos, format!("invalid workload name `{}`: must be a DNS-1123 label", n.value));
                }
                n.value.clone()
            }
            None => match labels.get("version") {
                Some(v) => format!("{service}-{v}"),
                None if count == 1 => service.to_string(),
                None => format!("{service}-{}", index + 1),
            },
        };
        if !taken.insert(name.clone()) {
            let pos = w.name.as_ref().map(|n| n.pos).unwrap_or(w.at.0);
            self.error(
                pos,
                format!("duplicate workload name `{name}`; give one of them a `name:` or a distinct `version` label"),
            );
        }
        let command = match (&w.command, &w.image) {
            (Some(_), Some(img)) => {
                self.error(img.pos, "`command` and `image` are mutually exclusive");
                return None;
            }
            (None, Some(img)) => {
                self.error(img.pos, "`image` (containers) is not supported yet; run the workload with `command`");
                return None;
            }
            (None, None) => {
                self.error(w.at.0, "missing field `command`");
                return None;
            }
            (Some(cmd), None) => {
                if cmd.is_empty() {
                    self.error(cmd.pos, "`command` must not be empty");
                }
                for arg in cmd.iter() {
                    if arg.contains('\0') {
                        self.error(arg.pos, "command arguments cannot contain NUL bytes");
                    }
                }
                cmd.iter().map(|a| a.value.clone()).collect::<Vec<_>>()
            }
        };
        let mut env = Vec::new();
        for (k, v) in w.env.iter() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.error(k.pos, format!("invalid environment variable name `{}`", k.value));
            }
            env.push((k.value.clone(), v.clone()));
        }
        let replicas = match &w.replicas {
            Some(r) => match u32::try_from(r.value) {
                Ok(n) if n <= 64 => n,
                _ => {
                    self.error(r.pos, format!("replicas must be between 0 and 64, found {}", r.value));
                    1
                }
            },
            None => 1,
        };
        let readiness = match w.readiness.map(|r| (r.pos, r.value)) {
            None | Some((_, ReadinessSpec::Tcp(true))) => Readiness::Tcp,
            Some((pos, ReadinessSpec::Tcp(false))) => {
                self.error(pos, "`tcp: false` is not a probe; use `tcp: true`, `http: /path` or `exec: [...]`");
                Readiness::Tcp
            }
            Some((pos, ReadinessSpec::Http(path))) => {
                if !path.starts_with('/') {
                    self.error(pos, format!("readiness http path `{path}` must start with `/`"));
                }
                Readiness::Http(path)
            }
            Some((pos, ReadinessSpec::Exec(argv))) => {
                if argv.is_empty() {
                    self.error(pos, "readiness `exec` needs a command");
                }
                Readiness::Exec(argv)
            }
        };
        Some(WorkloadDef { name, labels, command, env, replicas, readiness, restart: w.restart.unwrap_or_default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_selection_follows_istio_port_naming() {
        assert_eq!(Protocol::for_port(Some("http"), None), Protocol::Http);
        assert_eq!(Protocol::for_port(Some("http-web"), None), Protocol::Http);
        assert_eq!(Protocol::for_port(Some("grpc-api"), None), Protocol::Grpc);
        assert_eq!(Protocol::for_port(Some("http2"), None), Protocol::Http2);
        assert_eq!(Protocol::for_port(Some("tcp-db"), None), Protocol::Tcp);
        assert_eq!(Protocol::for_port(Some("web"), None), Protocol::Unknown);
        assert_eq!(Protocol::for_port(Some("web"), Some("kubernetes.io/h2c")), Protocol::Http2);
        assert_eq!(Protocol::for_port(Some("tcp"), Some("HTTP")), Protocol::Http);
        assert!(Protocol::Grpc.is_http() && Protocol::Grpc.app_speaks_h2() && !Protocol::Http.app_speaks_h2());
    }
}
