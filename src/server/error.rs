//! The only place errors become HTTP responses: OpenAI's error JSON shape, with the right
//! status and a message that helps, and never a secret or an internal detail.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::proxy::{AttemptFailure, Error as ProxyError, body::BodyError};

/// An error answer in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
    /// OpenAI `type`.
    pub kind: &'static str,
    /// OpenAI `code`.
    pub code: Option<&'static str>,
    /// OpenAI `param`.
    pub param: Option<&'static str>,
    /// For 502/504: each attempt.
    pub attempts: Vec<AttemptFailure>,
    /// Seconds sent as `retry-after`, when the client should come back.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    attempts: &'a [AttemptFailure],
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: String,
    ) -> ApiError {
        ApiError {
            status,
            message,
            kind,
            code: Some(code),
            param: None,
            attempts: Vec::new(),
            retry_after: None,
        }
    }

    /// 400 for a body that cannot be read.
    pub fn bad_request(message: String) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body exceeds this gateway's limit of {limit} bytes."),
        )
    }

    /// 401 for a missing or wrong client key (the key itself is never echoed).
    pub fn bad_client_key(missing: bool) -> ApiError {
        let message = if missing {
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
        } else {
            "Incorrect API key provided."
        };
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message.into(),
        )
    }

    /// 401 for the admin API.
    pub fn bad_admin_token() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_admin_token",
            "The admin API needs the admin token as `Authorization: Bearer <token>`.".into(),
        )
    }

    /// 404 for an unknown admin resource.
    pub fn not_found(what: String) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            what,
        )
    }

    /// 408 for a body that did not arrive within `limit`.
    pub fn body_timeout(limit: std::time::Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!(
                "The request body did not arrive within {} (server.body_read_timeout).",
                humantime::format_duration(limit)
            ),
        )
    }

    /// 503 on a connection taken past `server.max_connections` for a path other than the
    /// probes.
    pub fn too_many_connections() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "too_many_connections",
            "Candor has server.max_connections client connections open; this connection \
             serves only /livez, /readyz, /health and /metrics. Retry shortly."
                .into(),
        )
    }

    /// 405 for a known path asked with a method it does not serve.
    pub fn method_not_allowed(what: String) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            what,
        )
    }

    /// 503 for a request shed because `limit` requests are already in flight (sent with
    /// `retry-after`).
    pub fn overloaded(limit: usize) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "gateway_overloaded",
                format!(
                    "This gateway is at its limit of {limit} requests in flight \
                     (server.max_in_flight); retry shortly."
                ),
            )
        }
    }

    /// 409 for a request the current state does not allow.
    pub fn conflict(message: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "conflict",
            message.into(),
        )
    }

    /// 500 for Candor's own failure (details go to the log, not the client).
    pub fn internal(message: &str) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message.into(),
        )
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> ApiError {
        let message = e.to_string();
        match e {
            ProxyError::BadRequest(BodyError::MissingModel) => ApiError {
                param: Some("model"),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "missing_model",
                    message,
                )
            },
            ProxyError::BadRequest(BodyError::Malformed(_) | BodyError::TooDeep) => {
                ApiError::bad_request(message)
            }
            ProxyError::UnknownModel { .. } => ApiError {
                param: Some("model"),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "model_not_found",
                    message,
                )
            },
            ProxyError::Deadline(_) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "deadline_exceeded",
                message,
            ),
            ProxyError::AllFailed {
                attempts,
                timed_out,
            } => {
                let (status, code) = if timed_out {
                    (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
                } else {
                    (StatusCode::BAD_GATEWAY, "all_attempts_failed")
                };
                ApiError {
                    attempts,
                    ..ApiError::new(status, "upstream_error", code, message)
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
                attempts: &self.attempts,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}
