//! `/key` handlers (also serving `/groups/<g>/key`, scoped to that group): writes (`POST /key`, `PUT /key/<key>`), reads at a level
//! (`GET /key/<key>`, `GET /key?key=`), and deletes. Input is validated completely before
//! the store is called, so a bad request never changes state.
//!
//! Keys are decoded strictly, never lossily: in a path (`/key/<key>`) `%XX` escapes are
//! decoded (`%2F` is `/`, so `/key/a%2Fb` and `/key/a/b` name the same key) and `+` is a
//! plain plus; in a query (`?key=`) form encoding applies, so `+` is a space and `%2B` a
//! plus. An escape that decodes to invalid UTF-8 is a `400`, and so is a key longer than
//! `Settings::max_key_bytes` on every path, so that every stored key can be read and
//! deleted.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::web;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use actix_web::ResponseError;
use futures::StreamExt;
use hraftd_client::wire;
use hraftd_client::wire::WriteResponse;
use serde_json::Value;

use crate::error::ApiError;
use crate::KeyRange;
use crate::KvStore;
use crate::RangeRequest;
use crate::ReadLevel;
use crate::ReadOptions;
use crate::Settings;

/// The response header with the node's applied index when it read (`X-Hraftd-Index`;
/// lower case, as `HeaderName` holds it).
pub const INDEX_HEADER: &str = "x-hraftd-index";

type Reply = Result<HttpResponse, ApiError>;

/// Reads the whole body, refusing more than `limit` bytes (early, from Content-Length,
/// when the client sent one).
pub(crate) async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The query string's parameters, decoded strictly (see the module docs).
pub(crate) fn query(req: &HttpRequest) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for part in req.query_string().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.insert(
            form_decode(k, "query parameter")?,
            form_decode(v, "query parameter")?,
        );
    }
    Ok(out)
}

fn form_decode(s: &str, what: &str) -> Result<String, ApiError> {
    strict_decode(&s.replace('+', " "), what)
}

fn strict_decode(s: &str, what: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::BadRequest(format!("{what} {s:?} decodes to invalid UTF-8")))
}

/// The key of a `/key/<key>` or `/groups/<g>/key/<key>` request, decoded strictly from
/// the raw path.
fn path_key(req: &HttpRequest) -> Result<String, ApiError> {
    let path = req.uri().path();
    let raw = match path.strip_prefix("/groups/") {
        // A group id has no `/` (and no escapes): the key follows its `/key/`.
        Some(rest) => rest
            .split_once('/')
            .and_then(|(_, r)| r.strip_prefix("key/"))
            .unwrap_or(""),
        None => path.strip_prefix("/key/").unwrap_or(""),
    };
    strict_decode(raw, "key")
}

/// The group a key request is for: `/groups/<g>/...`, else the default group.
pub(crate) fn group(req: &HttpRequest) -> Result<String, ApiError> {
    match req.match_info().get("group") {
        None => Ok(crate::DEFAULT_GROUP.to_string()),
        Some(g) => crate::groups::valid_group(g).map(str::to_string),
    }
}

fn level(q: &HashMap<String, String>) -> Result<ReadLevel, ApiError> {
    match q.get("level") {
        None => Ok(ReadLevel::Default),
        Some(l) => ReadLevel::parse(l).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown level {l:?}; use stale, default or consistent"
            ))
        }),
    }
}

/// A key must be non-empty and at most `max` bytes.
pub(crate) fn valid_key(key: &str, max: usize) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::BadRequest("key must not be empty".into()));
    }
    if key.len() > max {
        return Err(ApiError::BadRequest(format!(
            "key of {} bytes exceeds the limit of {max} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// Parses `{"k1":"v1",...}`: a non-empty object of valid keys and string values.
pub(crate) fn parse_pairs(
    body: &[u8],
    max_key_bytes: usize,
) -> Result<Vec<(String, String)>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ApiError::BadRequest(
            "body must be a JSON object of key/value strings".into(),
        ));
    };
    if map.is_empty() {
        return Err(ApiError::BadRequest(
            "body must set at least one key".into(),
        ));
    }
    map.into_iter()
        .map(|(k, v)| {
            valid_key(&k, max_key_bytes)?;
            match v {
                Value::String(s) => Ok((k, s)),
                other => Err(ApiError::BadRequest(format!(
                    "value of {k:?} must be a string, got {other}"
                ))),
            }
        })
        .collect()
}

/// The request's `?level=` (default when absent).
pub(crate) fn query_level(req: &HttpRequest) -> Result<ReadLevel, ApiError> {
    level(&query(req)?)
}

/// A `true`/`false` query parameter (absent: false).
pub(crate) fn flag(q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

/// A non-negative integer query parameter.
pub(crate) fn number(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("{name} must be a non-negative integer, got {v:?}"))
            })
        })
        .transpose()
}

