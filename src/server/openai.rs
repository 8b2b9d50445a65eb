//! Thin handlers for the OpenAI-compatible API: authenticate, read the body within the
//! limit, hand over to `proxy::handle`, and shape the reply.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::error::ApiError;
use super::{PROVIDER, REQUEST_ID, ROUTE, bearer};
use crate::observation::{Operation, Source};
use crate::proxy::admission::Permit;
use crate::proxy::{self, ClientRequest, Gateway, Reply};
use futures_util::StreamExt;

pub(super) async fn chat(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    run(gw, Operation::Chat, req).await
}

pub(super) async fn completions(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    run(gw, Operation::TextCompletion, req).await
}

pub(super) async fn embeddings(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    run(gw, Operation::Embeddings, req).await
}

/// `GET /v1/models`: every model some provider serves.
pub(super) async fn models(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    if let Err(e) = client_key(&gw, &req) {
        return e.into_response();
    }
    let data: Vec<_> = gw
        .upstreams()
        .models()
        .map(|m| {
            serde_json::json!({
                "id": m,
                "object": "model",
                "created": 0,
                "owned_by": "candor",
            })
        })
        .collect();
    Json(serde_json::json!({ "object": "list", "data": data })).into_response()
}

/// Checks the client key; returns its id (None when no keys are configured).
fn client_key(gw: &Gateway, req: &Request) -> Result<Option<String>, ApiError> {
    let access = gw.access();
    let keys = &access.client_keys;
    if keys.is_empty() {
        return Ok(None);
    }
    let Some(presented) = bearer(req) else {
        return Err(ApiError::bad_client_key(true));
    };
    // Compare against every key so timing does not reveal which one was close.
    let mut found = None;
    for k in keys {
        if k.key.matches(presented) && found.is_none() {
            found = Some(k.id.clone());
        }
    }
    found
        .map(Some)
        .ok_or_else(|| ApiError::bad_client_key(false))
}

async fn run(gw: Arc<Gateway>, operation: Operation, req: Request) -> Response {
    let arrived = Instant::now();
    let request_id = super::new_request_id();
    let admitted = gw.admission.try_admit();
    let mut response = match admitted {
        // Shed: counted by the gate, not logged one by one (a flood of them is the overload).
        None => ApiError::overloaded(gw.admission.limit()).into_response(),
        Some(permit) => match answer(gw, operation, req, arrived, &request_id, permit).await {
            Ok(r) => r,
            Err(e) => {
                if e.status.is_server_error() {
                    tracing::warn!(request_id, status = e.status.as_u16(), error = %e.message, "request failed");
                }
                e.into_response()
            }
        },
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

async fn answer(
    gw: Arc<Gateway>,
    operation: Operation,
    req: Request,
    arrived: Instant,
    request_id: &str,
    permit: Permit,
) -> Result<Response, ApiError> {
    let client_key_id = client_key(&gw, &req)?;
    let limit = gw.config.server.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let traceparent = req.headers().get("traceparent").cloned();
    let deadline = deadline(req.headers(), arrived)?;
    // A body that trickles in must not hold its admission slot: bounded in time as in size.
    let read_limit = gw.config.server.connections.body_read_timeout;
    let body = tokio::time::timeout(read_limit, axum::body::to_bytes(req.into_body(), limit))
        .await
        .map_err(|_| ApiError::body_timeout(read_limit))?
        .map_err(|e| {
            if is_length_limit(&e) {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(format!("Could not read the request body: {e}"))
            }
        })?;
    let reply = proxy::handle(
        &gw,
        ClientRequest {
            operation,
            body,
            request_id: request_id.to_owned(),
            traceparent,
            client_key_id,
            arrived,
            source: Source::Client,
            deadline,
            pin: None,
        },
    )
    .await?;
    Ok(match reply {
        Reply::Complete {
            status,
            content_type,
            body,
            provider,
            route,
        } => {
            let mut r = (status, body).into_response();
            let h = r.headers_mut();
            h.insert(
                CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            );
            decision_headers(h, &provider, &route);
            r
        }
        Reply::Stream {
            status,
            provider,
            route,
            stream,
        } => {
            // The stream holds the request's admission slot until it ends or the client goes.
            let stream = stream.map(move |chunk| {
                let _held = &permit;
                chunk
            });
            let mut r = Response::new(Body::from_stream(stream));
            *r.status_mut() = if status.is_success() {
                status
            } else {
                StatusCode::OK
            };
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            decision_headers(h, &provider, &route);
            r
        }
    })
}

/// `x-candor-provider` and `x-candor-route` (the routing reason, ASCII only).
fn decision_headers(h: &mut axum::http::HeaderMap, provider: &str, route: &str) {
    if let Ok(v) = HeaderValue::from_str(provider) {
        h.insert(PROVIDER, v);
    }
    let ascii: String = route
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&ascii) {
        h.insert(ROUTE, v);
    }
}

/// The client's deadline, counted from arrival: `x-candor-timeout-ms`, else Envoy's
/// `x-envoy-expected-rq-timeout-ms`, else gRPC's `grpc-timeout` (at most 8 digits and a unit
/// `H`, `M`, `S`, `m`, `u` or `n`; reference §7.1).
fn deadline(
    headers: &axum::http::HeaderMap,
    arrived: Instant,
) -> Result<Option<Instant>, ApiError> {
    let bad = |name: &str, what: &str| {
        ApiError::bad_request(format!("The {name} header must be {what}."))
    };
    for name in ["x-candor-timeout-ms", "x-envoy-expected-rq-timeout-ms"] {
        let Some(v) = headers.get(name) else {
            continue;
        };
        let ms = v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .ok_or_else(|| bad(name, "a positive whole number of milliseconds"))?;
        return Ok(Some(arrived + Duration::from_millis(ms)));
    }
    let Some(v) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    grpc_timeout(v.to_str().unwrap_or(""))
        .map(|d| Some(arrived + d))
        .ok_or_else(|| {
            bad(
                "grpc-timeout",
                "up to 8 digits and a unit (H, M, S, m, u, n)",
            )
        })
}

/// Parses a `grpc-timeout` value, e.g. `250m` (250 ms) or `3S`.
fn grpc_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_with_their_units() {
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("100u"), Some(Duration::from_micros(100)));
        for bad in ["", "m", "123456789m", "5x", "-5m", "0S", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
