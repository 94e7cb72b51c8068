//! The environment of a workload instance (DESIGN.md §2): its port, its sidecar as HTTP
//! proxy, Kubernetes-style service variables, pod metadata; the mesh file's `env` last.

use crate::model::topology::{Instance, Topology, env_name};

/// `{port}` in argv is the first app port; `{port:<name>}` a named one.
pub fn substitute_ports(arg: &str, instance: &Instance) -> String {
    if !arg.contains("{port") {
        return arg.to_string();
    }
    let mut out = arg.to_string();
    if let Some(first) = instance.ports.first() {
        out = out.replace("{port}", &first.app.port().to_string());
    }
    for p in &instance.ports {
        if let Some(name) = &p.name {
            out = out.replace(&format!("{{port:{name}}}"), &p.app.port().to_string());
        }
    }
    out
}

pub fn build(instance: &Instance, topology: &Topology) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| env.push((k.to_string(), v));
    if let Some(first) = instance.ports.first() {
        set("PORT", first.app.port().to_string());
    }
    for p in &instance.ports {
        if let Some(name) = &p.name {
            set(&format!("PORT_{}", env_name(name)), p.app.port().to_string());
        }
    }
    let proxy = format!("http://{}", instance.outbound);
    for k in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
        set(k, proxy.clone());
    }
    for k in ["NO_PROXY", "no_proxy"] {
        set(k, "localhost,127.0.0.1,::1".into());
    }
    for u in &instance.upstreams {
        let svc = env_name(&u.service_name);
        set(&format!("{svc}_SERVICE_HOST"), u.ip.to_string());
        if let Some((_, addr)) = u.ports.first() {
            set(&format!("{svc}_SERVICE_PORT"), addr.port().to_string());
        }
        if let Some(service) = topology.services.get(u.service) {
            for (port, addr) in &u.ports {
                if let Some(name) = service.port(*port).and_then(|p| p.name.as_ref()) {
                    set(&format!("{svc}_SERVICE_PORT_{}", env_name(name)), addr.port().to_string());
                }
            }
        }
    }
    set("POD_NAME", instance.name.clone());
    set("HOSTNAME", instance.name.clone());
    set("POD_NAMESPACE", instance.namespace.clone());
    set("SERVICE_ACCOUNT", instance.service_account.clone());
    set("DEVMESH_SERVICE", instance.service_name.clone());
    set("DEVMESH_WORKLOAD", instance.workload.to_string());
    for (k, v) in &instance.def.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mesh::{PortDef, Protocol, Readiness, RestartPolicy, WorkloadDef};
    use crate::model::topology::{InstancePort, InstanceStatus, Service, Upstream};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn fixture() -> (Instance, Topology) {
        let svc = |name: &str, ports: Vec<PortDef>| Service {
            name: name.into(),
            namespace: "default".into(),
            fqdn: format!("{name}.default.svc.cluster.local"),
            ports,
            service_account: format!("bookinfo-{name}"),
        };
        let http = |port| PortDef { name: Some("http".into()), port, protocol: Protocol::Http };
        let topology = Topology {
            namespace: "default".into(),
            services: vec![
                svc("productpage", vec![http(9080)]),
                svc(
                    "my-db",
                    vec![PortDef { name: Some("tcp-sql".into()), port: 5432, protocol: Protocol::Tcp }, http(8080)],
                ),
            ],
            instances: vec![],
            gateways: vec![],
        };
        let instance = Instance {
            name: "productpage-v1".into(),
            workload: crate::telemetry::Name::new("productpage-v1"),
            service: 0,
            service_name: "productpage".into(),
            namespace: "default".into(),
            labels: BTreeMap::new(),
            service_account: "bookinfo-productpage".into(),
            identity: Arc::from("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
            ports: vec![InstancePort {
                name: Some("http".into()),
                port: 9080,
                protocol: Protocol::Http,
                app: "127.0.0.1:41000".parse().unwrap(),
                inbound: "127.0.0.1:41001".parse().unwrap(),
            }],
            outbound: "127.0.0.1:41002".parse().unwrap(),
            upstreams: vec![Upstream {
                service: 1,
                service_name: "my-db".into(),
                ip: "127.1.0.7".parse().unwrap(),
                ports: vec![(5432, "127.1.0.7:5432".parse().unwrap()), (8080, "127.1.0.7:8080".parse().unwrap())],
            }],
            def: WorkloadDef {
                name: "productpage-v1".into(),
                labels: BTreeMap::new(),
                command: vec![],
                env: vec![("STAR_COLOR".into(), "red".into()), ("NO_PROXY".into(), "example.com".into())],
                replicas: 1,
                readiness: Readiness::Tcp,
                restart: RestartPolicy::OnFailure,
            },
            status: InstanceStatus::default(),
        };
        (instance, topology)
    }

    #[test]
    fn environment_follows_the_design() {
        let (i, t) = fixture();
        let env: BTreeMap<String, String> = build(&i, &t).into_iter().collect();
        assert_eq!(env["PORT"], "41000");
        assert_eq!(env["PORT_HTTP"], "41000");
        assert_eq!(env["HTTP_PROXY"], "http://127.0.0.1:41002");
        assert_eq!(env["http_proxy"], "http://127.0.0.1:41002");
        assert_eq!(env["no_proxy"], "localhost,127.0.0.1,::1");
        assert_eq!(env["MY_DB_SERVICE_HOST"], "127.1.0.7");
        assert_eq!(env["MY_DB_SERVICE_PORT"], "5432");
        assert_eq!(env["MY_DB_SERVICE_PORT_TCP_SQL"], "5432");
        assert_eq!(env["MY_DB_SERVICE_PORT_HTTP"], "8080");
        assert_eq!(env["POD_NAME"], "productpage-v1");
        assert_eq!(env["POD_NAMESPACE"], "default");
        assert_eq!(env["SERVICE_ACCOUNT"], "bookinfo-productpage");
        assert_eq!(env["DEVMESH_SERVICE"], "productpage");
        assert_eq!(env["DEVMESH_WORKLOAD"], "productpage-v1");
        assert_eq!(env["STAR_COLOR"], "red");
        assert_eq!(env["NO_PROXY"], "example.com", "the mesh file's env wins");
        assert_eq!(build(&i, &t).iter().filter(|(k, _)| k == "NO_PROXY").count(), 1);
    }

    #[test]
    fn port_placeholders() {
        let (i, _) = fixture();
        assert_eq!(substitute_ports("--listen=127.0.0.1:{port}", &i), "--listen=127.0.0.1:41000");
        assert_eq!(substitute_ports("{port:http}", &i), "41000");
        assert_eq!(substitute_ports("plain", &i), "plain");
    }
}
