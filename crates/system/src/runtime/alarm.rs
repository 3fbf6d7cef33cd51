//! The alarm loop: sleep until the town's alarm, then tick. Before each tick,
//! container upkeep (health check, hourly token push) and the per-agent
//! status observation (spec town.md §5.2 phases 1–2).

use super::host::{TickPhase, TownHost};
use crate::error::Result;
use crate::model::AgentStatus;
use crate::time::Timestamp;
use crate::town::TickReport;
use crate::wire::{AgentProcessStatus, Health, ProcessStatus, RefreshTokenBody};
use std::sync::Arc;
use std::time::Duration;

const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// The container token is pushed at most hourly (it lives 8 h).
const TOKEN_REFRESH_MS: i64 = 60 * 60 * 1000;
/// A drain older than this hands its nonce to whoever answers `/health` (upstream: 11 min).
const NONCE_HANDOFF_MS: i64 = 11 * 60 * 1000;
/// When no alarm is armed, look again this often (an RPC wakes us sooner).
const IDLE_POLL: Duration = Duration::from_secs(60);

/// What upkeep remembers between ticks (in memory: a restart re-checks at once).
#[derive(Debug, Default)]
pub struct Upkeep {
    pub last_token_push: Option<Timestamp>,
    pub consecutive_health_failures: u32,
    pub last_health: Option<Health>,
}

/// What the status observation saw for one agent.
#[derive(Debug, PartialEq, Eq)]
enum Observed {
    Running,
    Other(ProcessStatus, Option<String>),
    NotFound,
    Unknown,
}

