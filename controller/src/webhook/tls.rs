//! TLS for the admission webhook: the API server calls webhooks over HTTPS only.
//!
//! The certificate and key are PEM files (a Secret mounted into the pod, usually written by
//! cert-manager). They are read again whenever either file changes, at the next handshake, so a
//! rotated certificate is served without a restart. Handshakes run in tasks of their own, so a
//! slow or silent client cannot hold up the others.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files the webhook serves.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

/// Why the certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    path: String,
    message: String,
}

impl TlsError {
    fn at(path: &Path, message: impl std::fmt::Display) -> Self {
        TlsError {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

impl TlsFiles {
    /// Reads and parses both files.
    fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let read = |path: &Path| std::fs::read(path).map_err(|e| TlsError::at(path, e));
        let certs = rustls_pemfile::certs(&mut read(&self.cert)?.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::at(&self.cert, e))?;
        if certs.is_empty() {
            return Err(TlsError::at(&self.cert, "no certificate found"));
        }
        let key = rustls_pemfile::private_key(&mut read(&self.key)?.as_slice())
            .map_err(|e| TlsError::at(&self.key, e))?
            .ok_or_else(|| TlsError::at(&self.key, "no private key found"))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| TlsError::at(&self.key, e))?;
        Ok(Arc::new(CertifiedKey::new(certs, signer)))
    }

    fn modified(&self) -> Option<Stamp> {
        let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((at(&self.cert)?, at(&self.key)?))
    }
}

/// The modification times of the certificate and key files.
type Stamp = (SystemTime, SystemTime);

/// Serves the certificate as the files hold it now: reloaded when their modification times
/// change; a reload that fails keeps the last good certificate (and logs why).
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    current: Mutex<(Option<Stamp>, Arc<CertifiedKey>)>,
}

impl Reloading {
    fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let stamp = files.modified();
        let key = files.load()?;
        Ok(Reloading {
            files,
            current: Mutex::new((stamp, key)),
        })
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock();
        let stamp = self.files.modified();
        if stamp.is_some() && stamp != current.0 {
            match self.files.load() {
                Ok(key) => {
                    tracing::info!(cert = %self.files.cert.display(), "webhook certificate reloaded");
                    *current = (stamp, key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook certificate not reloaded; serving the last one")
                }
            }
        }
        Some(current.1.clone())
    }
}

/// A TLS listener for `axum::serve`: accepts TCP connections and completes each handshake in a
/// task of its own (dropped with the listener), handing over the finished streams.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    /// Binds `addr` and serves `files`; fails if the certificate cannot be loaded.
    pub async fn bind(addr: SocketAddr, files: TlsFiles) -> io::Result<Self> {
        let resolver = Reloading::new(files).map_err(io::Error::other)?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsListener {
            tcp: TcpListener::bind(addr).await?,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshakes: JoinSet::new(),
        })
    }

    fn handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        let acceptor = self.acceptor.clone();
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some((tls, peer)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "webhook TLS handshake timed out");
                    None
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => self.handshake(stream, peer),
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA, and a way to write a server certificate for 127.0.0.1 signed by it.
    struct Pki {
        ca: CertifiedIssuer<'static, KeyPair>,
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Self {
            let mut params = CertificateParams::new(Vec::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Pki {
                ca,
                dir: tempfile::tempdir().unwrap(),
            }
        }

        /// Writes a leaf certificate whose common name is `name`.
        fn issue(&self, name: &str) -> TlsFiles {
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            let files = TlsFiles {
                cert: self.dir.path().join("tls.crt"),
                key: self.dir.path().join("tls.key"),
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            files
        }

        /// Connects to `addr` trusting only the CA; the server's leaf certificate (DER) and the
        /// body of `GET /`.
        async fn get(&self, addr: SocketAddr) -> (Vec<u8>, String) {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut reply = String::new();
            tls.read_to_string(&mut reply).await.unwrap();
            (leaf, reply)
        }
    }

    #[tokio::test]
    async fn serves_https_and_picks_up_a_rotated_certificate() {
        let pki = Pki::new();
        let files = pki.issue("first");
        let listener = TlsListener::bind("127.0.0.1:0".parse().unwrap(), files.clone())
            .await
            .unwrap();
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        // A client that connects and never speaks holds up nobody.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (first, reply) = pki.get(addr).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("hello"), "{reply}");

        // Rotation: new files (a later modification time) are served from the next handshake.
        std::thread::sleep(Duration::from_millis(20));
        pki.issue("second");
        let (second, reply) = pki.get(addr).await;
        assert!(reply.ends_with("hello"), "{reply}");
        assert_ne!(first, second, "the rotated certificate is served");

        // A broken file keeps the last good certificate.
        std::fs::write(&files.key, "not a key").unwrap();
        let (third, _) = pki.get(addr).await;
        assert_eq!(third, second);
        server.abort();
    }

    #[tokio::test]
    async fn a_missing_certificate_is_an_error_at_bind() {
        let files = TlsFiles {
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
        };
        let err = TlsListener::bind("127.0.0.1:0".parse().unwrap(), files)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/tls.crt"), "{err}");
    }
}
