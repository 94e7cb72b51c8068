//! Workload identities and their TLS configurations: one certificate per SPIFFE identity,
//! rotated at half its lifetime (as Istio's agent does) and swapped in without rebuilding
//! configs; mTLS with TLS 1.3, session resumption, and SPIFFE checked by the caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_util::sync::CancellationToken;

use super::ca::{Ca, TRUST_DOMAIN};

/// ALPN ids between sidecars: what follows the handshake.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
pub const ALPN_TCP: &[u8] = b"istio";

pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SPIFFE URI SAN of a certificate.
pub fn spiffe_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
        _ => None,
    })
}

/// Lower-case hex SHA-256 of a certificate (the `Hash=` of `x-forwarded-client-cert`).
pub fn cert_hash(cert: &CertificateDer<'_>) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The current certificate of one identity, shared by its server and client configs.
#[derive(Debug)]
struct CertSlot(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks that the server's certificate chains to the mesh root. The SPIFFE identity is
/// compared by the caller after the handshake (webpki checks DNS names only).
#[derive(Debug)]
struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS material for one SPIFFE identity.
pub struct WorkloadTls {
    pub spiffe: String,
    /// The same, as request records carry it.
    pub spiffe_name: crate::telemetry::Name,
    slot: Arc<CertSlot>,
    not_after: Mutex<SystemTime>,
    /// Inbound: mTLS, client certificate required, ALPN h2 / http/1.1 / istio (TCP).
    pub server: Arc<ServerConfig>,
    client_h1: Arc<ClientConfig>,
    client_h2: Arc<ClientConfig>,
    client_tcp: Arc<ClientConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    Http2,
    Tcp,
}

impl WorkloadTls {
    pub fn client(&self, alpn: Alpn) -> Arc<ClientConfig> {
        match alpn {
            Alpn::Http1 => self.client_h1.clone(),
            Alpn::Http2 => self.client_h2.clone(),
            Alpn::Tcp => self.client_tcp.clone(),
        }
    }

    /// The certificate currently served (for tests and `proxy-config`).
    #[cfg(test)]
    pub fn current_cert(&self) -> CertificateDer<'static> {
        self.slot.0.load().cert[0].clone()
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after.lock().map(|t| *t).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Issues and rotates the certificates of every identity in the mesh.
pub struct Certs {
    ca: Arc<Ca>,
    ttl: Duration,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    sessions: Arc<ClientSessionMemoryCache>,
    entries: Mutex<HashMap<String, Arc<WorkloadTls>>>,
}

impl Certs {
    pub fn new(ca: Arc<Ca>, ttl: Duration) -> Result<Arc<Certs>> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.root_der().clone())?;
        Ok(Arc::new(Certs {
            ca,
            ttl,
            provider: provider(),
            roots: Arc::new(roots),
            sessions: Arc::new(ClientSessionMemoryCache::new(1024)),
            entries: Mutex::new(HashMap::new()),
        }))
    }

    fn certified(&self, spiffe: &str) -> Result<(Arc<CertifiedKey>, SystemTime)> {
        let issued = self.ca.issue(spiffe, self.ttl)?;
        let key = self.provider.key_provider.load_private_key(issued.key)?;
        Ok((Arc::new(CertifiedKey::new(issued.chain, key)), issued.not_after))
    }

    /// The TLS material of an identity, issuing its first certificate if needed.
    pub fn identity(&self, spiffe: &str) -> Result<Arc<WorkloadTls>> {
        let mut entries = self.entries.lock().map_err(|_| anyhow::anyhow!("certificate store poisoned"))?;
        if let Some(e) = entries.get(spiffe) {
            return Ok(e.clone());
        }
        let (ck, not_after) = self.certified(spiffe)?;
        let slot = Arc::new(CertSlot(ArcSwap::new(ck)));
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(slot.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec(), ALPN_TCP.to_vec()];
        let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>> {
            let mut c = ClientConfig::builder_with_provider(self.provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
                    roots: self.roots.clone(),
                    provider: self.provider.clone(),
                }))
                .with_client_cert_resolver(slot.clone());
            c.alpn_protocols = vec![alpn.to_vec()];
            c.resumption = Resumption::store(self.sessions.clone());
            c.enable_sni = false;
            Ok(Arc::new(c))
        };
        let tls = Arc::new(WorkloadTls {
            spiffe: spiffe.to_string(),
            spiffe_name: crate::telemetry::Name::new(spiffe),
            slot: slot.clone(),
            not_after: Mutex::new(not_after),
            server: Arc::new(server),
            client_h1: client(ALPN_HTTP11)?,
            client_h2: client(ALPN_H2)?,
            client_tcp: client(ALPN_TCP)?,
        });
        entries.insert(spiffe.to_string(), tls.clone());
        Ok(tls)
    }

    /// Re-issues every certificate that has used half of its lifetime; returns how many.
    pub fn rotate_due(&self) -> usize {
        let all: Vec<Arc<WorkloadTls>> = match self.entries.lock() {
            Ok(e) => e.values().cloned().collect(),
            Err(_) => return 0,
        };
        let now = SystemTime::now();
        let mut rotated = 0;
        for tls in all {
            let due = tls.not_after().checked_sub(self.ttl / 2).unwrap_or(SystemTime::UNIX_EPOCH);
            if now < due {
                continue;
            }
            match self.certified(&tls.spiffe) {
                Ok((ck, not_after)) => {
                    tls.slot.0.store(ck);
                    if let Ok(mut t) = tls.not_after.lock() {
                        *t = not_after;
                    }
                    rotated += 1;
                    tracing::debug!(identity = %tls.spiffe, "rotated workload certificate");
                }
                Err(e) => {
                    tracing::warn!(identity = %tls.spiffe, "certificate rotation failed: {e:#}")
                }
            }
        }
        rotated
    }

    /// Runs rotation until `stop` is cancelled.
    pub async fn run_rotation(self: Arc<Self>, stop: CancellationToken) {
        let tick = (self.ttl / 20).clamp(Duration::from_millis(50), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(tick) => { self.rotate_due(); }
            }
        }
    }
}

