//! The configured providers at run time, which models each serves, and the pooled HTTP
//! client every attempt goes out on (with connect-time measurement).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ProviderConfig, Timeouts};

/// One provider at run time: its configuration and live counters.
#[derive(Debug)]
pub struct Provider {
    /// Shared id, cheap to clone into observations.
    pub id: Arc<str>,
    /// What the configuration says.
    pub config: ProviderConfig,
    in_flight: AtomicI64,
}

impl Provider {
    /// Attempts currently open against this provider.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts an attempt as open until the guard drops.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// Holds one in-flight count on a provider; releases it on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Provider>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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
        let providers = configs
            .iter()
            .enumerate()
            .map(|(index, c)| {
                for m in &c.models {
                    by_model.entry(m.clone()).or_default().push(index);
                }
                Arc::new(Provider {
                    id: Arc::from(c.id.as_str()),
                    config: c.clone(),
                    in_flight: AtomicI64::new(0),
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
