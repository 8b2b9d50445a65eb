//! The configured providers at run time, which models each serves, and the pooled HTTP
//! client every attempt goes out on (with connect-time measurement).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    /// Host and port of `base_url` (the `server.address` and `server.port` of its spans).
    server: Option<(String, u16)>,
    /// Removed from the configuration by a reload: kept in its slot so indices stay valid
    /// (its open streams finish), never routed to again.
    pub retired: bool,
    epoch: Instant,
    in_flight: AtomicI64,
    streams: AtomicI64,
    /// Taken once per stream at its first token and once at its end, never per chunk.
    decoding: Mutex<DecodeClock>,
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
    fn build(index: usize, c: &ProviderConfig, epoch: Instant, retired: bool) -> Provider {
        Provider {
            index,
            id: Arc::from(c.id.as_str()),
            config: c.clone(),
            server: reqwest::Url::parse(&c.base_url)
                .ok()
                .and_then(|u| Some((u.host_str()?.to_owned(), u.port_or_known_default()?))),
            retired,
            epoch,
            in_flight: AtomicI64::new(0),
            streams: AtomicI64::new(0),
            decoding: Mutex::new(DecodeClock::default()),
            tokens: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            busy_since_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            abandon: tokio::sync::Notify::new(),
        }
    }

    /// Host and port the provider is reached at.
    pub fn server(&self) -> Option<(String, u16)> {
        self.server.clone()
    }

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
        let mut clock = self.decode_clock();
        let start = self.ms(Instant::now());
        clock.start(start);
        Decoding(Arc::clone(self), start)
    }

    fn decode_clock(&self) -> MutexGuard<'_, DecodeClock> {
        self.decoding.lock().unwrap_or_else(PoisonError::into_inner)
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
        let (decoding, decoding_ms) = {
            let clock = self.decode_clock();
            clock.read(self.ms(Instant::now()))
        };
        Live {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
            decoding,
            decoding_ms,
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
        let mut clock = self.0.decode_clock();
        clock.end(self.1, self.0.ms(Instant::now()));
    }
}

/// The stream-time a provider spent decoding: streams open, the sum of their start times,
/// and the stream-milliseconds of those that ended. The three are read and written together
/// under one lock: a count and a sum of start times read apart would be off by a whole
/// start time (hours of stream-time) whenever a stream began or ended in between.
#[derive(Debug, Default)]
struct DecodeClock {
    open: u64,
    started_sum: u64,
    ended_ms: u64,
}

impl DecodeClock {
    fn start(&mut self, at: u64) {
        self.open += 1;
        self.started_sum += at;
    }

    fn end(&mut self, started: u64, at: u64) {
        self.open = self.open.saturating_sub(1);
        self.started_sum = self.started_sum.saturating_sub(started);
        self.ended_ms += at.saturating_sub(started);
    }

    /// Streams decoding, and stream-milliseconds spent decoding since start, at `at`.
    fn read(&self, at: u64) -> (i64, u64) {
        let open_ms = (self.open * at).saturating_sub(self.started_sum);
        (
            i64::try_from(self.open).unwrap_or(i64::MAX),
            self.ended_ms + open_ms,
        )
    }
}

/// Holds one in-flight count (and, for a stream, one stream count) on a provider;
/// releases them on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Provider>, bool);

impl InFlight {
    /// The provider it holds a count on.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.0
    }
}

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
    epoch: Instant,
}

/// What a reload did to one provider slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new provider (or one removed earlier and back): its health starts afresh.
    Added(usize),
    /// Taken out of the configuration: retired in place.
    Removed(usize),
    /// Same server (URL and models), other settings changed (key, prices, model map,
    /// metrics URLs, ...): its health, baselines and incidents carry on.
    Updated(usize),
    /// Same id, another server or other models: its health starts afresh.
    Replaced(usize),
}

impl Change {
    /// The slot.
    pub fn index(self) -> usize {
        match self {
            Change::Added(i) | Change::Removed(i) | Change::Updated(i) | Change::Replaced(i) => i,
        }
    }
}

impl Upstreams {
    /// Builds the registry from validated provider configs.
    pub fn new(configs: &[ProviderConfig]) -> Upstreams {
        let epoch = Instant::now();
        let providers = configs
            .iter()
            .enumerate()
            .map(|(index, c)| Arc::new(Provider::build(index, c, epoch, false)))
            .collect();
        Upstreams::index(providers, configs, epoch)
    }

