//! `/groups`: the cluster's Raft groups, and their members. Listing needs `read`; creating,
//! deleting and changing members needs `admin` (`auth::required`). Every change is served
//! by the default group's leader (a follower answers `307` there), which commits the
//! catalogue and asks each group's leader for that group's member changes. The group's
//! keys are served by the `/key` handlers under `/groups/<g>/key` (`key.rs`).

use actix_web::web;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use hraftd_client::wire::CreateGroupRequest;
use hraftd_client::wire::GroupDeleted;
use hraftd_client::wire::GroupList;
use hraftd_client::wire::GroupMemberRequest;
use hraftd_client::wire::TransferRequest;

use crate::cluster::json_body;
use crate::error::ApiError;
use crate::KvStore;
use crate::Settings;

type Reply = Result<HttpResponse, ApiError>;

/// Checks a group id: 1-64 characters of `[A-Za-z0-9_-]`, else `400`.
pub(crate) fn valid_group(id: &str) -> Result<&str, ApiError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(id)
    } else {
        Err(ApiError::BadRequest(format!(
            "group id {:?} is not 1-64 characters of A-Z, a-z, 0-9, _ and -",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// A member id as a group member request names it: non-empty, at most 256 bytes.
fn valid_member(id: &str) -> Result<&str, ApiError> {
    if id.is_empty() || id.len() > 256 {
        return Err(ApiError::BadRequest(format!(
            "member id must be 1-256 bytes, got {}",
            id.len()
        )));
    }
    Ok(id)
}

/// The `{group}` of the route.
fn path_group(req: &HttpRequest) -> Result<String, ApiError> {
    let g = req.match_info().get("group").unwrap_or("");
    valid_group(g).map(str::to_string)
}

/// `GET /groups`
pub(crate) async fn list<S: KvStore>(store: web::Data<S>) -> Reply {
    let groups = store.groups().await?;
    Ok(HttpResponse::Ok().json(GroupList { groups }))
}

/// `POST /groups {"id":..,"members":[..]}`: `201` once the new group has a leader.
pub(crate) async fn create<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let r: CreateGroupRequest = json_body(&req, payload, &settings).await?;
    valid_group(&r.id)?;
    if ![1, 3, 5].contains(&r.members.len()) {
        return Err(ApiError::BadRequest(format!(
            "a group has 1, 3 or 5 members, not {}",
            r.members.len()
        )));
    }
    for m in &r.members {
        valid_member(m)?;
    }
    let info = store.create_group(r).await?;
    Ok(HttpResponse::Created().json(info))
}

/// `GET /groups/<g>`
pub(crate) async fn get<S: KvStore>(store: web::Data<S>, req: HttpRequest) -> Reply {
    let g = path_group(&req)?;
    Ok(HttpResponse::Ok().json(store.group(&g).await?))
}

/// `DELETE /groups/<g>`
pub(crate) async fn delete<S: KvStore>(store: web::Data<S>, req: HttpRequest) -> Reply {
    let g = path_group(&req)?;
    let index = store.delete_group(&g).await?;
    Ok(HttpResponse::Ok().json(GroupDeleted { deleted: g, index }))
}

/// `POST /groups/<g>/members {"id":..}`: once the node is a voter of the group.
pub(crate) async fn add_member<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let g = path_group(&req)?;
    let r: GroupMemberRequest = json_body(&req, payload, &settings).await?;
    valid_member(&r.id)?;
    Ok(HttpResponse::Ok().json(store.add_group_member(&g, &r.id).await?))
}

/// `DELETE /groups/<g>/members/<id>`
pub(crate) async fn remove_member<S: KvStore>(store: web::Data<S>, req: HttpRequest) -> Reply {
    let g = path_group(&req)?;
    let raw = req.match_info().get("id").unwrap_or("");
    let id = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest("member id decodes to invalid UTF-8".into()))?;
    valid_member(&id)?;
    Ok(HttpResponse::Ok().json(store.remove_group_member(&g, &id).await?))
}

/// `POST /groups/<g>/leader {"id":..}`: moves the group's leadership to that voter
/// (served by the group's leader); answers once it leads.
pub(crate) async fn transfer<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<Settings>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let g = path_group(&req)?;
    let r: TransferRequest = json_body(&req, payload, &settings).await?;
    valid_member(&r.id)?;
    Ok(HttpResponse::Ok().json(store.transfer_leader(&g, &r.id).await?))
}
