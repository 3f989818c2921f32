//! A typed client for hraftd's HTTP API, and the API's wire types ([`wire`]).
//!
//! [`Client`] talks to a list of endpoints (any members' HTTP addresses). A request goes
//! to the endpoint that last answered; when it cannot be connected to, the next one is
//! tried, so a client keeps working while some nodes are down. A `307` to the leader is
//! followed with the same method and body (as `307` requires), unless the client was
//! built with [`Builder::follow_redirects`]`(false)`: then it comes back as
//! [`Error::Api`] with its `Location`.
//!
//! Every failure says what it means: [`Error::code`] is the server's stable error code
//! ([`wire::ErrorCode`]), and [`Error::outcome_unknown`] tells a write that may still have
//! applied from one that certainly did not.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use percent_encoding::utf8_percent_encode;
use percent_encoding::AsciiSet;
use percent_encoding::NON_ALPHANUMERIC;
use reqwest::Method;
use serde::de::DeserializeOwned;

pub mod wire;

pub use wire::ErrorBody;
pub use wire::ErrorCode;
pub use wire::JoinRequest;
pub use wire::JoinResponse;
pub use wire::ReadLevel;
pub use wire::Status;

/// Bytes of a key left as they are in a `/key/<key>` path; everything else is
/// percent-encoded (the server decodes `%XX` strictly, so any UTF-8 key round-trips).
const KEY_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status and the usual JSON body.
    #[error("{endpoint}: {status} {}: {}", .body.code.as_str(), .body.error)]
    Api {
        endpoint: String,
        status: u16,
        body: ErrorBody,
        /// A redirect's target (when redirects are not followed).
        location: Option<String>,
    },
    /// The request could not be sent, or no answer came.
    #[error("{endpoint}: {source}")]
    Transport {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered something this client cannot read.
    #[error("{endpoint}: unexpected answer: {detail}")]
    Decode { endpoint: String, detail: String },
}

impl Error {
    /// The server's error code, if the server answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the request never reached a server (nothing can have been applied).
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Transport { source, .. } if source.is_connect())
    }

    /// A compare-and-set that did not hold (`412`): `Some(current)`, where `current` is the
    /// key as it is (`None`: it does not exist). `None` for every other error.
    pub fn cas_failed(&self) -> Option<Option<wire::KeyValue>> {
        match self {
            Error::Api { body, .. } if body.code == ErrorCode::PreconditionFailed => Some(
                body.current
                    .clone()
                    .and_then(|v| serde_json::from_value(v).ok()),
            ),
            _ => None,
        }
    }

    /// Whether a write that failed this way may nevertheless have been applied: the
    /// server said so, or the connection failed after the request was sent.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Error::Api { body, .. } => matches!(
                body.code,
                ErrorCode::OutcomeUnknown | ErrorCode::Internal | ErrorCode::Unknown
            ),
            Error::Transport { source, .. } => !source.is_connect(),
            Error::Decode { .. } => true,
        }
    }
}

/// Builds a [`Client`].
#[derive(Clone)]
pub struct Builder {
    endpoints: Vec<String>,
    timeout: Duration,
    connect_timeout: Duration,
    follow_redirects: bool,
    credentials: Option<Credentials>,
    /// PEM CA certificates trusted for `https://` endpoints (none: only plain HTTP works).
    roots: Vec<Vec<u8>>,
    /// PEM certificate and key presented to servers that require client certificates.
    identity: Option<Vec<u8>>,
}

/// HTTP Basic credentials (`-auth`); sent on every hop, redirects included.
#[derive(Clone)]
struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <password>)", self.user)
    }
}

impl Builder {
    /// The longest one request may take, redirects included (default 10 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The longest a connection attempt may take (default 2 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Whether `307`s to the leader are followed (default yes).
    pub fn follow_redirects(mut self, follow: bool) -> Self {
        self.follow_redirects = follow;
        self
    }

