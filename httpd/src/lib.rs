//! hraftd's client API over HTTP (actix-web).
//!
//! This crate owns the wire: routes, request validation, JSON shapes, and the mapping of
//! errors to status codes (`error.rs`, the only place that happens). It knows nothing of
//! Raft: it consumes the small [`KvStore`] trait defined here, which the binary implements
//! over the real store and the tests implement with a fake.
//!
//! | route | methods |
//! |---|---|
//! | `/key` | `POST` (set pairs), `GET ?key=` (read), `DELETE ?key=` |
//! | `/key/<key>` | `GET` (read), `PUT` (set raw value), `DELETE` |
//! | `/key?prefix=`, `/key?from=&to=` | `GET` (a page of keys), `DELETE ?prefix=` |
//! | `/txn` | `POST` (compares, then one branch of operations, in one entry) |
//! | `/watch` | `GET ?key=` or `?prefix=`, `&from=` (every change, as Server-Sent Events) |
//! | `/lease`, `/lease/<id>`, `/lease/<id>/keepalive` | `POST` (grant); `GET`, `DELETE` (revoke); `POST` |
//! | `/join` | `POST` |
//! | `/remove` | `POST` |
//! | `/status` | `GET` |
//! | `/livez`, `/readyz` | `GET` (health for orchestrators) |
//! | `/metrics` | `GET` (Prometheus text format) |
//! | `/backup` | `GET ?level=` (a consistent image of the data) |
//! | `/groups` | `GET` (every Raft group), `POST` (create one) |
//! | `/groups/<g>` | `GET`, `DELETE` |
//! | `/groups/<g>/members`, `/groups/<g>/members/<id>` | `POST`, `DELETE` |
//! | `/groups/<g>/leader` | `POST` (leadership transfer) |
//! | `/groups/<g>/status`, `/groups/<g>/backup` | `GET`, as `/status` and `/backup` |
//! | `/groups/<g>/key`, `/groups/<g>/key/<key>`, `/groups/<g>/txn`, `/groups/<g>/watch`, `/groups/<g>/lease...` | as `/key`, `/txn`, `/watch` and `/lease`, in group `<g>` |
//! | `/openapi.json` | `GET` (this API, as OpenAPI 3; the file `httpd/openapi.json`) |

use std::future::Future;
use std::sync::Arc;

use actix_web::dev::Service;
use actix_web::web;
use actix_web::App;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use actix_web::HttpServer;

pub mod auth;
mod cluster;
pub mod error;
pub mod forward;
mod groups;
mod key;
mod lease;
pub mod metrics;
mod ops;
pub mod tls;
pub mod watch;

pub use error::ApiError;
pub use hraftd_client::wire;
pub use hraftd_client::wire::CreateGroupRequest;
pub use hraftd_client::wire::GroupInfo;
pub use hraftd_client::wire::GroupNodeInfo;
pub use hraftd_client::wire::JoinRequest;
pub use hraftd_client::wire::MemberInfo;
pub use hraftd_client::wire::NodeInfo;
pub use hraftd_client::wire::ReadLevel;
pub use hraftd_client::wire::Status;
pub use metrics::HttpMetrics;
pub use ops::OPENAPI;

/// The group that `/key` serves; `/groups/<g>/key` serves group `<g>`.
pub const DEFAULT_GROUP: &str = "default";

/// One RocksDB column family's size, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfSize {
    pub cf: String,
    pub sst_bytes: u64,
    pub memtable_bytes: u64,
}

/// The node's numbers that `/metrics` shows, besides the HTTP layer's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMetrics {
    pub status: Status,
    pub ready: bool,
    pub last_log_index: u64,
    /// Log entries up to this index have been purged (they are in a snapshot).
    pub purged_index: u64,
    pub snapshot_index: u64,
    pub snapshot_bytes: u64,
    /// On the leader: (follower name, entries behind).
    pub replication_lag: Vec<(String, u64)>,
    pub rocksdb: Vec<CfSize>,
    /// Refused peer connections by reason.
    pub peer_rejected: Vec<(String, u64)>,
    /// Frames of coalesced catalogue-group heartbeats sent, and the heartbeats they held.
    pub heartbeat_frames: u64,
    pub heartbeats: u64,
    /// Every group this node runs, the default one first.
    pub groups: Vec<GroupMetrics>,
}

