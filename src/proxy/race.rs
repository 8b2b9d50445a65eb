//! The attempts of one request: follow the plan, retry before the first byte within the
//! retry budget (with backoff and jitter, honouring `retry-after`), hedge a slow first
//! token with one duplicate (first token wins, the other is cancelled), respect the
//! client's deadline, then commit the winner.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::attempt::{self, Answer, AttemptRequest, CONTEXT_EXCEEDED, CallError};
use super::body::{self, RequestHead};
use super::track::{RequestTrack, Slot};
use super::{AttemptFailure, ClientRequest, Error, Gateway, MeteredStream, Reply};
use crate::config::{HedgeDelay, Policy};
use crate::health::snapshot::Snapshot;
use crate::observation::{Blame, Observation, Operation, Outcome};
use crate::route::Plan;
use crate::upstream::Provider;

/// Envoy's header for the time the caller still allows (reference §7.1).
const EXPECTED_TIMEOUT: &str = "x-envoy-expected-rq-timeout-ms";
/// Shortest hedge delay.
const MIN_HEDGE_DELAY: Duration = Duration::from_millis(10);

/// What every attempt of the request shares.
#[derive(Debug)]
pub(super) struct Ctx<'a> {
    pub(super) gw: &'a Arc<Gateway>,
    pub(super) req: &'a ClientRequest,
    pub(super) head: &'a RequestHead,
    /// The health snapshot the plan was made from.
    pub(super) snapshot: &'a Snapshot,
    pub(super) route: Arc<str>,
    /// The request's trace, when tracing is on.
    pub(super) trace: Option<crate::otel::RequestTrace>,
}

/// How one step (an attempt, or a hedged pair) ended.
enum Step {
    /// An attempt answered: commit it.
    Won(usize, usize, Answer),
    /// Every attempt of the step failed: (slot, provider, error).
    Failed(Vec<(usize, usize, CallError)>),
}

/// Runs the plan to a committed reply or an error.
pub(super) async fn run(
    ctx: &Ctx<'_>,
    plan: &Plan,
    mut track: RequestTrack,
) -> Result<Reply, Error> {
    let gw = ctx.gw;
    let mut failures = Vec::new();
    let mut all_timed_out = true;
    let mut too_long: Option<(CallError, usize)> = None;
    let mut tried: Vec<usize> = Vec::new();
    let mut made = 0u32;
    for (pos, &index) in plan.order.iter().enumerate() {
        if tried.contains(&index) {
            continue;
        }
        if made > 0 {
            if !gw.retry_budget.try_withdraw(gw.ms_now()) {
                failures.push(note(
                    "retry_budget",
                    "the retry budget is spent; not retrying",
                ));
                all_timed_out = false;
                break;
            }
            backoff(ctx, made).await;
        }
        if ctx.req.deadline.is_some_and(|d| d <= Instant::now()) {
            failures.push(note("deadline", "the client's deadline passed"));
            break;
        }
        let Some(provider) = gw.provider(index) else {
            continue;
        };
        // A recovering provider gets one probe at a time: if another request took the
        // probe slot meanwhile, this one goes elsewhere.
        let probe = plan.probe == Some(index);
        if probe && (made > 0 || !provider.claim_probe()) {
            continue;
        }
        made += 1;
        tried.push(index);
        let mut obs = observation(ctx, index);
        obs.probe = probe;
        let a = track.open(obs, &provider);
        let hedge = if probe {
            None
        } else {
            hedge_target(ctx, index, &plan.order[pos + 1..], &tried)
        };
        let step = match hedge {
            None => match track.slot_mut(a) {
                Some(slot) => match attempt_on(ctx, slot, &provider, probe).await {
                    Ok(answer) => Step::Won(a, index, answer),
                    Err(e) => Step::Failed(vec![(a, index, e)]),
                },
                None => Step::Failed(Vec::new()),
            },
            Some((h, delay)) => {
                let mut hobs = observation(ctx, h);
                hobs.hedge = true;
                let b = track.reserve(hobs);
                let (step, fired) = race(ctx, &mut track, (a, index), (b, h), delay).await;
                if fired {
                    tried.push(h);
                }
                step
            }
        };
        match step {
            Step::Won(slot, index, answer) => return Ok(commit(ctx, track, slot, index, answer)),
            Step::Failed(errors) => {
                for (slot, index, err) in errors {
                    if let Some(s) = track.slot_mut(slot) {
                        s.obs.e2e = Instant::now().saturating_duration_since(s.obs.started);
                        s.obs.outcome = err.outcome();
                    }
                    track.close(slot);
                    if let (Some(wait), Some(p)) = (err.retry_after, gw.provider(index)) {
                        gw.health.retry_after(p.index, wait);
                    }
                    if !err.retryable {
                        return Ok(passthrough(ctx, track, err, index));
                    }
                    if err.kind == CONTEXT_EXCEEDED {
                        too_long = Some((err.clone(), index));
                    }
                    all_timed_out &= err.is_timeout();
                    failures.push(AttemptFailure {
                        provider: gw
                            .upstreams()
                            .get(index)
                            .map_or_else(String::new, |p| p.config.id.clone()),
                        kind: err.kind,
                        status: err.status,
                        message: err.message.clone(),
                    });
                }
            }
        }
    }
    // Every provider tried refused the prompt as longer than its context window: that is the
    // client's answer (a 400 in the provider's words), not a gateway failure.
    if let Some((err, index)) = too_long
        && failures.iter().all(|f| f.kind == CONTEXT_EXCEEDED)
    {
        return Ok(passthrough(ctx, track, err, index));
    }
    let err = Error::AllFailed {
        attempts: failures,
        timed_out: all_timed_out,
    };
    let status = if all_timed_out { 504 } else { 502 };
    track.finish(status, Some(("all_attempts_failed", err.to_string())));
    Err(err)
}

