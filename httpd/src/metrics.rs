//! `/metrics` in the Prometheus text format.
//!
//! Two kinds of numbers: HTTP requests by route, method and status code with latency
//! histograms, counted by a middleware around every route into the registry that
//! [`HttpMetrics`] owns (shared by all server workers); and the node's Raft and storage
//! gauges, read from the store at scrape time, so they are never stale and cost nothing
//! between scrapes.

use std::time::Duration;

use actix_web::http::Method;
use actix_web::web;
use actix_web::HttpResponse;
use prometheus::Encoder;
use prometheus::Gauge;
use prometheus::GaugeVec;
use prometheus::HistogramOpts;
use prometheus::HistogramVec;
use prometheus::IntCounterVec;
use prometheus::Opts;
use prometheus::Registry;

use crate::KvStore;
use crate::NodeMetrics;

/// HTTP request metrics, shared by every worker of one server.
pub struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        let requests = IntCounterVec::new(
            Opts::new("hraftd_http_requests_total", "HTTP requests served"),
            &["route", "method", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "hraftd_http_request_duration_seconds",
                "Time from a request's arrival until its response headers",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "method"],
        )
        .expect("valid metric");
        let registry = Registry::new();
        registry
            .register(Box::new(requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(latency.clone()))
            .expect("registered once");
        HttpMetrics {
            registry,
            requests,
            latency,
        }
    }
}

/// Methods become labels as they are only when standard, so label values stay few.
fn method_label(m: &Method) -> &str {
    match *m {
        Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::HEAD => m.as_str(),
        _ => "other",
    }
}

impl HttpMetrics {
    /// Counts one request. `route` is the matched route pattern (`/key/{key:.*}`), never
    /// the raw path, so keys do not become label values.
    pub fn observe(&self, route: &str, method: &Method, code: u16, took: Duration) {
        let method = method_label(method);
        self.requests
            .with_label_values(&[route, method, &code.to_string()])
            .inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
    }

