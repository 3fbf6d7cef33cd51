//! The container runtime: runs agent sessions for one town and reports back.
//!
//! A [`Container`] is a cheap, cloneable handle. It holds the per-agent
//! records and their lifecycle (`lifecycle.rs`, spec §2.13), idle timers and
//! the exit path (`idle.rs`), the heartbeat reporter (`heartbeat.rs`), the
//! registry and boot hydration (`registry.rs`), session snapshots
//! (`snapshot.rs` over `session.rs`), the graceful drain (`drain.rs`) and its
//! HTTP control server (`server.rs`). It talks to the town only through a
//! [`TownLink`] (HTTP in production and the simulator, a fake in tests) and
//! runs agents through an [`AgentRuntime`] (the scripted model, or a real one).
//!
//! Concurrency: tokio tasks on whatever runtime drives it (a current-thread
//! one per host under turmoil); every timer is a `tokio::time` one. Shared
//! state sits behind one `std::sync::Mutex`, never held across an `.await`.
//!
//! ```ignore
//! let link = Arc::new(HttpTownLink::new(HttpClient::new(connector, Duration::from_secs(10))));
//! let c = Container::new(config, clock, link, Arc::new(ScriptedRuntime::new(script)));
//! c.boot();                                      // heartbeat + registry hydration (if boot env given)
//! tokio::spawn(net::serve(listener, c.router())); // control server
//! // on SIGTERM:
//! c.shutdown().await;                            // drain, then stop_all
//! ```

pub mod agent;
mod drain;
pub mod fake_town;
mod heartbeat;
mod idle;
mod lifecycle;
mod registry;
pub mod server;
pub mod session;
mod snapshot;
pub mod town_link;

pub use agent::{
    Agent, AgentIo, AgentRuntime, PatternPrOpener, PrOpener, PrRequest, RoleScript, ScriptConfig, ScriptedAgent,
    ScriptedRuntime, SessionSpec, TurnEnd,
};
pub use drain::DrainReport;
pub use lifecycle::{MessageError, StartError, StopError};
pub use snapshot::SnapshotOutcome;
pub use town_link::{AgentAddr, HttpTownLink, LinkError, StoredSnapshot, TownAddr, TownCall, TownLink, TownReply};

use crate::model::AgentRole;
use crate::net::{Connector, HttpClient};
use crate::time::{Clock, Timestamp};
use crate::wire::{AgentProcessStatus, Health, ProcessStatus, StartAgentRequest};
use session::SessionDb;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

/// Every duration the container waits on (upstream's constants by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timings {
    pub polecat_idle: Duration,
    pub refinery_idle: Duration,
    /// Triage sessions (dispatched as lightweight polecats upstream). The
    /// start request carries no triage marker yet, so this is unused until it does.
    pub triage_idle: Duration,
    /// Any non-mayor idle timer armed or re-armed while draining.
    pub draining_idle: Duration,
    pub heartbeat_interval: Duration,
    /// Drain phase 2: the longest wait for agents to finish by themselves.
    pub drain_wait: Duration,
    pub drain_poll: Duration,
    /// Drain phase 2 poll when every active agent already has an idle timer.
    pub drain_poll_idle: Duration,
    /// Bound on one awaited snapshot (drain phase 3, stop_all).
    pub snapshot_bound: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            polecat_idle: Duration::from_secs(120),
            refinery_idle: Duration::from_secs(600),
            triage_idle: Duration::from_secs(120),
            draining_idle: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            drain_wait: Duration::from_secs(300),
            drain_poll: Duration::from_secs(5),
            drain_poll_idle: Duration::from_secs(1),
            snapshot_bound: Duration::from_secs(10),
        }
    }
}

/// What the container knows about its town at process start (upstream's boot
/// environment: `GASTOWN_API_URL`, `GASTOWN_TOWN_ID`, `GASTOWN_CONTAINER_TOKEN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEnv {
    pub api_url: String,
    pub town_id: String,
    pub container_token: String,
}

#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// The container's disk: agent homes and session databases live here.
    pub data_dir: PathBuf,
    /// Reported in heartbeats; a new instance id tells the town a new container is up.
    pub instance_id: String,
    pub timings: Timings,
    /// When set, [`Container::boot`] hydrates from the town's registry.
    pub boot: Option<BootEnv>,
}

impl ContainerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, instance_id: impl Into<String>) -> Self {
        ContainerConfig {
            data_dir: data_dir.into(),
            instance_id: instance_id.into(),
            timings: Timings::default(),
            boot: None,
        }
    }
}

