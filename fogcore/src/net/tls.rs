//! TLS for the control plane (rustls with ring): the master's server certificate (given, or
//! self-signed on first start), the listener `axum::serve` takes for HTTPS, and how clients (the
//! CLI, Python, nodes) trust a master: the system's roots, a CA file, or a pinned SHA-256
//! fingerprint of its certificate. The boot path (iPXE, the boot environment) stays plain HTTP on
//! the site LAN: every chunk is checked by its hash and a kernel line carries only a task token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// The one crypto provider (ring) of every TLS end fog has.
pub fn provider() -> Arc<CryptoProvider> {
    // ring is marked deprecated in rustls 0.23.48 for lacking post-quantum key exchange; it is
    // kept for its build time (aws-lc-sys compiles for minutes on 2 cores).
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A `reqwest` client builder with fog's crypto provider installed as the process default
/// (reqwest finds none of its own): every HTTP client fog builds starts here.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err: another part of the process installed one first; that one serves.
        let _ = CryptoProvider::install_default(Arc::unwrap_or_clone(provider()));
    });
    reqwest::Client::builder()
}

/// A SHA-256 fingerprint of a certificate (DER), written `AB:CD:...` as `openssl x509
/// -fingerprint -sha256` prints it; read with or without colons, any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        f.write_str(&hex.join(":"))
    }
}

impl FromStr for Fingerprint {
    type Err = Error;

    fn from_str(text: &str) -> Result<Fingerprint> {
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&digits).ok().filter(|b| b.len() == 32).ok_or_else(|| {
            Error::invalid(
                "certificate fingerprint",
                text,
                "give the SHA-256 as 64 hex digits (colons allowed)",
            )
        })?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(Fingerprint(out))
    }
}

/// How a client trusts the master's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The system's root certificates.
    #[default]
    System,
    /// Only certificates issued by the CA (or equal to the certificate) in this PEM file.
    CaFile(PathBuf),
    /// Only the certificate with this SHA-256 fingerprint (its names are not checked).
    Pinned(Fingerprint),
}

impl Trust {
    /// From a CA file and a fingerprint as given (`--master-ca`, `--master-fingerprint`, their
    /// `[node]` keys): at most one of them.
    pub fn from_options(ca: Option<&Path>, fingerprint: Option<&str>) -> Result<Trust> {
        match (ca, fingerprint) {
            (None, None) => Ok(Trust::System),
            (Some(ca), None) => Ok(Trust::CaFile(ca.to_path_buf())),
            (None, Some(fp)) => Ok(Trust::Pinned(fp.parse()?)),
            (Some(ca), Some(_)) => Err(Error::invalid(
                "master trust",
                ca.display().to_string(),
                "give a CA file or a pinned fingerprint, not both",
            )),
        }
    }

    /// A builder that trusts the master this way. A CA file that cannot be read is an error
    /// naming it.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder> {
        let builder = http_client_builder();
        match self {
            Trust::System => {
                let tls = rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| Error::internal(format!("TLS versions: {e}")))?;
                let config = match rustls_platform_verifier::Verifier::new(provider()) {
                    Ok(system) => tls
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(system))
                        .with_no_client_auth(),
                    // No CA certificates on this system (the boot environment carries none):
                    // no certificate is trusted, and plain http:// works as ever. reqwest's own
                    // default would refuse to build a client at all.
                    Err(_) => tls
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                };
                Ok(builder.tls_backend_preconfigured(config))
            }
            Trust::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| Error::invalid("CA file", path.display().to_string(), "holds no PEM certificate"))?;
                Ok(builder.tls_certs_only(certs))
            }
            Trust::Pinned(fingerprint) => {
                let provider = provider();
                let verifier = Arc::new(PinnedCertificate {
                    expected: *fingerprint,
                    algorithms: provider.signature_verification_algorithms,
                });
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| Error::internal(format!("TLS versions: {e}")))?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
                Ok(builder.tls_backend_preconfigured(config))
            }
        }
    }
}

/// Accepts exactly the certificate of a fingerprint: a self-signed master's, pinned by its
/// admin. The handshake's signatures are still checked against that certificate's key.
#[derive(Debug)]
struct PinnedCertificate {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity.as_ref());
        if presented == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has SHA-256 fingerprint {presented}, not the pinned {}",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// An error and every error under it, `: `-joined: reqwest's own text ("error sending request")
/// hides the TLS reason underneath.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}

