//! TLS on the gRPC listener (rustls, ring): the certificate and key from
//! `GIFTX_TLS_CERT_FILE` / `GIFTX_TLS_KEY_FILE`, client certificates
//! required when `GIFTX_TLS_CLIENT_CA_FILE` is set (mTLS).
//!
//! The files are read again every `GIFTX_TLS_RELOAD_SECONDS` (default 10);
//! when their content changed and still forms a valid configuration, new
//! connections use it (connections already open keep theirs). A change
//! that does not load (a key that does not match its certificate, a file
//! half written) is logged and counted
//! (`giftx_tls_reloads_total{result="error"}`), and the previous
//! configuration stays in use, so a bad rotation never takes the listener
//! down.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::SecurityConfig;

/// The subjectAltName URI prefix by which a client certificate names the
/// API key it stands for: `giftx:apiKeys/<key id>`.
pub const CERT_KEY_URI_PREFIX: &str = "giftx:apiKeys/";

/// The API key id a client certificate names in a subjectAltName URI
/// `giftx:apiKeys/<16 hex digits>`, if it names exactly one. Only called
/// on a certificate rustls has verified against the client CA; a
/// certificate naming two keys names none.
pub fn cert_key_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(CERT_KEY_URI_PREFIX),
        _ => None,
    });
    let id = ids.next()?;
    if ids.next().is_some() || id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(id.to_ascii_lowercase())
}

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files a TLS configuration is made of.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates for client certificates; `None`: no client
    /// certificate asked for.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files of `security`, when TLS is configured.
    pub fn from_config(security: &SecurityConfig) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: security.tls_cert_file.clone()?,
            key: security.tls_key_file.clone()?,
            client_ca: security.tls_client_ca_file.clone(),
        })
    }

    fn read(&self) -> Result<Contents, String> {
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("cannot read {what} {}: {e}", p.display()))
        };
        Ok(Contents {
            cert: read("GIFTX_TLS_CERT_FILE", &self.cert)?,
            key: read("GIFTX_TLS_KEY_FILE", &self.key)?,
            client_ca: self
                .client_ca
                .as_ref()
                .map(|p| read("GIFTX_TLS_CLIENT_CA_FILE", p))
                .transpose()?,
        })
    }
}

#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn config(&self, files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("GIFTX_TLS_CERT_FILE {}: {e}", files.cert.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "GIFTX_TLS_CERT_FILE {} holds no PEM certificate",
                files.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| format!("GIFTX_TLS_KEY_FILE {}: {e}", files.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match (&self.client_ca, &files.client_ca) {
            (Some(pem), Some(path)) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c =
                        c.map_err(|e| format!("GIFTX_TLS_CLIENT_CA_FILE {}: {e}", path.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("GIFTX_TLS_CLIENT_CA_FILE {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "GIFTX_TLS_CLIENT_CA_FILE {} holds no PEM certificate",
                        path.display()
                    ));
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("GIFTX_TLS_CLIENT_CA_FILE {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "GIFTX_TLS_CERT_FILE {} and GIFTX_TLS_KEY_FILE {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The listener's current TLS configuration, reloaded as its files change.
#[derive(Clone)]
pub struct TlsState {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState").finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads `files` (an error stops start-up) and watches them every
    /// `every` until `stop` fires.
    ///
    /// # Errors
    /// A message naming the file at fault.
    pub fn start(
        files: TlsFiles,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<TlsState, String> {
        let contents = files.read()?;
        let config = contents.config(&files)?;
        let state = TlsState {
            current: Arc::new(RwLock::new(config)),
        };
        let watched = state.clone();
        tokio::spawn(async move {
            let mut last = contents;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                let now = match files.read() {
                    Ok(c) => c,
                    Err(e) => {
                        crate::metrics::global().tls_reloaded("error");
                        tracing::warn!(error = %e, "TLS files unreadable; keeping the current certificate");
                        continue;
                    }
                };
                if now == last {
                    continue;
                }
                match now.config(&files) {
                    Ok(c) => {
                        *watched
                            .current
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
                        crate::metrics::global().tls_reloaded("ok");
                        tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                        last = now;
                    }
                    Err(e) => {
                        crate::metrics::global().tls_reloaded("error");
                        tracing::warn!(error = %e, "changed TLS files do not load; keeping the current certificate");
                        // Not remembered: tried again next time, in case
                        // the change was half written.
                    }
                }
            }
        });
        Ok(state)
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let c = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(c)
    }
}
