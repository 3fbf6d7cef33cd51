//! The agent runtime: what "is" the coding agent inside a session.
//!
//! The container owns the lifecycle; an [`Agent`] only starts (possibly slowly,
//! possibly failing) and runs turns. During a turn it reports activity, writes
//! assistant turns into its session database and calls the town's agent tools
//! (`gt_done`, request-changes, escalations, checkpoints), all through its
//! [`AgentIo`]. A turn ends idle or with a crash; a hung agent simply never
//! ends its turn.
//!
//! [`ScriptedRuntime`] is a seeded behaviour model used by tests and the
//! simulator. PR creation is a hook ([`PrOpener`]) so a real forge can be
//! plugged in.

use super::session::{SessionDb, TurnRole};
use super::town_link::{LinkError, TownCall, TownReply};
use super::Container;
use crate::model::AgentRole;
use crate::net::SendFuture;
use crate::time::Timestamp;
use crate::wire::{
    CheckpointBody, DoneBody, EscalationBody, IdReply, RequestChangesBody, RequestChangesReply, StartAgentRequest,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a turn ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnEnd {
    /// The session went idle (upstream's `session.idle`).
    Idle,
    /// The session died (upstream's event-stream error).
    Crash(String),
}

/// What the container tells the runtime about a new session.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    pub request: StartAgentRequest,
    /// The session continues an earlier one (the mayor after a restart).
    pub resumed: bool,
    /// Unique per start within this container; distinct across restarts of an agent.
    pub generation: u64,
}

/// Creates agents, and saves work in progress when the container is evicted.
pub trait AgentRuntime: Send + Sync {
    fn create(&self, spec: &SessionSpec) -> Box<dyn Agent>;

    /// Drain phase 3b: commit and push what the agent has. Answers the branch
    /// the work was pushed to, `None` when nothing could be pushed. Without
    /// git, the default models a successful push to the agent's branch.
    fn save_wip<'a>(&'a self, request: &'a StartAgentRequest) -> SendFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move { Ok(Some(agent_branch(request))) })
    }
}

/// One agent session.
pub trait Agent: Send {
    /// Bring the session up. An error fails the start.
    fn start<'a>(&'a mut self, io: &'a AgentIo) -> SendFuture<'a, Result<(), String>>;
    /// Run one prompt (already recorded as a user turn) to the end of the turn.
    fn turn<'a>(&'a mut self, io: &'a AgentIo, prompt: &'a str) -> SendFuture<'a, TurnEnd>;
}

/// The branch an agent works on: the dispatch's, else `gt/<name>/<bead[..8]>`.
pub fn agent_branch(request: &StartAgentRequest) -> String {
    request.agent.branch.clone().filter(|b| !b.trim().is_empty()).unwrap_or_else(|| {
        let bead: String = request.agent.bead_id.chars().take(8).collect();
        format!("gt/{}/{}", request.agent.name, bead)
    })
}

/// An agent's handle on its session and the town.
pub struct AgentIo {
    pub(super) container: Container,
    pub(super) generation: u64,
    pub(super) request: StartAgentRequest,
    pub(super) session_id: String,
    pub(super) db: Arc<Mutex<SessionDb>>,
}

impl AgentIo {
    pub fn request(&self) -> &StartAgentRequest {
        &self.request
    }
    pub fn agent_id(&self) -> &str {
        &self.request.agent.agent_id
    }
    pub fn role(&self) -> AgentRole {
        self.request.agent.role
    }
    pub fn session_id(&self) -> &str {
        &self.session_id
    }
    pub fn now(&self) -> Timestamp {
        self.container.now()
    }

    /// An SDK-style activity event (clears a pending idle timer).
    pub fn activity(&self, event_type: &str, active_tools: &[&str]) {
        let tools = active_tools.iter().map(|t| (*t).to_owned()).collect();
        self.container.record_activity(self.agent_id(), self.generation, event_type, tools);
    }

    /// The session's SDK server stops answering: a stop cannot finish
    /// aborting it, so the stop leaves it `stopping` (see `Container::stop`).
    pub fn wedge(&self) {
        self.container.wedge(self.agent_id(), self.generation);
    }

