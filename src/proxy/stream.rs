//! The committed stream: forwards upstream SSE events to the client as they arrive, meters
//! each one, enforces the idle and total timeouts, and finishes the request exactly once —
//! at the end, on an upstream failure, or when the client drops it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use futures_util::stream::BoxStream;
use tokio::time::{Instant, Sleep, sleep_until};

use super::attempt::{CallError, OpenStream, too_large, transport_error};
use super::meter::{DataKind, Meter};
use super::sse::{SseSplitter, event_data, null_usage_span};
use super::track::{CLIENT_CLOSED, RequestTrack};
use crate::observation::Outcome;
use crate::upstream::{Decoding, Provider};

/// A metered SSE stream on its way to the client.
pub struct MeteredStream {
    rest: BoxStream<'static, reqwest::Result<Bytes>>,
    splitter: SseSplitter,
    /// Bytes ready for the client: every event available now goes out in one write.
    out: BytesMut,
    meter: Option<Meter>,
    track: RequestTrack,
    strip_usage: bool,
    idle: Duration,
    /// Fires at the earliest moment the stream could have been idle for `idle`; moved on
    /// lazily when it fires, not on every chunk (a timer-wheel update per chunk costs more
    /// than the metering).
    idle_timer: Pin<Box<Sleep>>,
    /// When the last bytes came from the upstream.
    last_data: Instant,
    total_deadline: Instant,
    total_timer: Pin<Box<Sleep>>,
    ended: bool,
    provider: std::sync::Arc<Provider>,
    /// Counts this stream as decoding on its provider while it runs.
    decoding: Option<Decoding>,
    /// Token chunks already reported to the provider's live counters.
    reported: u64,
}

impl std::fmt::Debug for MeteredStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStream")
            .field("request_id", &self.track.request_id())
            .finish_non_exhaustive()
    }
}

impl MeteredStream {
    /// Commits `open` to the client. `strip_usage` hides the usage Candor asked for.
    pub fn new(
        open: OpenStream,
        track: RequestTrack,
        strip_usage: bool,
        idle: Duration,
        provider: std::sync::Arc<Provider>,
    ) -> MeteredStream {
        let total_deadline = open.deadline;
        let decoding = Some(provider.decoding());
        let now = Instant::now();
        provider.progress(now, 0);
        // Decoding is counted from the first token: the tokens before it are not decode.
        let reported = open.meter.token_chunks();
        let mut s = MeteredStream {
            rest: open.rest,
            splitter: open.splitter,
            out: BytesMut::new(),
            meter: Some(open.meter),
            track,
            strip_usage,
            idle,
            idle_timer: Box::pin(sleep_until(now + idle)),
            last_data: now,
            total_deadline,
            total_timer: Box::pin(sleep_until(total_deadline)),
            ended: false,
            provider,
            decoding,
            reported,
        };
        for (event, kind) in open.first_events {
            // The meter has already seen these; only the client-facing edits remain.
            s.push_client_view(&event, kind);
        }
        // Events that arrived in the same read as the first token.
        s.drain_events(Instant::now());
        if s.meter.as_ref().is_some_and(Meter::saw_done)
            && let Some(ev) = s.upstream_ended()
        {
            s.out.extend_from_slice(&ev);
        }
        s
    }

    /// Meters every complete event buffered, received at `now`, and queues the client's view;
    /// an event over the limit ends the stream as the upstream's failure.
    fn drain_events(&mut self, now: Instant) {
        loop {
            match self.splitter.next_event() {
                Ok(Some(event)) => self.take_event(&event, now),
                Ok(None) => break,
                Err(e) => {
                    let err = too_large(e);
                    self.fail(err.kind, err.message);
                    break;
                }
            }
        }
        if let Some(m) = &self.meter {
            let n = m.token_chunks();
            if n > self.reported {
                self.provider.progress(now, n - self.reported);
                self.reported = n;
            }
        }
    }

    /// Meters an event that arrived at `now`, then queues what the client should receive.
    fn take_event(&mut self, event: &[u8], now: Instant) {
        let kind = match (event_data(event), self.meter.as_mut()) {
            (Some(data), Some(meter)) => meter.on_data(now, &data),
            _ => DataKind::Other,
        };
        self.push_client_view(event, kind);
    }