    /// The registry after a reload to `configs`, and what changed, slot by slot. Slots never
    /// move: a provider keeps its index for as long as the process runs (a removed one is
    /// retired in place, a new one takes a new slot at the end, or its old slot back), so
    /// an index held by a request, an observation or the health task stays valid.
    pub fn reconcile(&self, configs: &[ProviderConfig]) -> (Upstreams, Vec<Change>) {
        let mut providers = self.providers.clone();
        let mut changes = Vec::new();
        for (index, p) in self.providers.iter().enumerate() {
            if !p.retired && !configs.iter().any(|c| c.id == p.config.id) {
                providers[index] = Arc::new(Provider::build(index, &p.config, self.epoch, true));
                changes.push(Change::Removed(index));
            }
        }
        for c in configs {
            let Some(index) = providers.iter().position(|p| p.config.id == c.id) else {
                let index = providers.len();
                providers.push(Arc::new(Provider::build(index, c, self.epoch, false)));
                changes.push(Change::Added(index));
                continue;
            };
            let old = &providers[index];
            let change = if old.retired {
                Change::Added(index)
            } else if old.config == *c {
                continue;
            } else if old.config.base_url == c.base_url && old.config.models == c.models {
                Change::Updated(index)
            } else {
                Change::Replaced(index)
            };
            providers[index] = Arc::new(Provider::build(index, c, self.epoch, false));
            changes.push(change);
        }
        (Upstreams::index(providers, configs, self.epoch), changes)
    }

    /// The model index over `providers`, in the order of `configs` (the file's order).
    fn index(
        providers: Vec<Arc<Provider>>,
        configs: &[ProviderConfig],
        epoch: Instant,
    ) -> Upstreams {
        let mut by_model: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for c in configs {
            if let Some(index) = providers.iter().position(|p| p.config.id == c.id) {
                for m in &c.models {
                    by_model.entry(m.clone()).or_default().push(index);
                }
            }
        }
        Upstreams {
            providers,
            by_model,
            epoch,
        }
    }

    /// The providers in service (not retired), with their indices.
    pub fn active(&self) -> impl Iterator<Item = (usize, &Arc<Provider>)> {
        self.providers
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.retired)
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

#[cfg(test)]
mod tests {
    use super::{Change, DecodeClock, Upstreams};
    use crate::config::{Config, ProviderConfig};

    fn providers(text: &str) -> Vec<ProviderConfig> {
        Config::parse(text, |_| Some("k".into())).unwrap().providers
    }

    fn block(id: &str, port: u16, models: &str, extra: &str) -> String {
        format!(
            "[[providers]]\nid = \"{id}\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodels = [{models}]\n{extra}\n"
        )
    }

    #[test]
    fn a_reconcile_keeps_every_slot_where_it_was() {
        let start = Upstreams::new(&providers(&format!(
            "{}{}{}",
            block("a", 1, "\"m\"", ""),
            block("b", 2, "\"m\"", ""),
            block("c", 3, "\"m\"", "")
        )));
        // `a` leaves, `b` gets a price (same server), `c` moves, `d` joins, listed first.
        let second = providers(&format!(
            "{}{}{}",
            block("d", 4, "\"m\"", ""),
            block("b", 2, "\"m\"", "price = { input_per_million = 1.0 }"),
            block("c", 9, "\"m\"", "")
        ));
        let (next, changes) = start.reconcile(&second);
        assert_eq!(
            changes,
            [
                Change::Removed(0),
                Change::Added(3),
                Change::Updated(1),
                Change::Replaced(2)
            ]
        );
        assert!(next.get(0).unwrap().retired);
        assert_eq!(next.get(3).unwrap().config.id, "d");
        assert_eq!(next.serving("m"), [3, 1, 2], "the file's order, by slot");
        assert_eq!(next.active().count(), 3);
        // Nothing changed: nothing to do, and the same objects stay.
        let (again, none) = next.reconcile(&second);
        assert!(none.is_empty());
        assert!(std::sync::Arc::ptr_eq(
            again.get(1).unwrap(),
            next.get(1).unwrap()
        ));
        // `a` comes back into its old slot, afresh; a model change is a new server too.
        let (back, changes) = again.reconcile(&providers(&format!(
            "{}{}",
            block("a", 1, "\"m\"", ""),
            block("d", 4, "\"m\", \"n\"", "")
        )));
        assert_eq!(
            changes,
            [
                Change::Removed(1),
                Change::Removed(2),
                Change::Added(0),
                Change::Replaced(3)
            ]
        );
        assert_eq!(back.serving("n"), [3]);
        assert_eq!(back.models().collect::<Vec<_>>(), ["m", "n"]);
    }

    #[test]
    fn decode_clock_counts_open_and_ended_stream_time() {
        let mut c = DecodeClock::default();
        assert_eq!(c.read(1_000), (0, 0));
        c.start(1_000);
        c.start(1_500);
        // Two open streams, 1,000 and 500 ms old.
        assert_eq!(c.read(2_000), (2, 1_500));
        c.end(1_000, 2_500);
        // The ended one keeps its 1,500 ms; the open one is 1,000 ms old.
        assert_eq!(c.read(2_500), (1, 2_500));
        c.end(1_500, 3_000);
        assert_eq!(c.read(9_000), (0, 3_000));
    }
}