/// One group's numbers on this node, for `/metrics` (label `group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetrics {
    pub group: String,
    pub leader: bool,
    pub has_leader: bool,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
}

/// A backup to stream: an open file (already unlinked) and what it holds.
#[derive(Debug)]
pub struct Backup {
    pub file: std::fs::File,
    pub bytes: u64,
    pub applied_index: u64,
    pub keys: u64,
    /// Held until the backup has been sent: the store limits how many exist at once.
    pub permit: Option<Box<dyn std::any::Any + Send>>,
}

/// How a read is to be served: `?level=`, `?min_index=` and `?wait=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    pub level: ReadLevel,
    /// Serve only once the node has applied this index (read-your-writes).
    pub min_index: Option<u64>,
    /// The longest to wait for `min_index` (at most [`MAX_WAIT`]).
    pub wait: std::time::Duration,
}

/// `?wait=` when the client gives none.
pub const DEFAULT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// The largest `?wait=` accepted.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Most keys one range page may ask for (`?limit=`).
pub const MAX_LIMIT: usize = 10_000;
/// Keys per range page when `?limit=` is not given.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most compares and operations one transaction may hold, all together.
pub const MAX_TXN_OPS: usize = 128;

impl From<ReadLevel> for ReadOptions {
    fn from(level: ReadLevel) -> Self {
        ReadOptions {
            level,
            min_index: None,
            wait: DEFAULT_WAIT,
        }
    }
}

/// A read's answer and the node's applied index when it read (`X-Hraftd-Index`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    pub index: u64,
    pub value: T,
}

/// Which keys a range read covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Every key that starts with this.
    Prefix(String),
    /// `[from, to)` in byte order (`to: None`: to the last key).
    Between { from: String, to: Option<String> },
}

/// A range read: its keys, starting after `after`, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    pub keys: KeyRange,
    pub after: Option<String>,
    pub limit: usize,
    pub keys_only: bool,
}

/// One page of a range read; `more`: keys follow the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub kvs: Vec<wire::KeyValue>,
    pub more: bool,
}

/// Which keys a watch follows (`?key=` or `?prefix=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    Key(String),
    /// Every key that starts with this (`""`: every key).
    Prefix(String),
}

/// The changes of one log entry to the keys a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub index: u64,
    pub events: Vec<wire::WatchEvent>,
}

/// Why a watch stream ended on the server's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnded {
    /// Its next changes are no longer in the history (it starts after `oldest`).
    Compacted { oldest: u64 },
    /// It did not keep up and was dropped.
    Slow,
    /// The group stopped on this node.
    Closed,
}

/// The lease a put attaches its key to: `?lease=<id>`, or `?ttl=<d>` (a new lease for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseArg {
    Id(u64),
    Ttl(std::time::Duration),
}

/// A running watch, as the HTTP layer consumes it.
pub trait WatchStream: Send + 'static {
    /// The index it started after.
    fn start_index(&self) -> u64;
    /// The next entry's changes to watched keys (cancel-safe: nothing is lost if the
    /// future is dropped unfinished).
    fn next(&mut self) -> impl Future<Output = Result<WatchBatch, WatchEnded>> + Send;
}

