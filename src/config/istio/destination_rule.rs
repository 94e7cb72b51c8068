//! `networking.istio.io` DestinationRule (`destination_rule.proto`). What devmesh acts on is
//! typed field for field (subsets, load balancing, client TLS mode, port-level settings); the
//! resilience settings (connection pool, outlier detection) and locality routing are read as
//! free-form values and reported as not honoured yet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::virtual_service::PortSelector;
use crate::config::yaml::{Loc, Spanned};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(default)]
    pub host: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<Spanned<LoadBalancerSettings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Spanned<ClientTlsSettings>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<Spanned<serde_json::Value>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<Spanned<LoadBalancerSettings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Spanned<ClientTlsSettings>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<Spanned<ConsistentHashLb>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_utilization: Option<Spanned<serde_json::Value>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashLb {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<Spanned<HttpCookie>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Spanned<Maglev>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<Spanned<u64>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookie {
    #[serde(default)]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct CookieAttribute {
    #[serde(default)]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Maglev {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientTlsMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(default)]
    pub name: Spanned<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}
