//! The per-agent lifecycle (spec §2.3.2, §2.13): starting → running →
//! (stopping →) exited, or failed. Starts of one agent are serialized by a
//! per-agent lock; a start replaces a live session (a re-dispatch), and a
//! start still in progress is aborted by the newer one.

use super::agent::{Agent, AgentIo, SessionSpec, TurnEnd};
use super::session::{self, SessionDb, TurnRole};
use super::town_link::{TownCall, TownReply};
use super::{AgentRecord, Container};
use crate::model::AgentRole;
use crate::town::review::ExitStatus;
use crate::wire::{AgentProcessStatus, CompletedBody, ProcessStatus, StartAgentRequest};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("Container is draining; not starting new agents")]
    Draining,
    #[error("invalid start request: {0}")]
    Invalid(String),
    #[error("startup aborted: a newer start or a stop replaced it")]
    Aborted,
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    #[error("agent {0} not found")]
    NotFound(String),
    /// The session never answered the abort: it stays `stopping`.
    #[error("agent {0} did not answer the abort; it stays stopping")]
    AbortHung(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("agent {0} not found")]
    NotFound(String),
    #[error("agent {0} is not running")]
    NotRunning(String),
}

/// Exit reason of a completed (idle-timed-out) session.
pub const REASON_COMPLETED: &str = "completed";
pub const REASON_STOPPED: &str = "stopped";
pub const REASON_STREAM_ERROR: &str = "Event stream error";

fn validate(req: &StartAgentRequest) -> Result<(), StartError> {
    let bad = |what: &str| Err(StartError::Invalid(what.to_owned()));
    if req.agent.agent_id.trim().is_empty() {
        return bad("agent_id is empty");
    }
    if req.town_id.trim().is_empty() {
        return bad("town_id is empty");
    }
    if !req.api_url.starts_with("http://") {
        return bad("api_url must be an http:// URL");
    }
    if req.agent.role != AgentRole::Mayor && req.agent.rig_id.trim().is_empty() {
        return bad("rig_id is empty");
    }
    Ok(())
}

impl Container {
    /// `POST /agents/start`: start (or restart) an agent's session. Answers
    /// once the session is running and its initial prompt is queued.
    ///
    /// The start runs in a task of its own: a caller that gives up (the town's
    /// 60 s request timeout drops the HTTP handler) must not cancel it half
    /// way, which left the record `starting` for good, heart-beating with no
    /// session behind it. Upstream's handler ran on after the town stopped
    /// waiting, and the town counts on that ("started: false, but the agent
    /// may be running").
    pub async fn start(&self, req: StartAgentRequest) -> Result<AgentProcessStatus, StartError> {
        if self.is_draining() {
            return Err(StartError::Draining);
        }
        validate(&req)?;
        self.learn_town(&req);
        let c = self.clone();
        let task = tokio::spawn(async move {
            c.wait_hydrated().await;
            c.start_inner(req).await
        });
        task.await.unwrap_or_else(|e| Err(StartError::Failed(format!("start task ended: {e}"))))
    }