fn note(kind: &'static str, message: &str) -> AttemptFailure {
    AttemptFailure {
        provider: String::new(),
        kind,
        status: None,
        message: message.into(),
    }
}

/// A blank observation for an attempt on provider `index`.
fn observation(ctx: &Ctx<'_>, index: usize) -> Observation {
    let id = ctx
        .gw
        .upstreams()
        .get(index)
        .map_or_else(|| Arc::from(""), |p| Arc::clone(&p.id));
    Observation::start(
        index,
        id,
        Arc::from(ctx.head.model.as_str()),
        ctx.req.operation,
        ctx.req.source,
        ctx.head.stream,
        Instant::now(),
    )
}

/// Full-jitter exponential backoff before retry number `n`, never past the deadline.
async fn backoff(ctx: &Ctx<'_>, n: u32) {
    let r = &ctx.gw.config.routing;
    let cap = r
        .backoff_base
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(r.backoff_max);
    let wait = cap.mul_f64(ctx.gw.dice.unit());
    let until = Instant::now() + wait;
    let until = ctx.req.deadline.map_or(until, |d| until.min(d));
    tokio::time::sleep_until(until).await;
}

/// The provider to hedge with, and after how long: the next untried candidate, when the
/// model is hedged.
fn hedge_target(
    ctx: &Ctx<'_>,
    primary: usize,
    rest: &[usize],
    tried: &[usize],
) -> Option<(usize, Duration)> {
    let hedge = ctx.gw.config.routing.hedge.get(&ctx.head.model)?;
    let next = *rest.iter().find(|i| !tried.contains(i))?;
    let delay = match hedge.delay {
        HedgeDelay::Fixed(d) => d,
        HedgeDelay::P95 => ctx
            .snapshot
            .providers
            .get(primary)
            .and_then(|v| v.ttft_p95)
            .map_or(ctx.gw.config.targets.ttft, Duration::from_secs_f64),
    };
    Some((next, delay.max(MIN_HEDGE_DELAY)))
}

