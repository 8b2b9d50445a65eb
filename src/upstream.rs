//! The configured providers at run time, which models each serves, and the pooled HTTP
//! client every attempt goes out on (with connect-time measurement).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ProviderConfig, Timeouts};

/// One provider at run time: its configuration and live counters. The counters are
/// written by the request path with relaxed atomics and read by the health task on its
/// tick; times are milliseconds since the registry's epoch.
#[derive(Debug)]
pub struct Provider {
    /// Position in the configuration.
    pub index: usize,
    /// Shared id, cheap to clone into observations.
    pub id: Arc<str>,
    /// What the configuration says.
    pub config: ProviderConfig,
    epoch: Instant,
    in_flight: AtomicI64,
    streams: AtomicI64,
    decoding: AtomicI64,
    /// Sum of the decoding streams' start times (ms), and the stream-milliseconds of the
    /// streams that ended: together the exact stream-time spent decoding.
    decoding_started_sum: AtomicU64,
    decoding_ended_ms: AtomicU64,
    tokens: AtomicU64,
    last_progress_ms: AtomicU64,
    busy_since_ms: AtomicU64,
    probing: AtomicBool,
    abandon: tokio::sync::Notify,
}

/// A provider's live counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Live {
    /// Attempts open.
    pub in_flight: i64,
    /// Streamed attempts open.
    pub streams: i64,
    /// Streams past their first token.
    pub decoding: i64,
    /// Token-bearing chunks forwarded after each stream's first token, since start.
    pub tokens: u64,
    /// Stream-milliseconds spent decoding since start (each stream from its first token to
    /// its end): tokens over it is the per-stream decode rate, exact even for streams shorter
    /// than the health tick.
    pub decoding_ms: u64,
    /// Last token or complete answer, ms since the epoch (0: never).
    pub last_progress_ms: u64,
    /// When open streams last rose from zero, ms since the epoch.
    pub busy_since_ms: u64,
}

impl Provider {
    /// Attempts currently open against this provider.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Milliseconds from the registry's epoch to `now`.
    pub fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts an attempt as open until the guard drops.
    pub fn track(self: &Arc<Self>, streamed: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if streamed && self.streams.fetch_add(1, Ordering::Relaxed) == 0 {
            self.busy_since_ms
                .store(self.ms(Instant::now()), Ordering::Relaxed);
        }
        InFlight(Arc::clone(self), streamed)
    }

    /// Counts a stream as decoding from now until the guard drops.
    pub fn decoding(self: &Arc<Self>) -> Decoding {
        let start = self.ms(Instant::now());
        self.decoding_started_sum
            .fetch_add(start, Ordering::Relaxed);
        self.decoding.fetch_add(1, Ordering::Relaxed);
        Decoding(Arc::clone(self), start)
    }

    /// Notes progress at `now`: `tokens` more tokens forwarded (0 for a complete answer).
    pub fn progress(&self, now: Instant, tokens: u64) {
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        self.last_progress_ms.store(self.ms(now), Ordering::Relaxed);
    }

    /// Claims the single probe slot; `false` when a probe is already out.
    pub fn claim_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// True when no probe is out.
    pub fn probe_free(&self) -> bool {
        !self.probing.load(Ordering::Acquire)
    }

    /// Resolves when the provider is taken out of rotation: attempts still waiting for a
    /// first token from it give up and fail over (nothing has reached their clients).
    pub fn abandoned(&self) -> tokio::sync::futures::Notified<'_> {
        self.abandon.notified()
    }

    /// Tells every attempt waiting on this provider to give up.
    pub fn abandon_waiting(&self) {
        self.abandon.notify_waiters();
    }

    /// Frees the probe slot.
    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// The live counters now.
    pub fn live(&self) -> Live {
        let decoding = self.decoding.load(Ordering::Relaxed);
        let open_ms = (u64::try_from(decoding).unwrap_or(0) * self.ms(Instant::now()))
            .saturating_sub(self.decoding_started_sum.load(Ordering::Relaxed));
        Live {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
            decoding,
            decoding_ms: self.decoding_ended_ms.load(Ordering::Relaxed) + open_ms,
            tokens: self.tokens.load(Ordering::Relaxed),
            last_progress_ms: self.last_progress_ms.load(Ordering::Relaxed),
            busy_since_ms: self.busy_since_ms.load(Ordering::Relaxed),
        }
    }
}

