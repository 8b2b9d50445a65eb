//! Performance health (`/health`, `/livez`, `/readyz`), `/metrics`, and the admin JSON API
//! that `candor logs`, `candor status` and the dashboard read.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::time::Instant;

use super::error::ApiError;
use super::routing_view::RoutingView;
use crate::health::report::{HealthReport, Verdict};
use crate::health::series::{Series, SeriesSpan};
use crate::health::snapshot;
use crate::incident::Incident;
use crate::observation::unix_ms_now;
use crate::proxy::Gateway;
use crate::request_log::{IncidentFilter, LogFilter, RequestRecord, Store};
use crate::triage::Triage;

async fn report(gw: &Gateway) -> Result<HealthReport, ApiError> {
    let mut r = gw
        .health
        .report()
        .await
        .ok_or_else(|| ApiError::internal("the health task is not running"))?;
    r.config_reload = gw.reload.status.last();
    Ok(r)
}

/// `POST /api/config/reload`: reads the configuration file again and applies it if valid
/// (200 with what changed); 422 with every problem when it is not (nothing changes); 409
/// when Candor was started without a file.
pub(super) async fn reload(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.reload.reload().await {
        Some(o) => {
            let status = match o.result {
                crate::reload::Verdict::Applied => StatusCode::OK,
                crate::reload::Verdict::Refused => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, Json(o)).into_response()
        }
        None => ApiError::conflict(
            "Candor was started without a configuration file (or is stopping): there is nothing to reload.",
        )
        .into_response(),
    }
}