/// What the HTTP layer needs from a store. Errors are already [`ApiError`]s, so the
/// implementation decides what each failure means to a client (e.g. `NotLeader`).
pub trait KvStore: Send + Sync + 'static {
    /// What [`KvStore::watch`] gives.
    type Watch: WatchStream;
    /// Watches `target` in `group` from this node's applied state, after index `from`
    /// (`None`: from now); `Compacted` if the history no longer reaches back to `from`.
    fn watch(
        &self,
        group: &str,
        target: WatchTarget,
        from: Option<u64>,
    ) -> impl Future<Output = Result<Self::Watch, ApiError>>;
    /// A blocking read: `key` as `opts` asks, once its `mod_index` is past `after` (or it
    /// was deleted after it), or after `opts.wait` as it is then.
    fn get_after(
        &self,
        group: &str,
        key: &str,
        opts: &ReadOptions,
        after: u64,
    ) -> impl Future<Output = Result<Read<Option<wire::KeyValue>>, ApiError>>;
    /// Reads `key` with its metadata in `group` ([`DEFAULT_GROUP`] for `/key`).
    fn get(
        &self,
        group: &str,
        key: &str,
        opts: &ReadOptions,
    ) -> impl Future<Output = Result<Read<Option<wire::KeyValue>>, ApiError>>;
    /// Reads one page of keys in `group`, all at one applied index.
    fn range(
        &self,
        group: &str,
        range: &RangeRequest,
        opts: &ReadOptions,
    ) -> impl Future<Output = Result<Read<Page>, ApiError>>;
    /// Sets `key` to `value` (deletes it, for `None`) only if its `mod_index` is `expect`
    /// when applied (`0`: only if it does not exist); else `PreconditionFailed`.
    fn cas(
        &self,
        group: &str,
        key: String,
        value: Option<String>,
        expect: u64,
    ) -> impl Future<Output = Result<u64, ApiError>>;
    /// Deletes every key under `prefix` in one entry: its index and how many went.
    fn delete_prefix(
        &self,
        group: &str,
        prefix: String,
    ) -> impl Future<Output = Result<wire::DeletedResponse, ApiError>>;
    /// Sets `key` attached to a lease (an existing one, or a new one of a TTL granted with
    /// it), only if its `mod_index` is `expect` when given; `NotFound` for no such lease.
    fn put_leased(
        &self,
        group: &str,
        key: String,
        value: String,
        expect: Option<u64>,
        lease: LeaseArg,
    ) -> impl Future<Output = Result<wire::WriteResponse, ApiError>>;
    /// Grants a lease of `ttl` in `group`.
    fn lease_grant(
        &self,
        group: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<wire::LeaseResponse, ApiError>>;
    /// Restarts a lease's countdown (the group's leader only).
    fn lease_keepalive(
        &self,
        group: &str,
        id: u64,
    ) -> impl Future<Output = Result<wire::LeaseResponse, ApiError>>;
    /// A lease as the group's leader sees it.
    fn lease(
        &self,
        group: &str,
        id: u64,
    ) -> impl Future<Output = Result<wire::LeaseInfo, ApiError>>;
    /// Revokes a lease and deletes its keys in one entry.
    fn lease_revoke(
        &self,
        group: &str,
        id: u64,
    ) -> impl Future<Output = Result<wire::DeletedResponse, ApiError>>;
    /// Runs a (validated) transaction in one entry.
    fn txn(
        &self,
        group: &str,
        txn: wire::TxnRequest,
    ) -> impl Future<Output = Result<wire::TxnResponse, ApiError>>;
    fn set(
        &self,
        group: &str,
        pairs: Vec<(String, String)>,
    ) -> impl Future<Output = Result<u64, ApiError>>;
    fn delete(&self, group: &str, key: String) -> impl Future<Output = Result<u64, ApiError>>;
    /// Checks that a `/join` request (its exact body and the value of the
    /// `X-Hraftd-Join-Proof` header) comes from a holder of the cluster's key, where the
    /// cluster has one.
    fn check_join(&self, proof: Option<&str>, body: &[u8]) -> Result<(), ApiError>;
    /// Adds a node; resolves with the membership log index that made it a voter.
    fn join(&self, req: JoinRequest) -> impl Future<Output = Result<u64, ApiError>>;
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), ApiError>>;
    fn status(&self) -> Status;
    /// Why the node should not get traffic yet (`None` once ready).
    fn not_ready(&self) -> Option<String>;
    /// Why the node is not alive (e.g. Raft stopped on a fatal error), `None` while it is.
    fn not_live(&self) -> Option<String>;
    fn metrics(&self) -> NodeMetrics;
    /// A consistent image of `group`'s applied data, taken at `level`.
    fn backup(
        &self,
        group: &str,
        level: ReadLevel,
    ) -> impl Future<Output = Result<Backup, ApiError>>;
    /// This node's view of `group`, as `/status` shows the default group's.
    fn group_status(&self, group: &str) -> impl Future<Output = Result<Status, ApiError>>;
    /// Every Raft group, the default one first.
    fn groups(&self) -> impl Future<Output = Result<Vec<GroupInfo>, ApiError>>;
    /// One group (`404` for none).
    fn group(&self, id: &str) -> impl Future<Output = Result<GroupInfo, ApiError>>;
    /// Creates a group; resolves once it has a leader.
    fn create_group(
        &self,
        req: CreateGroupRequest,
    ) -> impl Future<Output = Result<GroupInfo, ApiError>>;
    /// Deletes a group; resolves with the (default group's) log index that did.
    fn delete_group(&self, id: &str) -> impl Future<Output = Result<u64, ApiError>>;
    /// Adds a cluster node to a group; resolves once it is a voter there.
    fn add_group_member(
        &self,
        id: &str,
        member: &str,
    ) -> impl Future<Output = Result<GroupInfo, ApiError>>;
    /// Removes a member from a group.
    fn remove_group_member(
        &self,
        id: &str,
        member: &str,
    ) -> impl Future<Output = Result<GroupInfo, ApiError>>;
    /// Moves a group's leadership to one of its voters; resolves once it leads.
    fn transfer_leader(
        &self,
        id: &str,
        to: &str,
    ) -> impl Future<Output = Result<GroupInfo, ApiError>>;
}

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest request body accepted; larger ones get `413`.
    pub body_limit: usize,
    /// Longest key accepted, in bytes (UTF-8); longer ones get `400` on every path, so
    /// every stored key can be read and deleted within the request-head limit.
    pub max_key_bytes: usize,
    /// The longest one `/backup` response may take to send.
    pub backup_deadline: std::time::Duration,
    /// Users and permissions (`-auth FILE`); `None`: every route is open.
    pub auth: Option<Arc<auth::Auth>>,
    /// HTTPS (`-tls-cert`, `-tls-key`); `None`: plain HTTP.
    pub tls: Option<Arc<tls::Tls>>,
    /// Forwarding of leader-only requests (`-forward`, `X-Hraftd-Forward: 1`); `None`:
    /// followers always redirect.
    pub forward: Option<Arc<forward::Forwarder>>,
    /// Open watch streams (and blocking reads) and their bound (`-max-watchers`); shared
    /// by every worker.
    pub watchers: Arc<watch::Limit>,
    /// How often an idle watch stream gets a comment line, so proxies keep it open.
    pub keepalive: std::time::Duration,
    /// Cancelled when the server begins to stop: watch streams end then, so that a stop
    /// does not wait for them.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            body_limit: 1 << 20,
            max_key_bytes: 4096,
            backup_deadline: std::time::Duration::from_secs(3600),
            auth: None,
            tls: None,
            forward: None,
            watchers: Arc::new(watch::Limit::new(watch::DEFAULT_MAX_WATCHERS)),
            keepalive: std::time::Duration::from_secs(10),
            stopping: Default::default(),
        }
    }
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_string(),
    })
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no such endpoint: {}",
        req.path()
    )))
}