    /// Authenticates every request as `user` (HTTP Basic), also after a redirect to the
    /// leader (which generic HTTP clients, `curl -L` among them, do not do across hosts).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Trusts the CA certificate(s) in `pem` for `https://` endpoints (`-join-ca`).
    pub fn ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.roots.push(pem);
        self
    }

    /// Presents the certificate and private key in `pem` (both, PEM) to servers that
    /// require client certificates (`-tls-client-ca`).
    pub fn identity_pem(mut self, pem: Vec<u8>) -> Self {
        self.identity = Some(pem);
        self
    }

    pub fn build(self) -> Result<Client, reqwest::Error> {
        // Redirects are followed here, not by reqwest, so credentials go along.
        let mut http = reqwest::Client::builder().use_rustls_tls();
        for pem in &self.roots {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                http = http.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &self.identity {
            http = http.identity(reqwest::Identity::from_pem(pem)?);
        }
        let http = http
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Client {
            http,
            endpoints: self.endpoints,
            preferred: AtomicUsize::new(0),
            follow_redirects: self.follow_redirects,
            credentials: self.credentials,
            group: None,
        })
    }
}

/// Redirects followed for one request, at most.
const MAX_REDIRECTS: usize = 5;

/// A client of one hraftd cluster.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    /// `host:port` (or `http://host:port`) of the members this client may talk to.
    endpoints: Vec<String>,
    /// The endpoint that answered last; requests start there. Shared by concurrent
    /// requests, which may move it.
    preferred: AtomicUsize,
    follow_redirects: bool,
    credentials: Option<Credentials>,
    /// The Raft group whose keys this client reads and writes (`/groups/<g>/key`);
    /// `None`: the default group (`/key`).
    group: Option<String>,
}

/// The scheme and authority to send requests to for an endpoint or a member's advertised
/// HTTP address: kept as it is with `http://` or `https://` (a node that serves HTTPS
/// advertises `https://host:port`), else `http://` before a bare `host:port` (`:port` is
/// this host). The server uses it too, for redirects and forwarding.
pub fn base_url(endpoint: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return endpoint.trim_end_matches('/').to_string();
    }
    match endpoint.strip_prefix(':') {
        Some(port) => format!("http://127.0.0.1:{port}"),
        None => format!("http://{endpoint}"),
    }
}

/// The path of `key` under `/key/`.
pub fn key_path(key: &str) -> String {
    format!("/key/{}", utf8_percent_encode(key, KEY_PATH))
}

/// `v` encoded for a query string.
fn query_value(v: &str) -> String {
    utf8_percent_encode(v, KEY_PATH).to_string()
}

/// How a read is served: its level, and the index it must wait for (read-your-writes:
/// pass the `index` a write returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOpts {
    pub level: ReadLevel,
    pub min_index: Option<u64>,
    /// How long the server may wait for `min_index` (its default: 5 s; at most 60 s).
    pub wait: Option<Duration>,
}

impl ReadOpts {
    pub fn level(level: ReadLevel) -> ReadOpts {
        ReadOpts {
            level,
            min_index: None,
            wait: None,
        }
    }

    /// Also wait until the node has applied `index`.
    pub fn min_index(mut self, index: u64) -> ReadOpts {
        self.min_index = Some(index);
        self
    }

    fn query(&self) -> String {
        let mut q = format!("level={}", self.level.as_str());
        if let Some(n) = self.min_index {
            q.push_str(&format!("&min_index={n}"));
        }
        if let Some(w) = self.wait {
            q.push_str(&format!("&wait={}ms", w.as_millis()));
        }
        q
    }
}

/// Which keys a range read covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    Prefix(String),
    /// `[from, to)`; `to: None` runs to the last key.
    Between {
        from: String,
        to: Option<String>,
    },
}