    /// Write an assistant turn into the session database.
    pub fn assistant_turn(&self, text: &str) {
        let now = self.now();
        let r =
            self.db.lock().unwrap_or_else(|p| p.into_inner()).append(&self.session_id, TurnRole::Assistant, text, now);
        if let Err(e) = r {
            tracing::warn!(agent = self.agent_id(), error = %e, "could not record an assistant turn");
        }
        self.activity("message.updated", &[]);
    }

    async fn tool(&self, call: TownCall) -> Result<TownReply, LinkError> {
        self.container.authed(call).await
    }

    /// `gt_done`, naming the bead this session was dispatched for: a session
    /// the town has since replaced (its re-dispatch never reached us) must not
    /// have its PR filed under the agent's new hook.
    pub async fn done(&self, mut body: DoneBody) -> Result<(), LinkError> {
        if !self.request.agent.bead_id.is_empty() {
            body.bead_id = Some(self.request.agent.bead_id.clone());
        }
        self.tool(TownCall::Done(self.container.agent_addr(&self.request), body)).await.map(|_| ())
    }

    /// `gt_request_changes` (refinery).
    pub async fn request_changes(&self, body: RequestChangesBody) -> Result<RequestChangesReply, LinkError> {
        match self.tool(TownCall::RequestChanges(self.container.agent_addr(&self.request), body)).await? {
            TownReply::RequestChanges(r) => Ok(r),
            other => Err(LinkError::BadAnswer(format!("{other:?}"))),
        }
    }

    /// `gt_escalate`.
    pub async fn escalate(&self, body: EscalationBody) -> Result<IdReply, LinkError> {
        match self.tool(TownCall::Escalate(self.container.agent_addr(&self.request), body)).await? {
            TownReply::Id(r) => Ok(r),
            other => Err(LinkError::BadAnswer(format!("{other:?}"))),
        }
    }

    /// `gt_checkpoint`.
    pub async fn checkpoint(&self, data: serde_json::Value) -> Result<(), LinkError> {
        let call = TownCall::Checkpoint(self.container.agent_addr(&self.request), CheckpointBody { data });
        self.tool(call).await.map(|_| ())
    }
}

// ------------------------------------------------------------------ PR hook

/// What an agent asks the forge for when it opens a PR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrRequest {
    pub rig_id: String,
    pub bead_id: String,
    pub agent_id: String,
    pub branch: String,
    pub target_branch: Option<String>,
    pub title: String,
}

/// Opens a PR and answers its URL (`gh pr create` upstream).
pub trait PrOpener: Send + Sync {
    fn open_pr<'a>(&'a self, pr: &'a PrRequest) -> SendFuture<'a, Result<String, String>>;
}

/// Makes PR URLs from a pattern without any forge: `{rig}`, `{bead}`,
/// `{branch}` and `{n}` (a counter from 1) are substituted. The town only
/// accepts `https://` PR URLs.
#[derive(Debug)]
pub struct PatternPrOpener {
    pattern: String,
    next: AtomicU64,
}

impl PatternPrOpener {
    pub fn new(pattern: impl Into<String>) -> Self {
        PatternPrOpener { pattern: pattern.into(), next: AtomicU64::new(1) }
    }
}

impl Default for PatternPrOpener {
    fn default() -> Self {
        PatternPrOpener::new("https://forge.test/gastown/{rig}/pull/{n}")
    }
}

impl PrOpener for PatternPrOpener {
    fn open_pr<'a>(&'a self, pr: &'a PrRequest) -> SendFuture<'a, Result<String, String>> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let url = self
            .pattern
            .replace("{rig}", &pr.rig_id)
            .replace("{bead}", &pr.bead_id)
            .replace("{branch}", &pr.branch)
            .replace("{n}", &n.to_string());
        Box::pin(async move { Ok(url) })
    }
}

// --------------------------------------------------------- scripted agents