/// Registers every route for store type `S`. The store and settings must be in app data.
///
/// Private: a `307`'s `Location` is completed by [`app`]'s middleware, so the routes are
/// only served through `app`.
fn routes<S: KvStore>(cfg: &mut web::ServiceConfig) {
    let not_allowed = || web::route().to(method_not_allowed);
    cfg.service(
        web::resource("/key")
            .route(web::post().to(key::post::<S>))
            .route(web::get().to(key::get_query::<S>))
            .route(web::delete().to(key::delete_query::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/key/{key:.*}")
            .route(web::get().to(key::get_path::<S>))
            .route(web::put().to(key::put::<S>))
            .route(web::delete().to(key::delete_path::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/txn")
            .route(web::post().to(key::txn::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/join")
            .route(web::post().to(cluster::join::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/remove")
            .route(web::post().to(cluster::remove::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/status")
            .route(web::get().to(cluster::status::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/livez")
            .route(web::get().to(ops::livez::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/readyz")
            .route(web::get().to(ops::readyz::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(metrics::metrics::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/backup")
            .route(web::get().to(ops::backup::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups")
            .route(web::get().to(groups::list::<S>))
            .route(web::post().to(groups::create::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}")
            .route(web::get().to(groups::get::<S>))
            .route(web::delete().to(groups::delete::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/members")
            .route(web::post().to(groups::add_member::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/members/{id}")
            .route(web::delete().to(groups::remove_member::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/leader")
            .route(web::post().to(groups::transfer::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/status")
            .route(web::get().to(cluster::group_status::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/backup")
            .route(web::get().to(ops::backup::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/key")
            .route(web::post().to(key::post::<S>))
            .route(web::get().to(key::get_query::<S>))
            .route(web::delete().to(key::delete_query::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/key/{key:.*}")
            .route(web::get().to(key::get_path::<S>))
            .route(web::put().to(key::put::<S>))
            .route(web::delete().to(key::delete_path::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/txn")
            .route(web::post().to(key::txn::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/lease")
            .route(web::post().to(lease::grant::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/lease/{id}")
            .route(web::get().to(lease::get::<S>))
            .route(web::delete().to(lease::revoke::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/lease/{id}/keepalive")
            .route(web::post().to(lease::keepalive::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/lease")
            .route(web::post().to(lease::grant::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/lease/{id}")
            .route(web::get().to(lease::get::<S>))
            .route(web::delete().to(lease::revoke::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/lease/{id}/keepalive")
            .route(web::post().to(lease::keepalive::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/watch")
            .route(web::get().to(watch::watch::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/groups/{group}/watch")
            .route(web::get().to(watch::watch::<S>))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/openapi.json")
            .route(web::get().to(ops::openapi))
            .default_service(not_allowed()),
    );
}

/// Builds the application for `store`, counting requests into `metrics`; used by
/// [`serve`] and by tests.
pub fn app<S: KvStore>(
    store: Arc<S>,
    settings: Settings,
    metrics: Arc<HttpMetrics>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let counted = metrics.clone();
    App::new()
        .app_data(web::Data::from(store))
        .app_data(web::Data::new(settings))
        .app_data(web::Data::from(metrics))
        .configure(routes::<S>)
        .default_service(web::route().to(not_found))
        // Forwarding inside authentication (a client is checked here, then again by the
        // leader), both inside the metrics wrapper, so refusals are counted too.
        .wrap(actix_web::middleware::from_fn(forward::forward))
        .wrap(actix_web::middleware::from_fn(auth::authorize))
        .wrap_fn(move |req, srv| {
            let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
            let method = req.method().clone();
            let target = error::RequestTarget::of(req.request());
            let start = std::time::Instant::now();
            let fut = srv.call(req);
            let m = counted.clone();
            async move {
                let mut res = fut.await;
                let code = match &mut res {
                    Ok(r) => {
                        target.complete_redirect(r.response_mut());
                        r.status()
                    }
                    Err(e) => e.as_response_error().status_code(),
                };
                m.observe(&route, &method, code.as_u16(), start.elapsed());
                res
            }
        })
}

/// Serves the API on an already-bound `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish.
pub async fn serve<S: KvStore>(
    listener: std::net::TcpListener,
    store: Arc<S>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let metrics = Arc::new(HttpMetrics::default());
    let tls = settings.tls.clone();
    let stopping = settings.stopping.clone();
    let server = HttpServer::new(move || app(store.clone(), settings.clone(), metrics.clone()))
        .workers(2)
        .disable_signals()
        .shutdown_timeout(10);
    let server = match tls {
        Some(tls) => {
            let config = tls.server_config().map_err(std::io::Error::other)?;
            server.listen_rustls_0_23(listener, config)?
        }
        None => server.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r,
        _ = shutdown => {
            stopping.cancel();
            // The server future must keep running to carry out the stop.
            let (_, r) = tokio::join!(handle.stop(true), &mut server);
            r
        }
    }
}

#[cfg(test)]
mod tests;
