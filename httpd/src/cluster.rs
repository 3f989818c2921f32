//! `/join`, `/remove` and `/status`: cluster membership and a node's view of the cluster.

use actix_web::web;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use hraftd_client::wire::JoinRequest;
use hraftd_client::wire::JoinResponse;
use hraftd_client::wire::RemoveRequest;
use hraftd_client::wire::RemoveResponse;
use serde::Deserialize;

use crate::error::ApiError;
use crate::key::read_body;
use crate::KvStore;
use crate::Settings;

/// Reads and parses a JSON request body within the body limit.
pub(crate) async fn json_body<T: for<'a> Deserialize<'a>>(
    req: &HttpRequest,
    payload: web::Payload,
    settings: &Settings,
) -> Result<T, ApiError> {
    let body = read_body(req, payload, settings.body_limit).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
}

/// Checks that `addr` is `host:port` (a name, an IPv4 address or a bracketed IPv6 one,
/// and a port), optionally after `http://` or `https://`: anything else is a 400, found
/// by fuzzing (an address of random bytes was dialled and answered 503).
fn valid_addr(what: &str, addr: &str, scheme_allowed: bool) -> Result<(), ApiError> {
    let bad = || ApiError::BadRequest(format!("{what} {addr:?} is not host:port"));
    let rest = match (scheme_allowed, addr.split_once("://")) {
        (true, Some(("http" | "https", rest))) => rest,
        (_, Some(_)) => return Err(bad()),
        (_, None) => addr,
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !ok {
        return Err(bad());
    }
    Ok(())
}

/// `POST /join`: answers once the node is a voter.
pub(crate) async fn join<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, settings.body_limit).await?;
    let proof = req
        .headers()
        .get("X-Hraftd-Join-Proof")
        .and_then(|v| v.to_str().ok());
    store.check_join(proof, &body)?;
    let j: JoinRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    if j.id.is_empty() || j.addr.is_empty() || j.http_addr.is_empty() {
        return Err(ApiError::BadRequest(
            "id, addr and http_addr must be non-empty".into(),
        ));
    }
    valid_addr("addr", &j.addr, false)?;
    valid_addr("http_addr", &j.http_addr, true)?;
    let id = j.id.clone();
    let index = store.join(j).await?;
    Ok(HttpResponse::Ok().json(JoinResponse { joined: id, index }))
}

/// `POST /remove`: answers once the removal is committed.
pub(crate) async fn remove<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let r: RemoveRequest = json_body(&req, payload, &settings).await?;
    if r.id.is_empty() {
        return Err(ApiError::BadRequest("id must be non-empty".into()));
    }
    store.remove(&r.id).await?;
    Ok(HttpResponse::Ok().json(RemoveResponse { removed: r.id }))
}

/// `GET /status`: any node, leader or not.
pub(crate) async fn status<S: KvStore>(store: web::Data<S>) -> HttpResponse {
    HttpResponse::Ok().json(store.status())
}

/// `GET /groups/<g>/status`: this node's view of group `<g>` (a node that does not run it
/// redirects to a member).
pub(crate) async fn group_status<S: KvStore>(
    store: web::Data<S>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let g = req.match_info().get("group").unwrap_or("");
    let g = crate::groups::valid_group(g)?;
    Ok(HttpResponse::Ok().json(store.group_status(g).await?))
}