/// One attempt on `provider` into `slot`, within the deadline, which is forwarded.
async fn attempt_on(
    ctx: &Ctx<'_>,
    slot: &mut Slot,
    provider: &Arc<Provider>,
    probe: bool,
) -> Result<Answer, CallError> {
    let gw = ctx.gw;
    let mut timeouts = gw.config.timeouts;
    if probe {
        // A probe must not cost its client a full TTFT timeout.
        timeouts.ttft = timeouts.ttft.min(gw.config.targets.ttft);
    }
    let mut forward = HeaderMap::new();
    // The trace goes on with this attempt's span as the provider's parent; with tracing
    // off, the client's own `traceparent` is passed through unchanged.
    let traceparent = match &ctx.trace {
        Some(t) => t.header_for(slot.span_id),
        None => ctx.req.traceparent.clone(),
    };
    if let Some(tp) = traceparent {
        forward.insert(HeaderName::from_static("traceparent"), tp);
    }
    if let Some(deadline) = ctx.req.deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        timeouts.ttft = timeouts.ttft.min(left);
        timeouts.total = timeouts.total.min(left);
        if let Ok(v) = HeaderValue::from_str(&left.as_millis().to_string()) {
            forward.insert(HeaderName::from_static(EXPECTED_TIMEOUT), v);
        }
    }
    let request = AttemptRequest {
        client: &gw.client,
        provider,
        url: format!("{}{}", provider.config.base_url, ctx.req.operation.path()),
        body: body::upstream_body(
            &ctx.req.body,
            ctx.head,
            provider.config.upstream_model(&ctx.head.model),
        ),
        stream: ctx.head.stream,
        forward,
        timeouts,
        ask: (ctx.req.operation != Operation::Embeddings).then(|| ctx.head.ask()),
        max_event: gw.config.server.connections.max_sse_event_bytes,
    };
    let result = if gw.config.routing.policy == Policy::Candor {
        // Candor's policy: if the health model ejects this provider while the attempt still
        // waits for its first token, give up now and fail over instead of waiting out the
        // timeout.
        let abandoned = provider.abandoned();
        tokio::select! {
            r = attempt::run(request, &mut slot.obs) => r,
            () = abandoned => Err(CallError {
                kind: crate::observation::ABANDONED,
                status: None,
                blame: Blame::Upstream,
                retryable: true,
                message: "the provider was ejected while this attempt waited for its first token".into(),
                body: None,
                retry_after: None,
            }),
        }
    } else {
        attempt::run(request, &mut slot.obs).await
    };
    result.map_err(|e| e.blame_deadline(ctx.req.deadline, Instant::now()))
}

/// Races the attempt in slot `a` against a hedge in slot `b` sent after `delay` (if the
/// hedge budget allows): the first to answer wins and the other is cancelled. When the
/// first attempt fails before the hedge went out, the hedge is not sent (the caller fails
/// over instead). Also says whether the hedge went out.
async fn race(
    ctx: &Ctx<'_>,
    track: &mut RequestTrack,
    (a, pa): (usize, usize),
    (b, pb): (usize, usize),
    delay: Duration,
) -> (Step, bool) {
    let gw = ctx.gw;
    let (Some(prov_a), Some(prov_b)) = (gw.provider(pa), gw.provider(pb)) else {
        return (Step::Failed(Vec::new()), false);
    };
    let fired = AtomicBool::new(false);
    let end = {
        let Some((slot_a, slot_b)) = track.pair_mut(a, b) else {
            return (Step::Failed(Vec::new()), false);
        };
        let first = attempt_on(ctx, slot_a, &prov_a, false);
        let hedge = async {
            tokio::time::sleep(delay).await;
            let allowed = gw
                .hedge_budgets
                .get(&ctx.head.model)
                .is_some_and(|budget| budget.try_withdraw(gw.ms_now()));
            if !allowed {
                return std::future::pending().await;
            }
            slot_b.launch(&prov_b);
            fired.store(true, Ordering::Relaxed);
            attempt_on(ctx, slot_b, &prov_b, false).await
        };
        race_pair(first, hedge, &fired).await
    };
    let now = Instant::now();
    let cancel = |track: &mut RequestTrack, slot: usize| {
        if let Some(s) = track.slot_mut(slot)
            && s.launched()
        {
            s.obs.e2e = now.saturating_duration_since(s.obs.started);
            s.obs.outcome = Outcome::Cancelled;
        }
        track.close(slot);
    };
    let step = match end {
        PairEnd::First(Ok(answer)) => {
            cancel(track, b);
            Step::Won(a, pa, answer)
        }
        PairEnd::Second(Ok(answer)) => {
            cancel(track, a);
            Step::Won(b, pb, answer)
        }
        PairEnd::First(Err(e)) => {
            cancel(track, b);
            Step::Failed(vec![(a, pa, e)])
        }
        PairEnd::Second(Err(e)) => {
            cancel(track, a);
            Step::Failed(vec![(b, pb, e)])
        }
        PairEnd::Both(ea, eb) => Step::Failed(vec![(a, pa, ea), (b, pb, eb)]),
    };
    (step, fired.load(Ordering::Relaxed))
}