/// Parameters of the scripted behaviour model. Ranges are inclusive
/// milliseconds; probabilities are in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptConfig {
    pub seed: u64,
    /// Startup time (a slow start is a wide or high range).
    pub start_ms: (u64, u64),
    pub p_start_failure: f64,
    /// How long the first turn works before the outcome.
    pub work_ms: (u64, u64),
    /// While working, an activity event this often.
    pub activity_every_ms: u64,
    /// Reply time for later turns (nudges, mayor messages).
    pub reply_ms: (u64, u64),
    pub p_done: f64,
    pub p_open_pr: f64,
    pub p_done_twice: f64,
    /// Per turn: the session dies mid-turn.
    pub p_crash: f64,
    /// Per turn: the session goes silent forever (after one SDK event).
    pub p_hang: f64,
    /// Per first turn: the session wedges at startup, before its first SDK
    /// event, and never ends the turn; the container still heart-beats it.
    /// Upstream's event subscription can end this way (container spec §2.4:
    /// no stream returned, or a stream that ends cleanly), which leaves GUPP
    /// nothing but the dispatch time to measure the silence from.
    pub p_silent_hang: f64,
    /// Per hang (either kind): the wedged session never answers the abort of
    /// a stop, so the stop leaves it `stopping` for good (upstream's
    /// `stopAgent` awaits `session.abort` before the session is `exited`).
    pub p_stop_hangs: f64,
    /// Refinery: request changes instead of approving.
    pub p_request_changes: f64,
    /// Where a role behaves differently from the values above (say,
    /// refineries that crash while polecats work well).
    pub roles: BTreeMap<AgentRole, RoleScript>,
}

/// One role's departures from the base [`ScriptConfig`]; `None` keeps the
/// base value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoleScript {
    pub start_ms: Option<(u64, u64)>,
    pub p_start_failure: Option<f64>,
    pub work_ms: Option<(u64, u64)>,
    pub p_done: Option<f64>,
    pub p_open_pr: Option<f64>,
    pub p_done_twice: Option<f64>,
    pub p_crash: Option<f64>,
    pub p_hang: Option<f64>,
    pub p_request_changes: Option<f64>,
}

impl Default for ScriptConfig {
    fn default() -> Self {
        ScriptConfig {
            seed: 1,
            start_ms: (100, 2_000),
            p_start_failure: 0.0,
            work_ms: (30_000, 300_000),
            activity_every_ms: 20_000,
            reply_ms: (1_000, 10_000),
            p_done: 1.0,
            p_open_pr: 1.0,
            p_done_twice: 0.0,
            p_crash: 0.0,
            p_hang: 0.0,
            p_silent_hang: 0.0,
            p_stop_hangs: 0.0,
            p_request_changes: 0.0,
            roles: BTreeMap::new(),
        }
    }
}

/// Creates [`ScriptedAgent`]s. Each session's RNG is derived from the
/// configured seed, the agent id and the session's generation, so a run is
/// reproducible from its seed.
impl ScriptConfig {
    /// The same agents with their faults taken away: no failed or slow
    /// starts, crashes, hangs of either kind (nor stops that hang), forgotten
    /// PRs or `gt_done`s, or second `gt_done`s. Work and review behaviour
    /// stay as they were.
    pub fn without_faults(&self) -> ScriptConfig {
        let fast = ScriptConfig::default().start_ms.1;
        let quick = |(lo, hi): (u64, u64)| (lo.min(fast), hi.min(fast));
        // A role's faults go too; what it keeps (work and review) still applies.
        let roles = self
            .roles
            .iter()
            .map(|(role, r)| {
                let kept = RoleScript {
                    start_ms: r.start_ms.map(quick),
                    work_ms: r.work_ms,
                    p_request_changes: r.p_request_changes,
                    ..RoleScript::default()
                };
                (*role, kept)
            })
            .collect();
        ScriptConfig {
            start_ms: quick(self.start_ms),
            p_start_failure: 0.0,
            p_done: 1.0,
            p_open_pr: 1.0,
            p_done_twice: 0.0,
            p_crash: 0.0,
            p_hang: 0.0,
            p_silent_hang: 0.0,
            p_stop_hangs: 0.0,
            roles,
            ..self.clone()
        }
    }

    /// The behaviour of one role's sessions: the base with the role's own
    /// values put in (and no per-role table left).
    pub fn for_role(&self, role: AgentRole) -> ScriptConfig {
        let base = ScriptConfig { roles: BTreeMap::new(), ..self.clone() };
        let Some(r) = self.roles.get(&role) else { return base };
        ScriptConfig {
            start_ms: r.start_ms.unwrap_or(base.start_ms),
            p_start_failure: r.p_start_failure.unwrap_or(base.p_start_failure),
            work_ms: r.work_ms.unwrap_or(base.work_ms),
            p_done: r.p_done.unwrap_or(base.p_done),
            p_open_pr: r.p_open_pr.unwrap_or(base.p_open_pr),
            p_done_twice: r.p_done_twice.unwrap_or(base.p_done_twice),
            p_crash: r.p_crash.unwrap_or(base.p_crash),
            p_hang: r.p_hang.unwrap_or(base.p_hang),
            p_request_changes: r.p_request_changes.unwrap_or(base.p_request_changes),
            ..base
        }
    }
}

