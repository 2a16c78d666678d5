//! Where and how to reach an ovsdb-server: `tcp:`, `ssl:` and `unix:` remotes.
//!
//! Remote strings use ovsdb's own syntax (`tcp:127.0.0.1:6641`, `ssl:[::1]:6641`,
//! `unix:/run/ovn/ovnnb_db.sock`), comma-separated for a cluster. `ssl:` uses
//! rustls with a client certificate and a CA bundle, like OVN's `pssl` remotes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

/// One server address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Remote {
    /// Plain TCP.
    Tcp {
        /// Host name or IP literal (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// TLS over TCP.
    Ssl {
        /// Host name or IP literal (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix domain socket.
    Unix(PathBuf),
}

/// Why a remote string is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OVSDB remote {remote:?}: {reason}")]
pub struct RemoteParseError {
    /// The remote as given.
    pub remote: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Remote {
    /// Parses one remote such as `tcp:127.0.0.1:6641`, `ssl:[fd00::1]:6641` or `unix:/path`.
    pub fn parse(text: &str) -> Result<Self, RemoteParseError> {
        let text = text.trim();
        let err = |reason| RemoteParseError {
            remote: text.to_owned(),
            reason,
        };
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| err("expected tcp:, ssl: or unix:"))?;
        match kind {
            "unix" if rest.is_empty() => Err(err("empty socket path")),
            "unix" => Ok(Remote::Unix(PathBuf::from(rest))),
            "tcp" | "ssl" => {
                let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
                    let (host, after) = bracketed
                        .split_once(']')
                        .ok_or_else(|| err("unclosed '[' around IPv6 address"))?;
                    let port = after
                        .strip_prefix(':')
                        .ok_or_else(|| err("expected :PORT after ']'"))?;
                    (host, port)
                } else {
                    let (host, port) = rest
                        .rsplit_once(':')
                        .ok_or_else(|| err("expected HOST:PORT"))?;
                    if host.contains(':') {
                        return Err(err("IPv6 addresses must be in brackets"));
                    }
                    (host, port)
                };
                if host.is_empty() {
                    return Err(err("empty host"));
                }
                let port: u16 = port.parse().map_err(|_| err("invalid port"))?;
                let host = host.to_owned();
                Ok(if kind == "tcp" {
                    Remote::Tcp { host, port }
                } else {
                    Remote::Ssl { host, port }
                })
            }
            _ => Err(err("expected tcp:, ssl: or unix:")),
        }
    }

    /// Parses a comma-separated list of remotes; empty entries are refused.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, RemoteParseError> {
        text.split(',').map(Remote::parse).collect()
    }

    /// Whether the server sends inactivity probes on this kind of remote (not on unix sockets).
    pub fn is_network(&self) -> bool {
        !matches!(self, Remote::Unix(_))
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host_port = |f: &mut fmt::Formatter<'_>, kind: &str, host: &str, port: u16| {
            if host.contains(':') {
                write!(f, "{kind}:[{host}]:{port}")
            } else {
                write!(f, "{kind}:{host}:{port}")
            }
        };
        match self {
            Remote::Tcp { host, port } => host_port(f, "tcp", host, *port),
            Remote::Ssl { host, port } => host_port(f, "ssl", host, *port),
            Remote::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for Remote {
    type Err = RemoteParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Remote::parse(s)
    }
}

/// PEM files for `ssl:` remotes: our certificate and key, and the CA that signed the server's.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// CA certificate(s) the server certificate must chain to.
    pub ca_cert: PathBuf,
    /// Our certificate chain (the server checks it against its own CA).
    pub client_cert: PathBuf,
    /// The private key of `client_cert`.
    pub client_key: PathBuf,
    /// Check that the server certificate names the host we dialled. OVS's `ovs-pki`
    /// certificates name no host, and OVS itself does not check, so `false` keeps
    /// the chain check but skips the name check.
    pub verify_hostname: bool,
}

impl TlsConfig {
    /// Certificate paths with host name verification on.
    pub fn new(
        ca_cert: impl Into<PathBuf>,
        client_cert: impl Into<PathBuf>,
        client_key: impl Into<PathBuf>,
    ) -> Self {
        Self {
            ca_cert: ca_cert.into(),
            client_cert: client_cert.into(),
            client_key: client_key.into(),
            verify_hostname: true,
        }
    }

