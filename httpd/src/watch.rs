//! `GET /watch` (and `/groups/<g>/watch`): a key's or a prefix's changes as Server-Sent
//! Events, from this node's applied state, and the bound on how many are open at once.
//!
//! Each change is one event: `event: put|delete`, `data:` the key as a `KeyValue`. The
//! changes of one log entry (a prefix delete, a transaction) share its index, and only the
//! last of them carries `id: <index>`: a client that resumes with `Last-Event-ID` (any
//! node) never gets half an entry, and never one twice, as long as it acts on an entry once
//! its `id` arrives. A comment line every `Settings::keepalive` keeps idle streams open.
//! When the server ends a stream it says why in a last `event: error`.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::web;
use actix_web::web::Bytes;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use hraftd_client::wire;

use crate::error::ApiError;
use crate::key;
use crate::KvStore;
use crate::Settings;
use crate::WatchEnded;
use crate::WatchStream;
use crate::WatchTarget;

/// `-max-watchers` when not given.
pub const DEFAULT_MAX_WATCHERS: usize = 10_000;

/// How many watches (streams and blocking reads) are open, and how many may be.
#[derive(Debug)]
pub struct Limit {
    max: usize,
    open: AtomicUsize,
}

impl Limit {
    pub fn new(max: usize) -> Limit {
        Limit {
            max,
            open: AtomicUsize::new(0),
        }
    }

    /// How many are open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A place for one more, or `503` when all are taken.
    pub(crate) fn acquire(self: &Arc<Self>) -> Result<Permit, ApiError> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Permit(self.clone())),
            Err(n) => Err(ApiError::Unavailable(format!(
                "this node holds {n} watches, its limit (-max-watchers); retry later or watch on another node"
            ))),
        }
    }
}

/// One open watch; gives its place back when dropped.
pub(crate) struct Permit(Arc<Limit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `?key=` or `?prefix=` (exactly one; an empty prefix watches every key).
fn target(q: &HashMap<String, String>, max_key_bytes: usize) -> Result<WatchTarget, ApiError> {
    match (q.get("key"), q.get("prefix")) {
        (Some(k), None) => {
            key::valid_key(k, max_key_bytes)?;
            Ok(WatchTarget::Key(k.clone()))
        }
        (None, Some(p)) if p.len() <= max_key_bytes => Ok(WatchTarget::Prefix(p.clone())),
        (None, Some(p)) => Err(ApiError::BadRequest(format!(
            "prefix of {} bytes exceeds the key limit of {max_key_bytes} bytes",
            p.len()
        ))),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "give either key or prefix, not both".into(),
        )),
        (None, None) => Err(ApiError::BadRequest(
            "missing ?key= (one key) or ?prefix= (every key under it; empty: all keys)".into(),
        )),
    }
}

/// Where to start: `Last-Event-ID` (a reconnecting client) wins over `?from=`.
fn from(req: &HttpRequest, q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    if let Some(v) = req.headers().get("last-event-id") {
        let v = v.to_str().unwrap_or("").trim();
        return v.parse::<u64>().map(Some).map_err(|_| {
            ApiError::BadRequest(format!(
                "Last-Event-ID must be an index (a non-negative integer), got {v:?}"
            ))
        });
    }
    key::number(q, "from")
}

fn event(kind: &str, data: &impl serde::Serialize, id: Option<u64>) -> String {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    match id {
        Some(id) => format!("event: {kind}\ndata: {data}\nid: {id}\n\n"),
        None => format!("event: {kind}\ndata: {data}\n\n"),
    }
}

/// The events of one entry, the last one with its index as `id`.
fn entry_events(batch: &crate::WatchBatch) -> Bytes {
    let mut out = String::new();
    let n = batch.events.len();
    for (i, e) in batch.events.iter().enumerate() {
        let id = (i + 1 == n).then_some(batch.index);
        out.push_str(&event(e.kind.as_str(), &e.kv, id));
    }
    Bytes::from(out)
}