/// The container. Clone freely; all clones are the same container.
#[derive(Clone)]
pub struct Container {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("instance_id", &self.inner.config.instance_id).finish()
    }
}

struct Inner {
    config: ContainerConfig,
    clock: Arc<dyn Clock>,
    link: Arc<dyn TownLink>,
    runtime: Arc<dyn AgentRuntime>,
    started_at: Timestamp,
    state: Mutex<State>,
    /// Registry syncs run one at a time, each sending the list as it is when
    /// it is sent, so the last one to land is the newest.
    registry_lock: tokio::sync::Mutex<()>,
    /// `true` once boot hydration is over (or was never needed).
    hydrated: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    agents: BTreeMap<String, AgentRecord>,
    start_locks: BTreeMap<String, Arc<tokio::sync::Mutex<()>>>,
    draining: bool,
    town: Option<TownAddr>,
    token: Option<String>,
    next_generation: u64,
    next_timer: u64,
    last_snapshot_version: i64,
    /// Per agent, when the newest snapshot the town accepted from this
    /// instance was read off the disk.
    snapshots_taken: BTreeMap<String, Timestamp>,
    heartbeat: Option<AbortHandle>,
    heartbeat_stopped: bool,
    ready_acknowledged: bool,
}

struct IdleTimer {
    id: u64,
    task: AbortHandle,
}

struct AgentRecord {
    request: StartAgentRequest,
    workdir: PathBuf,
    status: ProcessStatus,
    generation: u64,
    session_id: Option<String>,
    resumed: bool,
    started_at: Timestamp,
    last_activity_at: Option<Timestamp>,
    last_event_type: Option<String>,
    last_event_at: Option<Timestamp>,
    active_tools: Vec<String>,
    message_count: u32,
    exit_reason: Option<String>,
    idle: Option<IdleTimer>,
    driver: Option<AbortHandle>,
    mailbox: Option<mpsc::UnboundedSender<String>>,
    abort_start: Option<oneshot::Sender<()>>,
    db: Option<Arc<Mutex<SessionDb>>>,
    /// The session's SDK server no longer answers: a stop cannot finish.
    wedged: bool,
}

impl AgentRecord {
    fn live(&self) -> bool {
        matches!(self.status, ProcessStatus::Starting | ProcessStatus::Running)
    }
    fn role(&self) -> AgentRole {
        self.request.agent.role
    }
    fn clear_idle(&mut self) {
        if let Some(t) = self.idle.take() {
            t.task.abort();
        }
    }
    /// End the session now: no timer, no driver, no mailbox, no startup.
    fn halt(&mut self, status: ProcessStatus, reason: &str) {
        self.clear_idle();
        if let Some(d) = self.driver.take() {
            d.abort();
        }
        if let Some(tx) = self.abort_start.take() {
            let _ = tx.send(());
        }
        self.mailbox = None;
        self.db = None;
        self.status = status;
        self.exit_reason = Some(reason.to_owned());
    }
    fn process_status(&self) -> AgentProcessStatus {
        AgentProcessStatus {
            agent_id: self.request.agent.agent_id.clone(),
            status: self.status,
            session_id: self.session_id.clone(),
            started_at: self.started_at.ms(),
            last_activity_at: self.last_activity_at.map(Timestamp::ms),
            active_tools: self.active_tools.clone(),
            message_count: self.message_count,
            exit_reason: self.exit_reason.clone(),
            resumed: self.resumed,
        }
    }
}

impl Container {
    pub fn new(
        config: ContainerConfig,
        clock: Arc<dyn Clock>,
        link: Arc<dyn TownLink>,
        runtime: Arc<dyn AgentRuntime>,
    ) -> Container {
        let started_at = clock.now();
        let (hydrated, _) = watch::channel(true);
        Container {
            inner: Arc::new(Inner {
                config,
                clock,
                link,
                runtime,
                started_at,
                state: Mutex::new(State::default()),
                registry_lock: tokio::sync::Mutex::new(()),
                hydrated,
            }),
        }
    }

    /// A container that reaches the town over HTTP through `connector`
    /// (tokio TCP in production, turmoil in the simulator).
    pub fn over_http(
        config: ContainerConfig,
        clock: Arc<dyn Clock>,
        connector: Arc<dyn Connector>,
        runtime: Arc<dyn AgentRuntime>,
    ) -> Container {
        let link = Arc::new(HttpTownLink::new(HttpClient::new(connector, Duration::from_secs(10))));
        Container::new(config, clock, link, runtime)
    }

