//! TLS on the doors' listeners: rustls (no OpenSSL), with the `ring` crypto provider (it builds
//! with the C compiler alone), over sockets through [`TlsStream`], which keeps an idle
//! connection's buffers released (see `tls_stream.rs` for why it is not tokio-rustls).
//!
//! One [`Tls`] per set of files (a certificate chain, its key, optionally the CAs whose client
//! certificates are required: mutual TLS). Each connection's handshake runs in the
//! connection's own task, under a timeout, so a client that opens a socket and stalls the
//! handshake (slowloris) holds only its own slot, and only that long. [`Tls::reload`] reads
//! the files again: connections made after it use the new certificate, connections already
//! open keep theirs.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use crate::tls_stream::TlsStream;

/// Where a listener's certificate and key are, and whether clients must present one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificates of the CAs that sign client certificates. When set, a client must
    /// present a certificate one of them signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// A listener's TLS: the server configuration in force and the files it came from.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    handshake_timeout: Duration,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    /// The files' modification times when read, to notice a change.
    stamps: Vec<Option<SystemTime>>,
}

impl Tls {
    /// Reads the files and checks them (the key must match the certificate); a handshake
    /// taking longer than `handshake_timeout` is dropped.
    pub fn load(files: TlsFiles, handshake_timeout: Duration) -> Result<Tls, String> {
        let loaded = load(&files)?;
        Ok(Tls {
            files,
            handshake_timeout,
            current: RwLock::new(loaded),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again. On error the configuration in force stays.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = load(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// Whether a file changed (its modification time) since it was last read.
    pub fn changed(&self) -> bool {
        let now = stamps(&self.files);
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .stamps
            != now
    }

    fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .clone()
    }

    /// Runs the server side of a handshake on `tcp`, within the handshake timeout.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
        let handshake = TlsStream::accept(tcp, self.config());
        match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "TLS handshake not done within {} ms",
                    self.handshake_timeout.as_millis()
                ),
            )),
        }
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn load(files: &TlsFiles) -> Result<Loaded, String> {
    let stamps = stamps(files);
    // `ring`'s provider has no post-quantum key exchange (deprecated for that in rustls
    // 0.23.48); aws-lc-rs's has, but needs cmake to build. Clients negotiate the classic
    // groups it offers.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("reading the private key from {}: {e}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("a CA certificate in {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("client certificate verification: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "the key in {} does not go with the certificate in {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Loaded {
        config: Arc::new(config),
        stamps,
    })
}

/// A door's connection: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    /// The client's certificate (mutual TLS), the one it presented first.
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.peer_certificates()?.first(),
        }
    }

    /// Who a verified client certificate says the client is: its subject's common name (CN),
    /// if it has one of 1 to 256 characters without control characters. (Kafka's brokers take
    /// the whole distinguished name unless a mapping rule cuts it down; the CN is what such
    /// rules usually keep, and what ACLs and logs read best.)
    pub fn peer_name(&self) -> Option<String> {
        let der = self.peer_certificate()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        (!cn.is_empty() && cn.len() <= 256 && !cn.chars().any(char::is_control))
            .then(|| cn.to_string())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
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
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
