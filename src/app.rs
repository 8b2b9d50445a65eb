//! The composition root: builds the shared state, starts every long-lived worker by name,
//! and shuts them down in order. The only module that spawns long-lived tasks.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// The configuration file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Where the configuration came from, when it came from a file: a reload reads it again.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// Its text as last applied.
    pub text: String,
    /// Reload on SIGHUP too (the `candor serve` process; tests ask through the API only).
    pub sighup: bool,
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

/// Starts the gateway from a configuration file, which `SIGHUP` (when `sighup`) and
/// `POST /api/config/reload` read again.
pub async fn start_from(path: &Path, sighup: bool) -> Result<Running, AppError> {
    let (config, text) = Config::load_source(path)?;
    let source = Source {
        path: path.to_path_buf(),
        text,
        sighup,
    };
    start_with(config, Some(source)).await
}

/// Starts the gateway: request-log writer, health task, HTTP server (no reload: there is
/// no file to read again).
pub async fn start(config: Config) -> Result<Running, AppError> {
    start_with(config, None).await
}

#[expect(
    clippy::disallowed_methods,
    reason = "app.rs is where long-lived tasks start"
)]
async fn start_with(config: Config, source: Option<Source>) -> Result<Running, AppError> {
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

    // Opening the database blocks (a file, or a PostgreSQL connection with its own timeout):
    // off the async workers.
    let log_config = config.request_log.clone();
    let (writer, log) = tokio::task::spawn_blocking(move || Writer::open(&log_config))
        .await
        .map_err(|e| AppError::Serve(std::io::Error::other(e)))??;
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
    let mut scrapers = Scrapers {
        tracker: tracker.clone(),
        client: client.clone(),
        config: config.scrape,
        health: health.clone(),
        stop: stop_workers.clone(),
        running: HashMap::new(),
    };
    for (i, p) in upstreams.active() {
        scrapers.start(i, p);
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
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(8);
    let reload = crate::reload::Control {
        status: Arc::default(),
        requests: source.is_some().then_some(reload_tx),
    };
    let gateway = Arc::new(Gateway::new(crate::proxy::Parts {
        config: Arc::clone(&config),
        upstreams,
        client,
        health,
        request_log: log,
        snapshot,
        tracer,
        reload,
    }));
    if let Some(source) = source {
        let reloader = Reloader {
            source,
            gateway: Arc::clone(&gateway),
            scrapers,
        };
        tracker.spawn(reloader.run(reload_rx, stop_workers.clone()));
    }
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

/// Per-provider backend scrapers, each under its own token so a reload can stop one.
struct Scrapers {
    tracker: TaskTracker,
    client: reqwest::Client,
    config: crate::config::ScrapeConfig,
    health: crate::health::HealthHandle,
    stop: CancellationToken,
    /// By provider slot.
    running: HashMap<usize, CancellationToken>,
}

impl Scrapers {
    /// Starts scraping provider `index`, if it has anything to scrape.
    fn start(&mut self, index: usize, p: &Arc<crate::upstream::Provider>) {
        let c = &p.config;
        if c.metrics_url.is_none() && c.gpu_metrics_url.is_none() && c.health_url.is_none() {
            return;
        }
        let stop = self.stop.child_token();
        self.tracker.spawn(scrape::run(
            Arc::clone(p),
            self.client.clone(),
            self.config,
            self.health.clone(),
            stop.clone(),
        ));
        self.running.insert(index, stop);
    }

    /// Stops scraping provider `index`.
    fn stop(&mut self, index: usize) {
        if let Some(t) = self.running.remove(&index) {
            t.cancel();
        }
    }
}

/// Applies configuration reloads, one at a time: asked through the admin API, or on SIGHUP.
struct Reloader {
    source: Source,
    gateway: Arc<Gateway>,
    scrapers: Scrapers,
}

impl Reloader {
    async fn run(
        mut self,
        mut requests: tokio::sync::mpsc::Receiver<crate::reload::Request>,
        stop: CancellationToken,
    ) {
        let mut hangup = self.source.sighup.then(hangups).flatten();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                asked = requests.recv() => {
                    let Some(reply) = asked else { return };
                    let outcome = self.reload().await;
                    let _ = reply.send(outcome);
                }
                Some(()) = recv(&mut hangup) => {
                    self.reload().await;
                }
            }
        }
    }

    /// Reads the file again and, if it is valid, puts it in force: providers added,
    /// removed or changed, client keys and admin token replaced. An invalid file changes
    /// nothing. Recorded for `/health` and `/metrics`, and logged.
    async fn reload(&mut self) -> crate::reload::Outcome {
        let now = crate::observation::unix_ms_now();
        let outcome = match Config::load_source(&self.source.path) {
            Err(e) => {
                let problems = match e {
                    crate::config::ConfigError::Invalid(p) => p,
                    other => vec![other.to_string()],
                };
                crate::reload::Outcome::refused(now, problems)
            }
            Ok((config, text)) => self.apply(config, text, now).await,
        };
        match outcome.result {
            crate::reload::Verdict::Applied => tracing::info!(
                added = ?outcome.added,
                removed = ?outcome.removed,
                updated = ?outcome.updated,
                replaced = ?outcome.replaced,
                restart_required = ?outcome.restart_required,
                "configuration reloaded"
            ),
            crate::reload::Verdict::Refused => tracing::warn!(
                problems = ?outcome.problems,
                "configuration reload refused; the running configuration stays"
            ),
        }
        self.gateway.reload.status.record(&outcome);
        outcome
    }

    async fn apply(&mut self, config: Config, text: String, now: i64) -> crate::reload::Outcome {
        let gw = &self.gateway;
        let restart = crate::config::restart_required(&self.source.text, &text);
        let (upstreams, changes) = gw.upstreams().reconcile(&config.providers);
        let upstreams = Arc::new(upstreams);
        // The health task first: it publishes a view of every new provider before the
        // router can pick one.
        if gw
            .health
            .reload(Arc::clone(&upstreams), changes.clone())
            .await
            .is_none()
        {
            return crate::reload::Outcome::refused(
                now,
                vec!["the health task is not running".into()],
            );
        }
        gw.set_upstreams(Arc::clone(&upstreams));
        gw.set_access(config.access());
        for c in &changes {
            self.scrapers.stop(c.index());
            if let (false, Some(p)) = (
                matches!(c, crate::upstream::Change::Removed(_)),
                upstreams.get(c.index()),
            ) {
                self.scrapers.start(c.index(), p);
            }
        }
        self.source.text = text;
        crate::reload::Outcome::applied(now, &upstreams, &changes, restart)
    }
}

/// SIGHUPs, where the platform has them.
fn hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reload through the admin API");
            None
        }
    }
}

/// The next SIGHUP, or never.
async fn recv(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs the gateway from a configuration file until `shutdown` resolves; SIGHUP reloads it.
pub async fn serve_file(path: &Path, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let running = start_from(path, true).await?;
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    running.stop().await
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