pub struct ScriptedRuntime {
    pub config: ScriptConfig,
    pub pr: Arc<dyn PrOpener>,
    /// Once set, sessions misbehave no more from their next start or turn on
    /// (the simulator's heal: after it no new fault may fire). A turn under
    /// way keeps its fate: a session already hung stays hung.
    pub heal: Arc<AtomicBool>,
}

impl ScriptedRuntime {
    pub fn new(config: ScriptConfig) -> Self {
        ScriptedRuntime { config, pr: Arc::new(PatternPrOpener::default()), heal: Arc::default() }
    }
    pub fn with_pr_opener(mut self, pr: Arc<dyn PrOpener>) -> Self {
        self.pr = pr;
        self
    }
    /// Share the heal switch (it outlives containers: each boot builds a runtime).
    pub fn with_heal_switch(mut self, heal: Arc<AtomicBool>) -> Self {
        self.heal = heal;
        self
    }
}

/// FNV-1a: a stable hash for seeding (std's hashers are randomly keyed).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

impl AgentRuntime for ScriptedRuntime {
    fn create(&self, spec: &SessionSpec) -> Box<dyn Agent> {
        let seed = self.config.seed ^ fnv(spec.request.agent.agent_id.as_bytes()).rotate_left(17) ^ spec.generation;
        Box::new(ScriptedAgent {
            config: self.config.for_role(spec.request.agent.role),
            pr: Arc::clone(&self.pr),
            rng: SmallRng::seed_from_u64(seed),
            turns: 0,
            heal: Arc::clone(&self.heal),
        })
    }
}

/// One scripted session.
pub struct ScriptedAgent {
    config: ScriptConfig,
    pr: Arc<dyn PrOpener>,
    rng: SmallRng,
    turns: u32,
    heal: Arc<AtomicBool>,
}

enum Fate {
    Normal,
    Crash,
    /// Silent after one SDK event.
    Hang,
    /// Silent from the start: not a single SDK event (first turns only).
    SilentHang,
}

