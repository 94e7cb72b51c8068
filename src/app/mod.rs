//! The composition root of `devmesh up`: load and check the configuration, build, bind every
//! listener, compile the first snapshot, start the data plane, admin API and supervisor, then
//! stop in order on Ctrl-C, SIGTERM or `POST /shutdown`: workloads first, listeners last.

pub mod topology;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::server::{self as admin, State};
use crate::config::diag::Diagnostics;
use crate::config::mesh;
use crate::control::ControlPlane;
use crate::dataplane::forward::Forwarder;
use crate::dataplane::gateway::Gateway;
use crate::dataplane::inbound::Inbound;
use crate::dataplane::outbound::Outbound;
use crate::dataplane::pool::Pools;
use crate::dataplane::workers::{self, PerWorker, Workers};
use crate::identity::ca::{self, Ca};
use crate::identity::tls::Certs;
use crate::model::snapshot::Shared;
use crate::supervisor::events::{Events, Lifecycle};
use crate::supervisor::{self, Supervisor, reaper::Reaper};
use crate::telemetry::{Name, Telemetry, access_log};

/// Workload certificates live a day and rotate at half-life, as with Istio's defaults.
pub const CERT_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct UpOptions {
    pub path: PathBuf,
    pub headless: bool,
    pub admin: String,
    pub state_dir: Option<PathBuf>,
    pub no_build: bool,
    /// Drop the resources applied before the last stop instead of restoring them.
    pub fresh: bool,
}

/// Prints diagnostics to stderr; true when any is an error.
pub fn report(diags: Diagnostics) -> bool {
    let errors = diags.has_errors();
    for d in diags.sorted() {
        eprintln!("{d}");
    }
    errors
}

