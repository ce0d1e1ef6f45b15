//! TLS to the server's native TLS listener (`native.tls_listen`): rustls with the `ring`
//! provider, as the server.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{ClientError, Result};

/// How to reach a TLS listener: which CAs to trust, and the client certificate to present
/// when the server asks for one (mutual TLS).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM CA certificates to trust. `None`: the system's (`/etc/ssl/certs` and the like).
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain and its key, for a server that requires one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A checked client configuration.
#[derive(Debug, Clone)]
pub struct ClientTls(pub(crate) Arc<rustls::ClientConfig>);

fn bad(what: String) -> ClientError {
    ClientError::Invalid(what)
}

impl TlsOptions {
    /// Reads and checks the files.
    pub fn load(&self) -> Result<ClientTls> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                let certs = CertificateDer::pem_file_iter(ca)
                    .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| {
                        bad(format!(
                            "reading CA certificates from {}: {e}",
                            ca.display()
                        ))
                    })?;
                if certs.is_empty() {
                    return Err(bad(format!("{} holds no PEM certificate", ca.display())));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| bad(format!("a CA certificate in {}: {e}", ca.display())))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(bad(
                        "no CA certificates found on this system: give the server's CA".into(),
                    ));
                }
            }
        }
        // `ring`'s provider has no post-quantum key exchange (deprecated for that in rustls
        // 0.23.48); aws-lc-rs's has, but needs cmake to build.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| bad(format!("reading {}: {e}", cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad(format!("reading {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(format!("the client certificate: {e}")))?
            }
        };
        Ok(ClientTls(Arc::new(config)))
    }
}
