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

use actix_web::web;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use futures::StreamExt;
use hraftd_client::wire::WriteResponse;
use serde_json::Value;

use crate::error::ApiError;
use crate::KvStore;
use crate::ReadLevel;
use crate::Settings;

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
fn query(req: &HttpRequest) -> Result<HashMap<String, String>, ApiError> {
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
fn group(req: &HttpRequest) -> Result<String, ApiError> {
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
fn valid_key(key: &str, max: usize) -> Result<(), ApiError> {
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

async fn read_key<S: KvStore>(
    store: &S,
    settings: &Settings,
    req: &HttpRequest,
    key: &str,
) -> Reply {
    let level = query_level(req)?;
    valid_key(key, settings.max_key_bytes)?;
    let group = group(req)?;
    match store.get(&group, key, level).await? {
        Some(v) => {
            let mut body = serde_json::Map::new();
            body.insert(key.to_string(), Value::String(v));
            Ok(HttpResponse::Ok().json(body))
        }
        None => Err(ApiError::NotFound(format!("key not found: {key}"))),
    }
}

fn query_key(req: &HttpRequest, max_key_bytes: usize) -> Result<String, ApiError> {
    let q = query(req)?;
    let key = q
        .get("key")
        .ok_or_else(|| ApiError::BadRequest("missing ?key= parameter".into()))?;
    valid_key(key, max_key_bytes)?;
    Ok(key.clone())
}

/// `GET /key/<key>?level=L`
pub(crate) async fn get_path<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
) -> Reply {
    let key = path_key(&req)?;
    read_key(store.get_ref(), &settings, &req, &key).await
}

/// `GET /key?key=<key>&level=L`
pub(crate) async fn get_query<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
) -> Reply {
    let key = query_key(&req, settings.max_key_bytes)?;
    read_key(store.get_ref(), &settings, &req, &key).await
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
    let index = store.set(&group, pairs).await?;
    Ok(HttpResponse::Ok().json(WriteResponse { index }))
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
    let index = store.set(&group, vec![(key, value)]).await?;
    Ok(HttpResponse::Ok().json(WriteResponse { index }))
}

async fn delete_key<S: KvStore>(
    store: &S,
    settings: &Settings,
    req: &HttpRequest,
    key: String,
) -> Reply {
    valid_key(&key, settings.max_key_bytes)?;
    let group = group(req)?;
    let index = store.delete(&group, key).await?;
    Ok(HttpResponse::Ok().json(WriteResponse { index }))
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

/// `DELETE /key?key=<key>`
pub(crate) async fn delete_query<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
) -> Reply {
    let key = query_key(&req, settings.max_key_bytes)?;
    delete_key(store.get_ref(), &settings, &req, key).await
}
