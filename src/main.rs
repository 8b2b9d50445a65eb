//! The `candor` binary: parse arguments, set up logging, run, turn errors into exit codes.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = candor::cli::Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.workers {
        runtime.worker_threads(usize::from(n));
    }
    match runtime.enable_all().build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "error: cannot start the runtime: {e}"
            );
            ExitCode::from(2)
        }
    }
}

async fn run(cli: candor::cli::Cli) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CANDOR_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match candor::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
            ExitCode::from(2)
        }
    }
}
