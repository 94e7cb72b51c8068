//! The mesh file's `build:` steps: shell commands run in order in the mesh folder, their
//! output shown; the first failure stops `up` and names its exit code.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Result, bail};

pub async fn run(steps: &[String], cwd: &Path) -> Result<()> {
    for (i, step) in steps.iter().enumerate() {
        eprintln!("devmesh: build step {}/{}: {step}", i + 1, steps.len());
        let status = tokio::process::Command::new("sh")
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

    #[tokio::test]
    async fn steps_run_in_order_and_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let steps = vec!["echo one > out".to_string(), "exit 7".to_string(), "echo three >> out".to_string()];
        let err = run(&steps, dir.path()).await.unwrap_err().to_string();
        assert_eq!(err, "build step 2 (`exit 7`) failed with exit code 7");
        assert_eq!(std::fs::read_to_string(dir.path().join("out")).unwrap(), "one\n");
    }
}
