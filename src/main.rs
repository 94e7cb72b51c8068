//! devmesh: a local service mesh. `main` parses the command line, runs the verb and maps the
//! outcome to an exit code (0 ok, 1 user or config error, 2 usage error). Everything else is
//! the library (`lib.rs`), which the fuzz targets (`fuzz/`) link too.

#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;

use clap::Parser;

use devmesh::cli::{self, CaCommand, Cli, Command};
use devmesh::{app, supervisor};

/// mimalloc: fewer cycles per allocation than glibc's malloc on the proxy path (measured in
/// docs/PERFORMANCE.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(supervisor::reaper::SUBCOMMAND) {
        supervisor::reaper::run();
    }
    if let Some(code) = cli::misspelled_verb() {
        return code;
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DEVMESH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();

    if let Command::Validate(args) = &cli.command {
        return cli::validate::run(&args.paths);
    }
    // The control plane (accept loops, admin, supervisor, probes) needs little; request work runs
    // on the data-plane workers (dataplane::workers).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Up(a) => {
                app::up(app::UpOptions {
                    path: a.path.clone(),
                    headless: a.headless,
                    admin: a.admin.clone(),
                    state_dir: a.state_dir.clone(),
                    no_build: a.no_build,
                    fresh: a.fresh,
                })
                .await
            }
            Command::Down(a) => cli::control::down(a).await,
            Command::Get(a) => cli::get::run(a).await,
            Command::Apply(a) => cli::apply::apply(a).await,
            Command::Delete(a) => cli::apply::delete(a).await,
            Command::ProxyConfig(a) => cli::proxy_config::run(a).await,
            Command::Ca { command: CaCommand::Export { path, state_dir, admin } } => {
                cli::ca::export(path, state_dir.as_deref(), admin).await
            }
            Command::Validate(_) => Ok(ExitCode::SUCCESS),
        }
    });
    // Connection tasks may still be parked; don't wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    finish(result)
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