    /// Renders the HTTP metrics and `node`'s gauges.
    pub fn render(&self, node: &NodeMetrics) -> String {
        let mut families = self.registry.gather();
        families.extend(node_registry(node).gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn gauge(r: &Registry, name: &str, help: &str, v: f64) {
    let g = Gauge::new(name, help).expect("valid metric");
    g.set(v);
    r.register(Box::new(g)).expect("each name once");
}

fn gauge_vec<'a>(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, f64)>,
) {
    let g = GaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    for (l, v) in values {
        g.with_label_values(&[l]).set(v);
    }
    r.register(Box::new(g)).expect("each name once");
}

/// A counter whose total is kept elsewhere (by the store), shown as of now.
fn counter(r: &Registry, name: &str, help: &str, v: f64) {
    let c = prometheus::Counter::new(name, help).expect("valid metric");
    c.inc_by(v);
    r.register(Box::new(c)).expect("each name once");
}

/// A counter family whose totals are kept elsewhere (by the store), shown as of now.
fn counter_vec<'a>(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, f64)>,
) {
    let c = prometheus::CounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    for (l, v) in values {
        c.with_label_values(&[l]).inc_by(v);
    }
    r.register(Box::new(c)).expect("each name once");
}

/// The node's gauges, as of now.
fn node_registry(n: &NodeMetrics) -> Registry {
    let r = Registry::new();
    let s = &n.status;
    gauge(&r, "hraftd_raft_term", "Current Raft term", s.term as f64);
    gauge_vec(
        &r,
        "hraftd_raft_role",
        "1 for this node's current Raft role, 0 for the others",
        "role",
        ["leader", "follower", "candidate", "learner", "shutdown"]
            .map(|role| (role, f64::from(u8::from(s.role == role)))),
    );
    gauge(
        &r,
        "hraftd_raft_has_leader",
        "1 if this node knows a leader",
        f64::from(u8::from(s.leader.is_some())),
    );
    gauge(
        &r,
        "hraftd_raft_voters",
        "Voting members in this node's view of the membership",
        s.members.iter().filter(|m| m.voter).count() as f64,
    );
    gauge(
        &r,
        "hraftd_raft_commit_index",
        "Highest log index known to be committed",
        s.commit_index as f64,
    );
    gauge(
        &r,
        "hraftd_raft_applied_index",
        "Highest log index applied to the state machine",
        s.applied_index as f64,
    );
    gauge(
        &r,
        "hraftd_raft_last_log_index",
        "Index of the last entry in this node's log",
        n.last_log_index as f64,
    );
    gauge(
        &r,
        "hraftd_raft_log_entries",
        "Entries in this node's log (not yet purged into a snapshot)",
        n.last_log_index.saturating_sub(n.purged_index) as f64,
    );
    gauge_vec(
        &r,
        "hraftd_raft_replication_lag_entries",
        "On the leader: entries each follower is behind the leader's log",
        "follower",
        n.replication_lag
            .iter()
            .map(|(f, lag)| (f.as_str(), *lag as f64)),
    );
    gauge(
        &r,
        "hraftd_snapshot_index",
        "Last log index covered by this node's newest snapshot",
        n.snapshot_index as f64,
    );
    gauge(
        &r,
        "hraftd_snapshot_bytes",
        "Size of this node's newest snapshot file",
        n.snapshot_bytes as f64,
    );
    gauge_vec(
        &r,
        "hraftd_rocksdb_sst_bytes",
        "RocksDB SST file bytes by column family",
        "cf",
        n.rocksdb
            .iter()
            .map(|c| (c.cf.as_str(), c.sst_bytes as f64)),
    );
    gauge_vec(
        &r,
        "hraftd_rocksdb_memtable_bytes",
        "RocksDB memtable bytes by column family",
        "cf",
        n.rocksdb
            .iter()
            .map(|c| (c.cf.as_str(), c.memtable_bytes as f64)),
    );
    counter_vec(
        &r,
        "hraftd_peer_rejected_total",
        "Peer connections on the Raft port refused, by reason",
        "reason",
        n.peer_rejected.iter().map(|(k, v)| (k.as_str(), *v as f64)),
    );
    counter(
        &r,
        "hraftd_peer_heartbeat_frames_total",
        "Peer frames that carried coalesced heartbeats of Raft groups",
        n.heartbeat_frames as f64,
    );
    counter(
        &r,
        "hraftd_peer_heartbeats_total",
        "Heartbeats of Raft groups sent coalesced (divided by frames: heartbeats per frame)",
        n.heartbeats as f64,
    );
    let groups = &n.groups;
    let by_group = |f: fn(&crate::GroupMetrics) -> f64| {
        groups
            .iter()
            .map(move |g| (g.group.as_str(), f(g)))
            .collect::<Vec<_>>()
    };
    gauge(
        &r,
        "hraftd_groups",
        "Raft groups this node runs, the default one included",
        groups.len() as f64,
    );
    gauge_vec(
        &r,
        "hraftd_group_leader",
        "1 if this node leads the group",
        "group",
        by_group(|g| f64::from(u8::from(g.leader))),
    );
    gauge_vec(
        &r,
        "hraftd_group_has_leader",
        "1 if this node knows the group's leader",
        "group",
        by_group(|g| f64::from(u8::from(g.has_leader))),
    );
    gauge_vec(
        &r,
        "hraftd_group_term",
        "The group's current Raft term on this node",
        "group",
        by_group(|g| g.term as f64),
    );
    gauge_vec(
        &r,
        "hraftd_group_commit_index",
        "Highest log index of the group known to be committed",
        "group",
        by_group(|g| g.commit_index as f64),
    );
    gauge_vec(
        &r,
        "hraftd_group_applied_index",
        "Highest log index of the group applied here",
        "group",
        by_group(|g| g.applied_index as f64),
    );
    gauge_vec(
        &r,
        "hraftd_group_last_log_index",
        "Index of the last entry in this node's log of the group",
        "group",
        by_group(|g| g.last_log_index as f64),
    );
    gauge(
        &r,
        "hraftd_ready",
        "1 if /readyz would answer 200",
        f64::from(u8::from(n.ready)),
    );
    r
}

/// `GET /metrics`.
pub(crate) async fn metrics<S: KvStore>(
    store: web::Data<S>,
    m: web::Data<HttpMetrics>,
    settings: web::Data<crate::Settings>,
) -> HttpResponse {
    let mut text = m.render(&store.metrics());
    // Kept by the HTTP layer, not the store: open watch streams and blocking reads.
    text.push_str(&format!(
        "# HELP hraftd_watchers Open watch streams and blocking reads on this node\n# TYPE hraftd_watchers gauge\nhraftd_watchers {}\n",
        settings.watchers.open()
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
