//! Backend scrapers: poll each provider's inference-server `/metrics` (and its DCGM
//! exporter) on an interval, read the engine's names into one `Reading`, turn counters into
//! rates, and hand the result to the health task. A failed scrape is reported as unknown;
//! the health task treats a reading older than `stale_after` as unknown too.

pub mod engines;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ScrapeConfig;
use crate::health::HealthHandle;
use crate::upstream::Provider;
pub use engines::Reading;

/// What the health model knows from a provider's own metrics, rates included.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Backend {
    /// The latest reading.
    #[serde(flatten)]
    pub reading: Reading,
    /// Preemptions per second since the previous scrape.
    pub preemptions_per_s: Option<f64>,
    /// Generated tokens per second since the previous scrape.
    pub generation_tokens_per_s: Option<f64>,
    /// Engine steps per second since the previous scrape.
    pub engine_steps_per_s: Option<f64>,
    /// Requests scheduled since the previous scrape that had waited longer than
    /// [`engines::LONG_WAIT_S`] for a slot.
    pub waited_long: Option<f64>,
    /// Names of the active throttle reasons.
    pub throttle: Vec<&'static str>,
}

impl Backend {
    /// Combines a reading with the previous one `dt` earlier.
    pub fn from_readings(cur: Reading, prev: Option<&Reading>, dt: Duration) -> Backend {
        let secs = dt.as_secs_f64();
        let rate = |c: Option<f64>, p: Option<f64>| match (c, p) {
            // A counter that went down was reset (server restart): no rate this time.
            (Some(c), Some(p)) if secs > 0.0 && c >= p => Some((c - p) / secs),
            _ => None,
        };
        let p = prev.copied().unwrap_or_default();
        Backend {
            preemptions_per_s: rate(cur.preemptions_total, p.preemptions_total),
            generation_tokens_per_s: rate(cur.generation_tokens_total, p.generation_tokens_total),
            engine_steps_per_s: rate(cur.engine_steps_total, p.engine_steps_total),
            waited_long: rate(cur.waited_long_total, p.waited_long_total).map(|r| r * secs),
            throttle: cur
                .throttle_reasons
                .map(engines::throttle_names)
                .unwrap_or_default(),
            reading: cur,
        }
    }

    /// The server reports requests waiting for a slot: first tokens and per-stream decode
    /// are the queue's and the batch's, not a fault's.
    pub fn queued(&self) -> bool {
        self.waiting_at_least(1.0)
    }

    /// Requests waited seconds for a slot since the previous scrape, by the server's own
    /// queue-time histogram: a queue formed even if it drained before this scrape.
    pub fn waited_long(&self) -> bool {
        self.waited_long.is_some_and(|n| n >= 1.0)
    }

    /// Two or more waiting: a queue has formed. One waiting may be a request the next step
    /// admits (a per-step token budget holds new prompts back a step at a time).
    pub fn queue_formed(&self) -> bool {
        self.waiting_at_least(2.0)
    }

    fn waiting_at_least(&self, n: f64) -> bool {
        self.reading.queue.is_some_and(|q| q >= n)
    }

    /// The server reports tokens being generated now: whatever waits at it, its engine runs.
    pub fn generating(&self) -> bool {
        self.generation_tokens_per_s.is_some_and(|g| g > 0.0)
    }

    /// Tokens the engine generates per second per running sequence, while it runs any:
    /// what each stream decodes at by the server's own count. When the batch happens to be
    /// empty at the scrape although the engine generated since the previous one, its steps
    /// per second stand in: each step gives every decoding stream one token.
    pub fn tokens_per_running(&self) -> Option<f64> {
        let generated = self.generation_tokens_per_s?;
        match self.reading.running.filter(|&r| r >= 1.0) {
            Some(run) => Some(generated / run),
            None if generated > 0.0 => self.engine_steps_per_s,
            None => None,
        }
    }

    /// The server reports nothing waiting and nothing running.
    pub fn idle(&self) -> bool {
        let r = &self.reading;
        r.queue == Some(0.0) && r.running == Some(0.0)
    }

    /// Work waiting and running, yet neither tokens nor engine steps advance: a stuck
    /// batch loop (reference §5.2).
    pub fn stuck(&self) -> bool {
        let r = &self.reading;
        r.queue.unwrap_or(0.0) > 0.0 && r.running.unwrap_or(0.0) > 0.0 && self.still()
    }

    /// Work waiting or running, yet neither tokens nor engine steps advance: the engine
    /// holds requests it does not serve (looser than [`Backend::stuck`]: a hang that began
    /// with nothing running keeps its requests waiting).
    pub fn holds_work_still(&self) -> bool {
        let r = &self.reading;
        (r.queue.unwrap_or(0.0) > 0.0 || r.running.unwrap_or(0.0) > 0.0) && self.still()
    }

    /// Neither tokens nor engine steps advanced since the previous scrape.
    fn still(&self) -> bool {
        let zero = |v: Option<f64>| v.is_some_and(|v| v == 0.0);
        zero(self.generation_tokens_per_s)
            && (self.engine_steps_per_s.is_none() || zero(self.engine_steps_per_s))
    }
}

