//! `networking.istio.io` ServiceEntry (`service_entry.proto`) and Sidecar (`sidecar.proto`):
//! hosts outside the mesh file, and what a workload may reach.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::yaml::{Loc, Spanned};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Spanned<Resolution>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<Spanned<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<Spanned<i64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, Spanned<i64>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct LabelSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<Spanned<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Spanned<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressListener>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<Spanned<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<Spanned<OutboundTrafficPolicy>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressListener {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<Spanned<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<SidecarOutboundMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Spanned<serde_json::Value>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SidecarOutboundMode {
    RegistryOnly,
    AllowAny,
    AllowAnyDynamicDns,
}