impl ScriptedAgent {
    fn ms(&mut self, (lo, hi): (u64, u64)) -> u64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi)
        }
    }
    /// Called as a start or a turn begins: after the heal, no new fault.
    fn follow_heal(&mut self) {
        if self.heal.load(Ordering::Relaxed) {
            self.config = self.config.without_faults();
        }
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }
    /// One draw decides a turn's fate; a silent hang only befalls a first turn.
    fn fate(&mut self, first: bool) -> Fate {
        let r: f64 = self.rng.random();
        let silent = if first { self.config.p_silent_hang } else { 0.0 };
        if r < self.config.p_crash {
            Fate::Crash
        } else if r < self.config.p_crash + self.config.p_hang {
            Fate::Hang
        } else if r < self.config.p_crash + self.config.p_hang + silent {
            Fate::SilentHang
        } else {
            Fate::Normal
        }
    }

    /// The session goes silent for good (this never returns); maybe so
    /// wedged that a stop's abort never answers either.
    async fn hang(&mut self, io: &AgentIo) {
        if self.chance(self.config.p_stop_hangs) {
            io.wedge();
        }
        std::future::pending::<()>().await;
    }

    /// Work for `total` ms, with activity events along the way.
    async fn work(&mut self, io: &AgentIo, total: u64, tools: &[&str]) {
        let step = self.config.activity_every_ms.max(1);
        let mut left = total;
        io.activity("session.status", tools);
        while left > 0 {
            let d = left.min(step);
            tokio::time::sleep(Duration::from_millis(d)).await;
            left -= d;
            io.activity("message.part.updated", tools);
        }
    }

    async fn first_turn(&mut self, io: &AgentIo) -> TurnEnd {
        let work = self.ms(self.config.work_ms);
        let fate = self.fate(true);
        match fate {
            Fate::Crash => {
                let partial = self.rng.random_range(0..=work);
                self.work(io, partial, &["bash"]).await;
                return TurnEnd::Crash("scripted crash".into());
            }
            Fate::Hang => {
                io.activity("session.status", &["bash"]);
                self.hang(io).await;
            }
            Fate::SilentHang => self.hang(io).await,
            Fate::Normal => {}
        }
        match io.role() {
            AgentRole::Mayor => {
                let d = self.ms(self.config.reply_ms);
                self.work(io, d, &[]).await;
                io.assistant_turn("Mayor ready. Waiting for instructions.");
            }
            AgentRole::Polecat => {
                self.work(io, work, &["bash", "edit"]).await;
                if self.chance(self.config.p_done) {
                    let branch = agent_branch(io.request());
                    let pr_url =
                        if self.chance(self.config.p_open_pr) { self.open_pr(io, &branch).await } else { None };
                    let twice = self.chance(self.config.p_done_twice);
                    self.done(io, &branch, pr_url.clone(), "work complete").await;
                    if twice {
                        self.done(io, &branch, pr_url, "work complete (again)").await;
                    }
                    io.assistant_turn(&format!("Pushed {branch} and called gt_done."));
                } else {
                    io.assistant_turn("Stopping without calling gt_done.");
                }
            }
            AgentRole::Refinery => {
                self.work(io, work, &["bash"]).await;
                let branch = agent_branch(io.request());
                let pr_url = io.request().agent.pr_url.clone();
                if self.chance(self.config.p_request_changes) {
                    let body = RequestChangesBody { feedback: "scripted review: please rework".into(), files: vec![] };
                    match io.request_changes(body).await {
                        Ok(r) => io.assistant_turn(&format!("Requested changes ({}).", r.rework_bead_id)),
                        Err(e) => io.assistant_turn(&format!("request-changes failed: {e}")),
                    }
                } else {
                    io.assistant_turn("Review approved.");
                }
                if self.chance(self.config.p_done) {
                    self.done(io, &branch, pr_url, "review complete").await;
                }
            }
        }
        TurnEnd::Idle
    }

    async fn open_pr(&mut self, io: &AgentIo, branch: &str) -> Option<String> {
        let a = &io.request().agent;
        let req = PrRequest {
            rig_id: a.rig_id.clone(),
            bead_id: a.bead_id.clone(),
            agent_id: a.agent_id.clone(),
            branch: branch.to_owned(),
            target_branch: a.target_branch.clone(),
            title: format!("{} ({})", a.name, a.bead_id),
        };
        match self.pr.open_pr(&req).await {
            Ok(url) => Some(url),
            Err(e) => {
                io.assistant_turn(&format!("Could not open a PR: {e}"));
                None
            }
        }
    }

    async fn done(&mut self, io: &AgentIo, branch: &str, pr_url: Option<String>, summary: &str) {
        let body = DoneBody { branch: branch.to_owned(), pr_url, summary: Some(summary.to_owned()), bead_id: None };
        if let Err(e) = io.done(body).await {
            io.assistant_turn(&format!("gt_done failed: {e}"));
        }
    }

    async fn later_turn(&mut self, io: &AgentIo, prompt: &str) -> TurnEnd {
        match self.fate(false) {
            Fate::Crash => return TurnEnd::Crash("scripted crash".into()),
            Fate::Hang => {
                io.activity("session.status", &[]);
                self.hang(io).await;
            }
            Fate::SilentHang | Fate::Normal => {}
        }
        let d = self.ms(self.config.reply_ms);
        self.work(io, d, &[]).await;
        let head: String = prompt.chars().take(60).collect();
        io.assistant_turn(&format!("Noted: {head}"));
        TurnEnd::Idle
    }
}

