//! HTTP surface: the OpenAI-compatible proxy API, the performance health endpoints,
//! `/metrics`, and the token-protected admin API, on one axum router.

mod admin;
mod dashboard;
pub mod error;
pub mod listen;
mod openai;
mod routing_view;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::proxy::Gateway;
use error::ApiError;

/// Header carrying Candor's request id on every response.
pub const REQUEST_ID: &str = "x-candor-request-id";
/// Header naming the provider that answered.
pub const PROVIDER: &str = "x-candor-provider";
/// Response header: why the provider was chosen.
pub const ROUTE: &str = "x-candor-route";

/// The application router.
pub fn router(gw: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/api/health", get(admin::health_json))
        .route("/api/providers", get(admin::providers))
        .route("/api/requests", get(admin::requests))
        .route("/api/requests/{id}", get(admin::request))
        .route("/api/incidents", get(admin::incidents))
        .route("/api/incidents/{id}", get(admin::incident))
        .route("/api/triage", get(admin::triage))
        .route("/api/series", get(admin::series))
        .route("/api/config/reload", post(admin::reload))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&gw),
            require_admin,
        ));
    probes()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(ensure_request_id))
        .with_state(gw)
}

/// The health, liveness, readiness and metrics paths: part of the full router, and all a
/// probe connection may reach when clients hold every connection slot.
fn probes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/health", get(admin::health))
        .route("/livez", get(admin::livez))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
}

/// The router for probe connections: `probes()`, and 503 for anything else.
pub fn probe_router(gw: Arc<Gateway>) -> Router {
    probes()
        .fallback(over_capacity)
        .layer(middleware::map_response(ensure_request_id))
        .with_state(gw)
}

async fn over_capacity() -> ApiError {
    ApiError::too_many_connections()
}

/// A fresh request id for a response that has none yet (the proxy sets its own).
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn ensure_request_id(mut r: Response) -> Response {
    if !r.headers().contains_key(REQUEST_ID)
        && let Ok(v) = HeaderValue::from_str(&new_request_id())
    {
        r.headers_mut().insert(REQUEST_ID, v);
    }
    r
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "Unknown path {} {}. Candor serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health, /metrics, /api/* and the dashboard at /.",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{} is not served on {}: the proxy API takes POST, the health, metrics and admin paths GET.",
        req.method(),
        req.uri().path()
    ))
}

/// The bearer token of a request, if any.
fn bearer(req: &Request) -> Option<&[u8]> {
    let v: &HeaderValue = req.headers().get(AUTHORIZATION)?;
    let v = v.as_bytes();
    v.strip_prefix(b"Bearer ")
        .or_else(|| v.strip_prefix(b"bearer "))
}

async fn require_admin(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    if let Some(token) = &gw.access().admin_token
        && !bearer(&req).is_some_and(|b| token.matches(b))
    {
        return ApiError::bad_admin_token().into_response();
    }
    next.run(req).await
}