/// A duration as clients write it: seconds (`5`, `2.5`, `5s`) or milliseconds (`500ms`),
/// at most `max`; `None` for anything else.
pub(crate) fn duration(v: &str, max: std::time::Duration) -> Option<std::time::Duration> {
    let (num, scale) = match v.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (v.strip_suffix('s').unwrap_or(v), 1.0),
    };
    let secs = num
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0 && !num.starts_with('+'))
        .map(|n| n * scale)?;
    (secs <= max.as_secs_f64()).then(|| std::time::Duration::from_secs_f64(secs))
}

/// `?wait=`: seconds (`5`, `2.5`, `5s`) or milliseconds (`500ms`), at most [`crate::MAX_WAIT`].
pub(crate) fn wait(q: &HashMap<String, String>) -> Result<std::time::Duration, ApiError> {
    let Some(v) = q.get("wait") else {
        return Ok(crate::DEFAULT_WAIT);
    };
    duration(v, crate::MAX_WAIT).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "wait must be a duration of at most {}s such as 5, 5s or 500ms, got {v:?}",
            crate::MAX_WAIT.as_secs()
        ))
    })
}

fn read_options(q: &HashMap<String, String>) -> Result<ReadOptions, ApiError> {
    Ok(ReadOptions {
        level: level(q)?,
        min_index: number(q, "min_index")?,
        wait: wait(q)?,
    })
}

/// Adds `X-Hraftd-Index: <index>` to a read's answer.
pub(crate) fn with_index(mut resp: HttpResponse, index: u64) -> HttpResponse {
    if let Ok(v) = header::HeaderValue::from_str(&index.to_string()) {
        resp.headers_mut()
            .insert(header::HeaderName::from_static(INDEX_HEADER), v);
    }
    resp
}

async fn read_key<S: KvStore>(
    store: &S,
    settings: &Settings,
    req: &HttpRequest,
    key: &str,
) -> Reply {
    let q = query(req)?;
    let opts = read_options(&q)?;
    let meta = flag(&q, "meta")?;
    valid_key(key, settings.max_key_bytes)?;
    let group = group(req)?;
    let read = match number(&q, "wait_index")? {
        // A blocking read holds a watch while it waits: it counts against -max-watchers.
        Some(after) => {
            let _permit = crate::watch::acquire(settings)?;
            store.get_after(&group, key, &opts, after).await?
        }
        None => store.get(&group, key, &opts).await?,
    };
    let resp = match read.value {
        Some(kv) => {
            let mut resp = HttpResponse::Ok();
            resp.insert_header((header::ETAG, format!("\"{}\"", kv.mod_index)));
            if meta {
                resp.json(kv)
            } else {
                let mut body = serde_json::Map::new();
                body.insert(key.to_string(), Value::String(kv.value.unwrap_or_default()));
                resp.json(body)
            }
        }
        None => ApiError::NotFound(format!("key not found: {key}")).error_response(),
    };
    Ok(with_index(resp, read.index))
}

/// Which keys `?prefix=` or `?from=&to=` name, with `after`, `limit` and `keys_only`.
fn range_request(
    q: &HashMap<String, String>,
    max_key_bytes: usize,
) -> Result<RangeRequest, ApiError> {
    let limit = match number(q, "limit")? {
        None => crate::DEFAULT_LIMIT,
        Some(n) if (1..=crate::MAX_LIMIT as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "limit must be 1 to {}, got {n}",
                crate::MAX_LIMIT
            )))
        }
    };
    let bounded = |name: &str| -> Result<Option<String>, ApiError> {
        match q.get(name) {
            Some(v) if v.len() > max_key_bytes => Err(ApiError::BadRequest(format!(
                "{name} of {} bytes exceeds the key limit of {max_key_bytes} bytes",
                v.len()
            ))),
            other => Ok(other.cloned()),
        }
    };
    let (prefix, from, to, after) = (
        bounded("prefix")?,
        bounded("from")?,
        bounded("to")?,
        bounded("after")?,
    );
    let keys = match (prefix, from, to) {
        (Some(p), None, None) => KeyRange::Prefix(p),
        (Some(_), _, _) => {
            return Err(ApiError::BadRequest(
                "give either prefix, or from (and to), not both".into(),
            ))
        }
        (None, Some(from), to) => KeyRange::Between { from, to },
        (None, None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "to needs from (from= starts at the first key)".into(),
            ))
        }
        (None, None, None) => unreachable!("checked by the caller"),
    };
    Ok(RangeRequest {
        keys,
        after,
        limit,
        keys_only: flag(q, "keys_only")?,
    })
}

