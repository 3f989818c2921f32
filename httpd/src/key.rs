//! `/key` handlers: writes (`POST /key`, `PUT /key/<key>`), reads at a level
//! (`GET /key/<key>`, `GET /key?key=`), and deletes. Input is validated completely before
//! the store is called, so a bad request never changes state.

use std::collections::HashMap;

use actix_web::web;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use futures::StreamExt;
use serde_json::json;
use serde_json::Value;

use crate::error::ApiError;
use crate::error::Rejection;
use crate::KvStore;
use crate::ReadLevel;
use crate::Settings;

type Reply = Result<HttpResponse, Rejection>;

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

fn query(req: &HttpRequest) -> Result<HashMap<String, String>, ApiError> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))
}

fn level(q: &HashMap<String, String>) -> Result<ReadLevel, ApiError> {
    match q.get("level").map(String::as_str) {
        None | Some("default") => Ok(ReadLevel::Default),
        Some("stale") => Ok(ReadLevel::Stale),
        Some("consistent") => Ok(ReadLevel::Consistent),
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown level {other:?}; use stale, default or consistent"
        ))),
    }
}

fn non_empty(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::BadRequest("key must not be empty".into()));
    }
    Ok(())
}

/// Parses `{"k1":"v1",...}`: a non-empty object of non-empty keys and string values.
pub(crate) fn parse_pairs(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
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
            non_empty(&k)?;
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

async fn read_key<S: KvStore>(store: &S, req: &HttpRequest, key: &str) -> Reply {
    let level = query_level(req).map_err(|e| e.at(req))?;
    non_empty(key).map_err(|e| e.at(req))?;
    match store.get(key, level).await.map_err(|e| e.at(req))? {
        Some(v) => {
            let mut body = serde_json::Map::new();
            body.insert(key.to_string(), Value::String(v));
            Ok(HttpResponse::Ok().json(body))
        }
        None => Err(ApiError::NotFound(format!("key not found: {key}")).at(req)),
    }
}

fn query_key(req: &HttpRequest) -> Result<String, ApiError> {
    let q = query(req)?;
    let key = q
        .get("key")
        .ok_or_else(|| ApiError::BadRequest("missing ?key= parameter".into()))?;
    non_empty(key)?;
    Ok(key.clone())
}

/// `GET /key/<key>?level=L`
pub(crate) async fn get_path<S: KvStore>(
    store: web::Data<S>,
    req: HttpRequest,
    key: web::Path<String>,
) -> Reply {
    read_key(store.get_ref(), &req, &key).await
}

/// `GET /key?key=<key>&level=L`
pub(crate) async fn get_query<S: KvStore>(store: web::Data<S>, req: HttpRequest) -> Reply {
    let key = query_key(&req).map_err(|e| e.at(&req))?;
    read_key(store.get_ref(), &req, &key).await
}

/// `POST /key` with `{"k1":"v1",...}`: all pairs in one log entry.
pub(crate) async fn post<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let body = read_body(&req, payload, settings.body_limit)
        .await
        .map_err(|e| e.at(&req))?;
    let pairs = parse_pairs(&body).map_err(|e| e.at(&req))?;
    let index = store.set(pairs).await.map_err(|e| e.at(&req))?;
    Ok(HttpResponse::Ok().json(json!({ "index": index })))
}

/// `PUT /key/<key>` with the raw value as body.
pub(crate) async fn put<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    key: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    non_empty(&key).map_err(|e| e.at(&req))?;
    let body = read_body(&req, payload, settings.body_limit)
        .await
        .map_err(|e| e.at(&req))?;
    let value = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::BadRequest("value must be UTF-8".into()).at(&req))?;
    let index = store
        .set(vec![(key.into_inner(), value)])
        .await
        .map_err(|e| e.at(&req))?;
    Ok(HttpResponse::Ok().json(json!({ "index": index })))
}

async fn delete_key<S: KvStore>(store: &S, req: &HttpRequest, key: String) -> Reply {
    non_empty(&key).map_err(|e| e.at(req))?;
    let index = store.delete(key).await.map_err(|e| e.at(req))?;
    Ok(HttpResponse::Ok().json(json!({ "index": index })))
}

/// `DELETE /key/<key>`
pub(crate) async fn delete_path<S: KvStore>(
    store: web::Data<S>,
    req: HttpRequest,
    key: web::Path<String>,
) -> Reply {
    delete_key(store.get_ref(), &req, key.into_inner()).await
}

/// `DELETE /key?key=<key>`
pub(crate) async fn delete_query<S: KvStore>(store: web::Data<S>, req: HttpRequest) -> Reply {
    let key = query_key(&req).map_err(|e| e.at(&req))?;
    delete_key(store.get_ref(), &req, key).await
}