/// Holds one decoding count on a provider (with its start, ms); releases it on drop.
#[derive(Debug)]
pub struct Decoding(Arc<Provider>, u64);

impl Drop for Decoding {
    fn drop(&mut self) {
        let p = &self.0;
        let elapsed = p.ms(Instant::now()).saturating_sub(self.1);
        p.decoding_ended_ms.fetch_add(elapsed, Ordering::Relaxed);
        p.decoding_started_sum.fetch_sub(self.1, Ordering::Relaxed);
        p.decoding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds one in-flight count (and, for a stream, one stream count) on a provider;
/// releases them on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Provider>, bool);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.1 {
            self.0.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// All providers and the model → providers index.
#[derive(Debug)]
pub struct Upstreams {
    providers: Vec<Arc<Provider>>,
    by_model: BTreeMap<String, Vec<usize>>,
}

impl Upstreams {
    /// Builds the registry from validated provider configs.
    pub fn new(configs: &[ProviderConfig]) -> Upstreams {
        let mut by_model: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let epoch = Instant::now();
        let providers = configs
            .iter()
            .enumerate()
            .map(|(index, c)| {
                for m in &c.models {
                    by_model.entry(m.clone()).or_default().push(index);
                }
                Arc::new(Provider {
                    index,
                    id: Arc::from(c.id.as_str()),
                    config: c.clone(),
                    epoch,
                    in_flight: AtomicI64::new(0),
                    streams: AtomicI64::new(0),
                    decoding: AtomicI64::new(0),
                    decoding_started_sum: AtomicU64::new(0),
                    decoding_ended_ms: AtomicU64::new(0),
                    tokens: AtomicU64::new(0),
                    last_progress_ms: AtomicU64::new(0),
                    busy_since_ms: AtomicU64::new(0),
                    probing: AtomicBool::new(false),
                    abandon: tokio::sync::Notify::new(),
                })
            })
            .collect();
        Upstreams {
            providers,
            by_model,
        }
    }

    /// Every provider in configuration order.
    pub fn all(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// The provider at `index`.
    pub fn get(&self, index: usize) -> Option<&Arc<Provider>> {
        self.providers.get(index)
    }

    /// Indices of the providers serving `model`, in configuration order.
    pub fn serving(&self, model: &str) -> &[usize] {
        self.by_model.get(model).map_or(&[], Vec::as_slice)
    }

    /// Every model `provider` serves alongside others: its peers, by index (itself excluded).
    pub fn peers(&self, provider: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .by_model
            .values()
            .filter(|v| v.contains(&provider))
            .flatten()
            .copied()
            .filter(|&i| i != provider)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Every model name served, sorted.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.by_model.keys().map(String::as_str)
    }
}

tokio::task_local! {
    static CONNECT_TIME: Cell<Option<Duration>>;
}

/// Runs `fut` (an upstream request) and reports how long a new connection took to open, or
/// `None` when a pooled connection was reused.
pub async fn with_connect_timing<F: Future>(fut: F) -> (F::Output, Option<Duration>) {
    CONNECT_TIME
        .scope(Cell::new(None), async move {
            let out = fut.await;
            (out, CONNECT_TIME.with(Cell::get))
        })
        .await
}

/// A connector layer that times every new connection into the task-local above.
#[derive(Debug, Clone, Copy)]
struct ConnectTimingLayer;

impl<S> tower_layer::Layer<S> for ConnectTimingLayer {
    type Service = ConnectTiming<S>;
    fn layer(&self, inner: S) -> ConnectTiming<S> {
        ConnectTiming(inner)
    }
}

#[derive(Debug, Clone)]
struct ConnectTiming<S>(S);

impl<S, R> tower_service::Service<R> for ConnectTiming<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let start = Instant::now();
            let out = fut.await;
            // Outside a timed attempt (a connection raced in the background) there is
            // nobody to tell, which is fine.
            let _ = CONNECT_TIME.try_with(|c| c.set(Some(start.elapsed())));
            out
        })
    }
}

/// The pooled client for all upstream traffic: keep-alive, `TCP_NODELAY`, no redirects
/// (a redirect must never carry a provider key elsewhere).
pub fn http_client(timeouts: &Timeouts) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .redirect(reqwest::redirect::Policy::none())
        .connector_layer(ConnectTimingLayer)
        .build()
}