/// How a hedged pair ended.
#[derive(Debug)]
pub(crate) enum PairEnd<T, E> {
    /// The first attempt decided it (an answer, a fatal error, or an error before the
    /// hedge went out).
    First(Result<T, E>),
    /// The hedge decided it.
    Second(Result<T, E>),
    /// Both failed.
    Both(E, E),
}

/// Awaits the first of two attempts to answer. A failure of one keeps waiting for the
/// other, except that a failure before the hedge was sent (`fired` false) or a failure the
/// client caused (not retryable) ends the race at once.
pub(crate) async fn race_pair<T, F1, F2>(
    first: F1,
    second: F2,
    fired: &AtomicBool,
) -> PairEnd<T, CallError>
where
    F1: Future<Output = Result<T, CallError>>,
    F2: Future<Output = Result<T, CallError>>,
{
    tokio::pin!(first, second);
    let mut first_err: Option<CallError> = None;
    let mut second_err: Option<CallError> = None;
    loop {
        tokio::select! {
            r = &mut first, if first_err.is_none() => match r {
                Ok(t) => return PairEnd::First(Ok(t)),
                Err(e) if !e.retryable || !fired.load(Ordering::Relaxed) => {
                    return PairEnd::First(Err(e));
                }
                Err(e) => match second_err.take() {
                    Some(se) => return PairEnd::Both(e, se),
                    None => first_err = Some(e),
                },
            },
            r = &mut second, if second_err.is_none() => match r {
                Ok(t) => return PairEnd::Second(Ok(t)),
                Err(e) if !e.retryable => return PairEnd::Second(Err(e)),
                Err(e) => match first_err.take() {
                    Some(fe) => return PairEnd::Both(fe, e),
                    None => second_err = Some(e),
                },
            },
        }
    }
}

/// Commits the winning attempt to the client.
fn commit(
    ctx: &Ctx<'_>,
    mut track: RequestTrack,
    slot: usize,
    index: usize,
    answer: Answer,
) -> Reply {
    let gw = ctx.gw;
    let Some(provider) = gw.provider(index) else {
        track.finish(502, Some(("internal", "provider vanished".into())));
        return Reply::Complete {
            status: StatusCode::BAD_GATEWAY,
            content_type: None,
            body: bytes::Bytes::new(),
            provider: Arc::from(""),
            route: Arc::clone(&ctx.route),
        };
    };
    match answer {
        Answer::Complete {
            status,
            content_type,
            body,
        } => {
            provider.progress(Instant::now(), 0);
            track.finish(status.as_u16(), None);
            Reply::Complete {
                status,
                content_type,
                body,
                provider: Arc::clone(&provider.id),
                route: Arc::clone(&ctx.route),
            }
        }
        Answer::Stream(open) => {
            let status = open.status;
            track.commit(slot);
            let id = Arc::clone(&provider.id);
            let stream = MeteredStream::new(
                *open,
                track,
                ctx.head.needs_usage_injection(),
                gw.config.timeouts.idle,
                provider,
            );
            Reply::Stream {
                status,
                provider: id,
                route: Arc::clone(&ctx.route),
                stream: Box::new(stream),
            }
        }
    }
}

/// The upstream's own answer to a request the client got wrong, passed through unchanged.
fn passthrough(ctx: &Ctx<'_>, mut track: RequestTrack, err: CallError, index: usize) -> Reply {
    let status = err
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    track.finish(status.as_u16(), Some((err.kind, err.message.clone())));
    let (body, content_type) = err.body.unwrap_or_default();
    Reply::Complete {
        status,
        content_type,
        body,
        provider: ctx
            .gw
            .upstreams()
            .get(index)
            .map_or_else(|| Arc::from(""), |p| Arc::clone(&p.id)),
        route: Arc::clone(&ctx.route),
    }
}

#[cfg(test)]
mod tests;
