//! TLS for the listeners (`[tls]`): the host's certificate chain and key from PEM files, and
//! optionally client certificates checked against a CA (mutual TLS; a route may then name the
//! clients it takes). The files are read again when they change (looked at, at most once a
//! second, when a connection arrives), so certificates rotate without a restart; files that do
//! not load are logged and the certificate in use stays. Misconfiguration at start stops the
//! host, naming the file and what is wrong with it.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

/// Where the host's TLS material is (`[tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain, PEM, the host's own first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM, that client certificates must chain to; none: no client
    /// certificates asked.
    pub client_ca: Option<PathBuf>,
    /// Refuse connections without a valid client certificate (needs `client_ca`).
    pub require_client_cert: bool,
    /// TLS on the message listener.
    pub http: bool,
    /// TLS on the admin listener.
    pub admin: bool,
}

/// A listener's TLS acceptor, rebuilt when its files change.
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<(tokio_rustls::TlsAcceptor, Vec<Option<SystemTime>>)>,
    checked: Mutex<Instant>,
}

fn stamp(settings: &TlsSettings) -> Vec<Option<SystemTime>> {
    [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
    ]
    .into_iter()
    .map(|p| p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()))
    .collect()
}

fn build(settings: &TlsSettings) -> Result<tokio_rustls::TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (_, certs) = pem_certificates("TLS certificate", &settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key)
        .map_err(|e| format!("TLS key {}: {e}", settings.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let (_, cas) = pem_certificates("TLS client CA", ca)?;
            for cert in cas {
                roots
                    .add(cert)
                    .map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&provider),
            );
            let verifier = if settings.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("TLS client CA {}: {e}", ca.display()))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "TLS: the key {} does not go with the certificate {}: {e}",
            settings.key.display(),
            settings.cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A PEM file of certificates: its bytes and the certificates in it, at least one. An error
/// names the file as `what` and says what is wrong.
pub fn pem_certificates(
    what: &str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
    let pem = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no certificate in it (PEM, BEGIN CERTIFICATE)",
            path.display()
        ));
    }
    Ok((pem, certs))
}

impl Tls {
    /// Load the files; an error names the file and what is wrong.
    pub fn load(settings: &TlsSettings) -> Result<Tls, String> {
        let acceptor = build(settings)?;
        Ok(Tls {
            settings: settings.clone(),
            current: RwLock::new((acceptor, stamp(settings))),
            checked: Mutex::new(Instant::now()),
        })
    }

    /// The acceptor to use now (the files read again first if they changed).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let due = {
            let mut checked = self.checked.lock().expect("tls lock");
            let due = checked.elapsed() >= std::time::Duration::from_secs(1);
            if due {
                *checked = Instant::now();
            }
            due
        };
        if due {
            let now = stamp(&self.settings);
            if now != self.current.read().expect("tls lock").1 {
                match build(&self.settings) {
                    Ok(acceptor) => {
                        tracing::info!(cert = %self.settings.cert.display(), "TLS certificate reloaded");
                        *self.current.write().expect("tls lock") = (acceptor, now);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files changed but do not load; the certificate in use stays");
                        // Not retried until they change again.
                        self.current.write().expect("tls lock").1 = now;
                    }
                }
            }
        }
        self.current.read().expect("tls lock").0.clone()
    }
}

/// The common name of a connection's client certificate, if it presented a valid one.
pub fn client_name(connection: &rustls::ServerConnection) -> Option<String> {
    let cert = connection.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}
