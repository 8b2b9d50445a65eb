//! The composition root: builds the shared state, starts every long-lived worker by name,
//! and shuts them down in order. The only module that spawns long-lived tasks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::health::HealthTask;
use crate::proxy::Gateway;
use crate::request_log::{StoreError, Writer};
use crate::scrape;
use crate::server;
use crate::upstream::{Upstreams, http_client};

/// Why the gateway could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The request log could not be opened.
    #[error(transparent)]
    RequestLog(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The server failed while running.
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// The listener's certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] server::listen::TlsError),
}

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    /// The bound address (useful when the config asked for port 0).
    pub addr: SocketAddr,
    /// Shared request-path state.
    pub gateway: Arc<Gateway>,
    stop_server: CancellationToken,
    stop_workers: CancellationToken,
    tracker: TaskTracker,
    server: tokio::task::JoinHandle<()>,
    writer: Option<std::thread::JoinHandle<()>>,
    closer: crate::request_log::Closer,
    grace: std::time::Duration,
}

/// Starts the gateway: request-log writer, health task, HTTP server.
#[expect(
    clippy::disallowed_methods,
    reason = "app.rs is where long-lived tasks start"
)]
pub async fn start(config: Config) -> Result<Running, AppError> {
    // Before anything starts: a bad certificate stops the start with nothing to undo.
    let tls = config
        .server
        .tls
        .as_ref()
        .map(server::listen::tls_acceptor)
        .transpose()?;
    let config = Arc::new(config);
    let upstreams = Arc::new(Upstreams::new(&config.providers));
    let client = http_client(&config.timeouts)?;

    let (writer, log) = Writer::open(&config.request_log)?;
    let closer = writer.closer();
    let writer = std::thread::Builder::new()
        .name("request-log-writer".into())
        .spawn(move || {
            if let Err(error) = writer.run() {
                tracing::error!(%error, "request-log writer stopped");
            }
        })
        .map_err(AppError::Serve)?;

    let tracker = TaskTracker::new();
    let stop_workers = CancellationToken::new();
    let alerts = if config.alerts.sinks.is_empty() {
        None
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let dashboard = config
            .alerts
            .dashboard_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/", config.server.listen));
        tracker.spawn(crate::alert::run(
            config.alerts.clone(),
            dashboard,
            client.clone(),
            rx,
            stop_workers.clone(),
        ));
        Some(tx)
    };
    let (health_task, health, snapshot) =
        HealthTask::new(Arc::clone(&upstreams), &config, log.clone(), alerts);
    tracker.spawn(health_task.run(stop_workers.clone()));
    for (i, d) in config.dependencies.iter().enumerate() {
        tracker.spawn(scrape::dependency::run(
            i,
            d.clone(),
            client.clone(),
            health.clone(),
            stop_workers.clone(),
        ));
    }
    for p in upstreams.all() {
        if p.config.metrics_url.is_some()
            || p.config.gpu_metrics_url.is_some()
            || p.config.health_url.is_some()
        {
            tracker.spawn(scrape::run(
                Arc::clone(p),
                client.clone(),
                config.scrape,
                health.clone(),
                stop_workers.clone(),
            ));
        }
    }

    let (tracer, spans) = crate::otel::Tracer::new(config.tracing.as_ref());
    if let (Some(c), Some(rx)) = (&config.tracing, spans) {
        tracker.spawn(crate::otel::export::run(
            c.clone(),
            tracer.clone(),
            rx,
            stop_workers.clone(),
        ));
    }
    let gateway = Arc::new(Gateway::new(
        Arc::clone(&config),
        upstreams,
        client,
        health,
        log,
        snapshot,
        tracer,
    ));
    if config.canaries.enabled {
        tracker.spawn(crate::canary::run(
            Arc::clone(&gateway),
            stop_workers.clone(),
        ));
    }
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(AppError::Serve)?;
    let stop_server = CancellationToken::new();
    let routers = server::listen::Routers {
        full: server::router(Arc::clone(&gateway)),
        probes: server::probe_router(Arc::clone(&gateway)),
    };
    let mut limits = config.server.connections;
    limits.max_connections = server::listen::fit_to_descriptors(limits.max_connections);
    let server = tokio::spawn(server::listen::serve(
        listener,
        routers,
        server::listen::Settings { limits, tls },
        stop_server.clone(),
    ));
    tracing::info!(%addr, providers = config.providers.len(), "candor listening");
    Ok(Running {
        addr,
        gateway,
        stop_server,
        stop_workers,
        tracker,
        server,
        writer: Some(writer),
        closer,
        grace: config.server.grace_period,
    })
}

impl Running {
    /// Stops in order: stop accepting and drain in-flight requests (up to the grace
    /// period), stop the health task, flush the request log.
    pub async fn stop(mut self) -> Result<(), AppError> {
        self.stop_server.cancel();
        if tokio::time::timeout(self.grace, &mut self.server)
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "in-flight requests outlived the grace period; closing them");
            self.server.abort();
        }
        self.stop_workers.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.closer.close();
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        tracing::info!("candor stopped");
        Ok(())
    }
}

/// Runs the gateway until `shutdown` resolves.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let running = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    running.stop().await
}

/// A running simulator or dependency.
#[derive(Debug)]
pub struct Background {
    /// Bound address.
    pub addr: SocketAddr,
    stop_server: CancellationToken,
    stop_workers: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    tracker: TaskTracker,
}

/// How long a simulator's open responses may take to finish at shutdown.
const BACKGROUND_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl Background {
    /// Stops accepting, lets open responses finish (briefly; the engine keeps running for
    /// them), then stops the engine.
    pub async fn stop(mut self) {
        self.stop_server.cancel();
        if tokio::time::timeout(BACKGROUND_GRACE, &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        self.stop_workers.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "app.rs is where long-lived tasks start"
)]
async fn serve_router(
    addr: SocketAddr,
    router: axum::Router,
    workers: TaskTracker,
    stop_workers: CancellationToken,
) -> Result<Background, AppError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(AppError::Serve)?;
    let stop_server = CancellationToken::new();
    let signal = stop_server.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(no_delay(listener), router)
            .with_graceful_shutdown(async move { signal.cancelled().await })
            .await;
    });
    Ok(Background {
        addr: bound,
        stop_server,
        stop_workers,
        server,
        tracker: workers,
    })
}

/// Starts a simulated provider (`candor sim`): its engine loop and its HTTP server.
pub async fn start_sim(
    profile: crate::sim::Profile,
    addr: SocketAddr,
) -> Result<(Background, Arc<crate::sim::Sim>), AppError> {
    let sim = crate::sim::Sim::new(profile);
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    tracker.spawn(Arc::clone(&sim).run_engine(stop.clone()));
    let bg = serve_router(addr, crate::sim::router(Arc::clone(&sim)), tracker, stop).await?;
    Ok((bg, sim))
}

/// Starts a simulated vector-database dependency (`candor sim --dependency`).
pub async fn start_dependency(
    dep: Arc<crate::sim::dependency::Dependency>,
    addr: SocketAddr,
) -> Result<Background, AppError> {
    serve_router(
        addr,
        crate::sim::dependency::router(dep),
        TaskTracker::new(),
        CancellationToken::new(),
    )
    .await
}

/// Accepted connections with Nagle's algorithm off: a streamed chunk is written as it comes,
/// not held back until the client acknowledges the previous one.
fn no_delay(listener: TcpListener) -> impl axum::serve::Listener<Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    })
}