    /// Queues what the client should receive for an event of `kind`: the event as it came,
    /// or nothing (the usage chunk Candor asked for), or the event without the
    /// `"usage":null` member that asking added. Written straight into the outgoing buffer.
    fn push_client_view(&mut self, event: &[u8], kind: DataKind) {
        if self.strip_usage {
            match kind {
                DataKind::UsageOnly => return,
                DataKind::Other => {
                    if let Some((from, to)) = null_usage_span(event) {
                        self.out.extend_from_slice(&event[..from]);
                        self.out.extend_from_slice(&event[to..]);
                        return;
                    }
                }
                DataKind::Done | DataKind::Error => {}
            }
        }
        self.out.extend_from_slice(event);
    }

    /// Finishes the attempt and the request; returns an error event for the client when
    /// the stream broke.
    fn end(&mut self, failure: Option<(&'static str, String)>) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        self.ended = true;
        self.decoding = None;
        let now = Instant::now();
        let mut failure = failure;
        let mut upstream_reported = false;
        let deadline = self.track.client_deadline();
        if let (Some(meter), Some(obs)) = (self.meter.take(), self.track.current_mut()) {
            // An error event from the upstream is the failure's best description.
            if let Some(message) = meter.stream_error() {
                upstream_reported = true;
                failure = Some(("stream_error", message.to_owned()));
            }
            meter.finish(now, obs);
            obs.outcome = match &failure {
                // A stream cut because the client's deadline ran out is not the provider's
                // failure: the same rule as for attempts.
                Some((kind, message)) => CallError::upstream(kind, message.clone())
                    .blame_deadline(deadline, now)
                    .outcome(),
                None => Outcome::Ok,
            };
        }
        match failure {
            None => {
                self.track.finish(200, None);
                None
            }
            Some((kind, message)) => {
                // When the upstream already sent its own error event, the client has it.
                let event = (!upstream_reported).then(|| error_event(&message, kind));
                self.track.finish(200, Some((kind, message)));
                event
            }
        }
    }

    /// Ends the stream as failed and queues the client's error event, if it is owed one.
    fn fail(&mut self, kind: &'static str, message: String) {
        if let Some(ev) = self.end(Some((kind, message))) {
            self.out.extend_from_slice(&ev);
        }
    }

    fn upstream_ended(&mut self) -> Option<Bytes> {
        self.drain_events(Instant::now());
        if let Some(tail) = self.splitter.last_event() {
            self.take_event(&tail, Instant::now());
        }
        let complete = self
            .meter
            .as_ref()
            .is_some_and(|m| m.saw_done() || m.saw_finish());
        if complete {
            self.end(None)
        } else {
            self.end(Some((
                "truncated",
                "upstream ended the stream without a finish reason".into(),
            )))
        }
    }
}

/// An OpenAI-style error event, the way OpenAI reports a failure inside a stream.
fn error_event(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": "upstream_error",
            "param": null,
            "code": code,
        }
    });
    Bytes::from(format!("data: {body}\n\n"))
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(this.out.split().freeze())));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.rest.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    let now = Instant::now();
                    this.splitter.push(&bytes);
                    this.drain_events(now);
                    if this.meter.as_ref().is_some_and(Meter::saw_done) {
                        // `[DONE]` ends the stream even if the upstream keeps the body open.
                        if let Some(ev) = this.upstream_ended() {
                            this.out.extend_from_slice(&ev);
                        }
                        continue;
                    }
                    this.last_data = now;
                }
                Poll::Ready(Some(Err(e))) => {
                    let err = transport_error(&e);
                    this.fail("reset", err.message);
                }
                Poll::Ready(None) => {
                    if let Some(ev) = this.upstream_ended() {
                        this.out.extend_from_slice(&ev);
                    }
                }
                Poll::Pending => {
                    if this.total_timer.as_mut().poll(cx).is_ready() {
                        let msg = "stream exceeded the total time limit".to_owned();
                        this.fail("timeout_total", msg);
                        continue;
                    }
                    if this.idle_timer.as_mut().poll(cx).is_ready() {
                        let due = (this.last_data + this.idle).min(this.total_deadline);
                        if due > Instant::now() {
                            // Data came since the timer was set: wait out the rest.
                            this.idle_timer.as_mut().reset(due);
                            continue;
                        }
                        let msg = format!(
                            "no token from upstream for {}",
                            humantime::format_duration(this.idle)
                        );
                        this.fail("timeout_idle", msg);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // The client went away mid-stream; dropping `rest` closes the upstream connection.
        self.ended = true;
        if let (Some(meter), Some(obs)) = (self.meter.take(), self.track.current_mut()) {
            meter.finish(Instant::now(), obs);
            obs.outcome = Outcome::ClientCancelled;
        }
        self.track.finish(
            CLIENT_CLOSED,
            Some(("client_cancelled", "the client closed the stream".into())),
        );
    }
}
