//! `candor sim`: a simulated OpenAI-compatible inference server driven by a
//! continuous-batching engine model, with every failure mode injectable on a timeline, and a
//! simulated vector-database dependency. A test bed and a demo, never a stand-in for
//! testing against real servers.

pub mod dependency;
pub mod engine;
pub mod fault;
mod metrics;
mod server;
pub mod text;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use engine::{Engine, EngineConfig};
use fault::{Effects, Faults, Scheduled};
use text::SplitMix;

pub use server::router;

/// A simulated provider: its model, engine and fault timeline.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Model name served.
    pub model: String,
    /// Seed for deterministic outputs.
    pub seed: u64,
    /// Context window in tokens; longer prompts get a 400, as from vLLM.
    pub max_model_len: u32,
    /// Engine parameters.
    pub engine: EngineConfig,
    /// Faults scheduled relative to start.
    pub faults: Vec<Scheduled>,
    /// When set, the fault timeline repeats with this period.
    #[serde(with = "humantime_serde")]
    pub fault_cycle: Option<Duration>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            model: "sim-llama-8b".into(),
            seed: 7,
            max_model_len: 32_768,
            engine: EngineConfig::default(),
            faults: Vec::new(),
            fault_cycle: None,
        }
    }
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Unreadable file.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// Bad TOML.
    #[error("invalid simulator profile: {0}")]
    Parse(#[from] toml::de::Error),
}

impl Profile {
    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProfileError::Read(path.display().to_string(), e))?;
        Ok(toml::from_str(&text)?)
    }
}

/// Mutable simulator state.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) engine: Engine,
    pub(crate) faults: Faults,
    pub(crate) noise: SplitMix,
}

/// A running simulated provider.
#[derive(Debug)]
pub struct Sim {
    /// Its profile.
    pub profile: Profile,
    pub(crate) state: Mutex<State>,
    pub(crate) wake: Notify,
    pub(crate) next_id: std::sync::atomic::AtomicU64,
}

impl Sim {
    /// A simulator starting now.
    pub fn new(profile: Profile) -> Arc<Sim> {
        let now = Instant::now();
        Arc::new(Sim {
            state: Mutex::new(State {
                engine: Engine::new(profile.engine.clone()),
                faults: Faults::new(now, profile.faults.clone(), profile.fault_cycle),
                noise: SplitMix::new(profile.seed ^ 0xA5A5),
            }),
            profile,
            wake: Notify::new(),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The effects of the faults in force now.
    pub fn effects(&self) -> Effects {
        Effects::of(&self.lock().faults.active(Instant::now()))
    }

    /// Drives the engine until `stop`: one step at a time, in real time.
    pub async fn run_engine(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let step = {
                let mut s = self.lock();
                let now = Instant::now();
                let fx = Effects::of(&s.faults.active(now));
                s.engine.step(&fx, now)
            };
            match step {
                Some(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = stop.cancelled() => return,
                    }
                    self.lock().engine.finish_step(Instant::now());
                }
                None => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}
