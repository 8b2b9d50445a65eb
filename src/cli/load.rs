//! `candor load`: replay a trace file (or a shipped sample) against an endpoint.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{out, until_signal};
use crate::config::Targets;
use crate::load::{self, LoadConfig, Rag, trace};

/// Arguments of `candor load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Endpoint base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// Trace file (Azure CSV or Mooncake JSONL), or a shipped sample:
    /// azure-conv, azure-code, mooncake.
    #[arg(long, default_value = "azure-conv")]
    trace: String,
    /// Model to request.
    #[arg(long, default_value = "llama-3.1-8b")]
    model: String,
    /// Environment variable holding a bearer key for the endpoint.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Time compression (10 = ten times faster than recorded).
    #[arg(long, default_value_t = 1.0)]
    speedup: f64,
    /// Prompt length scale.
    #[arg(long, default_value_t = 1.0)]
    prompt_scale: f64,
    /// Prompt length cap, tokens.
    #[arg(long, default_value_t = 8192)]
    max_prompt_tokens: u32,
    /// Output length cap, tokens.
    #[arg(long, default_value_t = 1024)]
    max_output_tokens: u32,
    /// Stop after this many requests.
    #[arg(long)]
    limit: Option<usize>,
    /// Query this dependency (simulated vector DB) before each LLM call.
    #[arg(long)]
    rag_url: Option<String>,
    /// Client deadline for dependency + LLM, sent as x-candor-timeout-ms.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// TTFT target.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    ttft_target: Duration,
    /// End-to-end target.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    e2e_target: Duration,
    /// Decode-rate target, tokens/s.
    #[arg(long, default_value_t = 10.0)]
    decode_target: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let text =
        trace::read(&args.trace).with_context(|| format!("cannot read trace {}", args.trace))?;
    #[expect(
        clippy::disallowed_methods,
        reason = "a CLI flag names the variable; read once here"
    )]
    let api_key = args
        .api_key_env
        .as_deref()
        .map(std::env::var)
        .transpose()
        .context("the --api-key-env variable is not set")?;
    let cfg = LoadConfig {
        url: args.url,
        model: args.model,
        api_key,
        trace: trace::parse(&text)?,
        speedup: args.speedup,
        prompt_scale: args.prompt_scale,
        max_prompt_tokens: args.max_prompt_tokens,
        max_output_tokens: args.max_output_tokens,
        limit: args.limit,
        rag: args.rag_url.map(|url| Rag {
            url,
            deadline: args.deadline,
        }),
        targets: Targets {
            ttft: args.ttft_target,
            decode_tokens_per_s: args.decode_target,
            e2e: args.e2e_target,
            error_rate: 0.01,
        },
        progress: !args.json,
    };
    let stop = CancellationToken::new();
    // Ctrl-C ends the replay early; the report covers what finished.
    let report = until_signal(&stop, load::run(&cfg, stop.clone())).await;
    if args.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        out(&load::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}
