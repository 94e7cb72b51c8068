//! Proxy failures and how Envoy answers them: one place that knows each failure's HTTP
//! status, response flag and local-reply body.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use crate::telemetry::Flags;

#[derive(Debug)]
pub enum ProxyError {
    NoRoute,
    NoCluster,
    NoHealthyUpstream,
    /// Could not connect (refused, TLS handshake failed, wrong peer identity).
    ConnectFailed(String),
    /// Connected, but the upstream closed or reset before a complete response head.
    UpstreamReset(String),
    /// The upstream's response broke HTTP (a head over the limit, a malformed head): 502 `UPE`.
    UpstreamProtocol(String),
    /// The route timeout (or the last per-try timeout) passed before a response.
    Timeout,
    /// Fault injection aborted the request with this status.
    FaultAbort(StatusCode),
    BadRequest(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::FaultAbort(s) => *s,
            ProxyError::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn flag(&self) -> Flags {
        match self {
            ProxyError::NoRoute => Flags::NR,
            ProxyError::NoCluster => Flags::NC,
            ProxyError::NoHealthyUpstream => Flags::UH,
            ProxyError::ConnectFailed(_) => Flags::UF,
            ProxyError::UpstreamReset(_) => Flags::UC,
            ProxyError::UpstreamProtocol(_) => Flags::UPE,
            ProxyError::Timeout => Flags::UT,
            ProxyError::FaultAbort(_) => Flags::FI,
            ProxyError::BadRequest(_) => Flags::DPE,
        }
    }

    /// Envoy's local reply body for this failure.
    pub fn body(&self) -> String {
        match self {
            ProxyError::NoRoute => String::new(),
            ProxyError::NoCluster => String::new(),
            ProxyError::NoHealthyUpstream => "no healthy upstream".into(),
            ProxyError::ConnectFailed(reason) => format!(
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, \
                 transport failure reason: {reason}"
            ),
            ProxyError::UpstreamReset(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination".into()
            }
            ProxyError::UpstreamProtocol(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: protocol error".into()
            }
            ProxyError::Timeout => "upstream request timeout".into(),
            ProxyError::FaultAbort(_) => "fault filter abort".into(),
            ProxyError::BadRequest(what) => (*what).into(),
        }
    }

    /// The local reply, as Envoy sends it (`content-type: text/plain`).
    pub fn response(&self) -> Response<ProxyBody> {
        local_reply(self.status(), self.body())
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::ConnectFailed(r) | ProxyError::UpstreamReset(r) | ProxyError::UpstreamProtocol(r) => {
                write!(f, "{} ({r})", self.flag())
            }
            _ => write!(f, "{} {}", self.status().as_u16(), self.flag()),
        }
    }
}

pub fn local_reply(status: StatusCode, body: String) -> Response<ProxyBody> {
    let len = body.len();
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if len > 0 {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_statuses_flags_and_bodies() {
        assert_eq!((ProxyError::NoRoute.status(), ProxyError::NoRoute.flag()), (StatusCode::NOT_FOUND, Flags::NR));
        assert_eq!(
            (ProxyError::Timeout.status(), ProxyError::Timeout.body()),
            (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout".into())
        );
        assert_eq!(ProxyError::FaultAbort(StatusCode::INTERNAL_SERVER_ERROR).body(), "fault filter abort");
        assert_eq!(ProxyError::NoHealthyUpstream.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ProxyError::NoHealthyUpstream.body(), "no healthy upstream");
        assert_eq!(ProxyError::ConnectFailed("x".into()).flag().to_string(), "UF");
        assert!(
            ProxyError::ConnectFailed("delayed connect error: 111".into()).body().starts_with("upstream connect error")
        );
        let r = ProxyError::NoHealthyUpstream.response();
        assert_eq!(r.headers()["content-length"], "19");
        assert_eq!(r.headers()["content-type"], "text/plain");
    }
}
