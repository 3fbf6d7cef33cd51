//! Graceful drain (spec §2.12), the SIGTERM path, and `stop_all`.
//!
//! Phase 1 tells the town (it stops dispatching and hands out a drain
//! nonce); 1b shortens the idle timers already pending to 10 s; phase 2
//! waits up to 300 s for non-mayor agents to finish by themselves; phase 3
//! freezes whoever is left, saves their work in progress, leaves an eviction
//! note for polecats, snapshots (bounded) and reports `/completed` with
//! reason "container eviction" for non-mayor agents. A final registry sync
//! (awaited, so it is not cut off by the exit) leaves the registry empty.

use super::town_link::TownCall;
use super::Container;
use crate::model::AgentRole;
use crate::town::review::{ExitStatus, EVICTION_REASON};
use crate::wire::{CompletedBody, EvictionContextBody, ProcessStatus, StartAgentRequest};
use tokio::time::Instant;

/// Exit reason of sessions ended by `stop_all`.
pub const REASON_SHUTDOWN: &str = "container shutdown";

/// What a drain did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Phase 1 reached the town.
    pub town_notified: bool,
    /// Idle timers shortened in phase 1b.
    pub timers_shortened: usize,
    /// Milliseconds spent in phase 2.
    pub waited_ms: u64,
    /// Agents frozen in phase 3.
    pub frozen: Vec<String>,
    /// Eviction notes written (polecats whose work was saved).
    pub eviction_contexts: usize,
    /// Phase 3 snapshots that uploaded.
    pub snapshots_uploaded: usize,
    pub final_registry_synced: bool,
}

impl Container {
    /// The SIGTERM path: drain, then stop everything.
    pub async fn shutdown(&self) -> DrainReport {
        let report = self.drain().await;
        self.stop_all().await;
        report
    }

    /// Drain the container. Never fails; every town call's failure is logged.
    pub async fn drain(&self) -> DrainReport {
        let mut report = DrainReport::default();
        let (town, has_agents) = {
            let mut st = self.st();
            st.draining = true;
            (st.town.clone(), !st.agents.is_empty())
        };
        self.stop_heartbeat();
        tracing::info!("drain: started");

        // Phase 1: notify the town (skipped without agents or a known town).
        if let (Some(town), true) = (town, has_agents) {
            match self.authed(TownCall::ContainerEviction(town)).await {
                Ok(_) => report.town_notified = true,
                Err(e) => tracing::warn!(error = %e, "drain phase 1: container-eviction failed"),
            }
        }

        // Phase 1b: idle agents get 10 s instead of their role's timeout.
        let idle: Vec<(String, u64)> = {
            let st = self.st();
            st.agents
                .values()
                .filter(|r| r.role() != AgentRole::Mayor && r.idle.is_some())
                .map(|r| (r.request.agent.agent_id.clone(), r.generation))
                .collect()
        };
        let short = self.inner.config.timings.draining_idle;
        for (id, generation) in &idle {
            self.arm_idle_timer(id, *generation, Some(short));
        }
        report.timers_shortened = idle.len();

        // Phase 2: wait for non-mayor agents to finish by themselves.
        let t = self.inner.config.timings.clone();
        let began = Instant::now();
        while began.elapsed() < t.drain_wait {
            let (active, all_idle) = {
                let st = self.st();
                let active: Vec<_> = st.agents.values().filter(|r| r.role() != AgentRole::Mayor && r.live()).collect();
                (active.len(), active.iter().all(|r| r.idle.is_some()))
            };
            if active == 0 {
                tracing::info!("drain phase 2: all non-mayor agents are done");
                break;
            }
            let pause = if all_idle { t.drain_poll_idle } else { t.drain_poll };
            tokio::time::sleep(pause.min(t.drain_wait.saturating_sub(began.elapsed()))).await;
        }
        report.waited_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);