    /// Sets whether the server certificate must name the dialled host.
    pub fn verify_hostname(mut self, verify: bool) -> Self {
        self.verify_hostname = verify;
        self
    }

    /// Loads the PEM files into a rustls connector.
    pub fn connector(&self) -> Result<TlsConnector, TransportError> {
        let tls_err = |path: &Path, e: &dyn fmt::Display| {
            TransportError::Tls(format!("{}: {e}", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certs(&self.ca_cert)? {
            roots.add(cert).map_err(|e| tls_err(&self.ca_cert, &e))?;
        }
        let chain = load_certs(&self.client_cert)?;
        let key_pem = std::fs::read(&self.client_key).map_err(|e| tls_err(&self.client_key, &e))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| tls_err(&self.client_key, &e))?
            .ok_or_else(|| tls_err(&self.client_key, &"no private key found"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TransportError::Tls(e.to_string()))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let builder = if self.verify_hostname {
            builder.with_webpki_verifier(verifier)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier(verifier)))
        };
        let config = builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_err(&self.client_cert, &e))?;
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

fn load_certs(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TransportError> {
    let pem =
        std::fs::read(path).map_err(|e| TransportError::Tls(format!("{}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TransportError::Tls(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Verifies the server's chain against the CA but accepts any name in it, as OVS does.
#[derive(Debug)]
struct ChainOnlyVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the name only after the chain verified.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a transport could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket could not be opened.
    #[error("cannot connect to {remote}: {source}")]
    Connect {
        /// The remote dialled.
        remote: Remote,
        /// The underlying error.
        source: io::Error,
    },
    /// The TLS configuration or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// An `ssl:` remote was given without a [`TlsConfig`].
    #[error("remote {0} needs a TLS configuration")]
    TlsNotConfigured(Remote),
}

/// The `--ssl-*` command-line flags of a program that talks to OVSDB servers over `ssl:`
/// remotes (the `clap` feature), as OVS's own tools take them: all three files or none.
#[cfg(feature = "clap")]
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// Private key (PEM) for `ssl:` database remotes.
    #[arg(long = "ssl-private-key", env = "OVSDB_SSL_PRIVATE_KEY")]
    pub private_key: Option<PathBuf>,
    /// Certificate (PEM) for that key, shown to the server.
    #[arg(long = "ssl-certificate", env = "OVSDB_SSL_CERTIFICATE")]
    pub certificate: Option<PathBuf>,
    /// CA certificate (PEM) the server's certificate must chain to.
    #[arg(long = "ssl-ca-cert", env = "OVSDB_SSL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Also require the server's certificate to name the host dialled (OVS does not check;
    /// `ovs-pki` certificates name no host).
    #[arg(long = "ssl-verify-hostname", env = "OVSDB_SSL_VERIFY_HOSTNAME")]
    pub verify_hostname: bool,
}

#[cfg(feature = "clap")]
impl TlsArgs {
    /// The TLS configuration the flags give, `None` without any. The files are read when an
    /// `ssl:` remote is dialled, so they may be absent while every remote is `tcp:` or `unix:`.
    pub fn config(&self) -> Result<Option<TlsConfig>, String> {
        match (&self.private_key, &self.certificate, &self.ca_cert) {
            (None, None, None) => Ok(None),
            (Some(key), Some(cert), Some(ca)) => Ok(Some(
                TlsConfig::new(ca, cert, key).verify_hostname(self.verify_hostname),
            )),
            _ => {
                Err("--ssl-private-key, --ssl-certificate and --ssl-ca-cert go together".to_owned())
            }
        }
    }
}

/// An open byte stream to a server, whatever the transport.
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Tcp(_) => "Stream::Tcp",
            Stream::Unix(_) => "Stream::Unix",
            Stream::Tls(_) => "Stream::Tls",
        })
    }
}

/// Opens a stream to `remote`; `tls` is required for `ssl:` remotes.
pub async fn connect(
    remote: &Remote,
    tls: Option<&TlsConnector>,
) -> Result<Stream, TransportError> {
    let connect_err = |source| TransportError::Connect {
        remote: remote.clone(),
        source,
    };
    match remote {
        Remote::Tcp { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(connect_err)?;
            stream.set_nodelay(true).map_err(connect_err)?;
            Ok(Stream::Tcp(stream))
        }
        Remote::Unix(path) => Ok(Stream::Unix(
            UnixStream::connect(path).await.map_err(connect_err)?,
        )),
        Remote::Ssl { host, port } => {
            let connector = tls.ok_or_else(|| TransportError::TlsNotConfigured(remote.clone()))?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| TransportError::Tls(format!("server name {host:?}: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(connect_err)?;
            tcp.set_nodelay(true).map_err(connect_err)?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| TransportError::Tls(format!("handshake with {remote}: {e}")))?;
            Ok(Stream::Tls(Box::new(tls)))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            Remote::parse("tcp:127.0.0.1:6641").unwrap(),
            Remote::Tcp {
                host: "127.0.0.1".into(),
                port: 6641
            }
        );
        assert_eq!(
            Remote::parse("ssl:[fd00::1]:6643").unwrap(),
            Remote::Ssl {
                host: "fd00::1".into(),
                port: 6643
            }
        );
        assert_eq!(
            Remote::parse("unix:/run/ovn/ovnnb_db.sock").unwrap(),
            Remote::Unix("/run/ovn/ovnnb_db.sock".into())
        );
        assert_eq!(
            Remote::parse(" tcp:ovn-nb.example:6641 ").unwrap(),
            Remote::Tcp {
                host: "ovn-nb.example".into(),
                port: 6641
            }
        );
    }

    #[test]
    fn parses_comma_separated_list() {
        let list = Remote::parse_list("tcp:[::1]:1,tcp:127.0.0.1:2,unix:/x").unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].to_string(), "tcp:[::1]:1");
        assert_eq!(list[1].to_string(), "tcp:127.0.0.1:2");
        assert_eq!(list[2].to_string(), "unix:/x");
    }

