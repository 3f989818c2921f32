//! `/lease` handlers (also `/groups/<g>/lease`): grant, keep alive, look at and revoke
//! leases, and the `?lease=` / `?ttl=` parameters of `PUT /key/<k>`. Lease ids travel as
//! decimal strings (`"id":"7"`); TTLs as `"10s"`, `"1500ms"` or seconds.

use std::collections::HashMap;

use actix_web::web;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use hraftd_client::wire;

use crate::error::ApiError;
use crate::key;
use crate::KvStore;
use crate::LeaseArg;
use crate::Settings;

/// The shortest TTL accepted.
pub const MIN_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest TTL accepted.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

type Reply = Result<HttpResponse, ApiError>;

/// A lease id: a positive decimal integer.
pub(crate) fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && !s.starts_with('+'))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "a lease id is a positive integer (as POST /lease returned it), got {s:?}"
            ))
        })
}

/// A TTL: 1 s to 7 days, as `10s`, `1500ms` or seconds.
pub(crate) fn parse_ttl(s: &str) -> Result<std::time::Duration, ApiError> {
    key::duration(s, MAX_TTL)
        .filter(|d| *d >= MIN_TTL)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "ttl must be a duration from 1s to {}s such as 10s or 1500ms, got {s:?}",
                MAX_TTL.as_secs()
            ))
        })
}

/// `?lease=<id>` or `?ttl=<d>` of a put (not both); `None` for neither.
pub(crate) fn put_lease(q: &HashMap<String, String>) -> Result<Option<LeaseArg>, ApiError> {
    match (q.get("lease"), q.get("ttl")) {
        (None, None) => Ok(None),
        (Some(id), None) => Ok(Some(LeaseArg::Id(parse_id(id)?))),
        (None, Some(ttl)) => Ok(Some(LeaseArg::Ttl(parse_ttl(ttl)?))),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "give either lease (an existing lease) or ttl (a new one for this key), not both"
                .into(),
        )),
    }
}

fn path_id(req: &HttpRequest) -> Result<u64, ApiError> {
    parse_id(req.match_info().get("id").unwrap_or(""))
}

/// `POST /lease` with `{"ttl":"10s"}`
pub(crate) async fn grant<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let group = key::group(&req)?;
    let body = key::read_body(&req, payload, settings.body_limit).await?;
    let r: wire::LeaseRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("a lease request is {{\"ttl\":\"10s\"}}: {e}"))
    })?;
    let ttl = match &r.ttl {
        serde_json::Value::String(s) => parse_ttl(s)?,
        serde_json::Value::Number(n) => parse_ttl(&n.to_string())?,
        other => {
            return Err(ApiError::BadRequest(format!(
                "ttl must be a string such as \"10s\" or a number of seconds, got {other}"
            )))
        }
    };
    Ok(HttpResponse::Ok().json(store.lease_grant(&group, ttl).await?))
}

/// `POST /lease/<id>/keepalive`
pub(crate) async fn keepalive<S: KvStore>(store: web::Data<S>, req: HttpRequest) -> Reply {
    let group = key::group(&req)?;
    let id = path_id(&req)?;
    Ok(HttpResponse::Ok().json(store.lease_keepalive(&group, id).await?))
}

/// `GET /lease/<id>`
pub(crate) async fn get<S: KvStore>(store: web::Data<S>, req: HttpRequest) -> Reply {
    let group = key::group(&req)?;
    let id = path_id(&req)?;
    Ok(HttpResponse::Ok().json(store.lease(&group, id).await?))
}

/// `DELETE /lease/<id>`
pub(crate) async fn revoke<S: KvStore>(store: web::Data<S>, req: HttpRequest) -> Reply {
    let group = key::group(&req)?;
    let id = path_id(&req)?;
    Ok(HttpResponse::Ok().json(store.lease_revoke(&group, id).await?))
}
