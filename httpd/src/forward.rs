//! Forwarding for clients that cannot follow a redirect (`-forward`, or per request
//! `X-Hraftd-Forward: 1`; `X-Hraftd-Forward: 0` opts a request out of `-forward`): a
//! follower sends a leader-only request to the leader itself and returns the leader's
//! answer, instead of the `307` it would give.
//!
//! It is one middleware ([`forward`]), inside authentication: the follower checks the
//! client first, then forwards the request with the client's own `Authorization`, so the
//! leader authenticates and authorizes it again. The body is kept (bounded by the body
//! limit) so it can be sent on. What the forward can end in:
//! - the leader's answer, with its status, type and body, and `X-Hraftd-Forwarded-By`;
//! - `503` `no_leader` if the leader had itself lost leadership (it answered `307`): the
//!   client retries, nothing was applied by that answer;
//! - `503` `unavailable` if the leader could not be connected to (nothing was sent);
//! - `504` `outcome_unknown` if it was sent but no answer came (a write may have applied).
//!
//! Never a `200` that the leader did not give.

use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::body::MessageBody;
use actix_web::dev::Payload;
use actix_web::dev::ServiceRequest;
use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web;
use actix_web::HttpResponse;
use actix_web::ResponseError;

use crate::error::redirect_target;
use crate::error::ApiError;

/// The request header that asks a follower to forward this request.
pub const HEADER: &str = "X-Hraftd-Forward";
/// The response header naming the leader that answered a forwarded request.
pub const FORWARDED_BY: &str = "X-Hraftd-Forwarded-By";
/// Marks a request a follower forwarded: it is never forwarded again, so two nodes that
/// each think the other leads cannot pass a request back and forth (the second answers
/// `307`, which the first turns into `503` `no_leader`).
pub const FORWARDED: &str = "X-Hraftd-Forwarded";

/// How this node forwards: always or on request, and the HTTP client it uses.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// `-forward`: forward every leader-only request (else only those with [`HEADER`]).
    pub always: bool,
    /// Talks to leaders: trusts the cluster's CA and, where servers require client
    /// certificates, presents this node's own; never follows redirects.
    client: reqwest::Client,
}

impl Forwarder {
    /// `roots`: PEM CA certificates for `https://` leaders; `identity`: PEM certificate and
    /// key to present to leaders that require client certificates.
    pub fn new(
        always: bool,
        roots: Option<&[u8]>,
        identity: Option<&[u8]>,
        timeout: std::time::Duration,
    ) -> Result<Forwarder, String> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(std::time::Duration::from_secs(2));
        if let Some(pem) = roots {
            for c in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())? {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(pem) = identity {
            b = b.identity(reqwest::Identity::from_pem(pem).map_err(|e| e.to_string())?);
        }
        Ok(Forwarder {
            always,
            client: b.build().map_err(|e| e.to_string())?,
        })
    }
}

/// Whether this request is to be forwarded if this node does not lead; a value of
/// [`HEADER`] other than `1`, `true`, `0` or `false` is refused (400), not guessed at.
fn wants_forwarding(req: &ServiceRequest, f: &Forwarder) -> Result<bool, ApiError> {
    // The header decides per request either way (`0` opts out of `-forward`, e.g. for a
    // client that follows redirects itself); without it, `-forward` does.
    let asked = match req.headers().get(HEADER).map(|v| v.as_bytes()) {
        None => None,
        Some(v) if v == b"1" || v.eq_ignore_ascii_case(b"true") => Some(true),
        Some(v) if v == b"0" || v.eq_ignore_ascii_case(b"false") => Some(false),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "{HEADER} must be 1, true, 0 or false"
            )))
        }
    };
    // A backup can be gigabytes, a watch never ends, a blocking read waits up to a minute:
    // they are redirected, never held here to be passed on.
    let streams = req.path().ends_with("/watch") || req.query_string().contains("wait_index=");
    if req.path() == "/backup" || streams || req.headers().contains_key(FORWARDED) {
        return Ok(false);
    }
    Ok(asked.unwrap_or(f.always))
}