async fn read_range<S: KvStore>(
    store: &S,
    settings: &Settings,
    req: &HttpRequest,
    q: &HashMap<String, String>,
) -> Reply {
    let range = range_request(q, settings.max_key_bytes)?;
    let opts = read_options(q)?;
    let group = group(req)?;
    let read = store.range(&group, &range, &opts).await?;
    let next = if read.value.more {
        read.value.kvs.last().map(|kv| kv.key.clone())
    } else {
        None
    };
    let body = wire::RangeResponse {
        kvs: read.value.kvs,
        more: read.value.more,
        next,
        index: read.index,
    };
    Ok(with_index(HttpResponse::Ok().json(body), read.index))
}

/// Whether a `/key` query names a range (`prefix`, `from` or `to`) rather than one key.
fn is_range(q: &HashMap<String, String>) -> Result<bool, ApiError> {
    let range = ["prefix", "from", "to"].iter().any(|p| q.contains_key(*p));
    if range && q.contains_key("key") {
        return Err(ApiError::BadRequest(
            "give either key, or a range (prefix, from, to), not both".into(),
        ));
    }
    Ok(range)
}

fn query_key(req: &HttpRequest, max_key_bytes: usize) -> Result<String, ApiError> {
    let q = query(req)?;
    let key = q.get("key").ok_or_else(|| {
        ApiError::BadRequest("missing ?key= (one key) or ?prefix= / ?from= (a range)".into())
    })?;
    valid_key(key, max_key_bytes)?;
    Ok(key.clone())
}

/// `GET /key/<key>?level=L&meta=true&min_index=N&wait=D`; with `wait_index=N`, a
/// blocking read (answers once the key changes after index N, or after `wait`)
pub(crate) async fn get_path<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
) -> Reply {
    let key = path_key(&req)?;
    read_key(store.get_ref(), &settings, &req, &key).await
}

/// `GET /key?key=<key>&...` (one key) or `GET /key?prefix=P&...` (a page of keys)
pub(crate) async fn get_query<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
) -> Reply {
    let q = query(&req)?;
    if is_range(&q)? {
        return read_range(store.get_ref(), &settings, &req, &q).await;
    }
    let key = query_key(&req, settings.max_key_bytes)?;
    read_key(store.get_ref(), &settings, &req, &key).await
}

/// The `mod_index` a conditional write expects, from `?cas=N`, `If-Match: "N"` or
/// `If-None-Match: *` (which is `0`: the key must not exist); `None` for a plain write.
fn expected(req: &HttpRequest, q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    let mut found: Vec<u64> = Vec::new();
    if q.contains_key("cas") {
        found.extend(number(q, "cas")?);
    }
    if let Some(v) = req.headers().get(header::IF_MATCH) {
        let v = v.to_str().unwrap_or("").trim();
        let n = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "If-Match must be one quoted mod_index such as \"42\" (the ETag of a read), got {v:?}"
                ))
            })?;
        found.push(n);
    }
    if let Some(v) = req.headers().get(header::IF_NONE_MATCH) {
        if v.as_bytes().trim_ascii() != b"*" {
            return Err(ApiError::BadRequest(
                "If-None-Match takes only * (the key must not exist)".into(),
            ));
        }
        found.push(0);
    }
    match found.as_slice() {
        [] => Ok(None),
        [n, rest @ ..] if rest.iter().all(|m| m == n) => Ok(Some(*n)),
        _ => Err(ApiError::BadRequest(
            "cas, If-Match and If-None-Match disagree".into(),
        )),
    }
}

/// `POST /key` with `{"k1":"v1",...}`: all pairs in one log entry.
pub(crate) async fn post<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let group = group(&req)?;
    let body = read_body(&req, payload, settings.body_limit).await?;
    let pairs = parse_pairs(&body, settings.max_key_bytes)?;
    if expected(&req, &query(&req)?)?.is_some() {
        return Err(ApiError::BadRequest(
            "compare-and-set is per key: use PUT /key/<key>?cas=N, or POST /txn".into(),
        ));
    }
    let index = store.set(&group, pairs).await?;
    Ok(HttpResponse::Ok().json(WriteResponse { index, lease: None }))
}

/// `PUT /key/<key>` with the raw value as body.
pub(crate) async fn put<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let key = path_key(&req)?;
    valid_key(&key, settings.max_key_bytes)?;
    let group = group(&req)?;
    let body = read_body(&req, payload, settings.body_limit).await?;
    let value = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::BadRequest("value must be UTF-8".into()))?;
    let q = query(&req)?;
    let expect = expected(&req, &q)?;
    if let Some(lease) = crate::lease::put_lease(&q)? {
        let done = store.put_leased(&group, key, value, expect, lease).await?;
        return Ok(HttpResponse::Ok().json(done));
    }
    let index = match expect {
        Some(expect) => store.cas(&group, key, Some(value), expect).await?,
        None => store.set(&group, vec![(key, value)]).await?,
    };
    Ok(HttpResponse::Ok().json(WriteResponse { index, lease: None }))
}

