//! The client listener: accepts connections up to `server.max_connections` and serves each
//! over HTTP/1.1 or HTTP/2 with time limits no client can outwait — a request head must
//! arrive within `header_read_timeout` of its first byte, a connection with no request in
//! progress closes after `idle_timeout` (the body's limit is the handler's). Past the
//! connection limit a few more connections are taken for the liveness, readiness and
//! metrics paths only, so probes still get an answer while clients hold every slot; past
//! those, accepting waits for a connection to close instead of spinning on errors. With
//! `[server.tls]`, each connection's TLS handshake must finish within the header limit.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::config::{ConnectionLimits, TlsFiles};

/// Connections accepted past the limit for the probe paths only.
pub const PROBE_RESERVE: usize = 32;
/// How long a probe connection may take to send its request.
const PROBE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the listener serves: every path, and the probe paths for reserve connections.
#[derive(Clone)]
pub struct Routers {
    /// The whole API.
    pub full: Router,
    /// `/livez`, `/readyz`, `/health` and `/metrics` only.
    pub probes: Router,
}

/// How connections are served.
#[derive(Clone)]
pub struct Settings {
    /// Time and count limits.
    pub limits: ConnectionLimits,
    /// TLS, when the listener terminates it.
    pub tls: Option<TlsAcceptor>,
}