    pub(super) async fn start_inner(&self, req: StartAgentRequest) -> Result<AgentProcessStatus, StartError> {
        let id = req.agent.agent_id.clone();
        // A start still in progress gives way to this one at once.
        let lock = {
            let mut st = self.st();
            if let Some(r) = st.agents.get_mut(&id) {
                if r.status == ProcessStatus::Starting {
                    if let Some(tx) = r.abort_start.take() {
                        let _ = tx.send(());
                    }
                }
            }
            Arc::clone(st.start_locks.entry(id.clone()).or_default())
        };
        let _serial = lock.lock().await;
        let (generation, abort_rx, replaced) = {
            let mut st = self.st();
            if st.draining {
                return Err(StartError::Draining);
            }
            // A re-dispatch replaces the running session (no /completed: the town knows).
            let replaced = match st.agents.get_mut(&id) {
                Some(r) if r.live() => {
                    r.halt(ProcessStatus::Exited, REASON_STOPPED);
                    Some(r.request.clone())
                }
                _ => None,
            };
            st.next_generation += 1;
            let generation = st.next_generation;
            let (tx, rx) = oneshot::channel();
            let workdir = session::agent_home(&self.inner.config.data_dir, &id);
            st.agents.insert(
                id.clone(),
                AgentRecord {
                    request: req.clone(),
                    workdir,
                    status: ProcessStatus::Starting,
                    generation,
                    session_id: None,
                    resumed: false,
                    started_at: self.now(),
                    last_activity_at: None,
                    last_event_type: None,
                    last_event_at: None,
                    active_tools: Vec::new(),
                    message_count: 0,
                    exit_reason: None,
                    idle: None,
                    driver: None,
                    mailbox: None,
                    abort_start: Some(tx),
                    db: None,
                    wedged: false,
                },
            );
            (generation, rx, replaced)
        };
        if let Some(old) = replaced {
            tracing::info!(agent_id = %id, "re-dispatch replaces the running session");
            self.snapshot_in_background(old);
        }
        let result = tokio::select! {
            // Biased: a fixed branch order keeps the simulator deterministic.
            biased;
            r = self.bring_up(&req, generation) => r,
            _ = abort_rx => Err(StartError::Aborted),
        };
        let status = {
            let mut st = self.st();
            let ours = st.agents.get_mut(&id).filter(|r| r.generation == generation);
            match (&result, ours) {
                (Ok(()), Some(r)) => Ok(r.process_status()),
                (Err(StartError::Aborted), Some(r)) => {
                    // Drop our record unless something else (a stop) already settled it.
                    if r.status == ProcessStatus::Starting {
                        st.agents.remove(&id);
                    }
                    Err(StartError::Aborted)
                }
                (Err(e), Some(r)) => {
                    r.halt(ProcessStatus::Failed, &e.to_string());
                    Err(e.clone())
                }
                (Ok(()), None) => Err(StartError::Aborted),
                (Err(e), None) => Err(e.clone()),
            }
        };
        match &status {
            Ok(_) => tracing::info!(agent_id = %id, generation, "agent started"),
            Err(e) => tracing::warn!(agent_id = %id, error = %e, "agent start did not complete"),
        }
        self.sync_registry();
        status
    }

