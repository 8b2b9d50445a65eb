//! The simulator's HTTP face: OpenAI-compatible completions (streamed or not, with usage),
//! `/v1/models`, vLLM-named `/metrics`, an always-200 `/health`, and `/sim/faults`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Sim;
use super::engine::{Event, Job};
use super::fault::Injection;
use super::text::{self, Ask};

/// The simulator's router.
pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { StatusCode::OK }))
        .route(
            "/sim/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .with_state(sim)
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"object": "error", "message": message, "type": "BadRequestError", "code": status.as_u16()})),
    )
        .into_response()
}

async fn models(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": sim.profile.model, "object": "model", "owned_by": "candor-sim", "max_model_len": sim.profile.max_model_len}]}),
    )
}

async fn metrics(State(sim): State<Arc<Sim>>) -> Response {
    let text = super::metrics::render(&sim);
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

async fn add_fault(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Injection>(&body) {
        Ok(f) => {
            sim.lock().faults.apply(f, Instant::now());
            list_faults(State(sim)).await.into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &format!("bad fault: {e}")),
    }
}

async fn clear_faults(State(sim): State<Arc<Sim>>) -> Json<Value> {
    sim.lock().faults.clear();
    Json(json!({"active": []}))
}

async fn list_faults(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let active = sim.lock().faults.active(Instant::now());
    Json(json!({ "active": active }))
}

/// Prompt text of a chat request: every message's text content, in order.
fn chat_prompt(body: &Value) -> String {
    let mut out = String::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        match &m["content"] {
            Value::String(s) => out.push_str(s),
            Value::Array(parts) => {
                for p in parts {
                    if let Some(t) = p["text"].as_str() {
                        out.push_str(t);
                    }
                }
            }
            _ => {}
        }
        out.push('\n');
    }
    out
}

async fn chat(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v["messages"].is_array() => generate(sim, chat_prompt(&v), v, true).await,
        _ => error(
            StatusCode::BAD_REQUEST,
            "body must be JSON with a messages array",
        ),
    }
}

async fn completions(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v["prompt"].is_string() => {
            let prompt = v["prompt"].as_str().unwrap_or_default().to_owned();
            generate(sim, prompt, v, false).await
        }
        _ => error(
            StatusCode::BAD_REQUEST,
            "body must be JSON with a prompt string",
        ),
    }
}

/// JSON keys asked for by a `json_schema` response format.
fn schema_keys(body: &Value) -> (bool, Vec<String>) {
    let rf = &body["response_format"];
    let kind = rf["type"].as_str().unwrap_or("");
    let keys = rf["json_schema"]["schema"]["properties"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    (kind == "json_object" || kind == "json_schema", keys)
}

async fn generate(sim: Arc<Sim>, prompt: String, body: Value, chat: bool) -> Response {
    let fx = sim.effects();
    let (roll, reset_roll, spike_roll, reset_at) = {
        let mut s = sim.lock();
        (
            s.noise.unit(),
            s.noise.unit(),
            s.noise.unit(),
            s.noise.unit(),
        )
    };
    if let Some((rate, status)) = fx.errors
        && roll < rate
    {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = error(code, "simulated failure");
        if status == 429 {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        return r;
    }
    if let Some((rate, delay)) = fx.spike
        && spike_roll < rate
    {
        tokio::time::sleep(delay).await;
    }
    let full_tokens = text::count_tokens(&prompt);
    let (effective, prompt_tokens) = match fx.keep_prompt_tokens {
        Some(keep) if full_tokens > keep => (text::keep_tail(&prompt, keep), keep),
        _ => (prompt.as_str(), full_tokens),
    };
    let max_len = sim.profile.max_model_len;
    if prompt_tokens >= max_len {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "This model's maximum context length is {max_len} tokens. However, you requested {prompt_tokens} tokens in the messages."
            ),
        );
    }
    let limit = max_len - prompt_tokens;
    let max_tokens = body["max_completion_tokens"]
        .as_u64()
        .or(body["max_tokens"].as_u64())
        .map_or(limit.min(1024), |m| {
            u32::try_from(m).unwrap_or(u32::MAX).min(limit)
        });
    let (json_format, json_keys) = schema_keys(&body);
    let wants_json = json_format || effective.contains("JSON");
    let ask = Ask {
        prompt: effective,
        wants_json,
        json_keys,
        max_tokens,
        min_tokens: body["min_tokens"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok()),
        seed: body["seed"].as_u64().unwrap_or(sim.profile.seed),
    };
    let output = {
        let mut s = sim.lock();
        text::reply(&ask, &fx, &mut s.noise)
    };
    let completion_tokens = output.tokens.len();
    let (tx, rx) = mpsc::unbounded_channel();
    sim.lock().engine.submit(
        Job {
            prompt_tokens,
            output: output.tokens,
            finish: output.finish,
            tx,
        },
        Instant::now(),
    );
    sim.wake.notify_one();
    let id = format!("cmpl-sim-{}", sim.next_id.fetch_add(1, Ordering::Relaxed));
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens as usize + completion_tokens,
    });
    let meta = Meta {
        id,
        model: sim.profile.model.clone(),
        chat,
        usage,
    };
    if body["stream"].as_bool().unwrap_or(false) {
        let include_usage = body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        let reset_after =
            (reset_roll < fx.reset).then_some((reset_at * completion_tokens as f64) as usize);
        stream(meta, rx, include_usage, reset_after)
    } else {
        whole(meta, rx).await
    }
}

struct Meta {
    id: String,
    model: String,
    chat: bool,
    usage: Value,
}

impl Meta {
    fn chunk(&self, content: Option<&str>, finish: Option<&str>, first: bool) -> String {
        let choice = if self.chat {
            let mut delta = json!({});
            if first {
                delta["role"] = json!("assistant");
            }
            if let Some(c) = content {
                delta["content"] = json!(c);
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": content.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        };
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let v = json!({"id": self.id, "object": object, "created": 0, "model": self.model, "choices": [choice]});
        format!("data: {v}\n\n")
    }
}

fn stream(
    meta: Meta,
    rx: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
    reset_after: Option<usize>,
) -> Response {
    let mut sent = 0usize;
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        Some((ev, rx))
    })
    .map(move |ev| -> Result<Bytes, std::io::Error> {
        match ev {
            Event::Token(t) => {
                if reset_after == Some(sent) {
                    return Err(std::io::Error::other("simulated connection reset"));
                }
                sent += 1;
                Ok(Bytes::from(meta.chunk(Some(&t), None, sent == 1)))
            }
            Event::Done { finish } => {
                let mut out = meta.chunk(None, Some(finish), sent == 0);
                if include_usage {
                    let v = json!({"id": meta.id, "object": "chat.completion.chunk", "created": 0, "model": meta.model, "choices": [], "usage": meta.usage});
                    out.push_str(&format!("data: {v}\n\n"));
                }
                out.push_str("data: [DONE]\n\n");
                Ok(Bytes::from(out))
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn whole(meta: Meta, mut rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    let mut finish = "stop";
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(t) => text.push_str(&t),
            Event::Done { finish: f } => {
                finish = f;
                break;
            }
        }
    }
    let choice = if meta.chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
    };
    let object = if meta.chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    Json(json!({"id": meta.id, "object": object, "created": 0, "model": meta.model, "choices": [choice], "usage": meta.usage})).into_response()
}
