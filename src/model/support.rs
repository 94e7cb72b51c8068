//! What devmesh honours today: every kind or field it reads but does not act on yet gets a
//! warning naming the file, position and feature, never silence. This list shrinks as
//! features land (README "Supported Istio features" mirrors it).

use crate::config::diag::{Diagnostics, Pos};
use crate::config::istio::gateway::GatewaySpec;
use crate::config::istio::virtual_service::VirtualServiceSpec;
use crate::config::istio::{Resource, Spec};

pub fn unsupported(res: &Resource, out: &mut Diagnostics) {
    let file = &res.origin.file;
    let mut warn = |pos: Pos, what: String| {
        let pos = if pos == Pos::default() { res.origin.pos } else { pos };
        out.warning(file, pos, what);
    };
    match &res.spec {
        Spec::Opaque(_) => warn(
            res.origin.pos,
            format!(
                "{} {}/{} is stored but not honoured yet: traffic ignores it",
                res.kind, res.metadata.namespace, res.metadata.name
            ),
        ),
        Spec::VirtualService(vs) => virtual_service(vs, &mut warn),
        Spec::Gateway(gw) => gateway(gw, &mut warn),
    }
}

fn virtual_service(vs: &VirtualServiceSpec, warn: &mut impl FnMut(Pos, String)) {
    let not_yet = |field: &str| format!("VirtualService `{field}` is not honoured yet: it is ignored");
    if !vs.export_to.is_empty() {
        warn(vs.export_to[0].pos, not_yet("exportTo"));
    }
    for t in &vs.tcp {
        warn(t.at.0, not_yet("tcp"));
    }
    for t in &vs.tls {
        warn(t.at.0, not_yet("tls"));
    }
    for r in &vs.http {
        let fields: [(bool, Pos, &str); 11] = [
            (r.redirect.is_some(), r.redirect.as_ref().map(|x| x.pos).unwrap_or_default(), "redirect"),
            (
                r.direct_response.is_some(),
                r.direct_response.as_ref().map(|x| x.pos).unwrap_or_default(),
                "directResponse",
            ),
            (r.delegate.is_some(), r.delegate.as_ref().map(|x| x.pos).unwrap_or_default(), "delegate"),
            (r.rewrite.is_some(), r.rewrite.as_ref().map(|x| x.pos).unwrap_or_default(), "rewrite"),
            (r.timeout.is_some(), r.timeout.as_ref().map(|x| x.pos).unwrap_or_default(), "timeout"),
            (r.retries.is_some(), r.retries.as_ref().map(|x| x.pos).unwrap_or_default(), "retries"),
            (r.fault.is_some(), r.fault.as_ref().map(|x| x.pos).unwrap_or_default(), "fault"),
            (r.mirror.is_some() || !r.mirrors.is_empty(), r.at.0, "mirror"),
            (r.cors_policy.is_some(), r.cors_policy.as_ref().map(|x| x.pos).unwrap_or_default(), "corsPolicy"),
            (r.headers.is_some(), r.at.0, "headers"),
            (r.route.iter().any(|d| d.headers.is_some()), r.at.0, "route[].headers"),
        ];
        for (present, pos, name) in fields {
            if present {
                warn(pos, not_yet(name));
            }
        }
        for d in &r.route {
            if let Some(s) = d.destination.as_ref().and_then(|d| d.subset.as_ref()) {
                warn(
                    s.pos,
                    format!(
                        "subset `{}` needs a DestinationRule, which is not honoured yet: requests on this route get 503",
                        s.value
                    ),
                );
            }
        }
    }
}

fn gateway(gw: &GatewaySpec, warn: &mut impl FnMut(Pos, String)) {
    for s in &gw.servers {
        let proto = s.port.as_ref().and_then(|p| p.protocol.as_ref());
        if let Some(p) = proto
            && !matches!(p.to_ascii_uppercase().as_str(), "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB")
        {
            warn(
                p.pos,
                format!("Gateway servers with protocol {} are not supported yet (HTTP only): ignored", p.value),
            );
        }
        if let Some(t) = &s.tls {
            warn(t.pos, "Gateway server `tls` is not honoured yet: it is ignored".into());
        }
    }
}
