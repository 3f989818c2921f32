//! Operator endpoints: `/livez` and `/readyz` for orchestrators, `/backup` for a
//! consistent image of the data, and `/openapi.json`, the API's own description.

use actix_web::http::header;
use actix_web::web;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use hraftd_client::wire::Health;

use crate::error::ApiError;
use crate::key;
use crate::KvStore;

/// The OpenAPI 3 document of this API, kept in the repository beside this crate.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /livez`: `200` while the process serves HTTP and Raft runs; `503` once Raft has
/// stopped on a fatal error (the process then exits too).
pub(crate) async fn livez<S: KvStore>(store: web::Data<S>) -> Result<HttpResponse, ApiError> {
    match store.not_live() {
        None => Ok(HttpResponse::Ok().json(Health {
            status: "live".into(),
        })),
        Some(why) => Err(ApiError::Unavailable(format!("not live: {why}"))),
    }
}

/// `GET /readyz`: `200` once this node knows a leader and has applied what was committed
/// when it started; `503` with the reason before that.
pub(crate) async fn readyz<S: KvStore>(store: web::Data<S>) -> Result<HttpResponse, ApiError> {
    match store.not_ready() {
        None => Ok(HttpResponse::Ok().json(Health {
            status: "ready".into(),
        })),
        Some(why) => Err(ApiError::Unavailable(format!("not ready: {why}"))),
    }
}

/// `GET /backup[?level=]`: streams a consistent image of the state machine, by default
/// from the leader (a follower redirects); `level=stale` takes it from this node.
///
/// The response is cut off after `Settings::backup_deadline`, so a reader that stalls
/// cannot hold its backup (a full copy of the data on disk) and its slot for ever.
pub(crate) async fn backup<S: KvStore>(
    store: web::Data<S>,
    settings: web::Data<crate::Settings>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    use futures::StreamExt;
    let level = key::query_level(&req)?;
    let group = match req.match_info().get("group") {
        Some(g) => crate::groups::valid_group(g)?.to_string(),
        None => crate::DEFAULT_GROUP.to_string(),
    };
    let b = store.backup(&group, level).await?;
    let file = tokio::fs::File::from_std(b.file);
    let permit = b.permit;
    let deadline = settings.backup_deadline;
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10)
        .take_until(tokio::time::sleep(deadline))
        .map(move |chunk| {
            // The permit lives as long as the stream.
            let _held = &permit;
            chunk
        });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"hraftd-backup-{}.snap\"",
                b.applied_index
            ),
        ))
        .insert_header(("X-Hraftd-Applied-Index", b.applied_index.to_string()))
        .insert_header(("X-Hraftd-Keys", b.keys.to_string()))
        .no_chunking(b.bytes)
        .streaming(body))
}

/// `GET /openapi.json`.
pub(crate) async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}