    pub fn config(&self) -> &ContainerConfig {
        &self.inner.config
    }
    pub fn instance_id(&self) -> &str {
        &self.inner.config.instance_id
    }
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the newest snapshot of the agent that the town accepted from
    /// this instance was read: the turns written after it are not in the
    /// town's copy yet.
    pub fn last_snapshot_taken(&self, agent_id: &str) -> Option<Timestamp> {
        self.st().snapshots_taken.get(agent_id).copied()
    }

    pub fn is_draining(&self) -> bool {
        self.st().draining
    }

    /// The container token currently in use, if one is known.
    pub fn container_token(&self) -> Option<String> {
        self.st().token.clone()
    }

    /// `GET /health`.
    pub fn health(&self) -> Health {
        let st = self.st();
        Health {
            status: "ok".into(),
            agents: u32::try_from(st.agents.values().filter(|r| r.live()).count()).unwrap_or(u32::MAX),
            uptime_ms: self.now().since(self.inner.started_at),
            draining: st.draining,
            instance_id: self.inner.config.instance_id.clone(),
        }
    }

    /// `GET /agents/:id/status`; `None` for an agent this container never ran.
    pub fn status(&self, agent_id: &str) -> Option<AgentProcessStatus> {
        self.st().agents.get(agent_id).map(AgentRecord::process_status)
    }

    /// Every agent this container knows, in id order.
    pub fn statuses(&self) -> Vec<AgentProcessStatus> {
        self.st().agents.values().map(AgentRecord::process_status).collect()
    }

    /// Everything `session_turns(agent_id)` depends on: the session the
    /// container runs for the agent and its database's fingerprint. Equal
    /// keys give equal turns, so an inspector can skip an unchanged session.
    pub fn session_key(&self, agent_id: &str) -> (Option<String>, session::Fingerprint) {
        let current = self.st().agents.get(agent_id).and_then(|r| r.session_id.clone());
        (current, session::fingerprint(&session::db_path(&self.inner.config.data_dir, agent_id)))
    }

    /// The turns of an agent's current (else latest) session, read from its session database.
    pub fn session_turns(&self, agent_id: &str) -> Vec<session::Turn> {
        let path = session::db_path(&self.inner.config.data_dir, agent_id);
        let current = self.st().agents.get(agent_id).and_then(|r| r.session_id.clone());
        if !path.exists() {
            return Vec::new();
        }
        let read = || -> Result<Vec<session::Turn>, session::SessionError> {
            let db = SessionDb::open_read_only(&path)?;
            match current.or(db.latest_session()?) {
                Some(s) => db.turns(&s),
                None => Ok(Vec::new()),
            }
        };
        read().unwrap_or_else(|e| {
            tracing::warn!(agent_id, error = %e, "could not read the session database");
            Vec::new()
        })
    }

    /// `POST /refresh-token`: a fresh container token (and maybe the town id).
    pub async fn refresh_token(&self, token: String, town_id: Option<String>) {
        self.wait_hydrated().await;
        {
            let mut st = self.st();
            st.token = Some(token);
            if let (Some(id), Some(t)) = (town_id, st.town.as_mut()) {
                t.town_id = id;
            }
        }
        self.ensure_heartbeat();
    }

    /// Remember the town and token a start request carries; the heartbeat
    /// reporter starts as soon as both are known.
    fn learn_town(&self, req: &StartAgentRequest) {
        {
            let mut st = self.st();
            st.town = Some(TownAddr { api_url: req.api_url.clone(), town_id: req.town_id.clone() });
            if !req.container_token.is_empty() {
                st.token = Some(req.container_token.clone());
            }
        }
        self.ensure_heartbeat();
    }

    fn agent_addr(&self, req: &StartAgentRequest) -> AgentAddr {
        let rig = if req.agent.role == AgentRole::Mayor || req.agent.rig_id.is_empty() {
            "_".to_owned()
        } else {
            req.agent.rig_id.clone()
        };
        AgentAddr {
            town: TownAddr { api_url: req.api_url.clone(), town_id: req.town_id.clone() },
            rig,
            agent_id: req.agent.agent_id.clone(),
        }
    }

    /// Make a call with the container token; on 401 get a fresh token once
    /// (the town accepts an expired-but-signed one) and retry once.
    pub(crate) async fn authed(&self, call: TownCall) -> Result<TownReply, LinkError> {
        let Some(token) = self.container_token() else {
            return Err(LinkError::Unauthorized("no container token known".into()));
        };
        let first = self.inner.link.call(&token, &call).await;
        let Err(LinkError::Unauthorized(why)) = first else { return first };
        // Someone may have refreshed meanwhile; otherwise refresh now.
        let fresh = match self.container_token() {
            Some(t) if t != token => Some(t),
            _ => self.refresh_from_town(call.town(), &token).await,
        };
        match fresh {
            Some(t) => self.inner.link.call(&t, &call).await,
            None => Err(LinkError::Unauthorized(why)),
        }
    }