/// One range request: `keys`, after `after`, at most `limit` (server default 1000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeQuery {
    pub keys: Keys,
    pub after: Option<String>,
    pub limit: Option<usize>,
    pub keys_only: bool,
}

impl RangeQuery {
    pub fn prefix(prefix: &str) -> RangeQuery {
        RangeQuery {
            keys: Keys::Prefix(prefix.to_string()),
            after: None,
            limit: None,
            keys_only: false,
        }
    }

    fn query(&self) -> String {
        let mut q = match &self.keys {
            Keys::Prefix(p) => format!("prefix={}", query_value(p)),
            Keys::Between { from, to } => {
                let mut q = format!("from={}", query_value(from));
                if let Some(to) = to {
                    q.push_str(&format!("&to={}", query_value(to)));
                }
                q
            }
        };
        if let Some(a) = &self.after {
            q.push_str(&format!("&after={}", query_value(a)));
        }
        if let Some(l) = self.limit {
            q.push_str(&format!("&limit={l}"));
        }
        if self.keys_only {
            q.push_str("&keys_only=true");
        }
        q
    }
}

impl Client {
    /// A builder for a client of the members at `endpoints` (HTTP addresses).
    pub fn builder<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Builder {
        Builder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            follow_redirects: true,
            credentials: None,
            roots: Vec::new(),
            identity: None,
        }
    }

    /// A client with the defaults, following redirects.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Client {
        Client::builder(endpoints)
            .build()
            .expect("a reqwest client with these settings")
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The same client (settings and connection pool) for other endpoints.
    pub fn to<S: Into<String>>(&self, endpoints: impl IntoIterator<Item = S>) -> Client {
        Client {
            http: self.http.clone(),
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            preferred: AtomicUsize::new(0),
            follow_redirects: self.follow_redirects,
            credentials: self.credentials.clone(),
            group: self.group.clone(),
        }
    }

    /// The same client, reading and writing the keys of Raft group `group`
    /// (`/groups/<group>/key`) instead of the default group's.
    pub fn in_group(&self, group: &str) -> Client {
        Client {
            group: Some(group.to_string()),
            ..self.to(self.endpoints.clone())
        }
    }

    /// `path` (of a default-group route such as `/key` or `/backup`) for this client's
    /// group: `/groups/<g>` + `path` in a group, `path` itself otherwise.
    fn group_path(&self, path: &str) -> String {
        match &self.group {
            Some(g) => format!("/groups/{g}{path}"),
            None => path.to_string(),
        }
    }

    /// The path of `key` for this client's group.
    fn key_path(&self, key: &str) -> String {
        self.group_path(&key_path(key))
    }

    /// `/key`, or `/groups/<g>/key`.
    fn keys_path(&self) -> String {
        self.group_path("/key")
    }

    /// Sends one request: to the preferred endpoint, then to the others while the
    /// connection itself fails. Returns the endpoint that answered and the response.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<(String, reqwest::Response)> {
        self.send_for(method, path, body, headers, None).await
    }

    /// [`Client::send`] with its own overall timeout (`None`: the client's), for answers
    /// that stream for long (watches).
    async fn send_for(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<(String, reqwest::Response)> {
        let n = self.endpoints.len().max(1);
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(endpoint) = self.endpoints.get(i) else {
                break;
            };
            let url = format!("{}{path}", base_url(endpoint));
            match self
                .send_following(&method, url, &body, headers, timeout)
                .await
            {
                Ok(resp) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((endpoint.clone(), resp));
                }
                Err(e) if e.is_connect() => {
                    last = Some(Error::Transport {
                        endpoint: endpoint.clone(),
                        source: e,
                    })
                }
                Err(e) => {
                    return Err(Error::Transport {
                        endpoint: endpoint.clone(),
                        source: e,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Decode {
            endpoint: String::new(),
            detail: "the client has no endpoints".into(),
        }))
    }

    /// Sends one request to `url`, following up to [`MAX_REDIRECTS`] `307`/`308`s with the
    /// same method, body, headers and credentials (when the client follows redirects).
    async fn send_following(
        &self,
        method: &Method,
        mut url: String,
        body: &Option<Vec<u8>>,
        headers: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut hops = 0;
        loop {
            let mut req = self.http.request(method.clone(), &url);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            for (name, value) in headers {
                req = req.header(*name, value);
            }
            if let Some(c) = &self.credentials {
                req = req.basic_auth(&c.user, Some(&c.password));
            }
            if let Some(b) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let resp = req.send().await?;
            let redirect = matches!(resp.status().as_u16(), 307 | 308);
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| resp.url().join(l).ok());
            match location {
                Some(next) if redirect && self.follow_redirects && hops < MAX_REDIRECTS => {
                    hops += 1;
                    url = next.to_string();
                }
                _ => return Ok(resp),
            }
        }
    }

    /// Sends a request and decodes a `2xx` body as `T`, or the error body.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<T> {
        let (endpoint, resp) = self.send(method, path, body, headers).await?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.map_err(|e| Error::Transport {
            endpoint: endpoint.clone(),
            source: e,
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
                endpoint,
                detail: format!("{status}: {e}: {}", String::from_utf8_lossy(&bytes)),
            });
        }
        Err(api_error(endpoint, status, location, &bytes))
    }

    /// `GET /status` of the endpoint that answers first.
    pub async fn status(&self) -> Result<Status> {
        self.call(Method::GET, "/status", None, &[]).await
    }

    /// `GET /key/<key>?level=`: `None` when the key does not exist.
    pub async fn get(&self, key: &str, level: ReadLevel) -> Result<Option<String>> {
        let path = format!("{}?level={}", self.key_path(key), level.as_str());
        match self
            .call::<serde_json::Map<String, serde_json::Value>>(Method::GET, &path, None, &[])
            .await
        {
            Ok(mut m) => match m.remove(key) {
                Some(serde_json::Value::String(v)) => Ok(Some(v)),
                other => Err(Error::Decode {
                    endpoint: self.endpoints.join(","),
                    detail: format!("no string value for {key:?}: {other:?}"),
                }),
            },
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /key/<key>?meta=true`: the key with its metadata, `None` when it does not
    /// exist.
    pub async fn get_kv(&self, key: &str, opts: ReadOpts) -> Result<Option<wire::KeyValue>> {
        let path = format!("{}?meta=true&{}", self.key_path(key), opts.query());
        match self.call(Method::GET, &path, None, &[]).await {
            Ok(kv) => Ok(Some(kv)),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /key?prefix=...` (or `from`/`to`): one page of keys, read at one index.
    pub async fn range(&self, range: &RangeQuery, opts: ReadOpts) -> Result<wire::RangeResponse> {
        let path = format!("{}?{}&{}", self.keys_path(), range.query(), opts.query());
        self.call(Method::GET, &path, None, &[]).await
    }

    /// Every key of `range`, page after page. Each page is consistent in itself; pages
    /// are read at their own indexes (as etcd's paginated reads are).
    pub async fn range_all(
        &self,
        range: &RangeQuery,
        opts: ReadOpts,
    ) -> Result<Vec<wire::KeyValue>> {
        let mut q = range.clone();
        let mut out = Vec::new();
        loop {
            let page = self.range(&q, opts).await?;
            out.extend(page.kvs);
            match page.next {
                Some(next) if page.more => q.after = Some(next),
                _ => return Ok(out),
            }
        }
    }

    /// `PUT /key/<key>?cas=<expect>`: sets `key` only if its `mod_index` is `expect` (`0`:
    /// only if it does not exist); a `412` otherwise ([`Error::cas_failed`]).
    pub async fn put_cas(&self, key: &str, value: &str, expect: u64) -> Result<u64> {
        Ok(self
            .put_query(key, value, &format!("cas={expect}"))
            .await?
            .index)
    }

    /// `PUT /key/<key>?<query>` with `value` as the body.
    async fn put_query(&self, key: &str, value: &str, query: &str) -> Result<wire::WriteResponse> {
        let path = format!("{}?{query}", self.key_path(key));
        self.call(Method::PUT, &path, Some(value.as_bytes().to_vec()), &[])
            .await
    }

    /// `PUT /key/<key>?lease=<id>` (and `&cas=<expect>` when given): sets `key` attached
    /// to a lease, so it goes when the lease does.
    pub async fn put_leased(
        &self,
        key: &str,
        value: &str,
        lease: &str,
        expect: Option<u64>,
    ) -> Result<u64> {
        let mut query = format!("lease={}", query_value(lease));
        if let Some(e) = expect {
            query.push_str(&format!("&cas={e}"));
        }
        Ok(self.put_query(key, value, &query).await?.index)
    }

    /// `PUT /key/<key>?ttl=<ms>ms`: sets `key` with a lease of its own; returns the write
    /// (its `lease` is the new lease's id).
    pub async fn put_ttl(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<wire::WriteResponse> {
        self.put_query(key, value, &format!("ttl={}ms", ttl.as_millis()))
            .await
    }

    /// `POST /lease {"ttl":"<ms>ms"}`: a new lease.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<wire::LeaseResponse> {
        let body = serde_json::json!({ "ttl": format!("{}ms", ttl.as_millis()) });
        self.call(
            Method::POST,
            &self.group_path("/lease"),
            Some(body.to_string().into_bytes()),
            &[],
        )
        .await
    }

    /// `POST /lease/<id>/keepalive`: restarts the lease's countdown; answers its TTL.
    pub async fn lease_keepalive(&self, id: &str) -> Result<wire::LeaseResponse> {
        let path = self.group_path(&format!("/lease/{}/keepalive", query_value(id)));
        self.call(Method::POST, &path, None, &[]).await
    }

    /// `GET /lease/<id>`: its TTL, time left and keys.
    pub async fn lease_info(&self, id: &str) -> Result<wire::LeaseInfo> {
        let path = self.group_path(&format!("/lease/{}", query_value(id)));
        self.call(Method::GET, &path, None, &[]).await
    }

    /// `DELETE /lease/<id>`: revokes it and deletes its keys in one entry.
    pub async fn lease_revoke(&self, id: &str) -> Result<wire::DeletedResponse> {
        let path = self.group_path(&format!("/lease/{}", query_value(id)));
        self.call(Method::DELETE, &path, None, &[]).await
    }

    /// `DELETE /key/<key>?cas=<expect>`: deletes `key` only if its `mod_index` is `expect`.
    pub async fn delete_cas(&self, key: &str, expect: u64) -> Result<u64> {
        let path = format!("{}?cas={expect}", self.key_path(key));
        let r: wire::WriteResponse = self.call(Method::DELETE, &path, None, &[]).await?;
        Ok(r.index)
    }

    /// `DELETE /key?prefix=`: every key under `prefix`, in one entry.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<wire::DeletedResponse> {
        let path = format!("{}?prefix={}", self.keys_path(), query_value(prefix));
        self.call(Method::DELETE, &path, None, &[]).await
    }

    /// `POST /txn`.
    pub async fn txn(&self, txn: &wire::TxnRequest) -> Result<wire::TxnResponse> {
        let body = serde_json::to_vec(txn).expect("a transaction encodes");
        self.call(Method::POST, &self.group_path("/txn"), Some(body), &[])
            .await
    }

    /// `POST /key {k: v, ...}`: all pairs in one log entry; returns its index.
    pub async fn set<K: AsRef<str>, V: AsRef<str>>(&self, pairs: &[(K, V)]) -> Result<u64> {
        let body: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().into()))
            .collect();
        let body = serde_json::to_vec(&body).expect("a map of strings encodes");
        let r: wire::WriteResponse = self
            .call(Method::POST, &self.keys_path(), Some(body), &[])
            .await?;
        Ok(r.index)
    }

    /// `PUT /key/<key>` with `value` as the raw body; returns the entry's index.
    pub async fn put(&self, key: &str, value: &str) -> Result<u64> {
        let r: wire::WriteResponse = self
            .call(
                Method::PUT,
                &self.key_path(key),
                Some(value.as_bytes().to_vec()),
                &[],
            )
            .await?;
        Ok(r.index)
    }

    /// `DELETE /key/<key>`; returns the entry's index (deleting a missing key is fine).
    pub async fn delete(&self, key: &str) -> Result<u64> {
        let r: wire::WriteResponse = self
            .call(Method::DELETE, &self.key_path(key), None, &[])
            .await?;
        Ok(r.index)
    }

    /// `POST /join`. `sign` is given the exact body and returns a header proving the
    /// cluster key, where the cluster has one.
    pub async fn join(
        &self,
        req: &JoinRequest,
        sign: impl Fn(&[u8]) -> Option<(&'static str, String)>,
    ) -> Result<JoinResponse> {
        let body = serde_json::to_vec(req).expect("a join request encodes");
        let headers: Vec<(&str, String)> = sign(&body).into_iter().collect();
        self.call(Method::POST, "/join", Some(body), &headers).await
    }

    /// `POST /remove {"id": id}`.
    pub async fn remove(&self, id: &str) -> Result<wire::RemoveResponse> {
        let body = serde_json::to_vec(&wire::RemoveRequest { id: id.into() })
            .expect("a remove request encodes");
        self.call(Method::POST, "/remove", Some(body), &[]).await
    }

    /// `GET /groups`: every Raft group, the default one first.
    pub async fn groups(&self) -> Result<Vec<wire::GroupInfo>> {
        let l: wire::GroupList = self.call(Method::GET, "/groups", None, &[]).await?;
        Ok(l.groups)
    }

    /// `GET /groups/<id>`.
    pub async fn group(&self, id: &str) -> Result<wire::GroupInfo> {
        self.call(Method::GET, &format!("/groups/{id}"), None, &[])
            .await
    }

    /// `POST /groups`: creates group `id` on `members` (cluster node ids); answers once it
    /// has a leader.
    pub async fn create_group(&self, id: &str, members: &[&str]) -> Result<wire::GroupInfo> {
        let req = wire::CreateGroupRequest {
            id: id.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        let body = serde_json::to_vec(&req).expect("a group request encodes");
        self.call(Method::POST, "/groups", Some(body), &[]).await
    }

    /// `DELETE /groups/<id>`.
    pub async fn delete_group(&self, id: &str) -> Result<wire::GroupDeleted> {
        self.call(Method::DELETE, &format!("/groups/{id}"), None, &[])
            .await
    }

    /// `POST /groups/<id>/members`: adds cluster node `member` (learner, then voter).
    pub async fn add_group_member(&self, id: &str, member: &str) -> Result<wire::GroupInfo> {
        let body = serde_json::to_vec(&wire::GroupMemberRequest { id: member.into() })
            .expect("a member request encodes");
        self.call(
            Method::POST,
            &format!("/groups/{id}/members"),
            Some(body),
            &[],
        )
        .await
    }

    /// `POST /groups/<id>/leader`: moves the group's leadership to voter `to`.
    pub async fn transfer_leader(&self, id: &str, to: &str) -> Result<wire::GroupInfo> {
        let body = serde_json::to_vec(&wire::TransferRequest { id: to.into() })
            .expect("a transfer request encodes");
        self.call(
            Method::POST,
            &format!("/groups/{id}/leader"),
            Some(body),
            &[],
        )
        .await
    }

    /// `DELETE /groups/<id>/members/<member>`.
    pub async fn remove_group_member(&self, id: &str, member: &str) -> Result<wire::GroupInfo> {
        let path = format!(
            "/groups/{id}/members/{}",
            utf8_percent_encode(member, KEY_PATH)
        );
        self.call(Method::DELETE, &path, None, &[]).await
    }

    /// `GET /readyz`: `Ok` when ready, else the reason as an error.
    pub async fn readyz(&self) -> Result<wire::Health> {
        self.call(Method::GET, "/readyz", None, &[]).await
    }

    /// `GET /livez`.
    pub async fn livez(&self) -> Result<wire::Health> {
        self.call(Method::GET, "/livez", None, &[]).await
    }

    /// `GET /backup?level=` (or `/groups/<g>/backup`): the answer, once it is a `200`,
    /// for the caller to stream (a backup may be larger than memory); an error status
    /// comes back decoded, as from every other call.
    pub async fn backup(&self, level: ReadLevel) -> Result<reqwest::Response> {
        let path = self.group_path(&format!("/backup?level={}", level.as_str()));
        let (endpoint, resp) = self.send(Method::GET, &path, None, &[]).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Error::Transport {
            endpoint: endpoint.clone(),
            source: e,
        })?;
        Err(api_error(endpoint, status, None, &bytes))
    }

    /// `GET /watch?key=` or `?prefix=` (in this client's group), after index `from`
    /// (`None`: from now). The stream is read with [`Watcher::next`]; to resume after it
    /// ends, watch again from [`Watcher::last_index`] (on any node).
    pub async fn watch(&self, target: &WatchTarget, from: Option<u64>) -> Result<Watcher> {
        let mut path = match target {
            WatchTarget::Key(k) => format!("{}?key={}", self.group_path("/watch"), query_value(k)),
            WatchTarget::Prefix(p) => {
                format!("{}?prefix={}", self.group_path("/watch"), query_value(p))
            }
        };
        if let Some(f) = from {
            path.push_str(&format!("&from={f}"));
        }
        // The stream has no end: idleness is watched by `Watcher::next` instead.
        let forever = Duration::from_secs(365 * 86_400);
        let (endpoint, resp) = self
            .send_for(Method::GET, &path, None, &[], Some(forever))
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = resp.bytes().await.map_err(|e| Error::Transport {
                endpoint: endpoint.clone(),
                source: e,
            })?;
            return Err(api_error(endpoint, status, location, &bytes));
        }
        let start = resp
            .headers()
            .get("x-hraftd-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(from.unwrap_or(0));
        Ok(Watcher {
            resp,
            endpoint,
            buf: Vec::new(),
            pending: Vec::new(),
            last: start,
            start,
            idle: WATCH_IDLE,
        })
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> Result<String> {
        let (endpoint, resp) = self.send(Method::GET, "/metrics", None, &[]).await?;
        resp.text().await.map_err(|e| Error::Transport {
            endpoint,
            source: e,
        })
    }
}

/// Which keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    Key(String),
    /// Every key that starts with this (`""`: every key).
    Prefix(String),
}

