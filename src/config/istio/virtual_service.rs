//! `networking.istio.io` VirtualService, field for field as `virtual_service.proto` (every field
//! is read so valid Istio YAML is never rejected; what is honoured is decided in `model`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::yaml::{Loc, OrderedMap, Spanned};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Spanned<HttpRedirect>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<Spanned<HttpDirectResponse>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Spanned<Delegate>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Spanned<HttpRewrite>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<Spanned<HttpRetry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Spanned<HttpFaultInjection>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Spanned<Destination>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Spanned<Percent>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<Spanned<CorsPolicy>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<Spanned<StringMatch>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Spanned<StringMatch>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Spanned<StringMatch>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<Spanned<StringMatch>>,
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub headers: OrderedMap<Spanned<String>, Spanned<StringMatch>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Spanned<u32>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub query_params: OrderedMap<Spanned<String>, Spanned<StringMatch>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub without_headers: OrderedMap<Spanned<String>, Spanned<StringMatch>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

/// `StringMatch`: a oneof of `exact`, `prefix`, `regex` (checked in validation). An empty
/// mapping `{}` is a presence match where the API allows it (headers, query parameters).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct StringMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<Spanned<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Prefix,
    Regex,
}

impl StringMatch {
    /// The one set matcher; `None` for `{}`. Several set is a validation error, and then the
    /// first of exact, prefix, regex is used.
    pub fn get(&self) -> Option<(MatchKind, &str)> {
        if let Some(v) = &self.exact {
            Some((MatchKind::Exact, v))
        } else if let Some(v) = &self.prefix {
            Some((MatchKind::Prefix, v))
        } else {
            self.regex.as_ref().map(|v| (MatchKind::Regex, v.as_str()))
        }
    }

    pub fn count(&self) -> usize {
        usize::from(self.exact.is_some()) + usize::from(self.prefix.is_some()) + usize::from(self.regex.is_some())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(default)]
    pub host: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct PortSelector {
    #[serde(default)]
    pub number: Spanned<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<Spanned<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<Spanned<i32>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Headers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub set: OrderedMap<Spanned<String>, String>,
    #[serde(default, skip_serializing_if = "OrderedMap::is_empty")]
    pub add: OrderedMap<Spanned<String>, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    FromProtocolDefault,
    FromRequestPort,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct HttpDirectResponse {
    #[serde(default)]
    pub status: Spanned<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HttpBody {
    String(String),
    /// Base64, as protobuf JSON encodes `bytes`.
    Bytes(Spanned<String>),
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Delegate {
    #[serde(default)]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<Spanned<RegexRewrite>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegexRewrite {
    #[serde(rename = "match", default)]
    pub matches: Spanned<String>,
    #[serde(default)]
    pub rewrite: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Spanned<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<Spanned<StringMatch>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    Unspecified,
    Forward,
    Ignore,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct HttpFaultInjection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Spanned<FaultDelay>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<Spanned<FaultAbort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<Spanned<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Spanned<Percent>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<Spanned<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Spanned<Percent>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct HttpMirrorPolicy {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Spanned<Percent>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Spanned<u32>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    #[serde(rename = "$pos", default, skip_serializing)]
    pub at: Loc,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Spanned<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<Spanned<String>>,
}
