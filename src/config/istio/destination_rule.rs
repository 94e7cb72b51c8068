//! `networking.istio.io` DestinationRule (`destination_rule.proto`), typed field for field so
//! every validation rule can point at its field (connection pool, outlier detection, locality
//! and tunnel settings are validated even where devmesh does not act on them yet).

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
    pub connection_pool: Option<Spanned<ConnectionPoolSettings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Spanned<OutlierDetection>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Spanned<ClientTlsSettings>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Spanned<TunnelSettings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<Spanned<ProxyProtocol>>,
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
    pub connection_pool: Option<Spanned<ConnectionPoolSettings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Spanned<OutlierDetection>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Spanned<ClientTlsSettings>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Spanned<TcpSettings>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Spanned<HttpSettings>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<Spanned<TcpKeepalive>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct TcpKeepalive {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<Spanned<H2UpgradePolicy>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<Spanned<ConnectionKeepalive>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ConnectionKeepalive {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(rename = "consecutive5xxErrors", skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<Spanned<i64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlier_detection_http_error_codes: Vec<Spanned<i64>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub target_host: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<Spanned<i64>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ProxyProtocol {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<ProxyProtocolVersion>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLbSetting {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<Spanned<Distribute>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Spanned<Failover>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Distribute {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Failover {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmupConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<Spanned<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggression: Option<Spanned<f64>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<Spanned<ConsistentHashLb>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<Spanned<LocalityLbSetting>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Spanned<WarmupConfiguration>>,
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