/// Why the listener's certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("server.tls.{field}: {path}: {reason}")]
    File {
        /// `cert_path` or `key_path`.
        field: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate and key do not make a server configuration.
    #[error("server.tls: {0}")]
    Config(#[from] rustls::Error),
}

/// The acceptor for `[server.tls]`: the certificate chain and key from their PEM files,
/// HTTP/2 and HTTP/1.1 offered by ALPN.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let file_error = |field, path: &std::path::Path, reason: String| TlsError::File {
        field,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert_path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| file_error("cert_path", &files.cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(
            "cert_path",
            &files.cert_path,
            "no certificate in it".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_path)
        .map_err(|e| file_error("key_path", &files.key_path, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts and serves connections until `stop` is cancelled, then waits for the open ones
/// to finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    routers: Routers,
    settings: Settings,
    stop: CancellationToken,
) {
    let limits = settings.limits;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let reserve = Arc::new(Semaphore::new(PROBE_RESERVE));
    let connections = TaskTracker::new();
    loop {
        // A slot first: at the limit, a reserve slot for probes; with neither, wait.
        let mut slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = acquire(&slots, &reserve) => slot,
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Out of descriptors or memory: a pause, not a spin; a connection reset
                // before it was accepted: nothing to wait for.
                if !is_per_connection(&error) {
                    tracing::warn!(%error, "accept failed; retrying in 100 ms");
                    sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        // A client slot may have freed while this one waited in accept.
        if slot.kind == SlotKind::Probe
            && let Ok(permit) = Arc::clone(&slots).try_acquire_owned()
        {
            slot = Slot {
                kind: SlotKind::Client,
                permit,
            };
        }
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        connections.spawn(serve_accepted(tcp, slot, &routers, &settings, stop.clone()));
    }
    connections.close();
    connections.wait().await;
}

/// Serves one accepted connection in its slot: a probe connection gets the probe paths,
/// short limits and no keep-alive (so no client keeps it); with TLS, the handshake first,
/// bounded by the header limit. The slot is freed when the connection ends.
fn serve_accepted(
    tcp: tokio::net::TcpStream,
    slot: Slot,
    routers: &Routers,
    settings: &Settings,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (router, limits, keep_alive) = match slot.kind {
        SlotKind::Client => (routers.full.clone(), settings.limits, true),
        SlotKind::Probe => (
            routers.probes.clone(),
            ConnectionLimits {
                header_read_timeout: PROBE_HEADER_TIMEOUT,
                idle_timeout: PROBE_HEADER_TIMEOUT,
                ..settings.limits
            },
            false,
        ),
    };
    let tls = settings.tls.clone();
    async move {
        match tls {
            None => connection(tcp, router, limits, keep_alive, stop).await,
            Some(acceptor) => {
                match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => connection(tls, router, limits, keep_alive, stop).await,
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake outwaited header_read_timeout"),
                }
            }
        }
        drop(slot.permit);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    Client,
    Probe,
}

struct Slot {
    kind: SlotKind,
    permit: OwnedSemaphorePermit,
}

/// A client slot when one is free, else a probe slot when one is, else the first to free.
async fn acquire(slots: &Arc<Semaphore>, reserve: &Arc<Semaphore>) -> Slot {
    if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
        return Slot {
            kind: SlotKind::Client,
            permit,
        };
    }
    tokio::select! {
        biased;
        Ok(permit) = Arc::clone(slots).acquire_owned() => Slot { kind: SlotKind::Client, permit },
        Ok(permit) = Arc::clone(reserve).acquire_owned() => Slot { kind: SlotKind::Probe, permit },
    }
}

/// Errors that concern one connection only (it was reset before being accepted).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, its client outwaits a limit, or shutdown.
async fn connection<S>(
    tcp: S,
    router: Router,
    limits: ConnectionLimits,
    keep_alive: bool,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: tcp,
        activity: Arc::clone(&activity),
    });
    let service = hyper::service::service_fn({
        let activity = Arc::clone(&activity);
        move |req: hyper::Request<hyper::body::Incoming>| {
            let guard = activity.begin();
            let mut router = router.clone();
            async move {
                let response = router.call(req.map(Body::new)).await;
                response.map(|r| {
                    r.map(|body| {
                        Body::new(Guarded {
                            body,
                            _guard: guard,
                        })
                    })
                })
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(keep_alive)
        // The watchdog below times heads from their first byte; hyper's own limit runs
        // from when it starts waiting, so it bounds the idle wait as well.
        .header_read_timeout(limits.header_read_timeout + limits.idle_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "client connection ended with an error");
            }
        }
        expired = watchdog(&activity, limits) => {
            tracing::debug!(limit = expired, "client connection closed: it outwaited a limit");
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(error) = conn.await {
                tracing::debug!(%error, "client connection ended with an error");
            }
        }
    }
}

/// Resolves when the connection has gone past a limit: a request head begun but not
/// finished within `header_read_timeout`, or no request in progress for `idle_timeout`.
async fn watchdog(activity: &Activity, limits: ConnectionLimits) -> &'static str {
    loop {
        let now = Instant::now();
        let (due, limit) = activity.deadline(limits);
        // A head beginning moves the deadline earlier: wake for it too.
        let head_began = activity.head_began.notified();
        match due {
            Some(due) if due <= now => return limit,
            Some(due) => {
                tokio::select! {
                    () = sleep_until(due) => {}
                    () = head_began => {}
                }
            }
            // A request in progress: its own timeouts govern; look again later.
            None => sleep(limits.idle_timeout).await,
        }
    }
}

/// What a connection is doing, shared by its socket, its requests and its watchdog.
/// Times are microseconds since `epoch`; 0 means "not set".
struct Activity {
    epoch: Instant,
    in_progress: AtomicUsize,
    idle_since: AtomicU64,
    head_started: AtomicU64,
    /// Signalled when a request head begins (once per request).
    head_began: Notify,
}

impl Activity {
    fn new() -> Activity {
        let a = Activity {
            epoch: Instant::now(),
            in_progress: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            head_began: Notify::new(),
        };
        a.idle_since.store(a.stamp(), Ordering::Relaxed);
        a
    }

    /// Microseconds since the epoch, never 0.
    fn stamp(&self) -> u64 {
        let us = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_micros();
        u64::try_from(us).unwrap_or(u64::MAX).max(1)
    }

    fn at(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_micros(stamp)
    }

    /// Bytes arrived: the first while idle starts a request head's clock.
    fn read(&self) {
        if self.in_progress.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.stamp(), Ordering::Relaxed);
            self.head_began.notify_one();
        }
    }

    /// A request's head is complete: it is in progress until its response body is done.
    fn begin(self: &Arc<Self>) -> InProgress {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InProgress(Arc::clone(self))
    }

    /// When the connection goes past a limit if nothing happens, and which limit.
    fn deadline(&self, limits: ConnectionLimits) -> (Option<Instant>, &'static str) {
        if self.in_progress.load(Ordering::Relaxed) > 0 {
            return (None, "");
        }
        match self.head_started.load(Ordering::Relaxed) {
            0 => {
                let idle = self.at(self.idle_since.load(Ordering::Relaxed));
                (Some(idle + limits.idle_timeout), "idle_timeout")
            }
            started => (
                Some(self.at(started) + limits.header_read_timeout),
                "header_read_timeout",
            ),
        }
    }
}

/// A request in progress on a connection; dropped with its response body.
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.stamp(), Ordering::Relaxed);
        a.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that ends its request's time in progress when it is done or dropped.
struct Guarded {
    body: Body,
    _guard: InProgress,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A client socket that tells its connection's `Activity` when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection limit that fits the process's descriptors: the soft limit is raised to
/// the hard one first (as Go's runtime does at start), and clients get at most half of it —
/// every client request also needs an upstream connection, and the request log, the
/// metrics scrapes and the listener need their own.
pub fn fit_to_descriptors(configured: usize) -> usize {
    let available = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(error) => {
            tracing::warn!(%error, "could not read the descriptor limit");
            return configured;
        }
    };
    let fit = usize::try_from(available / 2).unwrap_or(usize::MAX).max(1);
    if fit < configured {
        tracing::warn!(
            configured,
            fit,
            descriptors = available,
            "server.max_connections lowered to half the process's descriptor limit"
        );
    }
    configured.min(fit)
}
