//! The one place where errors become HTTP responses: status codes, `307` redirects to the
//! leader, `503` with `Retry-After`, and the `{"error": "..."}` body every error carries.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use actix_web::ResponseError;
use serde_json::json;

/// Everything that can go wrong serving a request. Store implementations return these;
/// the handlers add their own (bad input, body size, method).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The caller failed authentication.
    #[error("{0}")]
    Forbidden(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The request is well-formed but too large to store as one unit.
    #[error("{0}")]
    TooLarge(String),
    /// This node is not the leader. With the leader's advertised HTTP address the client
    /// is redirected there (`307`); without one there is nobody to send it to (`503`).
    #[error("not the leader")]
    NotLeader { leader_http: Option<String> },
    /// No quorum or similar; the client should retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bounded wait ran out; for writes the outcome is unknown.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Attaches the request, so a redirect can point at the same path and query.
    pub fn at(self, req: &HttpRequest) -> Rejection {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| req.path().to_string());
        Rejection {
            err: self,
            path_and_query,
        }
    }
}

/// An [`ApiError`] plus the request target it answers; what handlers return on failure.
#[derive(Debug, thiserror::Error)]
#[error("{err}")]
pub struct Rejection {
    pub err: ApiError,
    path_and_query: String,
}

/// Seconds a client is asked to wait before retrying a `503`.
const RETRY_AFTER_SECS: &str = "1";

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        match &self.err {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } | ApiError::TooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::NotLeader {
                leader_http: Some(_),
            } => StatusCode::TEMPORARY_REDIRECT,
            ApiError::NotLeader { leader_http: None } | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        match &self.err {
            ApiError::NotLeader {
                leader_http: Some(leader),
            } => {
                resp.insert_header((
                    header::LOCATION,
                    format!("http://{leader}{}", self.path_and_query),
                ));
                resp.json(json!({ "error": "not the leader", "leader": leader }))
            }
            ApiError::NotLeader { leader_http: None } => {
                resp.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS));
                resp.json(json!({ "error": "no leader is known; retry later" }))
            }
            ApiError::Unavailable(msg) => {
                resp.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS));
                resp.json(json!({ "error": msg }))
            }
            ApiError::MethodNotAllowed => resp
                .json(json!({ "error": format!("method not allowed on {}", self.path_and_query) })),
            other => resp.json(json!({ "error": other.to_string() })),
        }
    }
}
