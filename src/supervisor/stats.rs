//! CPU and memory of every workload process (and devmesh itself), sampled every two seconds
//! off the runtime threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

use crate::admin::server::{ProcSample, ProcStats};
use crate::model::topology::Topology;

pub const PERIOD: Duration = Duration::from_secs(2);

pub async fn run(topology: Arc<Topology>, stats: ProcStats, stop: CancellationToken) {
    let Ok(system) = System::new() else { return };
    let system = Arc::new(std::sync::Mutex::new(system));
    loop {
        let mut pids: Vec<u32> =
            topology.instances.iter().map(|i| i.status.pid.load(Ordering::Relaxed)).filter(|p| *p != 0).collect();
        pids.push(std::process::id());
        let sys = system.clone();
        let sampled = tokio::task::spawn_blocking(move || {
            let Ok(mut sys) = sys.lock() else {
                return HashMap::new();
            };
            let list: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p)).collect();
            sys.refresh_cpu_all();
            sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&list),
                true,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            pids.iter()
                .filter_map(|p| {
                    sys.process(Pid::from_u32(*p))
                        .map(|pr| (*p, ProcSample { cpu_percent: pr.cpu_usage(), memory_bytes: pr.memory() }))
                })
                .collect::<HashMap<_, _>>()
        })
        .await
        .unwrap_or_default();
        if let Ok(mut s) = stats.lock() {
            *s = sampled;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}