        // Phase 3a: freeze the stragglers (timer first, so no exit can race the save).
        let frozen: Vec<StartAgentRequest> = {
            let mut st = self.st();
            st.agents
                .values_mut()
                .filter(|r| r.live())
                .map(|r| {
                    r.halt(ProcessStatus::Exited, EVICTION_REASON);
                    r.request.clone()
                })
                .collect()
        };
        report.frozen = frozen.iter().map(|r| r.agent.agent_id.clone()).collect();
        for req in &frozen {
            let id = &req.agent.agent_id;
            let role = req.agent.role;
            // 3b: save work in progress.
            let saved = match self.inner.runtime.save_wip(req).await {
                Ok(branch) => branch,
                Err(e) => {
                    tracing::warn!(agent_id = %id, error = %e, "drain: saving work in progress failed");
                    None
                }
            };
            // 3c: tell the next polecat where the work is, before reporting the exit.
            if let (AgentRole::Polecat, Some(branch)) = (role, saved) {
                let body =
                    EvictionContextBody { branch, agent_name: req.agent.name.clone(), saved_at: self.now().ms() };
                match self.authed(TownCall::EvictionContext(self.agent_addr(req), body)).await {
                    Ok(_) => report.eviction_contexts += 1,
                    Err(e) => tracing::warn!(agent_id = %id, error = %e, "drain: eviction context failed"),
                }
            }
            // 3d: snapshot, bounded.
            if matches!(self.snapshot_bounded(req).await, super::SnapshotOutcome::Uploaded { .. }) {
                report.snapshots_uploaded += 1;
            }
            // 3e: report the exit (not for the mayor).
            if role != AgentRole::Mayor {
                let body = CompletedBody { status: ExitStatus::Completed, reason: Some(EVICTION_REASON.into()) };
                if let Err(e) = self.authed(TownCall::Completed(self.agent_addr(req), body)).await {
                    tracing::warn!(agent_id = %id, error = %e, "drain: /completed failed");
                }
            }
        }