    #[test]
    fn rejects_bad_remotes_with_a_reason() {
        for (bad, reason) in [
            ("127.0.0.1:6641", "expected tcp:, ssl: or unix:"),
            ("udp:1.2.3.4:5", "expected tcp:, ssl: or unix:"),
            ("tcp:127.0.0.1", "expected HOST:PORT"),
            ("tcp:::1:6641", "IPv6 addresses must be in brackets"),
            ("tcp:[::1:6641", "unclosed '[' around IPv6 address"),
            ("tcp:[::1]6641", "expected :PORT after ']'"),
            ("tcp:1.2.3.4:99999", "invalid port"),
            ("tcp::6641", "empty host"),
            ("unix:", "empty socket path"),
            ("", "expected tcp:, ssl: or unix:"),
        ] {
            assert_eq!(Remote::parse(bad).unwrap_err().reason, reason, "{bad}");
        }
        assert!(Remote::parse_list("tcp:1.2.3.4:5,,unix:/x").is_err());
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "tcp:10.0.0.1:6641",
            "ssl:[2001:db8::2]:6641",
            "unix:/tmp/nb.sock",
        ] {
            assert_eq!(Remote::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn missing_pem_files_give_a_clear_error() {
        let err = TlsConfig::new(
            "/nonexistent/ca.pem",
            "/nonexistent/c.pem",
            "/nonexistent/k.pem",
        )
        .connector()
        .err()
        .expect("fails");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[cfg(feature = "clap")]
    #[test]
    fn ssl_flags_come_all_three_or_not_at_all() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            tls: TlsArgs,
        }
        let parse = |args: &[&str]| {
            Flags::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .unwrap()
                .tls
                .config()
        };
        assert!(parse(&[]).unwrap().is_none());
        let tls = parse(&[
            "--ssl-private-key=k.pem",
            "--ssl-certificate=c.pem",
            "--ssl-ca-cert=ca.pem",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                tls.client_key,
                tls.client_cert,
                tls.ca_cert,
                tls.verify_hostname
            ),
            ("k.pem".into(), "c.pem".into(), "ca.pem".into(), false)
        );
        let partial = parse(&["--ssl-private-key=k.pem"]).unwrap_err();
        assert!(partial.contains("go together"), "{partial}");
    }
}
