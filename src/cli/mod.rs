//! The command line (DESIGN.md §1): one file per verb.

pub mod apply;
pub mod ca;
pub mod control;
pub mod get;
pub mod proxy_config;
pub mod validate;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

/// The verb closest to `word` (a transposition or a letter off, as `gte` for `get`, which
/// clap's own Jaro threshold does not catch), if one is close enough to suggest.
pub fn closest_verb(word: &str, verbs: &[String]) -> Option<String> {
    verbs
        .iter()
        .map(|v| (strsim::osa_distance(word, v), v))
        .filter(|(d, v)| *d <= if v.len() <= 3 { 1 } else { 2 })
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v.clone())
}

/// When the first argument is an unknown verb close to a real one: clap's error with a tip,
/// and the usage-error exit code (2).
pub fn misspelled_verb() -> Option<std::process::ExitCode> {
    use clap::CommandFactory;
    let word = std::env::args().nth(1)?;
    if word.starts_with('-') {
        return None;
    }
    let cmd = Cli::command();
    let mut verbs: Vec<String> = Vec::new();
    for sc in cmd.get_subcommands() {
        verbs.push(sc.get_name().to_string());
        verbs.extend(sc.get_all_aliases().map(str::to_string));
    }
    verbs.push("help".into());
    if verbs.contains(&word) {
        return None;
    }
    let tip = closest_verb(&word, &verbs)?;
    eprintln!(
        "error: unrecognized subcommand '{word}'\n\n  tip: a similar subcommand exists: '{tip}'\n\n\
         Usage: devmesh <COMMAND>\n\nFor more information, try '--help'."
    );
    Some(std::process::ExitCode::from(2))
}

#[derive(Parser)]
#[command(
    name = "devmesh",
    version,
    about = "A local service mesh: Istio's YAML, sidecars, mTLS and gateways for processes on your laptop",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build and start every workload behind its sidecar, with gateways and mTLS
    Up(UpArgs),
    /// Stop a running mesh (gracefully: SIGTERM, then SIGKILL after 5s)
    Down(AdminArgs),
    /// Add or replace Istio resources in the running mesh, like `kubectl apply`
    Apply(ApplyArgs),
    /// Remove Istio resources from the running mesh, like `kubectl delete`
    Delete(DeleteArgs),
    /// List resources of a running mesh: workloads (wl), services (svc), or an Istio kind (vs, dr, gw, ...)
    Get(GetArgs),
    /// What a sidecar or gateway does with the running configuration, like `istioctl proxy-config`
    #[command(name = "proxy-config", visible_alias = "pc")]
    ProxyConfig(ProxyConfigArgs),
    /// Check mesh files and Istio YAML offline; prints file:line:col diagnostics
    Validate(ValidateArgs),
    /// The mesh's certificate authority
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Args)]
pub struct UpArgs {
    /// A mesh file, or a folder holding devmesh.yaml
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Log to stderr instead of showing the terminal UI
    #[arg(long)]
    pub headless: bool,
    /// Address of the admin API
    #[arg(long, default_value = DEFAULT_ADMIN, env = "DEVMESH_ADMIN")]
    pub admin: String,
    /// Where the CA, logs and access log live [default: <mesh dir>/.devmesh]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Skip the mesh file's build steps
    #[arg(long)]
    pub no_build: bool,
    /// Start without the resources applied with `devmesh apply` before the last stop
    #[arg(long)]
    pub fresh: bool,
}

#[derive(Args)]
pub struct AdminArgs {
    /// Address of the running mesh's admin API
    #[arg(long, default_value = DEFAULT_ADMIN, env = "DEVMESH_ADMIN")]
    pub admin: String,
    /// The mesh's admin token [default: found in this user's runtime file for --admin; it is
    /// also in <state dir>/admin-token]
    #[arg(long, env = "DEVMESH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl AdminArgs {
    pub fn client(&self) -> crate::admin::client::Client {
        crate::admin::client::Client::new(&self.admin, self.admin_token.as_deref())
    }
}

#[derive(Args)]
pub struct ApplyArgs {
    /// A YAML file, a folder of them, or `-` for standard input (repeatable)
    #[arg(short = 'f', long = "filename", required = true)]
    pub filename: Vec<PathBuf>,
    /// Validate and show what would change, without changing anything
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// The kind of the resources to delete (vs, dr, gw, se, sidecar, ...)
    pub kind: Option<String>,
    /// Their names
    pub names: Vec<String>,
    /// Delete the resources these files declare (a file, a folder, or `-`)
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "names", "all", "selector"])]
    pub filename: Vec<PathBuf>,
    /// Namespace [default: the mesh's]
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every resource of the kind (in the namespace)
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    /// Only resources whose labels match (`app=web`, `tier!=db`, `canary`; comma-separated, all must hold)
    #[arg(short = 'l', long, conflicts_with = "names")]
    pub selector: Option<String>,
    /// Treat resources that do not exist as deleted (exit 0, no error)
    #[arg(long)]
    pub ignore_not_found: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args)]
pub struct ProxyConfigArgs {
    pub what: ProxyConfigWhat,
    /// A workload instance (reviews-v1), a workload, a service (its first instance) or a gateway
    pub workload: String,
    /// Output format
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ProxyConfigWhat {
    Routes,
    Clusters,
    Endpoints,
    Listeners,
}

#[derive(Args)]
pub struct GetArgs {
    /// workloads|wl, services|svc, or an Istio kind: virtualservices|vs, destinationrules|dr, gateways|gw, ...
    pub kind: String,
    /// Only this resource
    pub name: Option<String>,
    /// Output format
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
    Wide,
}

#[derive(Args)]
pub struct ValidateArgs {
    /// Mesh files, folders holding devmesh.yaml, or Istio YAML files and folders
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Print the root certificate (PEM), e.g. for `curl --cacert`
    /// Print the root certificate (PEM): the state dir's, else the running mesh's; never creates one
    Export {
        /// A mesh file or folder, which locates the state dir
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The state dir [default: <mesh dir>/.devmesh]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}