/// What a watch stream gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// The changes of one log entry to watched keys.
    Entry {
        index: u64,
        events: Vec<wire::WatchEvent>,
    },
    /// The server ended the stream, saying why (`compacted`, `slow_consumer`, ...).
    End(wire::WatchEndBody),
}

/// How long a watch stream may stay silent (the server sends a comment every 10 s)
/// before [`Watcher::next`] gives up on it.
pub const WATCH_IDLE: Duration = Duration::from_secs(35);

/// A running watch (see [`Client::watch`]).
#[derive(Debug)]
pub struct Watcher {
    resp: reqwest::Response,
    endpoint: String,
    /// Bytes received but not yet a whole event.
    buf: Vec<u8>,
    /// Events of the entry being received (its last event carries the index).
    pending: Vec<wire::WatchEvent>,
    /// The index of the last whole entry received (or where the watch started).
    last: u64,
    start: u64,
    idle: Duration,
}

impl Watcher {
    /// The index the server started the watch after.
    pub fn start_index(&self) -> u64 {
        self.start
    }

    /// Where to resume: every change up to here has been handed out.
    pub fn last_index(&self) -> u64 {
        self.last
    }

    /// The node that serves this watch.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How long the stream may be silent before `next` fails (default [`WATCH_IDLE`]).
    pub fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    /// The next entry, or the server's reason for ending; `Ok(None)` when the connection
    /// closed without one. An entry is handed out only whole.
    pub async fn next(&mut self) -> Result<Option<WatchItem>> {
        loop {
            while let Some(end) = find_block(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end).collect();
                if let Some(item) = self.parse_block(&block)? {
                    return Ok(Some(item));
                }
            }
            let chunk = tokio::time::timeout(self.idle, self.resp.chunk()).await;
            match chunk {
                Err(_) => {
                    return Err(Error::Decode {
                        endpoint: self.endpoint.clone(),
                        detail: format!("the watch stream was silent for {:?}", self.idle),
                    })
                }
                Ok(Err(e)) => {
                    return Err(Error::Transport {
                        endpoint: self.endpoint.clone(),
                        source: e,
                    })
                }
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(c))) => self.buf.extend_from_slice(&c),
            }
        }
    }

    /// One event block (without its blank line); `None` for a comment or an event that
    /// does not end an entry.
    // The crate's one error type, as every call returns it.
    #[allow(clippy::result_large_err)]
    fn parse_block(&mut self, block: &[u8]) -> Result<Option<WatchItem>> {
        let text = String::from_utf8_lossy(block);
        let (mut event, mut data, mut id) = (None, String::new(), None);
        for line in text.split('\n') {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = Some(value.to_string()),
                "data" => data.push_str(value),
                "id" => id = value.parse::<u64>().ok(),
                _ => {}
            }
        }
        let bad = |detail: String| Error::Decode {
            endpoint: self.endpoint.clone(),
            detail,
        };
        let kind = match event.as_deref() {
            None => return Ok(None),
            Some("error") => {
                let body = serde_json::from_str(&data)
                    .map_err(|e| bad(format!("watch end event {data:?}: {e}")))?;
                return Ok(Some(WatchItem::End(body)));
            }
            Some("put") => wire::EventKind::Put,
            Some("delete") => wire::EventKind::Delete,
            Some(other) => return Err(bad(format!("unknown watch event {other:?}"))),
        };
        let kv =
            serde_json::from_str(&data).map_err(|e| bad(format!("watch event {data:?}: {e}")))?;
        self.pending.push(wire::WatchEvent { kind, kv });
        match id {
            None => Ok(None),
            Some(index) => {
                self.last = index;
                Ok(Some(WatchItem::Entry {
                    index,
                    events: std::mem::take(&mut self.pending),
                }))
            }
        }
    }
}

/// Where the first whole event block in `buf` ends, its blank line included.
fn find_block(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// The error an answer with a non-`2xx` `status` and body `bytes` stands for.
fn api_error(
    endpoint: String,
    status: reqwest::StatusCode,
    location: Option<String>,
    bytes: &[u8],
) -> Error {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => Error::Api {
            endpoint,
            status: status.as_u16(),
            body,
            location,
        },
        Err(_) => Error::Decode {
            endpoint,
            detail: format!("{status}: {}", String::from_utf8_lossy(bytes)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_in_paths() {
        assert_eq!(key_path("user1"), "/key/user1");
        assert_eq!(key_path("a/b c+ü"), "/key/a%2Fb%20c%2B%C3%BC");
    }

    #[test]
    fn endpoints_become_urls() {
        assert_eq!(base_url(":11000"), "http://127.0.0.1:11000");
        assert_eq!(base_url("db1:80"), "http://db1:80");
        assert_eq!(base_url("https://db1:443/"), "https://db1:443");
    }
}
