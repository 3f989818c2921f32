//! HTTPS on `-haddr` (`-tls-cert`, `-tls-key`, optionally `-tls-client-ca` to require
//! client certificates signed by that CA), with rustls (ring; no OpenSSL).
//!
//! The certificate and key are served through a resolver that [`Tls::reload`] can swap
//! (on SIGHUP): connections already open keep the pair they started with, new ones get
//! the new pair, and a pair that does not load (or whose key does not match) is refused
//! while the old one stays in force.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::server::ClientHello;
use tokio_rustls::rustls::server::ResolvesServerCert;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::sign::CertifiedKey;

/// Serves whatever pair is current.
#[derive(Debug)]
struct Resolver {
    /// Swapped whole by a reload; read by every new handshake.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The HTTPS settings of one node.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    resolver: Arc<Resolver>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain and its private key (PEM), checking that they belong together.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(pair)
}

impl Tls {
    /// Loads the pair (and the client CA, if given); an error says which file and why.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Tls, String> {
        let pair = load_pair(cert, key)?;
        let tls = Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
            resolver: Arc::new(Resolver {
                current: RwLock::new(Arc::new(pair)),
            }),
        };
        tls.server_config()?;
        Ok(tls)
    }

    /// The files it serves, for logs.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certs(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The rustls configuration for the HTTP server.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("{}: {e}", ca.display()))?
                {
                    let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                    roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no CA certificate in it", ca.display()));
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Re-reads the certificate and key. New connections get the new pair; on error the
    /// pair in force stays and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let pair = load_pair(&self.cert, &self.key)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }
}
