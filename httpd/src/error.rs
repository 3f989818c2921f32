//! The one place where errors become HTTP responses: status codes, `307` redirects to the
//! leader, `503` with `Retry-After`, and the body every error carries,
//! `{"error": "<for people>", "code": "<for programs>"}` ([`ErrorBody`]).
//!
//! A redirect's `Location` is the leader's address plus the *request's* path and query.
//! The error itself does not know the request, so `ApiError::error_response` marks the
//! response with the leader and the app's middleware completes `Location` from the request
//! (`RequestTarget::complete_redirect`): handlers just return `Err(e)`.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use actix_web::ResponseError;
use hraftd_client::base_url;
use hraftd_client::wire::ErrorBody;
use hraftd_client::wire::ErrorCode;

/// Everything that can go wrong serving a request. Store implementations return these;
/// the handlers add their own (bad input, body size, method).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// No such Raft group: a `404` that clients must not take for a missing key.
    #[error("{0}")]
    GroupNotFound(String),
    /// The caller is known but not allowed (or failed peer authentication at `/join`).
    #[error("{0}")]
    Forbidden(String),
    /// Credentials are missing or wrong (`-auth`): `401` with `WWW-Authenticate`.
    #[error("{0}")]
    Unauthorized(String),
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The request is well-formed but too large to store as one unit.
    #[error("{0}")]
    TooLarge(String),
    /// This node is not the leader. With the leader's advertised HTTP address the client
    /// is redirected there (`307`); without one there is nobody to send it to (`503`).
    #[error("{}", if .leader_http.is_some() { "not the leader" } else { "no leader is known; retry later" })]
    NotLeader { leader_http: Option<String> },
    /// No quorum, overloaded, not ready, shutting down; nothing was applied.
    #[error("{0}")]
    Unavailable(String),
    /// A bounded wait ran out before anything changed.
    #[error("{0}")]
    Timeout(String),
    /// A write was proposed but not seen committed: it may or may not apply.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Conflict(String),
    /// A compare-and-set or conditional request did not hold; `current` is the key as it
    /// is (`None`: it does not exist). Nothing changed.
    #[error("{message}")]
    PreconditionFailed {
        message: String,
        current: Option<hraftd_client::wire::KeyValue>,
    },
    /// A watch asked for changes the history no longer holds; it starts after `oldest`.
    #[error("{message}")]
    Compacted { message: String, oldest: u64 },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The stable code in the error body.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::GroupNotFound(_) => ErrorCode::GroupNotFound,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::PayloadTooLarge { .. } | ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::NotLeader {
                leader_http: Some(_),
            } => ErrorCode::NotLeader,
            ApiError::NotLeader { leader_http: None } => ErrorCode::NoLeader,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Timeout(_) => ErrorCode::Timeout,
            ApiError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::PreconditionFailed { .. } => ErrorCode::PreconditionFailed,
            ApiError::Compacted { .. } => ErrorCode::Compacted,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// Seconds a client is asked to wait before retrying a `503`.
const RETRY_AFTER_SECS: &str = "1";

/// The status of each code: the one table of it.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::GroupNotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ErrorCode::Compacted => StatusCode::GONE,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NotLeader => StatusCode::TEMPORARY_REDIRECT,
        ErrorCode::NoLeader | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout | ErrorCode::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal | ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Marks a redirect response with the leader it points to; the middleware turns it into
/// the full `Location` (see `RequestTarget::complete_redirect`).
#[derive(Debug, Clone)]
struct RedirectTo(String);

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status_of(self.code())
    }

    fn error_response(&self) -> HttpResponse {
        let code = self.code();
        let mut resp = HttpResponse::build(status_of(code));
        let leader = match self {
            ApiError::NotLeader {
                leader_http: Some(leader),
            } => {
                // The path is added by the middleware; alone this still points at the leader.
                resp.insert_header((header::LOCATION, format!("{}/", base_url(leader))));
                Some(leader.clone())
            }
            ApiError::NotLeader { leader_http: None } | ApiError::Unavailable(_) => {
                resp.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS));
                None
            }
            ApiError::Unauthorized(_) => {
                resp.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"hraftd\""));
                None
            }
            ApiError::Internal(msg) => {
                log::error!("internal error answered with 500: {msg}");
                None
            }
            _ => None,
        };
        let current = match self {
            ApiError::PreconditionFailed { current, .. } => Some(
                current
                    .as_ref()
                    .and_then(|kv| serde_json::to_value(kv).ok())
                    .unwrap_or(serde_json::Value::Null),
            ),
            _ => None,
        };
        let mut resp = resp.json(ErrorBody {
            error: self.to_string(),
            code,
            leader: leader.clone(),
            current,
            oldest_index: match self {
                ApiError::Compacted { oldest, .. } => Some(*oldest),
                _ => None,
            },
        });
        if let Some(l) = leader {
            resp.extensions_mut().insert(RedirectTo(l));
        }
        resp
    }
}

/// The leader a redirect made by `ApiError::error_response` points to, if `resp` is one.
pub(crate) fn redirect_target<B>(resp: &HttpResponse<B>) -> Option<String> {
    resp.extensions().get::<RedirectTo>().map(|r| r.0.clone())
}

/// What a redirect needs from the request it answers: its path and query.
pub(crate) struct RequestTarget {
    path_and_query: String,
}

impl RequestTarget {
    pub(crate) fn of(req: &HttpRequest) -> RequestTarget {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.path().to_string());
        RequestTarget { path_and_query }
    }

    /// Points a redirect made by `ApiError::error_response` at the same path and query
    /// on the leader.
    pub(crate) fn complete_redirect(&self, resp: &mut HttpResponse) {
        let Some(RedirectTo(leader)) = resp.extensions().get::<RedirectTo>().cloned() else {
            return;
        };
        let location = format!("{}{}", base_url(&leader), self.path_and_query);
        if let Ok(v) = header::HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
    }
}