/// `GET /health`: the report, 200 only when within bounds, 503 otherwise.
pub(super) async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    match report(&gw).await {
        Ok(r) => {
            let status = if r.verdict == Verdict::WithinBounds {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, Json(r)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /api/health`: the same report, always 200 (for dashboards).
pub(super) async fn health_json(
    State(gw): State<Arc<Gateway>>,
) -> Result<Json<HealthReport>, ApiError> {
    report(&gw).await.map(Json)
}

/// `GET /livez`: the process is up.
pub(super) async fn livez() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: configuration loaded and at least one provider not failing.
pub(super) async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    match report(&gw).await {
        Ok(r) if r.any_provider_usable() => (StatusCode::OK, "ready\n").into_response(),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "every provider is failing\n",
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.health.metrics().await {
        Some(mut text) => {
            gw.admission.render(&mut text);
            gw.tracer.render(&mut text);
            gw.reload.status.render(&mut text);
            (
                [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                text,
            )
                .into_response()
        }
        None => ApiError::internal("the health task is not running").into_response(),
    }
}

/// A provider as the admin API shows it: configuration (no secrets) and live state.
#[derive(Debug, Serialize)]
pub(super) struct ProviderView {
    id: String,
    base_url: String,
    models: Vec<String>,
    model_map: std::collections::BTreeMap<String, String>,
    price_input_per_million: f64,
    price_output_per_million: f64,
    quantization: Option<String>,
    metrics_url: Option<String>,
    gpu_metrics_url: Option<String>,
    has_api_key: bool,
    in_flight: i64,
    verdict: Option<Verdict>,
    /// Routing state and why.
    routing: RoutingView,
}

/// `GET /api/providers`.
pub(super) async fn providers(
    State(gw): State<Arc<Gateway>>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    let r = report(&gw).await?;
    let views = gw.snapshot.load();
    let (now, now_unix) = (Instant::now(), unix_ms_now());
    Ok(Json(
        gw.upstreams()
            .active()
            .map(|(_, p)| ProviderView {
                id: p.config.id.clone(),
                base_url: crate::config::shown_url(&p.config.base_url),
                models: p.config.models.clone(),
                model_map: p.config.model_map.clone(),
                price_input_per_million: p.config.price.input_per_million,
                price_output_per_million: p.config.price.output_per_million,
                quantization: p.config.quantization.clone(),
                metrics_url: p
                    .config
                    .metrics_url
                    .as_deref()
                    .map(crate::config::shown_url),
                gpu_metrics_url: p
                    .config
                    .gpu_metrics_url
                    .as_deref()
                    .map(crate::config::shown_url),
                has_api_key: p.config.api_key.is_some(),
                in_flight: p.in_flight(),
                verdict: r
                    .providers
                    .iter()
                    .find(|x| x.id == p.config.id)
                    .map(|x| x.scope.verdict),
                routing: views.providers.get(p.index).map_or_else(
                    || RoutingView::of(&snapshot::ProviderView::new(now), now, now_unix),
                    |v| RoutingView::of(v, now, now_unix),
                ),
            })
            .collect(),
    ))
}

async fn query(gw: &Gateway, filter: LogFilter) -> Result<Vec<RequestRecord>, ApiError> {
    read_db(gw, move |s| s.query(&filter, unix_ms_now())).await
}

/// `GET /api/requests?provider=&model=&status=&slower_than=&since=&limit=`.
pub(super) async fn requests(
    State(gw): State<Arc<Gateway>>,
    filter: Result<Query<LogFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<RequestRecord>>, ApiError> {
    let Query(filter) = filter.map_err(|e| ApiError::bad_request(e.body_text()))?;
    query(&gw, filter).await.map(Json)
}

/// `GET /api/requests/{id}`.
pub(super) async fn request(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Json<RequestRecord>, ApiError> {
    let filter = LogFilter {
        request_id: Some(id.clone()),
        ..LogFilter::default()
    };
    query(&gw, filter)
        .await?
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("No request {id} in the request log.")))
}

async fn read_db<T: Send + 'static>(
    gw: &Gateway,
    read: impl FnOnce(&mut Store) -> Result<T, crate::request_log::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let db = gw.config.request_log.database.clone();
    let rows =
        tokio::task::spawn_blocking(move || Store::reader(&db).and_then(|mut s| read(&mut s)))
            .await;
    match rows {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(error)) => {
            tracing::warn!(%error, "request log query failed");
            Err(ApiError::internal("the request log could not be read"))
        }
        Err(_) => Err(ApiError::internal("the request log query was interrupted")),
    }
}

/// `GET /api/incidents?state=&provider=&mode=&since=&history=&limit=`: newest first.
pub(super) async fn incidents(
    State(gw): State<Arc<Gateway>>,
    filter: Result<Query<IncidentFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Incident>>, ApiError> {
    let Query(filter) = filter.map_err(|e| ApiError::bad_request(e.body_text()))?;
    read_db(&gw, move |s| s.incidents(&filter, unix_ms_now()))
        .await
        .map(Json)
}

/// `GET /api/incidents/{id}`: one incident with its evidence history.
pub(super) async fn incident(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Json<Incident>, ApiError> {
    let key = id.clone();
    read_db(&gw, move |s| s.incident(&key))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("No incident {id}.")))
}

/// Query of `/api/triage`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TriageQuery {
    provider: Option<String>,
    #[serde(default, with = "humantime_serde")]
    since: Option<std::time::Duration>,
}

/// `GET /api/triage?provider=&since=30m`: the runbook walked; the exit code is in the body.
pub(super) async fn triage(
    State(gw): State<Arc<Gateway>>,
    q: Result<Query<TriageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Triage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(p) = &q.provider
        && !gw.upstreams().active().any(|(_, u)| &u.config.id == p)
    {
        return Err(ApiError::not_found(format!("No provider {p}.")));
    }
    let r = report(&gw).await?;
    let filter = IncidentFilter {
        since: Some(q.since.unwrap_or(std::time::Duration::from_secs(1800))),
        ..IncidentFilter::default()
    };
    let mut incidents = read_db(&gw, move |s| s.incidents(&filter, unix_ms_now())).await?;
    // What is open now comes from the live report (the database may lag by a batch).
    for open in &r.incidents {
        match incidents.iter_mut().find(|i| i.id == open.id) {
            Some(i) => *i = open.clone(),
            None => incidents.push(open.clone()),
        }
    }
    Ok(Json(crate::triage::walk(
        &r,
        &incidents,
        q.provider.as_deref(),
    )))
}

/// Query of `/api/series`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeriesQuery {
    #[serde(default)]
    span: SeriesSpan,
}

/// `GET /api/series?span=5m|1h`: per-slot history of the overall and per-provider windows
/// (5-second slots over five minutes, or 1-minute slots over the hour).
pub(super) async fn series(
    State(gw): State<Arc<Gateway>>,
    q: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Series>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    gw.health
        .series(q.span)
        .await
        .map(Json)
        .ok_or_else(|| ApiError::internal("the health task is not running"))
}
