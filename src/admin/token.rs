//! The admin API's per-run bearer token: made at `up`, written with mode 0600 to the state dir
//! (`admin-token`) and to a per-user runtime file keyed by the admin address, so the CLI finds
//! it for a given `--admin ADDR` from any working directory. Another user of the machine can
//! read neither (the runtime folder is 0700 and must be ours), so cannot drive the mesh.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The token's file name in the state dir.
pub const STATE_FILE: &str = "admin-token";

/// A fresh random token: 32 bytes from the system's CSPRNG, hex.
pub fn generate() -> Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The per-user folder of runtime files: `$DEVMESH_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/devmesh`,
/// else `<tmp>/devmesh-<uid>` (as tmux keeps its sockets).
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DEVMESH_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("devmesh");
    }
    std::env::temp_dir().join(format!("devmesh-{}", nix::unistd::getuid()))
}

/// The runtime file of the admin API at `addr`.
pub fn runtime_file(addr: SocketAddr) -> PathBuf {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => "loopback".to_string(),
        ip => ip.to_string().replace(':', "_"),
    };
    runtime_dir().join(format!("admin-{ip}-{}.token", addr.port()))
}

/// Creates the runtime folder (0700) or checks that an existing one is ours and private.
fn private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    let meta = fs::metadata(dir)?;
    if meta.uid() != nix::unistd::getuid().as_raw() {
        bail!("{} belongs to another user; set DEVMESH_RUNTIME_DIR", dir.display());
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `token` to `path` with mode 0600 (replacing any older file, whatever its mode).
fn write_private(path: &Path, token: &str) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(())
}

/// The files a running mesh wrote its token to; removed when it stops (if still its own).
pub struct Published {
    token: String,
    files: Vec<PathBuf>,
}

impl Published {
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        for f in &self.files {
            if fs::read_to_string(f).is_ok_and(|t| t.trim() == self.token) {
                let _ = fs::remove_file(f);
            }
        }
    }
}

/// Makes the run's token and writes it to the state dir and the runtime file for `addr`. The
/// state dir's copy is required; the runtime file is best effort (a warning names why not).
pub fn publish(state_dir: &Path, addr: SocketAddr) -> Result<(Published, Option<String>)> {
    let token = generate()?;
    let state_file = state_dir.join(STATE_FILE);
    write_private(&state_file, &token)?;
    let mut files = vec![state_file];
    let runtime = runtime_file(addr);
    let warning =
        match runtime.parent().map(private_dir).unwrap_or(Ok(())).and_then(|_| write_private(&runtime, &token)) {
            Ok(()) => {
                files.push(runtime);
                None
            }
            Err(e) => Some(format!(
                "the admin token is only in {}: {e:#} (the CLI needs --admin-token or DEVMESH_ADMIN_TOKEN)",
                state_dir.join(STATE_FILE).display()
            )),
        };
    Ok((Published { token, files }, warning))
}

/// The token for the admin API at `admin` (as given to `--admin`): from the runtime file, if
/// this user has one for that address.
pub fn find(admin: &str) -> Option<String> {
    let addrs: Vec<SocketAddr> = match admin.parse() {
        Ok(a) => vec![a],
        Err(_) => admin.to_socket_addrs().ok()?.collect(),
    };
    // A mesh bound to 0.0.0.0 (or ::) keyed its file by port alone.
    let any = addrs.first().map(|a| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), a.port()));
    addrs.into_iter().chain(any).find_map(|addr| {
        let text = fs::read_to_string(runtime_file(addr)).ok()?;
        let t = text.trim();
        (!t.is_empty()).then(|| t.to_string())
    })
}

/// Compares two tokens in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_compare_exactly() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(same(a.as_bytes(), a.as_bytes()));
        assert!(!same(a.as_bytes(), b.as_bytes()));
        assert!(!same(a.as_bytes(), &a.as_bytes()[1..]));
    }

    #[test]
    fn runtime_files_are_keyed_by_address() {
        let a = runtime_file("127.0.0.1:15000".parse().unwrap());
        let b = runtime_file("127.0.0.1:15001".parse().unwrap());
        assert_ne!(a, b);
        assert!(a.to_string_lossy().ends_with("admin-127.0.0.1-15000.token"), "{}", a.display());
        let v6 = runtime_file("[::1]:15000".parse().unwrap());
        assert!(v6.to_string_lossy().ends_with("admin-__1-15000.token"), "{}", v6.display());
    }
}
