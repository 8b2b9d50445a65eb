//! A continuous-batching engine model: sequence slots, a KV cache measured in tokens, a
//! prefill rate, a decode step that grows with batch size, a per-step token budget, prefill
//! whole or in chunks, a waiting queue, and preemption with recompute when the KV cache is
//! full. Pure: `step` takes `now`.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::fault::Effects;

/// Engine parameters (part of a simulator profile).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Sequences decoded together at most (vLLM's `max_num_seqs`).
    pub slots: usize,
    /// KV-cache capacity in tokens.
    pub kv_capacity_tokens: u64,
    /// Prefill throughput, tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Decode step time with one sequence.
    #[serde(with = "humantime_serde")]
    pub decode_step: Duration,
    /// Extra step time per additional running sequence.
    #[serde(with = "humantime_serde")]
    pub decode_step_per_seq: Duration,
    /// Tokens one step processes at most, prefill and decode together (vLLM's
    /// `max_num_batched_tokens`). Without chunking, a prompt longer than this still runs, alone.
    pub max_batched_tokens: u32,
    /// Split long prompts across steps, decodes first (vLLM's chunked prefill, its default
    /// scheduling); off, a step prefills whole prompts and every running stream waits for it.
    pub chunked_prefill: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            slots: 32,
            kv_capacity_tokens: 262_144,
            prefill_tokens_per_s: 20_000.0,
            decode_step: Duration::from_millis(12),
            decode_step_per_seq: Duration::from_micros(400),
            max_batched_tokens: 16_384,
            chunked_prefill: false,
        }
    }
}

impl EngineConfig {
    /// Step time for a batch of `n` sequences at normal speed.
    pub fn step_time(&self, n: usize) -> Duration {
        self.decode_step + self.decode_step_per_seq * (n.saturating_sub(1) as u32)
    }
}

/// What the engine tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One generated token.
    Token(String),
    /// Generation ended.
    Done {
        /// `stop` or `length`.
        finish: &'static str,
    },
}

/// A request handed to the engine.
#[derive(Debug)]
pub struct Job {
    /// Prompt tokens to prefill.
    pub prompt_tokens: u32,
    /// The tokens it will generate.
    pub output: Vec<String>,
    /// Finish reason when done.
    pub finish: &'static str,
    /// Where tokens go; a closed receiver cancels the sequence.
    pub tx: mpsc::UnboundedSender<Event>,
}

#[derive(Debug)]
struct Seq {
    job: Job,
    generated: usize,
    kv: u64,
    /// Prompt (and recompute) tokens still to prefill before it decodes.
    prefill_left: u64,
    arrived: Instant,
    last_token: Option<Instant>,
    /// Admitted to the batch once (a preempted sequence waits again, uncounted, as in vLLM).
    scheduled: bool,
}

/// Counters and gauges the `/metrics` endpoint shows, with vLLM's meanings.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// `vllm:num_preemptions_total`.
    pub preemptions: u64,
    /// `vllm:prompt_tokens_total` (prefill work, recompute included).
    pub prompt_tokens: u64,
    /// `vllm:generation_tokens_total`.
    pub generation_tokens: u64,
    /// `vllm:request_success_total` by finish reason (stop, length).
    pub success_stop: u64,
    /// See `success_stop`.
    pub success_length: u64,
    /// Engine steps (`vllm:iteration_tokens_total_count`).
    pub steps: u64,
    /// Tokens per step, summed (`vllm:iteration_tokens_total_sum`).
    pub step_tokens: u64,
    /// Iteration-token histogram counts for the buckets in `ITER_BUCKETS`.
    pub iter_buckets: Vec<u64>,
    /// TTFT histogram counts (`TTFT_BUCKETS`) and sum.
    pub ttft: (Vec<u64>, f64, u64),
    /// Inter-token latency histogram counts (`ITL_BUCKETS`) and sum.
    pub itl: (Vec<u64>, f64, u64),
    /// Time from arrival to first admission to the batch
    /// (`vllm:request_queue_time_seconds`, `REQUEST_BUCKETS`) and sum.
    pub queue_time: (Vec<u64>, f64, u64),
}

/// vLLM's iteration-token buckets (a subset).
pub const ITER_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];
/// vLLM's TTFT buckets (a subset).
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's request-latency buckets (its queue, prefill and end-to-end time histograms).
pub const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// vLLM's inter-token latency buckets (a subset).
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];

fn observe(h: &mut (Vec<u64>, f64, u64), bounds: &[f64], v: f64) {
    if h.0.len() != bounds.len() {
        h.0 = vec![0; bounds.len()];
    }
    if let Some(i) = bounds.iter().position(|&b| v <= b) {
        h.0[i] += 1;
    }
    h.1 += v;
    h.2 += 1;
}

/// The engine's state.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    kv_used: u64,
    /// Tokens produced by the step in progress, delivered when it ends.
    pending: Vec<(usize, Event)>,
    stats: Stats,
}

impl Engine {
    /// An idle engine.
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            kv_used: 0,
            pending: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Queues a request.
    pub fn submit(&mut self, job: Job, now: Instant) {
        self.waiting.push_back(Seq {
            job,
            generated: 0,
            kv: 0,
            prefill_left: 0,
            arrived: now,
            last_token: None,
            scheduled: false,
        });
    }