pub async fn up(opts: UpOptions) -> Result<ExitCode> {
    let t0 = Instant::now();
    let mesh_file = mesh::locate(&opts.path);
    let mut diags = Diagnostics::new();
    let Some(mesh) = mesh::load(&mesh_file, &mut diags) else {
        report(diags);
        return Ok(ExitCode::from(1));
    };
    if !opts.no_build && !mesh.build.is_empty() {
        supervisor::build::run(&mesh.build, &mesh.dir).await?;
    }
    let t_start = Instant::now();
    // Connections count against the open-file limit: raise it to the hard limit, then cap
    // downstream connections below it (`dataplane::admission`).
    let nofile = crate::dataplane::admission::raise_nofile();
    crate::dataplane::admission::configure(crate::dataplane::admission::Limits::new(&mesh.proxy, nofile));

    let state_dir = opts.state_dir.clone().unwrap_or_else(|| mesh.dir.join(".devmesh"));
    let log_dir = state_dir.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let ca = Ca::load_or_create(&ca::dir(&state_dir))?;
    let ca_root = ca.root_pem().to_string();
    let certs = Certs::new(Arc::new(ca), CERT_TTL)?;

    let admin_listener = bind_admin(&opts.admin).await?;
    let admin_addr = admin_listener.local_addr()?;
    let (admin_token, token_warning) = crate::admin::token::publish(&state_dir, admin_addr)?;
    let (topology, listeners) = topology::bind(&mesh)?;
    let topology = Arc::new(topology);

    let events = Events::new();
    let control = match ControlPlane::start(topology.clone(), &mesh, Some(events.clone())) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    for w in control.warnings() {
        eprintln!("{w}");
    }
    if let Some(w) = token_warning {
        eprintln!("warning: {w}");
    }
    let snapshot: Shared = control.snapshot.clone();

    let stop = CancellationToken::new();
    let dataplane_stop = CancellationToken::new();
    if let Err(e) = crate::control::watch::spawn(control.clone(), dataplane_stop.clone()) {
        events.emit(Lifecycle::Warning { message: format!("config files are not watched: {e}") });
    }
    let headless = opts.headless || !std::io::stdout().is_terminal();
    let printer = tokio::spawn(supervisor::events::print(events.subscribe()));
    // What `apply` added before the last stop, as `kubectl apply` state outlives a restart.
    let applied = state_dir.join("applied.yaml");
    if opts.fresh {
        let _ = std::fs::remove_file(&applied);
    }
    match control.persist_applied(applied.clone()) {
        Ok(0) => {}
        Ok(n) => events.emit(Lifecycle::Info {
            message: format!(
                "restored {n} resource(s) applied before the last stop (from {}; `devmesh up --fresh` starts without them)",
                applied.display()
            ),
        }),
        Err(errors) => events.emit(Lifecycle::Warning {
            message: format!(
                "the resources applied before the last stop no longer apply and were not restored (kept in {}.rejected):\n  {}",
                applied.display(),
                errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  ")
            ),
        }),
    }
    if !headless {
        events.emit(Lifecycle::Info { message: "the terminal UI is not available yet: running headless".into() });
    }

    let (telemetry, access_rx) = Telemetry::new(4096);
    let access_log = access_log::spawn(state_dir.join("access.log"), mesh.access_log, access_rx)?;

    // Data plane: worker threads own connections; pools are per worker.
    let workers = Arc::new(Workers::start(workers::default_count())?);
    let n = workers.count();
    let mut outbounds: Vec<Arc<Outbound>> = Vec::new();
    for (index, inst) in topology.instances.iter().enumerate() {
        let tls = certs.identity(&inst.identity)?;
        let forwarder = Forwarder {
            proxy: Name::new(&inst.name),
            workload: inst.workload,
            namespace: inst.namespace.clone(),
            labels: inst.labels.clone(),
            tls,
            pools: PerWorker::new(n, || Arc::new(Pools::new())),
            telemetry: telemetry.clone(),
            gateway: false,
        };
        outbounds.push(Arc::new(Outbound::new(inst.clone(), index, forwarder, snapshot.clone())));
    }
    for (ii, pi, l) in listeners.inbound {
        let inst = topology.instances[ii].clone();
        let inbound = Arc::new(Inbound {
            names: crate::dataplane::inbound::Names::new(&inst, &inst.ports[pi]),
            port: inst.ports[pi].clone(),
            tls: certs.identity(&inst.identity)?,
            instance: inst,
            pools: PerWorker::new(n, Pools::new),
            telemetry: telemetry.clone(),
        });
        tokio::spawn(inbound.run(l, dataplane_stop.clone(), workers.clone()));
    }
    for (ii, l) in listeners.outbound {
        tokio::spawn(outbounds[ii].clone().run_proxy(l, dataplane_stop.clone(), workers.clone()));
    }
    for (ii, si, port, l) in listeners.upstream {
        tokio::spawn(outbounds[ii].clone().run_upstream(l, si, port, dataplane_stop.clone(), workers.clone()));
    }
    let mut gateways: Vec<Arc<Gateway>> = Vec::new();
    for (gi, gw) in topology.gateways.iter().enumerate() {
        let forwarder = Forwarder {
            proxy: Name::new(&gw.name),
            workload: Name::new(&gw.name),
            namespace: gw.namespace.clone(),
            labels: gw.labels.clone(),
            tls: certs.identity(&gw.identity)?,
            pools: PerWorker::new(n, || Arc::new(Pools::new())),
            telemetry: telemetry.clone(),
            gateway: true,
        };
        gateways.push(Arc::new(Gateway { index: gi, forwarder, snapshot: snapshot.clone() }));
    }
    for (gi, server_port, l) in listeners.gateways {
        let addr = l.local_addr()?;
        events.emit(Lifecycle::Listening {
            what: format!("{} (port {server_port})", topology.gateways[gi].name),
            addr: format!("http://{addr}"),
        });
        tokio::spawn(gateways[gi].clone().run(l, server_port, dataplane_stop.clone(), workers.clone()));
    }
    tokio::spawn(certs.clone().run_rotation(dataplane_stop.clone()));

    let stats = admin::ProcStats::default();
    let state = Arc::new(State {
        mesh: mesh.clone(),
        topology: topology.clone(),
        snapshot: snapshot.clone(),
        stop: stop.clone(),
        stats: stats.clone(),
        started: t0,
        control: control.clone(),
        telemetry: telemetry.clone(),
        addr: admin_addr,
        token: admin_token.token().to_string(),
        ca_root,
    });
    events.emit(Lifecycle::Listening { what: "admin".into(), addr: format!("http://{admin_addr}") });
    tokio::spawn(admin::serve(admin_listener, state.clone(), dataplane_stop.clone()));
    tokio::spawn(supervisor::stats::run(topology.clone(), stats, dataplane_stop.clone()));

    // Workloads: release the reserved app ports just before the applications bind them.
    let reaper = match Reaper::start() {
        Ok(r) => Some(r),
        Err(e) => {
            events.emit(Lifecycle::Warning { message: format!("orphan guard not started: {e}") });
            None
        }
    };
    drop(listeners.app_ports);
    let supervisor = Arc::new(Supervisor {
        topology: topology.clone(),
        cwd: mesh.dir.clone(),
        log_dir,
        events: events.clone(),
        reaper,
        grace: supervisor::GRACE,
    });
    let mut workloads = supervisor.start(&stop);
    let ready_state = state.clone();
    let ready_events = events.clone();
    let ready_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            if ready_state.ready() {
                ready_events.emit(Lifecycle::MeshReady { after_ms: t_start.elapsed().as_millis() as u64 });
                return;
            }
            tokio::select! {
                _ = ready_stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    });

    wait_for_stop(&stop).await;
    events.emit(Lifecycle::Stopping);
    stop.cancel();
    while workloads.join_next().await.is_some() {}
    dataplane_stop.cancel();
    events.emit(Lifecycle::Info { message: "all workloads stopped; bye".into() });
    drop(supervisor);
    drop(events);
    drop(telemetry);
    drop(outbounds);
    drop(gateways);
    let _ = tokio::time::timeout(Duration::from_secs(1), printer).await;
    // The access log writer ends once the last recorder is gone (the workers hold some):
    // don't wait for it beyond one drain.
    std::thread::sleep(Duration::from_millis(150));
    drop(access_log);
    drop(admin_token);
    Ok(ExitCode::SUCCESS)
}

/// Binds the admin API; an address in use most likely means a mesh is already running there.
async fn bind_admin(addr: &str) -> Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "admin API: {addr} is already in use, most likely by another running mesh: reach it with \
             `devmesh get workloads --admin {addr}`, stop it with `devmesh down --admin {addr}`, \
             or start this one with another --admin address"
        ),
        Err(e) => Err(e).with_context(|| format!("admin API: cannot listen on {addr}")),
    }
}

async fn wait_for_stop(stop: &CancellationToken) {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let mut term = match term {
        Ok(t) => t,
        Err(_) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = stop.cancelled() => {}
            }
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stop.cancelled() => {}
    }
}
