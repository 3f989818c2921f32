//! Who may talk on the Raft port: peer authentication, done on every connection before the
//! first frame is read or decoded.
//!
//! Three modes, one per node (every member must use the same):
//! - [`PeerAuth::None`]: anyone who reaches `-raddr` is a peer. Only for trusted networks;
//!   the node logs a warning at start-up.
//! - [`PeerAuth::ClusterKey`]: a shared secret (`-cluster-key FILE`). Each connection opens
//!   with a mutual challenge-response: both sides send fresh 32-byte nonces and each proves
//!   it holds the key with an HMAC-SHA256 over both nonces (separate labels for the two
//!   directions, so one side's proof is never valid for the other). The key never crosses
//!   the wire; the exchange has a fixed size, so nothing is decoded before it succeeds. It
//!   authenticates peers; it does not encrypt the stream (use mutual TLS for that).
//! - [`PeerAuth::Mtls`]: TLS 1.2/1.3 (rustls) where both sides present a certificate
//!   signed by the cluster's CA (`-peer-cert`, `-peer-key`, `-peer-ca`); the dialling side
//!   also checks the peer's certificate names the address it dialled.
//!
//! `/join` is authenticated too: in cluster-key mode the joining node signs its request
//! ([`JoinProof`]); in both modes the leader dials the joining node's Raft address through
//! this handshake before adding it (see `Store::join`).

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::SystemTime;

use hmac::Mac;
use rand::RngCore;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio_rustls::rustls;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Shortest accepted cluster key, in bytes (after trimming surrounding whitespace).
pub const MIN_KEY_BYTES: usize = 16;
/// Opens every cluster-key handshake: protocol name and version.
const MAGIC: &[u8; 8] = b"HRAFTD\x01K";
const NONCE: usize = 32;
const MAC: usize = 32;
/// How far a signed `/join` request's clock may differ from the leader's.
const JOIN_SKEW: Duration = Duration::from_secs(300);

/// Anything a peer connection can run over: plain TCP or TLS.
pub(crate) trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

/// An established, authenticated peer connection.
pub(crate) struct PeerStream(Box<dyn PeerIo>);

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// The cluster's shared secret. Its bytes never appear in `Debug` output or logs.
pub struct ClusterKey(Vec<u8>);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({} bytes, redacted)", self.0.len())
    }
}

impl ClusterKey {
    /// The key in `path`: the file's contents with surrounding whitespace trimmed, at least
    /// [`MIN_KEY_BYTES`] long.
    pub fn load(path: &Path) -> io::Result<ClusterKey> {
        let raw = std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading cluster key {}: {e}", path.display()),
            )
        })?;
        let key = raw.trim_ascii();
        if key.len() < MIN_KEY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cluster key {} has {} bytes; at least {MIN_KEY_BYTES} are required \
                     (make one with `hraftd gen-key FILE`)",
                    path.display(),
                    key.len()
                ),
            ));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(md) = std::fs::metadata(path) {
                if md.permissions().mode() & 0o077 != 0 {
                    log::warn!(
                        "cluster key {} is readable by other users (mode {:o}); chmod 600 it",
                        path.display(),
                        md.permissions().mode() & 0o777
                    );
                }
            }
        }
        Ok(ClusterKey(key.to_vec()))
    }

    /// Writes a new random key (32 bytes, hex) to `path`, readable by its owner only.
    /// Refuses to overwrite an existing file.
    pub fn generate(path: &Path) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
        std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes())?;
        f.sync_all()
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }

    fn sign(&self, parts: &[&[u8]]) -> [u8; MAC] {
        self.mac(parts).finalize().into_bytes().into()
    }

    /// Constant-time check of `tag` against the MAC of `parts`.
    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.mac(parts).verify_slice(tag).is_ok()
    }
}

/// Proof that a `/join` request comes from a holder of the cluster key: the HMAC of the
/// exact request body and the time it was made, sent as
/// `X-Hraftd-Join-Proof: <unix seconds>.<hex HMAC>`.
pub struct JoinProof;

impl JoinProof {
    pub const HEADER: &'static str = "X-Hraftd-Join-Proof";

    /// The header value proving `body`, made now.
    pub fn make(key: &ClusterKey, body: &[u8]) -> String {
        let now = unix_now();
        let tag = key.sign(&[b"hraftd-join", now.to_string().as_bytes(), body]);
        format!("{now}.{}", hex(&tag))
    }

