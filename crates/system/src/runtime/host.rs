//! The shared state behind the town's API handlers and its alarm loop.

use super::container_runner::{ContainerRunner, PrEffects};
use crate::auth::Signer;
use crate::error::Result;
use crate::net::HttpClient;
use crate::time::{Clock, Timestamp};
use crate::town::effects::{Effect, Outcome};
use crate::town::Town;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Where things are and the secret tokens are signed with.
#[derive(Clone, Debug)]
pub struct TownHostConfig {
    /// The town's base URL as the container reaches it (`http://town:8787`).
    pub api_url: String,
    /// The container's control server (`http://container:8080`).
    pub container_url: String,
    /// HMAC secret for container, agent and user tokens.
    pub secret: Vec<u8>,
}

/// The town as a service. Town operations are synchronous SQLite
/// transactions taken under a lock that is never held across an `.await`:
/// while a tick waits on the network, API requests interleave with it, as
/// upstream's Durable Object lets them.
pub struct TownHost {
    town: Mutex<Town>,
    town_id: String,
    pub(super) clock: Arc<dyn Clock>,
    pub signer: Signer,
    pub(super) runner: ContainerRunner,
    pub(super) cfg: TownHostConfig,
    /// Woken whenever an operation may have brought the alarm earlier.
    pub(super) wake: Notify,
    pub(super) upkeep: Mutex<super::alarm::Upkeep>,
    /// Watches ticks (the simulator's oracles and cost measurement).
    pub(super) observer: Mutex<Option<Arc<dyn TickObserver>>>,
}

/// Where a tick is, as a [`TickObserver`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickPhase {
    /// Before `begin_tick` (after container upkeep and status observation).
    BeginStart,
    /// `begin_tick` committed; the tick's effects are about to run.
    BeginEnd,
    /// Before `finish_tick`.
    FinishStart,
    /// `finish_tick` committed.
    FinishEnd,
}

/// Hook for whoever drives the town from outside (the simulator): told
/// around each synchronous phase of a tick (so it can time them) and given
/// every tick's report. Never called while the town's lock is held.
pub trait TickObserver: Send + Sync {
    fn phase(&self, _phase: TickPhase) {}
    /// Asked once per tick, after the container status observation and
    /// before the events drain: a storage failure to inject there, as when
    /// an alarm handler throws and the platform retries it (the simulator's
    /// `failed_tick`). Nothing else ever injects one.
    fn inject_failure(&self) -> Option<String> {
        None
    }
    fn tick_done(&self, _report: &crate::town::TickReport) {}
    /// A tick ended in an error; what it recorded before failing stays.
    fn tick_failed(&self, _error: &crate::error::TownError) {}
}

impl TownHost {
    pub fn new(town: Town, clock: Arc<dyn Clock>, http: HttpClient, cfg: TownHostConfig) -> Arc<Self> {
        let town_id = town.id().to_owned();
        let signer = Signer::new(cfg.secret.clone());
        let runner = ContainerRunner::new(http, &cfg, town_id.clone(), signer.clone(), clock.clone());
        Arc::new(TownHost {
            town: Mutex::new(town),
            town_id,
            clock,
            signer,
            runner,
            cfg,
            wake: Notify::new(),
            upkeep: Mutex::new(Default::default()),
            observer: Mutex::new(None),
        })
    }

    /// Plug in the runner for PR effects (poll, merge). Without one they are
    /// reported as not run.
    pub fn set_pr_effects(&self, pr: Arc<dyn PrEffects>) {
        self.runner.set_pr_effects(pr);
    }

    /// Install the tick observer (replacing any earlier one).
    pub fn set_tick_observer(&self, observer: Arc<dyn TickObserver>) {
        *self.observer.lock().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    pub(super) fn observe_phase(&self, phase: TickPhase) {
        if let Some(o) = self.observer() {
            o.phase(phase);
        }
    }

    fn observer(&self) -> Option<Arc<dyn TickObserver>> {
        self.observer.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn injected_failure(&self) -> Option<crate::error::TownError> {
        let why = self.observer()?.inject_failure()?;
        let io = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR);
        Some(crate::error::TownError::Storage(rusqlite::Error::SqliteFailure(io, Some(why))))
    }

    pub(super) fn observe_failure(&self, error: &crate::error::TownError) {
        if let Some(o) = self.observer() {
            o.tick_failed(error);
        }
    }

    pub(super) fn observe_report(&self, report: &crate::town::TickReport) {
        if let Some(o) = self.observer() {
            o.tick_done(report);
        }
    }

    pub fn town_id(&self) -> &str {
        &self.town_id
    }
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
    pub fn config(&self) -> &TownHostConfig {
        &self.cfg
    }

    /// A user token for this town, valid until `exp`.
    pub fn user_token(&self, exp: Timestamp) -> String {
        self.signer.user_token(&self.town_id, exp)
    }

    fn lock(&self) -> MutexGuard<'_, Town> {
        // A panic while holding the lock leaves the town as its last committed
        // transaction left it (every operation is one transaction), so the
        // data behind a poisoned lock is still consistent.
        self.town.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run a town operation, then let the alarm loop re-read the alarm.
    pub fn with_town<T>(&self, f: impl FnOnce(&mut Town) -> Result<T>) -> Result<T> {
        let out = f(&mut self.lock());
        self.wake.notify_one();
        out
    }

    /// A town operation the alarm loop itself runs: no wake-up for itself
    /// (a permit left by its own call would make the loop spin). Also for
    /// observers that only read (the simulator's oracles).
    pub fn with_town_quietly<T>(&self, f: impl FnOnce(&mut Town) -> Result<T>) -> Result<T> {
        f(&mut self.lock())
    }

    /// Run effects concurrently; outcomes in effect order.
    pub async fn run_effects(&self, effects: &[Effect]) -> Vec<Outcome> {
        futures_util::future::join_all(effects.iter().map(|e| self.runner.run(e))).await
    }

    /// Fire-and-forget effects of an RPC (a sling's fast-path dispatch, a
    /// mayor message): run them in the background and apply their outcomes.
    pub fn spawn_effects(self: &Arc<Self>, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let host = Arc::clone(self);
        tokio::spawn(async move {
            let outcomes = host.run_effects(&effects).await;
            if let Err(e) = host.with_town(|t| t.apply_outcomes(&outcomes)) {
                tracing::warn!(error = %e, "applying RPC effect outcomes failed");
            }
        });
    }
}