        // Final registry sync, awaited: the next container must not resurrect these.
        match tokio::time::timeout(t.snapshot_bound, self.sync_registry_now()).await {
            Ok(Ok(())) => report.final_registry_synced = true,
            Ok(Err(e)) => tracing::warn!(error = %e, "drain: final registry sync failed"),
            Err(_) => tracing::warn!("drain: final registry sync timed out"),
        }
        tracing::info!(?report, "drain complete");
        report
    }

    /// End every session now: timers cleared, live sessions exited
    /// ("container shutdown") with a bounded snapshot each. No registry sync
    /// (as upstream: after a drain it is already empty; after a crash-stop
    /// the next boot should bring the agents back).
    pub async fn stop_all(&self) {
        self.stop_heartbeat();
        let live: Vec<StartAgentRequest> = {
            let mut st = self.st();
            let mut live = Vec::new();
            for r in st.agents.values_mut() {
                r.clear_idle();
                if r.live() {
                    r.halt(ProcessStatus::Exited, REASON_SHUTDOWN);
                    live.push(r.request.clone());
                }
            }
            live
        };
        for req in &live {
            self.snapshot_bounded(req).await;
        }
        tracing::info!(stopped = live.len(), "stop_all complete");
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::container::fake_town::FakeTown;
    use crate::container::ScriptConfig;
    use crate::container::StartError;

    fn completed(town: &FakeTown) -> Vec<(String, CompletedBody)> {
        town.calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::Completed(a, b) => Some((a.agent_id, b)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_idle_agents_with_shortened_timers() {
        let r = rig(quick_script());
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(40).await; // done at 30 s, idle timer pending
        assert!(r.c.has_idle_timer("p1"));
        let began = tokio::time::Instant::now();
        let report = r.c.drain().await;
        let took = began.elapsed().as_secs();
        assert!(report.town_notified);
        assert_eq!(report.timers_shortened, 1);
        assert!((10..=11).contains(&took), "phase 1b: 10 s instead of 120 s (took {took} s)");
        assert!(report.frozen.is_empty(), "nothing left to freeze");
        assert_eq!(
            completed(&r.town),
            vec![("p1".to_owned(), CompletedBody { status: ExitStatus::Completed, reason: Some("completed".into()) })]
        );
        assert!(r.town.registry().is_empty());
        assert_eq!(r.c.start(request("p2", AgentRole::Polecat)).await, Err(StartError::Draining));
        assert!(r.c.health().draining);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_phases_freeze_stragglers_with_eviction_context_snapshot_and_completed() {
        // The polecat works for an hour: it is still busy when phase 2 gives up.
        let r = rig(ScriptConfig { work_ms: (3_600_000, 3_600_000), ..quick_script() });
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        r.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
        sleep_s(5).await;
        assert_eq!(r.town.registry().len(), 2);
        let began = tokio::time::Instant::now();
        let report = r.c.drain().await;
        let took = began.elapsed().as_secs();
        assert!((300..=301).contains(&took), "phase 2 waits 300 s (took {took} s)");
        assert!(report.town_notified);
        assert_eq!(report.frozen, ["m1", "p1"]);
        assert_eq!(report.eviction_contexts, 1, "polecats only");
        assert_eq!(report.snapshots_uploaded, 2);
        assert!(report.final_registry_synced);
        let names: Vec<_> = r.town.calls().iter().map(|c| c.name()).collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("container-eviction") < pos("eviction-context"));
        assert!(pos("eviction-context") < pos("completed"), "the note is written before the exit is reported");
        let evicted = completed(&r.town);
        assert_eq!(
            evicted,
            vec![(
                "p1".to_owned(),
                CompletedBody { status: ExitStatus::Completed, reason: Some("container eviction".into()) }
            )],
            "the mayor reports no /completed"
        );
        let ctx: Vec<_> = r
            .town
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::EvictionContext(_, b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(ctx[0].branch, "gt/name-p1/bead-p1");
        assert_eq!(ctx[0].agent_name, "name-p1");
        for id in ["p1", "m1"] {
            let st = r.c.status(id).unwrap();
            assert_eq!((st.status, st.exit_reason.as_deref()), (ProcessStatus::Exited, Some("container eviction")));
        }
        assert!(r.town.registry().is_empty(), "registry empty after the drain");
        assert_eq!(r.town.count("done"), 0, "frozen work does not continue");
        // stop_all afterwards finds nothing live.
        r.c.stop_all().await;
        assert_eq!(r.town.count("put-snapshot"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_polls_every_5s_while_agents_work_then_exits_early() {
        // Work ends 42 s in; the 10 s drain timer then exits the polecat.
        let r = rig(ScriptConfig { work_ms: (42_000, 42_000), ..quick_script() });
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(2).await;
        let began = tokio::time::Instant::now();
        let report = r.c.drain().await;
        let took = began.elapsed().as_secs();
        // Idle at 42 s (40 s into the drain) with a 10 s timer: exits at 50 s;
        // the poll is 1 s once the only agent has a timer, so the drain ends by 51 s.
        assert!((50..=51).contains(&took), "took {took} s");
        assert!(report.frozen.is_empty());
        assert_eq!(r.town.count("done"), 1, "work finished during the drain counts");
        assert_eq!(r.town.count("pending-nudges"), 0, "no nudge fetch while draining");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_without_agents_skips_phase_1_and_stop_all_snapshots() {
        let r = rig(quick_script());
        let report = r.c.drain().await;
        assert!(!report.town_notified);
        assert_eq!(r.town.count("container-eviction"), 0);

        let r = rig(ScriptConfig { work_ms: (3_600_000, 3_600_000), ..quick_script() });
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        settle().await;
        r.c.stop_all().await;
        let st = r.c.status("p1").unwrap();
        assert_eq!((st.status, st.exit_reason.as_deref()), (ProcessStatus::Exited, Some("container shutdown")));
        assert_eq!(r.town.count("put-snapshot"), 1);
        assert!(completed(&r.town).is_empty());
        assert!(!r.c.heartbeat_running());
    }
}