/// A rustls server name unique per endpoint, so resumption tickets never cross endpoints.
pub fn endpoint_server_name(port: u16) -> ServerName<'static> {
    ServerName::try_from(format!("ep{port}.devmesh.internal"))
        .unwrap_or(ServerName::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn certs(ttl: Duration) -> (tempfile::TempDir, Arc<Certs>) {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Arc::new(Ca::load_or_create(tmp.path()).unwrap());
        (tmp, Certs::new(ca, ttl).unwrap())
    }

    #[tokio::test]
    async fn mutual_tls_carries_both_spiffe_ids() {
        let (_tmp, certs) = certs(Duration::from_secs(3600));
        let server_id = spiffe_id("default", "reviews");
        let client_id = spiffe_id("default", "productpage");
        let server = certs.identity(&server_id).unwrap();
        let client = certs.identity(&client_id).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let (_, conn) = tls.get_ref();
            let peer = spiffe_of(&conn.peer_certificates().unwrap()[0]);
            let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
            tls.write_all(b"ok").await.unwrap();
            (peer, alpn)
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client.client(Alpn::Http2));
        let mut tls = connector.connect(endpoint_server_name(addr.port()), tcp).await.unwrap();
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.unwrap();
        let seen_server = spiffe_of(&tls.get_ref().1.peer_certificates().unwrap()[0]);
        assert_eq!(seen_server.as_deref(), Some("spiffe://cluster.local/ns/default/sa/reviews"));
        let (peer, alpn) = srv.await.unwrap();
        assert_eq!(peer.as_deref(), Some("spiffe://cluster.local/ns/default/sa/productpage"));
        assert_eq!(alpn.as_deref(), Some(ALPN_H2));
    }

    #[tokio::test]
    async fn a_client_without_a_mesh_certificate_is_refused() {
        let (_tmp, certs) = certs(Duration::from_secs(3600));
        let server = certs.identity(&spiffe_id("default", "reviews")).unwrap();
        let (_tmp2, other) = certs_other();
        let stranger = other.identity(&spiffe_id("default", "evil")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.is_ok()
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(stranger.client(Alpn::Http1));
        let client_ok = connector.connect(endpoint_server_name(addr.port()), tcp).await.is_ok();
        assert!(!client_ok || !srv.await.unwrap(), "a certificate from another CA must not be accepted");
    }

    fn certs_other() -> (tempfile::TempDir, Arc<Certs>) {
        certs(Duration::from_secs(3600))
    }

    #[test]
    fn certificates_rotate_at_half_life() {
        let (_tmp, certs) = certs(Duration::from_millis(400));
        let id = certs.identity(&spiffe_id("default", "a")).unwrap();
        let first = id.current_cert();
        assert_eq!(certs.rotate_due(), 0, "a fresh certificate is not due");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(certs.rotate_due(), 1);
        let second = id.current_cert();
        assert_ne!(first, second);
        assert_eq!(spiffe_of(&second).as_deref(), Some("spiffe://cluster.local/ns/default/sa/a"));
    }
}