impl Agent for ScriptedAgent {
    fn start<'a>(&'a mut self, _io: &'a AgentIo) -> SendFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.follow_heal();
            let d = self.ms(self.config.start_ms);
            tokio::time::sleep(Duration::from_millis(d)).await;
            if self.chance(self.config.p_start_failure) {
                return Err("scripted start failure".into());
            }
            Ok(())
        })
    }

    fn turn<'a>(&'a mut self, io: &'a AgentIo, prompt: &'a str) -> SendFuture<'a, TurnEnd> {
        Box::pin(async move {
            self.follow_heal();
            self.turns += 1;
            // A resumed mayor's first turn is a message, not the initial prompt.
            let first = self.turns == 1 && (io.role() != AgentRole::Mayor || prompt == io.request().agent.prompt);
            if first {
                self.first_turn(io).await
            } else {
                self.later_turn(io, prompt).await
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_defaults_to_name_and_bead_prefix() {
        let mut req = super::super::tests::request("a1", AgentRole::Polecat);
        req.agent.branch = None;
        req.agent.name = "toast".into();
        req.agent.bead_id = "0123456789abcdef".into();
        assert_eq!(agent_branch(&req), "gt/toast/01234567");
        req.agent.branch = Some("feature/x".into());
        assert_eq!(agent_branch(&req), "feature/x");
    }

    #[tokio::test]
    async fn pattern_opener_numbers_prs() {
        let o = PatternPrOpener::default();
        let pr = PrRequest {
            rig_id: "r1".into(),
            bead_id: "b".into(),
            agent_id: "a".into(),
            branch: "gt/x".into(),
            target_branch: None,
            title: "t".into(),
        };
        assert_eq!(o.open_pr(&pr).await.unwrap(), "https://forge.test/gastown/r1/pull/1");
        assert_eq!(o.open_pr(&pr).await.unwrap(), "https://forge.test/gastown/r1/pull/2");
        assert!(
            crate::model::pr_url::PrUrl::parse(&o.open_pr(&pr).await.unwrap()).is_ok(),
            "the town accepts these URLs"
        );
    }

    /// Which agents called gt_done, and with which PR, for a seed.
    async fn outcomes(seed: u64) -> Vec<(String, Option<String>)> {
        use super::super::tests::{rig, sleep_s};
        use crate::container::TownCall;
        let script = ScriptConfig { seed, p_done: 0.5, p_open_pr: 0.5, ..super::super::tests::quick_script() };
        let r = rig(script);
        for i in 0..8 {
            r.c.start(super::super::tests::request(&format!("p{i}"), AgentRole::Polecat)).await.unwrap();
        }
        sleep_s(40).await;
        r.town
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::Done(a, b) => Some((a.agent_id, b.pr_url)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_heal_new_starts_and_turns_misbehave_no_more() {
        use super::super::tests::{quick_script, request, rig_on, sleep_s};
        use super::super::{fake_town::FakeTown, TownCall};
        let script = ScriptConfig { p_start_failure: 1.0, p_done: 0.0, p_hang: 1.0, ..quick_script() };
        let heal = Arc::new(AtomicBool::new(false));
        let runtime = ScriptedRuntime::new(script).with_heal_switch(Arc::clone(&heal));
        let r = rig_on(runtime, FakeTown::new(), |_| {});
        let (c, town) = (&r.c, &r.town);
        assert!(c.start(request("p0", AgentRole::Polecat)).await.is_err(), "every start fails before the heal");
        heal.store(true, Ordering::Relaxed);
        c.start(request("p1", AgentRole::Polecat)).await.expect("no failed start after the heal");
        sleep_s(40).await;
        let done: Vec<String> = town
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::Done(a, b) => Some(format!("{} {}", a.agent_id, b.pr_url.is_some())),
                _ => None,
            })
            .collect();
        assert_eq!(done, vec!["p1 true"], "no hang, no forgotten gt_done or PR");
        let healed = ScriptConfig {
            start_ms: (100, 90_000),
            p_done_twice: 1.0,
            p_crash: 1.0,
            p_silent_hang: 1.0,
            p_stop_hangs: 1.0,
            ..quick_script()
        };
        let h = healed.without_faults();
        assert_eq!((h.start_ms, h.p_done_twice, h.p_crash, h.work_ms), ((100, 2_000), 0.0, 0.0, healed.work_ms));
        assert_eq!((h.p_silent_hang, h.p_stop_hangs), (0.0, 0.0));
    }

    fn scripted(config: ScriptConfig) -> ScriptedAgent {
        ScriptedAgent {
            config,
            pr: Arc::new(PatternPrOpener::default()),
            rng: SmallRng::seed_from_u64(5),
            turns: 0,
            heal: Arc::default(),
        }
    }

    #[test]
    fn a_silent_hang_befalls_first_turns_only_and_shares_the_fate_draw() {
        let mut a = scripted(ScriptConfig { p_silent_hang: 1.0, ..ScriptConfig::default() });
        assert!(matches!(a.fate(true), Fate::SilentHang));
        assert!(matches!(a.fate(false), Fate::Normal), "a later turn has had its SDK events");
        // Crash and hang keep their share of the draw: the same seed gives
        // the same fates with or without a silent hang configured.
        let base = ScriptConfig { p_crash: 0.3, p_hang: 0.3, ..ScriptConfig::default() };
        let (mut with, mut without) = (scripted(ScriptConfig { p_silent_hang: 0.4, ..base.clone() }), scripted(base));
        for _ in 0..200 {
            let (x, y) = (with.fate(true), without.fate(true));
            match (x, y) {
                (Fate::Crash, Fate::Crash) | (Fate::Hang, Fate::Hang) | (Fate::SilentHang, Fate::Normal) => {}
                (x, y) => {
                    panic!("fates diverged: {:?} vs {:?}", std::mem::discriminant(&x), std::mem::discriminant(&y))
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_role_table_changes_only_that_roles_sessions() {
        use super::super::tests::{quick_script, request, rig, sleep_s};
        use crate::container::TownCall;
        let crashing = RoleScript { p_crash: Some(1.0), ..RoleScript::default() };
        let script = ScriptConfig { roles: BTreeMap::from([(AgentRole::Refinery, crashing)]), ..quick_script() };
        let r = rig(script);
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        r.c.start(request("r1", AgentRole::Refinery)).await.unwrap();
        sleep_s(40).await;
        let calls = r.town.calls();
        let done: Vec<&str> = calls
            .iter()
            .filter_map(|c| match c {
                TownCall::Done(a, _) => Some(a.agent_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(done, ["p1"], "the polecat works as the base says; the refinery crashes before gt_done");
    }

    #[test]
    fn for_role_puts_in_the_roles_values_and_healing_commutes_with_it() {
        let every = RoleScript {
            start_ms: Some((60_000, 90_000)),
            p_start_failure: Some(0.5),
            work_ms: Some((1_000, 2_000)),
            p_done: Some(0.25),
            p_open_pr: Some(0.5),
            p_done_twice: Some(0.5),
            p_crash: Some(0.5),
            p_hang: Some(0.25),
            p_request_changes: Some(0.75),
        };
        let base = ScriptConfig { p_crash: 0.1, ..ScriptConfig::default() };
        let c = ScriptConfig { roles: BTreeMap::from([(AgentRole::Refinery, every)]), ..base.clone() };
        let r = c.for_role(AgentRole::Refinery);
        assert_eq!((r.start_ms, r.work_ms, r.p_done, r.p_hang), ((60_000, 90_000), (1_000, 2_000), 0.25, 0.25));
        assert_eq!((r.p_crash, r.p_request_changes, r.p_start_failure), (0.5, 0.75, 0.5));
        assert!(r.roles.is_empty());
        assert_eq!(c.for_role(AgentRole::Polecat), base, "a role without a table runs the base");
        for role in AgentRole::ALL {
            assert_eq!(c.without_faults().for_role(*role), c.for_role(*role).without_faults(), "{role}");
        }
        let healed = c.without_faults().for_role(AgentRole::Refinery);
        assert_eq!((healed.p_crash, healed.p_done, healed.start_ms.1), (0.0, 1.0, 2_000));
        assert_eq!((healed.work_ms, healed.p_request_changes), ((1_000, 2_000), 0.75), "work and review stay");
    }

    #[tokio::test(start_paused = true)]
    async fn done_names_the_bead_the_session_was_dispatched_for() {
        use super::super::tests::{rig, sleep_s};
        use crate::container::TownCall;
        let r = rig(ScriptConfig { p_done_twice: 1.0, ..super::super::tests::quick_script() });
        r.c.start(super::super::tests::request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(40).await;
        let named: Vec<Option<String>> = r
            .town
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::Done(_, b) => Some(b.bead_id),
                _ => None,
            })
            .collect();
        assert_eq!(named, vec![Some("bead-p1".to_owned()); 2], "the town tells this session from a newer dispatch");
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_agents_are_reproducible_from_their_seed() {
        let a = outcomes(11).await;
        assert_eq!(a, outcomes(11).await);
        assert!(!a.is_empty() && a.len() < 8, "the coin is really tossed: {a:?}");
        assert_ne!(a, outcomes(12).await, "another seed, another run");
    }
}