    /// Sequences in the batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Sequences waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// KV-cache use as a fraction of the (possibly shrunk) capacity.
    pub fn kv_usage(&self, effects: &Effects) -> f64 {
        self.kv_used as f64 / self.capacity(effects).max(1) as f64
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn capacity(&self, effects: &Effects) -> u64 {
        (self.config.kv_capacity_tokens as f64 * effects.kv) as u64
    }

    /// Plans one engine step at `now`: admits, prefills, decodes one token per sequence,
    /// preempts on KV overflow. Returns how long the step takes; call [`Engine::finish_step`]
    /// when that time has passed. `None` when there is nothing to do or the engine is stuck.
    pub fn step(&mut self, effects: &Effects, now: Instant) -> Option<Duration> {
        if effects.deadlock {
            return None;
        }
        self.running.retain(|s| !s.job.tx.is_closed());
        self.waiting.retain(|s| !s.job.tx.is_closed());
        self.kv_used = self.running.iter().map(|s| s.kv).sum();
        let capacity = self.capacity(effects);
        let prefill = self.schedule_prefill(capacity, now);
        if self.running.is_empty() {
            return None;
        }
        // Each decoding sequence needs one more KV slot for its next token; evict the newest
        // until they fit (vLLM's recompute preemption).
        while self.kv_used + self.decoding() as u64 > capacity && self.running.len() > 1 {
            let Some(seq) = self.running.pop() else { break };
            self.kv_used -= seq.kv;
            self.stats.preemptions += 1;
            self.waiting.push_front(Seq {
                kv: 0,
                prefill_left: 0,
                ..seq
            });
        }
        self.stats.prompt_tokens += prefill;
        let batch = self.decoding();
        for (i, seq) in self.running.iter_mut().enumerate() {
            if seq.prefill_left > 0 {
                continue;
            }
            if let Some(tok) = seq.job.output.get(seq.generated) {
                self.pending.push((i, Event::Token(tok.clone())));
            }
            seq.generated += 1;
            seq.kv += 1;
        }
        self.kv_used += batch as u64;
        let step_tokens = prefill + batch as u64;
        self.stats.steps += 1;
        self.stats.step_tokens += step_tokens;
        if self.stats.iter_buckets.len() != ITER_BUCKETS.len() {
            self.stats.iter_buckets = vec![0; ITER_BUCKETS.len()];
        }
        if let Some(i) = ITER_BUCKETS.iter().position(|&b| step_tokens as f64 <= b) {
            self.stats.iter_buckets[i] += 1;
        }
        let base = self.config.step_time(batch).as_secs_f64()
            + prefill as f64 / self.config.prefill_tokens_per_s.max(1.0);
        Some(Duration::from_secs_f64(base / effects.speed.max(0.01)))
    }

    /// Sequences that decode this step (their prompt is in).
    fn decoding(&self) -> usize {
        self.running.iter().filter(|s| s.prefill_left == 0).count()
    }

    /// Spends the step's token budget: decodes first, then (chunked) the prompts part-way in,
    /// then admits waiting sequences while there are slots, KV room for the whole prompt (plus
    /// what a preempted sequence had generated: recompute) and budget. Unchunked, a prompt is
    /// prefilled whole in one step, and one longer than the budget is the step's only prefill.
    /// Returns the prefill tokens of this step.
    fn schedule_prefill(&mut self, capacity: u64, now: Instant) -> u64 {
        let chunked = self.config.chunked_prefill;
        let mut budget =
            u64::from(self.config.max_batched_tokens).saturating_sub(self.decoding() as u64);
        let mut prefill = 0u64;
        for seq in self.running.iter_mut().filter(|s| s.prefill_left > 0) {
            let chunk = seq.prefill_left.min(budget);
            seq.prefill_left -= chunk;
            prefill += chunk;
            budget -= chunk;
        }
        while self.running.len() < self.config.slots {
            let Some(seq) = self.waiting.front() else {
                break;
            };
            let need = u64::from(seq.job.prompt_tokens) + seq.generated as u64;
            if self.kv_used + need + 1 > capacity && !self.running.is_empty() {
                break;
            }
            let chunk = if chunked {
                need.min(budget)
            } else if need <= budget || prefill == 0 {
                need
            } else {
                0
            };
            if chunk == 0 {
                break;
            }
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            if !seq.scheduled {
                seq.scheduled = true;
                let waited = now.saturating_duration_since(seq.arrived).as_secs_f64();
                observe(&mut self.stats.queue_time, REQUEST_BUCKETS, waited);
            }
            seq.kv = need;
            seq.prefill_left = need - chunk;
            self.kv_used += need;
            prefill += chunk;
            budget = budget.saturating_sub(chunk);
            self.running.push(seq);
        }
        prefill
    }

    /// Delivers the tokens of the step that just ended at `now` and retires finished sequences.
    pub fn finish_step(&mut self, now: Instant) {
        for (i, event) in self.pending.drain(..) {
            let Some(seq) = self.running.get_mut(i) else {
                continue;
            };
            let gap = match seq.last_token {
                None => {
                    observe(
                        &mut self.stats.ttft,
                        TTFT_BUCKETS,
                        now.saturating_duration_since(seq.arrived).as_secs_f64(),
                    );
                    None
                }
                Some(prev) => Some(now.saturating_duration_since(prev).as_secs_f64()),
            };
            if let Some(g) = gap {
                observe(&mut self.stats.itl, ITL_BUCKETS, g);
            }
            seq.last_token = Some(now);
            self.stats.generation_tokens += 1;
            let _ = seq.job.tx.send(event);
        }
        let mut i = 0;
        while i < self.running.len() {
            let seq = &self.running[i];
            if seq.generated >= seq.job.output.len() {
                let seq = self.running.swap_remove(i);
                self.kv_used = self.kv_used.saturating_sub(seq.kv);
                if seq.job.finish == "length" {
                    self.stats.success_length += 1;
                } else {
                    self.stats.success_stop += 1;
                }
                let _ = seq.job.tx.send(Event::Done {
                    finish: seq.job.finish,
                });
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