/// Whether a failed request failed because the server's certificate is not trusted (an unknown
/// issuer, a wrong pin, an expired or misnamed certificate).
pub fn is_untrusted(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut pending = vec![e];
    while let Some(error) = pending.pop() {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return matches!(tls, rustls::Error::InvalidCertificate(_) | rustls::Error::General(_));
        }
        pending.extend(error.source());
        // An io::Error's source() skips the error it wraps (hyper nests two): look inside.
        if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            pending.push(inner);
        }
    }
    false
}

/// A request that got no answer, as fog reports it: an untrusted certificate is the caller's
/// setting to fix (bad input: a retry cannot help, and nothing was sent); anything else may pass
/// if tried again.
pub fn request_error(url: &str, e: &reqwest::Error) -> Error {
    if is_untrusted(e) {
        Error::invalid("master certificate", url, error_chain(e))
    } else {
        Error::Http {
            url: url.to_string(),
            reason: error_chain(e),
        }
    }
}

/// A server's certificate and key, ready to serve.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    fingerprint: Fingerprint,
    cert: PathBuf,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("fingerprint", &self.fingerprint.to_string())
            .finish()
    }
}

/// The certificate file `--tls-self-signed` keeps in a data directory.
pub const SELF_SIGNED_CERT: &str = "tls-cert.pem";
/// Its key (mode 0600).
pub const SELF_SIGNED_KEY: &str = "tls-key.pem";

impl ServerTls {
    /// From PEM files: the certificate chain (server first) and its private key (PKCS#8, PKCS#1
    /// or SEC1). An error names the file.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls> {
        let bad = |path: &Path, reason: String| Error::invalid("TLS file", path.display().to_string(), reason);
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, e.to_string()))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, e.to_string()))?;
        let first = certs
            .first()
            .ok_or_else(|| bad(cert, "holds no PEM certificate".into()))?;
        let fingerprint = Fingerprint::of(first.as_ref());
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS versions: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .map_err(|e| bad(key, format!("does not go with {}: {e}", cert.display())))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            fingerprint,
            cert: cert.to_path_buf(),
        })
    }

    /// The self-signed certificate kept in `dir` ([`SELF_SIGNED_CERT`], [`SELF_SIGNED_KEY`]),
    /// made on the first call for `localhost`, the loopback addresses, this host's name and
    /// `names`. Later calls load it, so the fingerprint nodes pinned stays.
    pub fn self_signed(dir: &Path, names: &[String]) -> Result<ServerTls> {
        let (cert, key) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
        if !cert.exists() {
            let mut all = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
            if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                all.push(host.trim().to_string());
            }
            all.extend(names.iter().cloned());
            all.retain(|n| !n.is_empty());
            all.dedup();
            let made = rcgen::generate_simple_self_signed(all)
                .map_err(|e| Error::internal(format!("making a self-signed certificate: {e}")))?;
            crate::fsutil::write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
            crate::fsutil::write_private(&cert, made.cert.pem().as_bytes())?;
        }
        ServerTls::load(&cert, &key)
    }

    /// The SHA-256 fingerprint of the server's certificate: what clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The certificate file (what `curl --cacert` takes for a self-signed one).
    pub fn cert_file(&self) -> &Path {
        &self.cert
    }

    /// A listener for `axum::serve` that speaks TLS on `tcp` until `stop` is cancelled.
    pub fn listener(&self, tcp: TcpListener, stop: CancellationToken) -> Result<TlsListener> {
        TlsListener::new(tcp, tokio_rustls::TlsAcceptor::from(self.config.clone()), stop)
    }
}

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS connections, each handshaken in its own task (a slow or broken client holds up nobody),
/// handed to `axum::serve` as they complete.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(tcp: TcpListener, acceptor: tokio_rustls::TlsAcceptor, stop: CancellationToken) -> Result<TlsListener> {
        let local = tcp.local_addr().map_err(|e| Error::io("TLS listener", e))?;
        let (send, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, then go on serving.
                            tracing::warn!("tls: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, send) = (acceptor.clone(), send.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = send.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "tls: handshake: {e}"),
                        Err(_) => tracing::debug!(%peer, "tls: handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The acceptor stopped (shutdown): axum's graceful shutdown ends the serve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_with_or_without_colons() -> Result<()> {
        let fp = Fingerprint::of(b"certificate");
        let text = fp.to_string();
        assert_eq!(text.len(), 32 * 3 - 1);
        assert_eq!(text.parse::<Fingerprint>()?, fp);
        assert_eq!(text.replace(':', "").to_lowercase().parse::<Fingerprint>()?, fp);
        assert!("AB:CD".parse::<Fingerprint>().is_err());
        assert!(Trust::from_options(Some(Path::new("/ca.pem")), Some(&text)).is_err());
        Ok(())
    }
}