    async fn refresh_from_town(&self, town: &TownAddr, stale: &str) -> Option<String> {
        let call = TownCall::RefreshContainerToken(town.clone());
        match self.inner.link.call(stale, &call).await {
            Ok(TownReply::Token(t)) => {
                let mut st = self.st();
                if st.token.as_deref() == Some(stale) || st.token.is_none() {
                    st.token = Some(t.token.clone());
                }
                tracing::info!("container token refreshed after a 401");
                Some(t.token)
            }
            other => {
                tracing::warn!(?other, "container token refresh failed");
                None
            }
        }
    }

    /// Record an SDK-style activity event of the current session of `agent_id`.
    fn record_activity(&self, agent_id: &str, generation: u64, event_type: &str, tools: Vec<String>) {
        let now = self.now();
        let mut st = self.st();
        let Some(r) = st.agents.get_mut(agent_id) else { return };
        if r.generation != generation || !r.live() {
            return;
        }
        r.last_activity_at = Some(now);
        r.last_event_type = Some(event_type.to_owned());
        r.last_event_at = Some(now);
        r.active_tools = tools;
        // The agent is working again: a pending idle timer no longer applies.
        r.clear_idle();
    }

    /// The current session of `agent_id` stopped answering its SDK calls.
    fn wedge(&self, agent_id: &str, generation: u64) {
        let mut st = self.st();
        if let Some(r) = st.agents.get_mut(agent_id).filter(|r| r.generation == generation && r.live()) {
            tracing::warn!(agent_id, "session wedged: its SDK server no longer answers");
            r.wedged = true;
        }
    }

    /// Run `fut` in the background; the container never waits for it.
    fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(fut);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Shared helpers for the container's tests.
    use super::fake_town::FakeTown;
    use super::*;
    use crate::time::TokioClock;
    use crate::town::effects::StartAgent;

    pub(crate) const T0: i64 = 1_780_000_000_000;

    pub(crate) fn request(agent_id: &str, role: AgentRole) -> StartAgentRequest {
        StartAgentRequest {
            agent: StartAgent {
                agent_id: agent_id.into(),
                bead_id: format!("bead-{agent_id}"),
                rig_id: if role == AgentRole::Mayor { String::new() } else { "rig1".into() },
                role,
                name: format!("name-{agent_id}"),
                identity: format!("ident-{agent_id}"),
                prompt: format!("initial prompt for {agent_id}"),
                branch: None,
                target_branch: None,
                start_point: None,
                pr_url: None,
            },
            town_id: "town1".into(),
            api_url: "http://town:8787".into(),
            agent_token: format!("agent-tok-{agent_id}"),
            container_token: "tok-0".into(),
        }
    }

    /// Quick, deterministic agents: start at once, work 30 s, always `gt_done` with a PR.
    pub(crate) fn quick_script() -> ScriptConfig {
        ScriptConfig {
            seed: 7,
            start_ms: (0, 0),
            work_ms: (30_000, 30_000),
            reply_ms: (1_000, 1_000),
            ..ScriptConfig::default()
        }
    }

    pub(crate) struct Rig {
        pub town: Arc<FakeTown>,
        pub c: Container,
        pub _dir: tempfile::TempDir,
    }

    pub(crate) fn rig_with(script: ScriptConfig, town: Arc<FakeTown>, tweak: impl FnOnce(&mut ContainerConfig)) -> Rig {
        rig_on(ScriptedRuntime::new(script), town, tweak)
    }

    pub(crate) fn rig_on(
        runtime: ScriptedRuntime,
        town: Arc<FakeTown>,
        tweak: impl FnOnce(&mut ContainerConfig),
    ) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ContainerConfig::new(dir.path(), "inst-1");
        tweak(&mut config);
        let clock = Arc::new(TokioClock::new(Timestamp(T0)));
        let c = Container::new(config, clock, town.clone(), Arc::new(runtime));
        Rig { town, c, _dir: dir }
    }

    pub(crate) fn rig(script: ScriptConfig) -> Rig {
        rig_with(script, FakeTown::new(), |_| {})
    }

    /// Let spawned tasks run without moving the (paused) clock much.
    pub(crate) async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    pub(crate) async fn sleep_s(s: u64) {
        tokio::time::sleep(Duration::from_secs(s)).await;
        settle().await;
    }
}