    /// Hydrate, open the session, start the agent, go running, queue the prompt.
    async fn bring_up(&self, req: &StartAgentRequest, generation: u64) -> Result<(), StartError> {
        let id = &req.agent.agent_id;
        let path = session::db_path(&self.inner.config.data_dir, id);
        if !path.exists() {
            self.hydrate(req, &path).await;
        }
        let db = match SessionDb::open(&path) {
            Ok(db) => db,
            Err(e) => {
                // A snapshot that will not open: start fresh and drop the stored copy.
                tracing::warn!(agent_id = %id, error = %e, "session database unusable; starting a fresh one");
                session::remove_files(&path).map_err(|e| StartError::Failed(e.to_string()))?;
                let c = self.clone();
                let addr = self.agent_addr(req);
                self.spawn(async move {
                    if let Err(e) = c.authed(TownCall::DeleteSnapshot(addr)).await {
                        tracing::warn!(error = %e, "could not delete the stale snapshot");
                    }
                });
                SessionDb::open(&path).map_err(|e| StartError::Failed(e.to_string()))?
            }
        };
        let now = self.now();
        let resumed_session = if req.agent.role == AgentRole::Mayor {
            db.latest_session().map_err(|e| StartError::Failed(e.to_string()))?
        } else {
            None
        };
        let resumed = resumed_session.is_some();
        let session_id = match resumed_session {
            Some(s) => s,
            None => db.new_session(now).map_err(|e| StartError::Failed(e.to_string()))?,
        };
        let db = Arc::new(Mutex::new(db));
        let spec = SessionSpec { request: req.clone(), resumed, generation };
        let mut agent = self.inner.runtime.create(&spec);
        let io = AgentIo {
            container: self.clone(),
            generation,
            request: req.clone(),
            session_id: session_id.clone(),
            db: Arc::clone(&db),
        };
        agent.start(&io).await.map_err(StartError::Failed)?;

        let mut st = self.st();
        let r = match st.agents.get_mut(id) {
            Some(r) if r.generation == generation && r.status == ProcessStatus::Starting => r,
            _ => return Err(StartError::Aborted),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if !resumed {
            // The initial prompt is the session's first user turn. A resumed
            // session already has it: sending it again would duplicate it.
            let write = db.lock().unwrap_or_else(|p| p.into_inner()).append(
                &session_id,
                TurnRole::User,
                &req.agent.prompt,
                now,
            );
            write.map_err(|e| StartError::Failed(e.to_string()))?;
            let _ = tx.send(req.agent.prompt.clone());
            r.message_count = 1;
        }
        r.status = ProcessStatus::Running;
        r.session_id = Some(session_id);
        r.resumed = resumed;
        r.abort_start = None;
        r.mailbox = Some(tx);
        r.db = Some(db);
        r.last_activity_at = Some(now);
        let driver = tokio::spawn(self.clone().drive(id.clone(), generation, agent, io, rx, resumed));
        r.driver = Some(driver.abort_handle());
        Ok(())
    }

    /// Fetch the stored snapshot into place (errors only logged: start fresh).
    async fn hydrate(&self, req: &StartAgentRequest, path: &std::path::Path) {
        let id = &req.agent.agent_id;
        match self.authed(TownCall::GetSnapshot(self.agent_addr(req))).await {
            Ok(TownReply::Snapshot(Some(snap))) if !snap.bytes.is_empty() => {
                if let Some(v) = snap.version {
                    let mut st = self.st();
                    st.last_snapshot_version = st.last_snapshot_version.max(v);
                }
                match session::install_snapshot(path, &snap.bytes) {
                    Ok(()) => {
                        tracing::info!(agent_id = %id, bytes = snap.bytes.len(), "session hydrated from snapshot")
                    }
                    Err(e) => tracing::warn!(agent_id = %id, error = %e, "could not write the snapshot"),
                }
            }
            Ok(TownReply::Snapshot(_)) => tracing::debug!(agent_id = %id, "no stored snapshot"),
            Ok(other) => tracing::warn!(agent_id = %id, ?other, "unexpected snapshot answer"),
            Err(e) => tracing::warn!(agent_id = %id, error = %e, "snapshot fetch failed; starting without history"),
        }
    }

    /// The session's driver: one turn per prompt, in order.
    async fn drive(
        self,
        id: String,
        generation: u64,
        mut agent: Box<dyn Agent>,
        io: AgentIo,
        mut rx: mpsc::UnboundedReceiver<String>,
        resumed: bool,
    ) {
        // A resumed session runs no turn at start (upstream only sends it the
        // model, with `noReply`), so it is idle at once: a resumed mayor
        // reports `/waiting`. Without it, a mayor whose turn a crash cut off
        // stayed `working` in the town for good, on the active cadence.
        if resumed && rx.is_empty() {
            self.on_idle(&id, generation).await;
        }
        while let Some(prompt) = rx.recv().await {
            match agent.turn(&io, &prompt).await {
                TurnEnd::Idle => {
                    // Queued prompts mean the session is not idle yet.
                    if rx.is_empty() {
                        self.on_idle(&id, generation).await;
                    }
                }
                TurnEnd::Crash(detail) => {
                    self.on_crash(&id, generation, &detail);
                    return;
                }
            }
        }
    }

    /// `POST /agents/:id/stop`: end the session without `/completed` (the
    /// town asked for it). Answers whether a live session was stopped.
    ///
    /// A wedged session never answers the abort (upstream awaits
    /// `session.abort` between `stopping` and `exited`): its stream is cut,
    /// but it stays `stopping` for good, neither heart-beaten nor synced to
    /// the registry nor snapshotted, until a new start replaces it. The
    /// caller gets an error instead of upstream's request that never answers.
    pub fn stop(&self, agent_id: &str) -> Result<bool, StopError> {
        let req = {
            let mut st = self.st();
            let r = st.agents.get_mut(agent_id).ok_or_else(|| StopError::NotFound(agent_id.to_owned()))?;
            if !r.live() {
                return Ok(false);
            }
            if r.wedged {
                r.halt(ProcessStatus::Stopping, REASON_STOPPED);
                r.exit_reason = None;
                tracing::warn!(agent_id, "stop: the wedged session never answers the abort");
                return Err(StopError::AbortHung(agent_id.to_owned()));
            }
            r.halt(ProcessStatus::Exited, REASON_STOPPED);
            r.request.clone()
        };
        tracing::info!(agent_id, "agent stopped");
        self.sync_registry();
        self.snapshot_in_background(req);
        Ok(true)
    }

    /// `POST /agents/:id/message`: a user turn for a running session. The
    /// mayor snapshots right after the message is accepted.
    pub fn send_message(&self, agent_id: &str, prompt: &str) -> Result<(), MessageError> {
        let now = self.now();
        let mayor_req = {
            let mut st = self.st();
            let r = st.agents.get_mut(agent_id).ok_or_else(|| MessageError::NotFound(agent_id.to_owned()))?;
            let not_running = || MessageError::NotRunning(agent_id.to_owned());
            if r.status != ProcessStatus::Running {
                return Err(not_running());
            }
            let (Some(tx), Some(db), Some(sid)) = (r.mailbox.as_ref(), r.db.as_ref(), r.session_id.as_deref()) else {
                return Err(not_running());
            };
            if let Err(e) = db.lock().unwrap_or_else(|p| p.into_inner()).append(sid, TurnRole::User, prompt, now) {
                tracing::warn!(agent_id, error = %e, "could not record the user turn");
            }
            tx.send(prompt.to_owned()).map_err(|_| not_running())?;
            r.message_count = r.message_count.saturating_add(1);
            r.last_activity_at = Some(now);
            r.clear_idle();
            (r.role() == AgentRole::Mayor).then(|| r.request.clone())
        };
        if let Some(req) = mayor_req {
            self.snapshot_in_background(req);
        }
        Ok(())
    }

    /// The exit path (idle timer fired, or a nudge could not be delivered):
    /// exited(completed), `/completed`, registry sync, snapshot.
    pub(super) fn exit_agent(&self, agent_id: &str, generation: u64) {
        let req = {
            let mut st = self.st();
            let Some(r) = st.agents.get_mut(agent_id) else { return };
            if r.generation != generation || r.status != ProcessStatus::Running {
                return;
            }
            r.halt(ProcessStatus::Exited, REASON_COMPLETED);
            r.request.clone()
        };
        tracing::info!(agent_id, "agent exited (completed)");
        let c = self.clone();
        let addr = self.agent_addr(&req);
        self.spawn(async move {
            let body = CompletedBody { status: ExitStatus::Completed, reason: Some(REASON_COMPLETED.into()) };
            if let Err(e) = c.authed(TownCall::Completed(addr, body)).await {
                tracing::warn!(error = %e, "could not report /completed");
            }
        });
        self.sync_registry();
        self.snapshot_in_background(req);
    }

    /// The session died: failed, `/completed` with status failed. Unlike
    /// upstream the registry is synced too, so a dead session is not
    /// resurrected by the next boot. No snapshot (as upstream).
    fn on_crash(&self, agent_id: &str, generation: u64, detail: &str) {
        let req = {
            let mut st = self.st();
            let Some(r) = st.agents.get_mut(agent_id) else { return };
            if r.generation != generation || r.status != ProcessStatus::Running {
                return;
            }
            r.halt(ProcessStatus::Failed, REASON_STREAM_ERROR);
            r.request.clone()
        };
        tracing::warn!(agent_id, detail, "agent session crashed");
        let c = self.clone();
        let addr = self.agent_addr(&req);
        self.spawn(async move {
            let body = CompletedBody { status: ExitStatus::Failed, reason: Some(REASON_STREAM_ERROR.into()) };
            if let Err(e) = c.authed(TownCall::Completed(addr, body)).await {
                tracing::warn!(error = %e, "could not report /completed (failed)");
            }
        });
        self.sync_registry();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::container::ScriptConfig;
    use std::time::Duration;

    fn completed_calls(t: &super::super::fake_town::FakeTown) -> Vec<CompletedBody> {
        t.calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::Completed(_, b) => Some(b),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_start_runs_then_idle_timer_exits_with_completed() {
        let r = rig(quick_script());
        let s = r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        assert_eq!(s.status, ProcessStatus::Running);
        assert_eq!(s.message_count, 1);
        // 30 s of work, then gt_done and idle; 120 s later the session exits.
        sleep_s(31).await;
        assert_eq!(r.town.count("done"), 1);
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Running);
        sleep_s(110).await;
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Running, "the polecat timer is 120 s");
        sleep_s(11).await;
        let st = r.c.status("p1").unwrap();
        assert_eq!((st.status, st.exit_reason.as_deref()), (ProcessStatus::Exited, Some("completed")));
        assert_eq!(
            completed_calls(&r.town),
            vec![CompletedBody { status: ExitStatus::Completed, reason: Some("completed".into()) }]
        );
        assert!(r.town.registry().is_empty(), "exit syncs the registry");
        assert!(r.town.snapshot_version("p1").is_some(), "exit snapshots the session");
        let turns = r.c.session_turns("p1");
        assert_eq!(turns[0].text, "initial prompt for p1");
        assert_eq!(turns[0].role, TurnRole::User);
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_stop_exits_without_completed() {
        let r = rig(quick_script());
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        settle().await;
        assert_eq!(r.town.registry().len(), 1, "start syncs the registry");
        assert_eq!(r.c.stop("p1"), Ok(true));
        settle().await;
        let st = r.c.status("p1").unwrap();
        assert_eq!((st.status, st.exit_reason.as_deref()), (ProcessStatus::Exited, Some("stopped")));
        sleep_s(300).await;
        assert!(completed_calls(&r.town).is_empty());
        assert_eq!(r.town.count("done"), 0, "a stopped session does no more work");
        assert!(r.town.registry().is_empty());
        assert_eq!(r.c.stop("p1"), Ok(false));
        assert_eq!(r.c.stop("nobody"), Err(StopError::NotFound("nobody".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_redispatch_replaces_a_running_session() {
        let r = rig(quick_script());
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(10).await;
        let first = r.c.status("p1").unwrap();
        let mut again = request("p1", AgentRole::Polecat);
        again.agent.prompt = "second dispatch".into();
        let second = r.c.start(again).await.unwrap();
        assert_eq!(second.status, ProcessStatus::Running);
        assert_ne!(first.session_id, second.session_id, "a fresh session");
        // Only the new session's work lands: one gt_done, 30 s after the re-dispatch.
        sleep_s(25).await;
        assert_eq!(r.town.count("done"), 0, "the replaced session was stopped mid-work");
        sleep_s(10).await;
        assert_eq!(r.town.count("done"), 1);
        assert_eq!(r.c.session_turns("p1")[0].text, "second dispatch");
        assert!(completed_calls(&r.town).is_empty(), "replacing is not an exit");
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_a_newer_start_aborts_a_slow_start() {
        let slow = ScriptConfig { start_ms: (50_000, 50_000), ..quick_script() };
        let r = rig(slow);
        let c = r.c.clone();
        let first = tokio::spawn(async move { c.start(request("p1", AgentRole::Polecat)).await });
        sleep_s(1).await;
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Starting);
        assert_eq!(r.c.health().agents, 1, "starting agents count as active");
        let second = r.c.start(request("p1", AgentRole::Polecat)).await;
        assert_eq!(first.await.unwrap(), Err(StartError::Aborted));
        assert_eq!(second.unwrap().status, ProcessStatus::Running);
    }

    /// The town gives up on `/agents/start` after 60 s and drops the request;
    /// a slower start must still come up (spec: "started:false but the agent
    /// may be running"). A start cancelled with its caller left a record
    /// `starting` forever that heart-beat on, so the town saw a working agent
    /// with no session until GUPP stopped it two hours later.
    #[tokio::test(start_paused = true)]
    async fn lifecycle_a_start_outlives_a_caller_that_gave_up() {
        let r = rig(ScriptConfig { start_ms: (90_000, 90_000), ..quick_script() });
        let gave_up = tokio::time::timeout(Duration::from_secs(60), r.c.start(request("p1", AgentRole::Polecat))).await;
        assert!(gave_up.is_err(), "the caller timed out");
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Starting);
        sleep_s(31).await;
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Running, "the start went on without its caller");
        sleep_s(31).await;
        assert_eq!(r.town.count("done"), 1, "and the session did its work");
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_stop_while_starting_aborts_the_start_and_keeps_the_record() {
        let r = rig(ScriptConfig { start_ms: (50_000, 50_000), ..quick_script() });
        let c = r.c.clone();
        let start = tokio::spawn(async move { c.start(request("p1", AgentRole::Polecat)).await });
        sleep_s(1).await;
        assert_eq!(r.c.stop("p1"), Ok(true));
        assert_eq!(start.await.unwrap(), Err(StartError::Aborted));
        let st = r.c.status("p1").unwrap();
        assert_eq!((st.status, st.exit_reason.as_deref()), (ProcessStatus::Exited, Some("stopped")));
        sleep_s(100).await;
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Exited, "the aborted start never comes up");
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_start_failure_is_failed() {
        let r = rig(ScriptConfig { p_start_failure: 1.0, ..quick_script() });
        let e = r.c.start(request("p1", AgentRole::Polecat)).await.unwrap_err();
        assert_eq!(e, StartError::Failed("scripted start failure".into()));
        let st = r.c.status("p1").unwrap();
        assert_eq!((st.status, st.exit_reason.as_deref()), (ProcessStatus::Failed, Some("scripted start failure")));
        settle().await;
        assert!(r.town.registry().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_crash_reports_failed_and_hang_keeps_running() {
        let r = rig(ScriptConfig { p_crash: 1.0, ..quick_script() });
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(31).await;
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Failed);
        assert_eq!(completed_calls(&r.town)[0].status, ExitStatus::Failed);

        // A hang leaves one SDK event behind; a silent hang (wedged at
        // startup) not one, so the town sees no `last_event_at` at all.
        for (script, events) in [
            (ScriptConfig { p_hang: 1.0, ..quick_script() }, true),
            (ScriptConfig { p_silent_hang: 1.0, ..quick_script() }, false),
        ] {
            let r = rig(script);
            r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
            sleep_s(3_600).await;
            assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Running);
            assert_eq!(r.town.count("done"), 0);
            let beats = heartbeats_of(&r.town, "p1");
            assert!(beats.len() >= 100, "a hung session still heart-beats: {}", beats.len());
            assert!(beats.iter().all(|b| b.last_event_at.is_some() == events), "{beats:?}");
            assert_eq!(r.c.stop("p1"), Ok(true), "an ordinary stop ends it");
            assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Exited);
        }
    }

    fn heartbeats_of(t: &super::super::fake_town::FakeTown, agent: &str) -> Vec<crate::wire::HeartbeatBody> {
        t.calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::Heartbeat(a, b) if a.agent_id == agent => Some(b),
                _ => None,
            })
            .collect()
    }

    /// A wedged session never answers the abort: the stop leaves it
    /// `stopping`, no longer heart-beaten, still in the registry, and a
    /// later stop changes nothing; a new start replaces it.
    #[tokio::test(start_paused = true)]
    async fn lifecycle_a_stop_that_hangs_leaves_the_session_stopping() {
        for script in [
            ScriptConfig { p_hang: 1.0, p_stop_hangs: 1.0, ..quick_script() },
            ScriptConfig { p_silent_hang: 1.0, p_stop_hangs: 1.0, ..quick_script() },
        ] {
            let r = rig(script);
            r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
            sleep_s(60).await;
            assert_eq!(r.c.stop("p1"), Err(StopError::AbortHung("p1".into())));
            let st = r.c.status("p1").unwrap();
            assert_eq!((st.status, st.exit_reason), (ProcessStatus::Stopping, None));
            assert_eq!(r.c.health().agents, 0, "a stopping session is not live");
            let beats = heartbeats_of(&r.town, "p1").len();
            sleep_s(600).await;
            assert_eq!(heartbeats_of(&r.town, "p1").len(), beats, "no heartbeat for a stopping session");
            assert_eq!(r.town.registry().len(), 1, "the abort never finished: no registry sync");
            assert_eq!(r.c.stop("p1"), Ok(false), "stopping is not live: a second stop is a no-op");
            assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Stopping);
            assert!(completed_calls(&r.town).is_empty());
            let again = r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
            assert_eq!(again.status, ProcessStatus::Running, "a re-dispatch replaces the stuck record");
        }
        let r = rig(ScriptConfig { p_hang: 1.0, ..quick_script() });
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(60).await;
        assert_eq!(r.c.stop("p1"), Ok(true), "without the wedge a hung session stops");
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_refuses_bad_requests_and_messages() {
        let r = rig(quick_script());
        let mut bad = request("p1", AgentRole::Polecat);
        bad.agent.rig_id = String::new();
        assert!(matches!(r.c.start(bad).await, Err(StartError::Invalid(_))));
        assert_eq!(r.c.send_message("p1", "hi"), Err(MessageError::NotFound("p1".into())));
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        r.c.stop("p1").unwrap();
        assert_eq!(r.c.send_message("p1", "hi"), Err(MessageError::NotRunning("p1".into())));
    }
}
