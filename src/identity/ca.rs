//! The mesh root CA: created on first run in `<state-dir>/ca/` (key mode 0600), reused after,
//! and used to issue workload certificates in memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const TRUST_DOMAIN: &str = "cluster.local";
const CERT_FILE: &str = "root-cert.pem";
const KEY_FILE: &str = "root-key.pem";

pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued workload certificate and its key.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: SystemTime,
}

impl Ca {
    /// Loads `<dir>/root-cert.pem` + `root-key.pem`, or creates them when neither exists.
    pub fn load_or_create(dir: &Path) -> Result<Ca> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => Self::create(dir, &cert_path, &key_path),
            _ => bail!(
                "incomplete CA in {}: expected both {CERT_FILE} and {KEY_FILE} (remove the folder to start a new CA)",
                dir.display()
            ),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let cert_pem =
            std::fs::read_to_string(cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(key_path).with_context(|| format!("reading {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem).with_context(|| format!("parsing {}", key_path.display()))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).with_context(|| format!("parsing {}", cert_path.display()))?;
        let pem = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes());
        let cert_der: CertificateDer<'static> =
            pem.map_err(|e| anyhow::anyhow!("parsing {}: {e:?}", cert_path.display()))?;
        Ok(Ca { cert_pem, cert_der, issuer })
    }

    fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<Ca> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, TRUST_DOMAIN);
        dn.push(DnType::CommonName, "devmesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        write_private(key_path, &key.serialize_pem())?;
        std::fs::write(cert_path, cert.pem()).with_context(|| format!("writing {}", cert_path.display()))?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(Ca { cert_pem, cert_der, issuer: Issuer::new(params, key) })
    }

    pub fn root_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a leaf for `spiffe_id` (URI SAN), usable as TLS server and client, valid for `ttl`.
    pub fn issue(&self, spiffe_id: &str, ttl: Duration) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::try_from(ttl)?;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Issued { chain: vec![cert.der().clone()], key: key_der, not_after: SystemTime::now() + ttl })
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `<state-dir>/ca`
/// The root certificate (PEM) in a CA folder, if one was created there.
pub fn read_root(dir: &Path) -> Option<String> {
    let pem = std::fs::read_to_string(dir.join("root-cert.pem")).ok()?;
    pem.contains("BEGIN CERTIFICATE").then_some(pem)
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ca")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused_with_private_key_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(tmp.path()).unwrap();
        let again = Ca::load_or_create(tmp.path()).unwrap();
        assert_eq!(ca.root_pem(), again.root_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tmp.path().join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A certificate issued by the reloaded CA chains to the original root.
        let issued = again.issue("spiffe://cluster.local/ns/default/sa/x", Duration::from_secs(60)).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(ca.root_der()).unwrap();
        assert_eq!(leaf.issuer(), root.subject());
        assert!(leaf.verify_signature(Some(root.public_key())).is_ok());
    }

    #[test]
    fn half_a_ca_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(CERT_FILE), "x").unwrap();
        assert!(Ca::load_or_create(tmp.path()).is_err());
    }
}