/// The last event of a stream the server ends.
fn end_event(end: &WatchEnded) -> Bytes {
    let body = match end {
        WatchEnded::Compacted { oldest } => wire::WatchEndBody {
            error: format!(
                "the change history no longer holds what follows; it starts after index {oldest}: read the keys with a range and watch from its index"
            ),
            code: wire::ErrorCode::Compacted.as_str().into(),
            oldest_index: Some(*oldest),
        },
        WatchEnded::Slow => wire::WatchEndBody {
            error: "this watcher did not keep up with the changes and was dropped; reconnect with Last-Event-ID".into(),
            code: "slow_consumer".into(),
            oldest_index: None,
        },
        WatchEnded::Closed => wire::WatchEndBody {
            error: "the node stopped serving this group; reconnect with Last-Event-ID (another node may serve it)".into(),
            code: wire::ErrorCode::Unavailable.as_str().into(),
            oldest_index: None,
        },
    };
    Bytes::from(event("error", &body, None))
}

/// What a stream holds while it runs.
struct Stream<W> {
    watch: W,
    tick: tokio::time::Interval,
    stopping: tokio_util::sync::CancellationToken,
    done: bool,
    _permit: Permit,
}

/// `GET /watch?key=K|prefix=P&from=N` (or `Last-Event-ID: N`)
pub(crate) async fn watch<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = key::query(&req)?;
    let target = target(&q, settings.max_key_bytes)?;
    let from = from(&req, &q)?;
    let group = key::group(&req)?;
    let permit = settings.watchers.acquire()?;
    let w = store.watch(&group, target, from).await?;
    let start = w.start_index();
    let mut tick = tokio::time::interval(settings.keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: it becomes the opening comment below instead.
    tick.reset();
    let state = Stream {
        watch: w,
        tick,
        stopping: settings.stopping.clone(),
        done: false,
        _permit: permit,
    };
    let opening = futures::stream::once(async move {
        Ok::<_, actix_web::Error>(Bytes::from(format!(
            ": watching changes after index {start}\nretry: 1000\n\n"
        )))
    });
    let rest = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let chunk = tokio::select! {
            _ = st.stopping.cancelled() => {
                st.done = true;
                end_event(&WatchEnded::Closed)
            }
            r = st.watch.next() => match r {
                Ok(batch) => entry_events(&batch),
                Err(end) => {
                    st.done = true;
                    end_event(&end)
                }
            },
            _ = st.tick.tick() => Bytes::from_static(b": keepalive\n\n"),
        };
        Some((Ok::<_, actix_web::Error>(chunk), st))
    });
    let resp = HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(futures::StreamExt::chain(opening, rest));
    Ok(key::with_index(resp, start))
}

/// Takes a place for a blocking read (`?wait_index=`), which holds a watch while it waits.
pub(crate) fn acquire(settings: &Settings) -> Result<Permit, ApiError> {
    settings.watchers.acquire()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_refuses_past_its_bound_and_frees_on_drop() {
        let l = Arc::new(Limit::new(2));
        let a = l.acquire().unwrap();
        let _b = l.acquire().unwrap();
        assert!(matches!(l.acquire(), Err(ApiError::Unavailable(_))));
        drop(a);
        assert_eq!(l.open(), 1);
        assert!(l.acquire().is_ok());
    }

    #[test]
    fn only_the_last_event_of_an_entry_carries_its_index() {
        let kv = |k: &str| wire::KeyValue {
            key: k.into(),
            value: None,
            create_index: 0,
            mod_index: 7,
            version: 0,
            lease: None,
        };
        let b = crate::WatchBatch {
            index: 7,
            events: vec![
                wire::WatchEvent {
                    kind: wire::EventKind::Delete,
                    kv: kv("a"),
                },
                wire::WatchEvent {
                    kind: wire::EventKind::Delete,
                    kv: kv("b"),
                },
            ],
        };
        let text = String::from_utf8(entry_events(&b).to_vec()).unwrap();
        assert_eq!(
            text,
            "event: delete\ndata: {\"key\":\"a\",\"create_index\":0,\"mod_index\":7,\"version\":0}\n\n\
             event: delete\ndata: {\"key\":\"b\",\"create_index\":0,\"mod_index\":7,\"version\":0}\nid: 7\n\n"
        );
    }
}