pub mod dependency;

/// Largest metrics page read: a vLLM or DCGM page is tens of kilobytes; one past this is
/// not a metrics page, and is not buffered.
const MAX_PAGE: usize = 8 * 1024 * 1024;

/// Fetches one endpoint's text within `timeout` (the body included) and `MAX_PAGE` bytes.
async fn fetch(client: &reqwest::Client, url: &str, timeout: Duration) -> Option<String> {
    use futures_util::StreamExt;
    let resp = client.get(url).timeout(timeout).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut page = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.ok()?;
        if page.len() + chunk.len() > MAX_PAGE {
            tracing::warn!(
                bytes = page.len() + chunk.len(),
                "metrics page over 8 MiB; scrape dropped"
            );
            return None;
        }
        page.extend_from_slice(&chunk);
    }
    Some(String::from_utf8_lossy(&page).into_owned())
}

/// Polls `provider` until `stop`, reporting each result (or `None` for a failed scrape).
pub async fn run(
    provider: Arc<Provider>,
    client: reqwest::Client,
    cfg: ScrapeConfig,
    health: HealthHandle,
    stop: CancellationToken,
) {
    let urls: Vec<String> = [
        provider.config.metrics_url.clone(),
        provider.config.gpu_metrics_url.clone(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let health_url = provider.config.health_url.clone();
    if urls.is_empty() && health_url.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev: Option<(Reading, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Some(url) = &health_url {
            let ok = client
                .get(url)
                .timeout(cfg.timeout)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            health.health_endpoint(provider.index, ok);
        }
        if urls.is_empty() {
            continue;
        }
        let mut texts = Vec::with_capacity(urls.len());
        for url in &urls {
            texts.push(fetch(&client, url, cfg.timeout).await);
        }
        let now = Instant::now();
        // The inference server's metrics are required; the GPU exporter's are extra.
        let server_ok = provider.config.metrics_url.is_none() || texts[0].is_some();
        if !server_ok {
            health.backend(provider.index, None);
            prev = None;
            continue;
        }
        let lines: Vec<text::Line<'_>> = texts
            .iter()
            .flatten()
            .flat_map(|t| text::parse(t))
            .collect();
        let reading = engines::read(&lines);
        let backend = Backend::from_readings(
            reading,
            prev.as_ref().map(|(r, _)| r),
            prev.map_or(Duration::ZERO, |(_, t)| now.saturating_duration_since(t)),
        );
        health.backend(provider.index, Some(backend));
        prev = Some((reading, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_that_drained_between_scrapes_shows_in_the_queue_time_histogram() {
        let prev = Reading {
            queue: Some(0.0),
            waited_long_total: Some(70.0),
            ..Reading::default()
        };
        let waited = Reading {
            waited_long_total: Some(73.0),
            ..prev
        };
        let b = Backend::from_readings(waited, Some(&prev), Duration::from_secs(2));
        assert!(!b.queued() && b.waited_long());
        assert_eq!(b.waited_long, Some(3.0));
        let b = Backend::from_readings(prev, Some(&prev), Duration::from_secs(2));
        assert!(!b.waited_long(), "no new long wait since the last scrape");
    }

    #[test]
    fn counters_become_rates_and_a_stuck_loop_is_seen() {
        let prev = Reading {
            queue: Some(4.0),
            running: Some(8.0),
            generation_tokens_total: Some(1000.0),
            engine_steps_total: Some(50.0),
            ..Reading::default()
        };
        let moving = Reading {
            generation_tokens_total: Some(1500.0),
            engine_steps_total: Some(75.0),
            ..prev
        };
        let b = Backend::from_readings(moving, Some(&prev), Duration::from_secs(5));
        assert_eq!(b.generation_tokens_per_s, Some(100.0));
        assert_eq!(b.engine_steps_per_s, Some(5.0));
        assert!(!b.stuck());
        assert_eq!(b.tokens_per_running(), Some(12.5));
        // The batch emptied just before the scrape: the steps stand in for the streams.
        let drained = Reading {
            running: Some(0.0),
            ..moving
        };
        let b = Backend::from_readings(drained, Some(&prev), Duration::from_secs(5));
        assert_eq!(b.tokens_per_running(), Some(5.0));
        let b = Backend::from_readings(prev, Some(&prev), Duration::from_secs(5));
        assert!(b.stuck(), "queue and batch present, no tokens, no steps");
        assert_eq!(b.tokens_per_running(), Some(0.0));
        // First scrape: no rate, so not judged stuck.
        assert!(!Backend::from_readings(prev, None, Duration::ZERO).stuck());
        // A counter reset gives no rate rather than a negative one.
        let reset = Reading {
            generation_tokens_total: Some(10.0),
            ..prev
        };
        assert_eq!(
            Backend::from_readings(reset, Some(&prev), Duration::from_secs(5))
                .generation_tokens_per_s,
            None
        );
    }
}
