//! `/join`, `/remove` and `/status`: cluster membership and a node's view of the cluster.

use actix_web::web;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::error::Rejection;
use crate::key::read_body;
use crate::KvStore;
use crate::Settings;

/// `POST /join` body: the joining node's id, raft address and HTTP address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JoinRequest {
    pub id: String,
    pub addr: String,
    pub http_addr: String,
}

#[derive(Debug, Deserialize)]
struct RemoveRequest {
    id: String,
}

/// Reads and parses a JSON request body within the body limit.
async fn json_body<T: for<'a> Deserialize<'a>>(
    req: &HttpRequest,
    payload: web::Payload,
    settings: &Settings,
) -> Result<T, Rejection> {
    let body = read_body(req, payload, settings.body_limit)
        .await
        .map_err(|e| e.at(req))?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")).at(req))
}

/// `POST /join`: answers once the node is a voter.
pub(crate) async fn join<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, Rejection> {
    let body = read_body(&req, payload, settings.body_limit)
        .await
        .map_err(|e| e.at(&req))?;
    let proof = req
        .headers()
        .get("X-Hraftd-Join-Proof")
        .and_then(|v| v.to_str().ok());
    store.check_join(proof, &body).map_err(|e| e.at(&req))?;
    let j: JoinRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")).at(&req))?;
    if j.id.is_empty() || j.addr.is_empty() || j.http_addr.is_empty() {
        return Err(
            ApiError::BadRequest("id, addr and http_addr must be non-empty".into()).at(&req),
        );
    }
    let id = j.id.clone();
    let index = store.join(j).await.map_err(|e| e.at(&req))?;
    Ok(HttpResponse::Ok().json(json!({ "joined": id, "index": index })))
}

/// `POST /remove`: answers once the removal is committed.
pub(crate) async fn remove<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, Rejection> {
    let r: RemoveRequest = json_body(&req, payload, &settings).await?;
    if r.id.is_empty() {
        return Err(ApiError::BadRequest("id must be non-empty".into()).at(&req));
    }
    store.remove(&r.id).await.map_err(|e| e.at(&req))?;
    Ok(HttpResponse::Ok().json(json!({ "removed": r.id })))
}

/// `GET /status`: any node, leader or not.
pub(crate) async fn status<S: KvStore>(store: web::Data<S>) -> HttpResponse {
    HttpResponse::Ok().json(store.status())
}
