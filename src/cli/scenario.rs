//! `candor scenario run FILE`: start a scenario, run it, and print the injected faults beside
//! what the gateway reported.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::{out, until_signal};
use crate::config::Policy;
use crate::scenario::{self, Scenario, truth};

/// `candor scenario …`
#[derive(Debug, Args)]
pub struct ScenarioArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Run a scenario file.
    Run {
        /// Scenario (TOML), e.g. scenarios/deadlock.toml.
        file: PathBuf,
        /// Gateway port (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Routing policy, overriding the scenario's.
        #[arg(long, value_parser = parse_policy)]
        policy: Option<Policy>,
        /// Run in virtual time: every part on one paused clock that jumps to the next timer
        /// when all wait, so the run takes the CPU time it needs, not the scenario's duration.
        #[arg(long = "virtual")]
        virtual_time: bool,
    },
    /// Print the scenario drawn from a seed (TOML, runnable with `scenario run`).
    Draw {
        /// Seed.
        seed: u64,
    },
    /// Draw a scenario per seed, run each in virtual time, and print the scorecard: recall,
    /// time to detect, wrong names and providers, false incidents per simulated hour.
    Truth {
        /// Seeds: `A..B` (B excluded) or a comma-separated list.
        #[arg(long, value_parser = parse_seeds)]
        seeds: Seeds,
        /// Runs at once (each on a thread of its own).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Print every run's outcome as JSON lines instead of the scorecard.
        #[arg(long)]
        json: bool,
    },
    /// Run a scenario once per routing policy and compare them.
    Compare {
        /// Scenario (TOML), e.g. scenarios/routing.toml.
        file: PathBuf,
        /// Policies, comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = parse_policy,
              default_value = "candor,round_robin,least_busy,error_cooldown")]
        policies: Vec<Policy>,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Seeds for `scenario truth`.
#[derive(Debug, Clone)]
struct Seeds(Vec<u64>);

fn parse_seeds(s: &str) -> Result<Seeds, String> {
    let bad = |e: std::num::ParseIntError| format!("seeds {s:?}: {e}");
    if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (
            a.parse::<u64>().map_err(bad)?,
            b.parse::<u64>().map_err(bad)?,
        );
        if a >= b {
            return Err(format!("seeds {s:?}: an empty range"));
        }
        return Ok(Seeds((a..b).collect()));
    }
    s.split(',')
        .map(|x| x.trim().parse::<u64>().map_err(bad))
        .collect::<Result<_, _>>()
        .map(Seeds)
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    Policy::ALL
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Policy::ALL.iter().map(|p| p.as_str()).collect();
            format!("unknown policy {s:?}; one of {}", names.join(", "))
        })
}

pub(super) async fn run(args: ScenarioArgs) -> anyhow::Result<ExitCode> {
    let (file, port, json, policy, virtual_time) = match args.action {
        Action::Run {
            file,
            port,
            json,
            policy,
            virtual_time,
        } => (file, port, json, policy, virtual_time),
        Action::Compare {
            file,
            policies,
            json,
        } => return compare(&file, &policies, json).await,
        Action::Draw { seed } => {
            let d = truth::draw(seed)?;
            out(&format!(
                "# {}\n# expected: {}\n{}",
                d.scenario.description,
                serde_json::to_string(&d.faults)?,
                toml::to_string(&d.scenario)?
            ));
            return Ok(ExitCode::SUCCESS);
        }
        Action::Truth { seeds, jobs, json } => {
            return tokio::task::spawn_blocking(move || run_truth(&seeds.0, jobs, json)).await?;
        }
    };
    let mut s = Scenario::load(&file)?;
    if let Some(p) = policy {
        s.set_policy(p);
    }
    if virtual_time {
        let report = tokio::task::spawn_blocking(move || scenario::run_virtual(&s)).await??;
        print_report(&report, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let started = scenario::start(&s, port).await?;
    if !json {
        out(&format!(
            "running scenario {} for {} — {}\ngateway on http://{}\n",
            s.name,
            humantime::format_duration(s.duration),
            s.description,
            started.gateway.addr
        ));
    }
    let stop = CancellationToken::new();
    let report = until_signal(
        &stop,
        scenario::run(&s, &started, Duration::from_secs(1), stop.clone(), |_| {}),
    )
    .await?;
    started.stop().await?;
    print_report(&report, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the seeds on `jobs` threads, printing progress to stderr and the result to stdout.
fn run_truth(seeds: &[u64], jobs: usize, json: bool) -> anyhow::Result<ExitCode> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    let outcome = truth::run_seed(seed);
                    if let Ok(r) = &outcome {
                        tracing::info!(seed, incidents = ?r.incidents, "truth run done");
                    }
                    if let Ok(mut all) = results.lock() {
                        all.push((seed, outcome));
                    }
                }
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_default();
    all.sort_by_key(|(seed, _)| *seed);
    let mut runs = Vec::new();
    for (seed, outcome) in all {
        runs.push(outcome.map_err(|e| anyhow::anyhow!("seed {seed}: {e}"))?);
    }
    if json {
        for r in &runs {
            out(&format!("{}\n", serde_json::to_string(r)?));
        }
    } else {
        out(&truth::scorecard(&runs));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &scenario::ScenarioReport, json: bool) -> anyhow::Result<()> {
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(report)?));
    } else {
        out(&report.table());
    }
    Ok(())
}

async fn compare(
    file: &std::path::Path,
    policies: &[Policy],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let s = Scenario::load(file)?;
    let stop = CancellationToken::new();
    let runs = until_signal(
        &stop,
        scenario::compare(&s, policies, stop.clone(), |p| {
            if !json {
                out(&format!(
                    "running {} for {} with policy {}\n",
                    s.name,
                    humantime::format_duration(s.duration),
                    p.as_str()
                ));
            }
        }),
    )
    .await?;
    if json {
        let v: Vec<serde_json::Value> = runs
            .iter()
            .map(|(p, r)| serde_json::json!({"policy": p.as_str(), "report": r}))
            .collect();
        out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        out(&format!(
            "\n{} — {}\n\n{}",
            s.name,
            s.description,
            scenario::comparison_table(&s.fault_windows(), &runs)
        ));
    }
    Ok(ExitCode::SUCCESS)
}
