//! The dashboard: one page and its assets, embedded in the binary. The page reads only the
//! admin JSON API (`/api/*`), with the admin token the user types kept in the browser
//! session; the assets themselves hold no data and need no token.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Scripts and styles only from this origin; data only from the admin API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// (name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uPlot.min.css"),
    ),
];

fn respond(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the dashboard page.
pub(super) async fn index() -> Response {
    respond(
        "text/html; charset=utf-8",
        include_bytes!("../../dashboard/index.html"),
    )
}

/// `GET /assets/{file}`.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => respond(content_type, body),
        None => ApiError::not_found(format!("No dashboard asset {file}.")).into_response(),
    }
}