impl TownHost {
    /// Sleep until the alarm, tick, repeat. Runs until the task is dropped.
    pub async fn run_alarm_loop(self: Arc<Self>) {
        loop {
            let due = match self.with_town_quietly(|t| t.alarm_at()) {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, "reading the alarm failed");
                    None
                }
            };
            let wait = match due {
                Some(at) => Duration::from_millis(u64::try_from(at.since(self.now())).unwrap_or(0)),
                None => IDLE_POLL,
            };
            if !wait.is_zero() {
                tokio::select! {
                    // Biased: a fixed branch order keeps the simulator deterministic.
                    biased;
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.wake.notified() => continue,
                }
                if due.is_none() {
                    continue;
                }
            }
            match self.tick_once().await {
                Ok(Some(r)) => log_tick(&r),
                Ok(None) => {
                    tracing::info!("town destroyed; alarm loop ends");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "tick failed");
                    // Do not spin on a persistent error.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    /// One alarm tick with its network phases. A failure is also handed to
    /// the tick observer.
    pub async fn tick_once(&self) -> Result<Option<TickReport>> {
        let r = self.tick_phases().await;
        if let Err(e) = &r {
            self.observe_failure(e);
        }
        r
    }

    async fn tick_phases(&self) -> Result<Option<TickReport>> {
        self.container_upkeep().await;
        self.observe_agents().await?;
        if let Some(e) = self.injected_failure() {
            return Err(e);
        }
        self.observe_phase(TickPhase::BeginStart);
        let plan = self.with_town_quietly(|t| t.begin_tick());
        self.observe_phase(TickPhase::BeginEnd);
        let Some(plan) = plan? else { return Ok(None) };
        let outcomes = self.run_effects(&plan.report.effects).await;
        self.observe_phase(TickPhase::FinishStart);
        let finished = self.with_town_quietly(|t| t.finish_tick(plan, outcomes));
        self.observe_phase(TickPhase::FinishEnd);
        let (report, housekeeping) = finished?;
        let later = self.run_effects(&housekeeping).await;
        self.with_town_quietly(|t| t.apply_outcomes(&later))?;
        self.observe_report(&report);
        Ok(Some(report))
    }

    /// Health check and hourly token push, when there is work or a drain.
    async fn container_upkeep(&self) {
        let (active, drain) = self
            .with_town_quietly(|t| Ok((t.last_report().is_none_or(|r| r.active_work), t.drain_state()?)))
            .unwrap_or((true, Default::default()));
        if !active && !drain.draining {
            return;
        }
        let mut ping = self.runner.http().get(self.runner.url("/health")).timeout(HEALTH_TIMEOUT);
        // A drain that outlived the old container's 5-minute wait: only a
        // replacement can answer now, so hand it the nonce (it replies with
        // `/container-ready`, which ends the drain).
        if let (true, Some(nonce), Some(started)) = (drain.draining, drain.nonce.as_deref(), drain.started_at) {
            if self.now().since(started) > NONCE_HANDOFF_MS {
                ping = ping.header("x-drain-nonce", nonce).header("x-town-id", self.town_id());
            }
        }
        let health = ping.send().await;
        let health = health.ok().filter(|r| r.ok()).and_then(|r| r.json::<Health>().ok());
        let now = self.now();
        let push_token = {
            let mut u = self.upkeep.lock().unwrap_or_else(|p| p.into_inner());
            match &health {
                Some(_) => u.consecutive_health_failures = 0,
                None => u.consecutive_health_failures += 1,
            }
            u.last_health = health.clone();
            health.is_some() && u.last_token_push.is_none_or(|t| now.since(t) >= TOKEN_REFRESH_MS)
        };
        if push_token {
            let body = RefreshTokenBody { token: self.runner.container_token(), town_id: Some(self.town_id().into()) };
            let r = self.runner.http().post(self.runner.url("/refresh-token")).json(&body).timeout(HEALTH_TIMEOUT);
            if matches!(r.send().await, Ok(resp) if resp.ok()) {
                self.upkeep.lock().unwrap_or_else(|p| p.into_inner()).last_token_push = Some(now);
            }
        }
    }

    /// Ask the container about every agent the town thinks is working or
    /// stalled and hand each answer to the town, which keeps what is not
    /// `running` as a `container_status` event (bug p: one place decides).
    pub(super) async fn observe_agents(&self) -> Result<()> {
        let watched: Vec<String> = self.with_town_quietly(|t| {
            Ok(t.agents()?
                .into_iter()
                .filter(|a| matches!(a.status, AgentStatus::Working | AgentStatus::Stalled))
                .map(|a| a.agent_id)
                .collect())
        })?;
        let seen = futures_util::future::join_all(watched.iter().map(|a| self.observe(a))).await;
        self.with_town_quietly(|t| {
            for (agent, seen) in watched.iter().zip(seen) {
                let (status, reason) = match seen {
                    Observed::Running => ("running", None),
                    Observed::Other(s, reason) => (process_status_str(s), reason),
                    Observed::NotFound => ("not_found", None),
                    Observed::Unknown => ("unknown", None),
                };
                if let Err(e) = t.record_container_status(agent, status, reason.as_deref()) {
                    if !e.is_not_found() {
                        return Err(e);
                    }
                }
            }
            Ok(())
        })
    }

    async fn observe(&self, agent: &str) -> Observed {
        let url = self.runner.url(&format!("/agents/{agent}/status"));
        match self.runner.http().get(url).timeout(STATUS_TIMEOUT).send().await {
            Ok(r) if r.status == 404 => Observed::NotFound,
            Ok(r) if r.ok() => match r.json::<AgentProcessStatus>() {
                Ok(s) if s.status == ProcessStatus::Running => Observed::Running,
                Ok(s) => Observed::Other(s.status, s.exit_reason),
                Err(_) => Observed::Unknown,
            },
            _ => Observed::Unknown,
        }
    }
}

fn process_status_str(s: ProcessStatus) -> &'static str {
    match s {
        ProcessStatus::Starting => "starting",
        ProcessStatus::Running => "running",
        ProcessStatus::Stopping => "stopping",
        ProcessStatus::Exited => "exited",
        ProcessStatus::Failed => "failed",
    }
}

fn log_tick(r: &TickReport) {
    tracing::debug!(
        at = %r.at,
        events = r.events.applied.len(),
        actions = r.actions.len(),
        effects = r.effects.len(),
        failed = r.side_effects_failed,
        violations = r.invariant_violations.len(),
        "tick"
    );
    for v in &r.invariant_violations {
        tracing::warn!(violation = %v, "invariant violation");
    }
}