async fn delete_key<S: KvStore>(
    store: &S,
    settings: &Settings,
    req: &HttpRequest,
    key: String,
) -> Reply {
    valid_key(&key, settings.max_key_bytes)?;
    let group = group(req)?;
    let index = match expected(req, &query(req)?)? {
        Some(expect) => store.cas(&group, key, None, expect).await?,
        None => store.delete(&group, key).await?,
    };
    Ok(HttpResponse::Ok().json(WriteResponse { index, lease: None }))
}

/// `DELETE /key/<key>`
pub(crate) async fn delete_path<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
) -> Reply {
    let key = path_key(&req)?;
    delete_key(store.get_ref(), &settings, &req, key).await
}

/// `DELETE /key?key=<key>` (one key) or `DELETE /key?prefix=P` (every key under `P`)
pub(crate) async fn delete_query<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
) -> Reply {
    let q = query(&req)?;
    if is_range(&q)? {
        let prefix = match (
            q.get("prefix"),
            q.contains_key("from") || q.contains_key("to"),
        ) {
            (Some(p), false) if !p.is_empty() => p.clone(),
            (Some(_), false) => {
                return Err(ApiError::BadRequest(
                    "prefix must not be empty (it would delete every key)".into(),
                ))
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "DELETE takes ?key= or ?prefix= (not from/to)".into(),
                ))
            }
        };
        valid_key(&prefix, settings.max_key_bytes)?;
        if expected(&req, &q)?.is_some() {
            return Err(ApiError::BadRequest(
                "a prefix delete takes no cas, If-Match or If-None-Match".into(),
            ));
        }
        let group = group(&req)?;
        let done = store.delete_prefix(&group, prefix).await?;
        return Ok(HttpResponse::Ok().json(done));
    }
    let key = query_key(&req, settings.max_key_bytes)?;
    delete_key(store.get_ref(), &settings, &req, key).await
}

/// Checks a transaction completely before it is proposed: at most
/// [`crate::MAX_TXN_OPS`] compares and operations, valid keys and non-empty prefixes, and
/// each compare's value of its target's type.
fn check_txn(txn: &wire::TxnRequest, max_key_bytes: usize) -> Result<(), ApiError> {
    let n = txn.compare.len() + txn.success.len() + txn.failure.len();
    if n > crate::MAX_TXN_OPS {
        return Err(ApiError::BadRequest(format!(
            "a transaction holds at most {} compares and operations, got {n}",
            crate::MAX_TXN_OPS
        )));
    }
    for c in &txn.compare {
        valid_key(&c.key, max_key_bytes)?;
        use wire::CompareOp as O;
        use wire::CompareTarget as T;
        let ok = match c.target {
            T::Value => c.value.is_string(),
            T::Version | T::ModIndex | T::CreateIndex => c.value.is_u64(),
            T::Exists => c.value.is_boolean() && matches!(c.op, O::Eq | O::Ne),
        };
        if !ok {
            return Err(ApiError::BadRequest(format!(
                "compare on {:?}: value must be a string for target value, a non-negative integer for version, mod_index and create_index, and true or false (with == or !=) for exists; got {} with {:?}",
                c.key, c.value, c.op
            )));
        }
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            wire::TxnOp::Put { key, lease, .. } => {
                valid_key(key, max_key_bytes)?;
                if let Some(l) = lease {
                    crate::lease::parse_id(l)?;
                }
            }
            wire::TxnOp::Delete { key } | wire::TxnOp::Get { key } => {
                valid_key(key, max_key_bytes)?
            }
            wire::TxnOp::DeletePrefix { prefix } => {
                if prefix.is_empty() {
                    return Err(ApiError::BadRequest(
                        "delete_prefix: prefix must not be empty".into(),
                    ));
                }
                valid_key(prefix, max_key_bytes)?
            }
        }
    }
    Ok(())
}

/// `POST /txn` (and `/groups/<g>/txn`) with a [`wire::TxnRequest`].
pub(crate) async fn txn<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let group = group(&req)?;
    let body = read_body(&req, payload, settings.body_limit).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(
            "a transaction is a JSON object of compare, success and failure".into(),
        ));
    }
    let txn: wire::TxnRequest = serde_json::from_value(v)
        .map_err(|e| ApiError::BadRequest(format!("malformed transaction: {e}")))?;
    check_txn(&txn, settings.max_key_bytes)?;
    let done = store.txn(&group, txn).await?;
    Ok(HttpResponse::Ok().json(done))
}