/// The middleware (see the module docs).
pub async fn forward(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let settings = req.app_data::<web::Data<crate::Settings>>().cloned();
    let forwarder = match settings.as_ref().and_then(|s| s.forward.clone()) {
        Some(f) => match wants_forwarding(&req, &f) {
            Err(e) => return Ok(req.error_response(e).map_into_boxed_body()),
            Ok(wanted) => wanted.then_some(f),
        },
        None => None,
    };
    let Some((fwd, limit)) = forwarder.zip(settings.as_ref().map(|s| s.body_limit)) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    // Keep the body, to send it on if this node turns out not to lead.
    let payload = req.extract::<web::Payload>().await?;
    let body = match crate::key::read_body(req.request(), payload, limit).await {
        Ok(b) => b,
        Err(e) => return Ok(req.error_response(e).map_into_boxed_body()),
    };
    req.set_payload(Payload::from(body.clone()));
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.path().to_string());
    let pass_on: Vec<(header::HeaderName, header::HeaderValue)> = req
        .headers()
        .iter()
        .filter(|(name, _)| {
            // The conditions of a compare-and-set above all: a forward without them would
            // turn a conditional write into a plain one.
            [
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
            ]
            .contains(name)
                || (name.as_str().starts_with("x-hraftd-")
                    && !["x-hraftd-forward", "x-hraftd-forwarded"].contains(&name.as_str()))
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let res = next.call(req).await?;
    let Some(leader) = redirect_target(res.response()) else {
        return Ok(res.map_into_boxed_body());
    };
    let (http_req, _) = res.into_parts();
    let answer = send(&fwd, method, &leader, &path_and_query, body, &pass_on).await;
    let resp = match answer {
        Ok(r) => r,
        Err(e) => e.error_response(),
    };
    Ok(ServiceResponse::new(http_req, resp))
}

/// Sends the request to `leader` and turns its answer into ours.
async fn send(
    fwd: &Arc<Forwarder>,
    method: actix_web::http::Method,
    leader: &str,
    path_and_query: &str,
    body: web::Bytes,
    headers: &[(header::HeaderName, header::HeaderValue)],
) -> Result<HttpResponse, ApiError> {
    let url = format!("{}{path_and_query}", hraftd_client::base_url(leader));
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("method: {e}")))?;
    let mut req = fwd
        .client
        .request(method, &url)
        .header(FORWARDED, "1")
        .body(body.to_vec());
    for (n, v) in headers {
        req = req.header(n.as_str(), v.as_bytes());
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_connect() {
            ApiError::Unavailable(format!(
                "could not reach the leader at {leader} to forward: {e}"
            ))
        } else {
            ApiError::OutcomeUnknown(format!(
                "forwarded to the leader at {leader}, but no answer came: {e}"
            ))
        }
    })?;
    let status = resp.status().as_u16();
    if status == 307 || status == 308 {
        // It is no longer the leader: nothing it answered was applied; the client retries.
        return Err(ApiError::NotLeader { leader_http: None });
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let extra: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n == "retry-after"
                || n == "www-authenticate"
                || n == "etag"
                || n.starts_with("x-hraftd-")
        })
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let bytes = resp.bytes().await.map_err(|e| {
        ApiError::OutcomeUnknown(format!(
            "forwarded to the leader at {leader}; its answer was cut off: {e}"
        ))
    })?;
    let code = actix_web::http::StatusCode::from_u16(status)
        .map_err(|_| ApiError::Internal(format!("the leader answered status {status}")))?;
    let mut out = HttpResponse::build(code);
    if let Some(ct) = content_type {
        out.insert_header((header::CONTENT_TYPE, ct));
    }
    for (n, v) in extra {
        out.insert_header((n, v));
    }
    out.insert_header((FORWARDED_BY, leader.to_string()));
    Ok(out.body(bytes))
}
