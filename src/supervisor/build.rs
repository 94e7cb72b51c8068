//! The mesh file's `build:` steps: shell commands run in order in the mesh folder, their
//! output shown; the first failure stops `up` and names its exit code.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Result, bail};

/// Variables `cargo run` sets for devmesh itself that must not reach a build step: ring's
/// build script (and others) track some of them, so a `cargo build` step run with them would
/// see a changed environment and rebuild ring, rustls and everything above them every time,
/// and the next `cargo run --release` of devmesh would relink for minutes.
fn cargo_run_variable(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_MANIFEST_")
        || key.starts_with("CARGO_BIN_")
        || matches!(
            key,
            "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "CARGO_RUSTC_CURRENT_DIR"
        )
}

pub async fn run(steps: &[String], cwd: &Path) -> Result<()> {
    for (i, step) in steps.iter().enumerate() {
        eprintln!("devmesh: build step {}/{}: {step}", i + 1, steps.len());
        let mut cmd = tokio::process::Command::new("sh");
        for (key, _) in std::env::vars_os() {
            if cargo_run_variable(&key.to_string_lossy()) {
                cmd.env_remove(&key);
            }
        }
        let status = cmd
            .arg("-c")
            .arg(step)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .status()
            .await;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => match s.code() {
                Some(code) => bail!("build step {} (`{step}`) failed with exit code {code}", i + 1),
                None => bail!("build step {} (`{step}`) was killed by a signal", i + 1),
            },
            Err(e) => bail!("build step {} (`{step}`) could not run: {e}", i + 1),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_runs_package_variables_are_not_passed_to_build_steps() {
        for k in ["CARGO_PKG_NAME", "CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_BIN_NAME", "CARGO_CRATE_NAME"] {
            assert!(cargo_run_variable(k), "{k}");
        }
        for k in ["CARGO", "CARGO_HOME", "CARGO_TARGET_DIR", "PATH", "RUSTFLAGS"] {
            assert!(!cargo_run_variable(k), "{k}");
        }
    }

    #[tokio::test]
    async fn steps_run_in_order_and_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let steps = vec!["echo one > out".to_string(), "exit 7".to_string(), "echo three >> out".to_string()];
        let err = run(&steps, dir.path()).await.unwrap_err().to_string();
        assert_eq!(err, "build step 2 (`exit 7`) failed with exit code 7");
        assert_eq!(std::fs::read_to_string(dir.path().join("out")).unwrap(), "one\n");
    }
}