    /// Checks a header value against `body`; says what is wrong if it does not prove it.
    pub fn check(key: &ClusterKey, header: Option<&str>, body: &[u8]) -> Result<(), String> {
        let Some(header) = header else {
            return Err(format!(
                "this cluster requires a cluster key: the request has no {} header",
                Self::HEADER
            ));
        };
        let (ts, tag) = header
            .split_once('.')
            .ok_or_else(|| format!("malformed {} header", Self::HEADER))?;
        let t: u64 = ts
            .parse()
            .map_err(|_| format!("malformed {} header", Self::HEADER))?;
        if unix_now().abs_diff(t) > JOIN_SKEW.as_secs() {
            return Err(format!(
                "{} is more than {}s from this node's clock",
                Self::HEADER,
                JOIN_SKEW.as_secs()
            ));
        }
        let tag = unhex(tag).ok_or_else(|| format!("malformed {} header", Self::HEADER))?;
        if !key.verify(&[b"hraftd-join", ts.as_bytes(), body], &tag) {
            return Err("the join request is not signed with this cluster's key".into());
        }
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * MAC {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The certificates and key of a node in mutual-TLS mode, ready to dial and accept.
pub struct Mtls {
    client: tokio_rustls::TlsConnector,
    server: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for Mtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mtls")
    }
}

fn tls_err(what: String, e: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
}

impl Mtls {
    /// Loads this node's certificate chain and private key and the CA every peer's
    /// certificate must be signed by (all PEM files).
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> io::Result<Mtls> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::PrivateKeyDer;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect())
            .map_err(|e| tls_err(format!("reading -peer-cert {}", cert.display()), e))?;
        if certs.is_empty() {
            return Err(tls_err(
                format!("-peer-cert {}", cert.display()),
                "no certificate in the file",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_err(format!("reading -peer-key {}", key.display()), e))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)
            .map_err(|e| tls_err(format!("reading -peer-ca {}", ca.display()), e))?
        {
            let c = c.map_err(|e| tls_err(format!("reading -peer-ca {}", ca.display()), e))?;
            roots
                .add(c)
                .map_err(|e| tls_err(format!("-peer-ca {}", ca.display()), e))?;
        }
        if roots.is_empty() {
            return Err(tls_err(
                format!("-peer-ca {}", ca.display()),
                "no certificate in the file",
            ));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| tls_err("-peer-ca".into(), e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("TLS".into(), e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| tls_err("-peer-cert/-peer-key".into(), e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("TLS".into(), e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls_err("-peer-cert/-peer-key".into(), e))?;
        Ok(Mtls {
            client: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }
}

/// How this node authenticates peer connections. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub enum PeerAuth {
    #[default]
    None,
    ClusterKey(Arc<ClusterKey>),
    Mtls(Arc<Mtls>),
}

impl PeerAuth {
    /// The mode's name, as `/status` shows it.
    pub fn mode(&self) -> &'static str {
        match self {
            PeerAuth::None => "none",
            PeerAuth::ClusterKey(_) => "cluster-key",
            PeerAuth::Mtls(_) => "mtls",
        }
    }

    /// The cluster key, in cluster-key mode.
    pub fn cluster_key(&self) -> Option<&ClusterKey> {
        match self {
            PeerAuth::ClusterKey(k) => Some(k),
            _ => None,
        }
    }

    /// The dialling side of the handshake on a fresh connection to `addr`.
    pub(crate) async fn connect(&self, mut s: TcpStream, addr: &str) -> io::Result<PeerStream> {
        match self {
            PeerAuth::None => Ok(PeerStream(Box::new(s))),
            PeerAuth::ClusterKey(key) => {
                let mine = nonce();
                let mut hello = MAGIC.to_vec();
                hello.extend_from_slice(&mine);
                s.write_all(&hello).await?;
                let mut reply = [0u8; 8 + NONCE + MAC];
                s.read_exact(&mut reply).await?;
                let (magic, rest) = reply.split_at(8);
                let (theirs, tag) = rest.split_at(NONCE);
                if magic != MAGIC || !key.verify(&[b"hraftd-server", &mine, theirs], tag) {
                    return Err(denied(format!(
                        "{addr} did not prove it holds the cluster key"
                    )));
                }
                s.write_all(&key.sign(&[b"hraftd-client", &mine, theirs]))
                    .await?;
                Ok(PeerStream(Box::new(s)))
            }
            PeerAuth::Mtls(tls) => {
                let host = addr
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .unwrap_or(addr)
                    .trim_matches(|c| c == '[' || c == ']');
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| tls_err(format!("peer address {addr}"), e))?;
                let s = tls.client.connect(name, s).await?;
                Ok(PeerStream(Box::new(s)))
            }
        }
    }

    /// The accepting side of the handshake. An error means the connection must be closed
    /// without reading anything more from it.
    pub(crate) async fn accept(&self, mut s: TcpStream) -> io::Result<PeerStream> {
        match self {
            PeerAuth::None => Ok(PeerStream(Box::new(s))),
            PeerAuth::ClusterKey(key) => {
                let mut hello = [0u8; 8 + NONCE];
                s.read_exact(&mut hello).await?;
                let (magic, theirs) = hello.split_at(8);
                if magic != MAGIC {
                    return Err(denied("not a cluster-key handshake".into()));
                }
                let mine = nonce();
                let mut reply = MAGIC.to_vec();
                reply.extend_from_slice(&mine);
                reply.extend_from_slice(&key.sign(&[b"hraftd-server", theirs, &mine]));
                s.write_all(&reply).await?;
                let mut tag = [0u8; MAC];
                s.read_exact(&mut tag).await?;
                if !key.verify(&[b"hraftd-client", theirs, &mine], &tag) {
                    return Err(denied("the peer does not hold the cluster key".into()));
                }
                Ok(PeerStream(Box::new(s)))
            }
            PeerAuth::Mtls(tls) => Ok(PeerStream(Box::new(tls.server.accept(s).await?))),
        }
    }
}

fn nonce() -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    rand::rng().fill_bytes(&mut n);
    n
}

fn denied(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClusterKey {
        ClusterKey(s.as_bytes().to_vec())
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    async fn handshake(client: PeerAuth, server: PeerAuth) -> (bool, bool) {
        let (c, s) = pair().await;
        let (c, s) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(5), client.connect(c, "127.0.0.1:1")),
            tokio::time::timeout(Duration::from_secs(5), server.accept(s)),
        );
        (c.is_ok_and(|r| r.is_ok()), s.is_ok_and(|r| r.is_ok()))
    }

    #[tokio::test]
    async fn the_same_key_on_both_sides_connects() {
        let k = Arc::new(key("0123456789abcdef-shared"));
        let ok = handshake(PeerAuth::ClusterKey(k.clone()), PeerAuth::ClusterKey(k)).await;
        assert_eq!(ok, (true, true));
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_by_both_sides() {
        let a = PeerAuth::ClusterKey(Arc::new(key("0123456789abcdef-one")));
        let b = PeerAuth::ClusterKey(Arc::new(key("0123456789abcdef-two")));
        assert_eq!(handshake(a, b).await, (false, false));
    }

    #[tokio::test]
    async fn a_node_without_a_key_cannot_reach_a_keyed_one() {
        let k = PeerAuth::ClusterKey(Arc::new(key("0123456789abcdef-shared")));
        assert!(!handshake(PeerAuth::None, k).await.1);
    }

    #[test]
    fn join_proofs_bind_the_body_and_the_key() {
        let k = key("0123456789abcdef-shared");
        let body = br#"{"id":"n1"}"#;
        let proof = JoinProof::make(&k, body);
        assert_eq!(JoinProof::check(&k, Some(&proof), body), Ok(()));
        assert!(JoinProof::check(&k, Some(&proof), br#"{"id":"n2"}"#).is_err());
        assert!(JoinProof::check(&key("another-key-0123456"), Some(&proof), body).is_err());
        assert!(JoinProof::check(&k, None, body).is_err());
        assert!(JoinProof::check(&k, Some("12.zz"), body).is_err());
        let old = format!("1.{}", proof.split_once('.').unwrap().1);
        assert!(JoinProof::check(&k, Some(&old), body).is_err());
    }

    #[test]
    fn keys_are_loaded_trimmed_and_short_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "  short \n").unwrap();
        assert!(ClusterKey::load(&p).is_err());
        std::fs::write(&p, "\n 0123456789abcdef \n").unwrap();
        assert_eq!(ClusterKey::load(&p).unwrap().0, b"0123456789abcdef");
        let g = dir.path().join("g");
        ClusterKey::generate(&g).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&g).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(ClusterKey::load(&g).unwrap().0.len(), 64);
        assert!(ClusterKey::generate(&g).is_err(), "never overwrites a key");
        assert!(!format!("{:?}", ClusterKey::load(&g).unwrap())
            .contains(std::str::from_utf8(&ClusterKey::load(&g).unwrap().0).unwrap()));
    }
}
