//! Idle timers and pending-nudge delivery (spec §2.5).
//!
//! When a non-mayor session goes idle the container first asks the town for
//! pending nudges (not while draining): the first one is delivered as a
//! message and the session keeps going. Otherwise an idle timer is armed
//! (polecat 120 s, refinery 600 s, 10 s while draining); when it fires and
//! the session is still running, the exit path runs. Any activity clears the
//! timer. The mayor has no timer: its idle is reported as `/waiting`.

use super::town_link::{AgentAddr, TownCall, TownReply};
use super::{Container, IdleTimer};
use crate::model::AgentRole;
use crate::wire::{NudgeDeliveredBody, ProcessStatus, WaitingBody};
use std::time::Duration;

/// The first pause before a lost `/waiting` is sent again; it doubles up to
/// [`WAITING_RETRY_MAX`].
const WAITING_RETRY_FIRST: Duration = Duration::from_secs(5);
const WAITING_RETRY_MAX: Duration = Duration::from_secs(60);

/// Which idle a `/waiting` reports: the session and how many messages it had.
struct MayorIdle {
    agent_id: String,
    generation: u64,
    messages: u32,
}

impl Container {
    /// The idle timeout for a role; `None` for the mayor.
    pub fn idle_timeout(&self, role: AgentRole, draining: bool) -> Option<Duration> {
        let t = &self.inner.config.timings;
        match role {
            AgentRole::Mayor => None,
            _ if draining => Some(t.draining_idle),
            AgentRole::Refinery => Some(t.refinery_idle),
            AgentRole::Polecat => Some(t.polecat_idle),
        }
    }

    /// The session of `agent_id` (generation `generation`) went idle.
    pub(super) async fn on_idle(&self, agent_id: &str, generation: u64) {
        let (req, draining, messages) = {
            let st = self.st();
            let Some(r) = st.agents.get(agent_id) else { return };
            if r.generation != generation || r.status != ProcessStatus::Running {
                return;
            }
            (r.request.clone(), st.draining, r.message_count)
        };
        let addr = self.agent_addr(&req);
        if req.agent.role == AgentRole::Mayor {
            let c = self.clone();
            let idle = MayorIdle { agent_id: agent_id.to_owned(), generation, messages };
            let fired_at = self.now().ms();
            self.spawn(async move { c.report_waiting(idle, addr, fired_at).await });
            return;
        }
        // While draining, outbound calls may hang: treat as "no nudges".
        if !draining {
            let nudges = match self.authed(TownCall::PendingNudges(addr.clone())).await {
                Ok(TownReply::Nudges(n)) => n,
                Ok(other) => {
                    tracing::warn!(?other, "unexpected pending-nudges answer");
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pending-nudges fetch failed; treating as none");
                    Vec::new()
                }
            };
            if let Some(nudge) = nudges.into_iter().next() {
                match self.send_message(agent_id, &nudge.message) {
                    Ok(()) => {
                        let c = self.clone();
                        self.spawn(async move {
                            let body = NudgeDeliveredBody { nudge_id: nudge.nudge_id };
                            if let Err(e) = c.authed(TownCall::NudgeDelivered(addr, body)).await {
                                tracing::warn!(error = %e, "could not report nudge-delivered");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(agent_id, error = %e, "nudge delivery failed; exiting");
                        self.exit_agent(agent_id, generation);
                    }
                }
                return;
            }
        }
        self.arm_idle_timer(agent_id, generation, None);
    }

    /// Tell the town the mayor went idle, again and again while the town
    /// cannot be reached and the mayor stays idle. The town has no rule that
    /// idles a mayor, so a `/waiting` lost in a partition would leave it
    /// `working` (and the alarm on the active cadence) for good. A newer
    /// message ends the retries: its turn reports its own idle, and the
    /// town's `firedAt` guard ignores a stale one that lands late.
    async fn report_waiting(&self, idle: MayorIdle, addr: AgentAddr, fired_at: i64) {
        let mut pause = WAITING_RETRY_FIRST;
        loop {
            match self.authed(TownCall::Waiting(addr.clone(), WaitingBody { fired_at: Some(fired_at) })).await {
                Ok(_) => return,
                Err(e) if !e.is_transient() => {
                    tracing::warn!(error = %e, "the town refused /waiting");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, retry_in_s = pause.as_secs(), "could not report /waiting"),
            }
            tokio::time::sleep(pause).await;
            if !self.still_idle(&idle) {
                return;
            }
            pause = (pause * 2).min(WAITING_RETRY_MAX);
        }
    }

    /// The same session is running and has had no message since it went idle.
    fn still_idle(&self, idle: &MayorIdle) -> bool {
        self.st().agents.get(&idle.agent_id).is_some_and(|r| {
            r.generation == idle.generation && r.status == ProcessStatus::Running && r.message_count == idle.messages
        })
    }

    /// (Re)arm the idle timer of a running session; `duration` overrides the
    /// role's timeout (the drain's 10 s).
    pub(super) fn arm_idle_timer(&self, agent_id: &str, generation: u64, duration: Option<Duration>) {
        let mut st = self.st();
        let draining = st.draining;
        st.next_timer += 1;
        let timer_id = st.next_timer;
        let Some(r) = st.agents.get_mut(agent_id) else { return };
        if r.generation != generation || r.status != ProcessStatus::Running {
            return;
        }
        let Some(d) = duration.or_else(|| self.idle_timeout(r.role(), draining)) else { return };
        r.clear_idle();
        let c = self.clone();
        let id = agent_id.to_owned();
        let task = tokio::spawn(async move {
            tokio::time::sleep(d).await;
            c.idle_timer_fired(&id, generation, timer_id);
        });
        r.idle = Some(IdleTimer { id: timer_id, task: task.abort_handle() });
    }

    fn idle_timer_fired(&self, agent_id: &str, generation: u64, timer_id: u64) {
        {
            let mut st = self.st();
            let Some(r) = st.agents.get_mut(agent_id) else { return };
            if r.idle.as_ref().map(|t| t.id) != Some(timer_id) {
                return; // cleared or replaced meanwhile
            }
            r.idle = None;
        }
        tracing::info!(agent_id, "idle timeout fired");
        self.exit_agent(agent_id, generation);
    }

    /// Agents with a pending idle timer.
    pub fn has_idle_timer(&self, agent_id: &str) -> bool {
        self.st().agents.get(agent_id).is_some_and(|r| r.idle.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::container::fake_town::FakeTown;
    use crate::container::{ScriptConfig, TownCall};
    use crate::model::AgentRole;
    use crate::wire::{PendingNudge, ProcessStatus};

    /// Seconds from start until the session exits.
    async fn exits_after(role: AgentRole, script: ScriptConfig) -> u64 {
        let r = rig(script);
        r.c.start(request("a1", role)).await.unwrap();
        for s in 1..=2_000 {
            sleep_s(1).await;
            if r.c.status("a1").unwrap().status == ProcessStatus::Exited {
                return s;
            }
        }
        panic!("never exited");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timers_per_role() {
        // 30 s of work, then the role's idle timeout.
        assert_eq!(exits_after(AgentRole::Polecat, quick_script()).await, 30 + 120);
        assert_eq!(exits_after(AgentRole::Refinery, quick_script()).await, 30 + 600);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_mayor_has_no_timer_and_reports_waiting() {
        let r = rig(quick_script());
        r.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
        sleep_s(3_600).await;
        assert_eq!(r.c.status("m1").unwrap().status, ProcessStatus::Running);
        assert!(!r.c.has_idle_timer("m1"));
        assert_eq!(r.town.count("waiting"), 1);
        r.c.send_message("m1", "what's up?").unwrap();
        sleep_s(5).await;
        assert_eq!(r.town.count("waiting"), 2, "every idle is reported");
        let turns = r.c.session_turns("m1");
        assert_eq!(turns.len(), 4, "prompt, reply, message, reply: {turns:?}");
        assert_eq!(turns[2].text, "what's up?");
    }

    /// The `firedAt` of every `/waiting` the town was sent, in order.
    fn waiting_fired_at(town: &FakeTown) -> Vec<Option<i64>> {
        town.calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::Waiting(_, b) => Some(b.fired_at),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_mayor_waiting_lost_to_an_unreachable_town_is_sent_again_until_it_lands() {
        let r = rig(quick_script());
        r.town.with(|s| s.unreachable.insert("waiting"));
        r.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
        // Idle after its 1 s turn; then tries 5, 10, 20, 40, 60, 60 … s apart.
        sleep_s(1 + 5 + 10 + 20 + 40 + 1).await;
        let sent = waiting_fired_at(&r.town);
        assert_eq!(sent.len(), 5, "the report and four retries: {sent:?}");
        assert!(sent.iter().all(|f| *f == sent[0]), "every retry reports the same idle");
        r.town.with(|s| s.unreachable.remove("waiting"));
        sleep_s(60).await;
        let landed = r.town.log().iter().filter(|(_, c, ok)| c.name() == "waiting" && *ok).count();
        assert_eq!(landed, 1, "the town is back: the next retry lands");
        let total = r.town.count("waiting");
        sleep_s(3_600).await;
        assert_eq!(r.town.count("waiting"), total, "nothing more once it landed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_message_ends_the_retries_of_an_older_waiting() {
        let r = rig(quick_script());
        r.town.with(|s| s.unreachable.insert("waiting"));
        r.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
        // Idle after its 1 s turn, retried at 6 s.
        sleep_s(1 + 5 + 1).await;
        let first = waiting_fired_at(&r.town);
        assert_eq!(first.len(), 2);
        r.c.send_message("m1", "and now?").unwrap();
        sleep_s(600).await;
        let after: Vec<_> = waiting_fired_at(&r.town).into_iter().skip(first.len()).collect();
        assert!(after.len() >= 5, "the new idle is retried too: {after:?}");
        assert!(after.iter().all(|f| *f > first[0]), "the old idle is no longer reported: {after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_mayor_waiting_is_not_retried_but_a_server_error_is() {
        for (status, retried) in [(400, false), (404, false), (503, true)] {
            let r = rig(quick_script());
            r.town.with(|s| s.refused.insert("waiting", status));
            r.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
            sleep_s(600).await;
            let sent = r.town.count("waiting");
            assert_eq!(sent > 1, retried, "status {status}: {sent} /waiting calls");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_delivers_pending_nudges_before_arming_the_timer() {
        let r = rig(quick_script());
        r.town.with(|s| {
            s.nudges.insert(
                "p1".into(),
                vec![PendingNudge { nudge_id: "n1".into(), message: "please also fix the docs".into() }],
            )
        });
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(31).await;
        // The nudge went in as a user turn, was acknowledged, and the session kept going.
        assert!(r.c.session_turns("p1").iter().any(|t| t.text == "please also fix the docs"));
        assert_eq!(r.town.count("nudge-delivered"), 1);
        assert!(r.town.with(|s| s.nudges.get("p1").is_none_or(Vec::is_empty)));
        assert_eq!(r.c.status("p1").unwrap().message_count, 2);
        // Reply (1 s), next idle: no nudges left → 120 s timer.
        sleep_s(1).await;
        assert!(r.c.has_idle_timer("p1"));
        sleep_s(120).await;
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Exited);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_activity_clears_the_timer() {
        let r = rig(quick_script());
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(31).await;
        assert!(r.c.has_idle_timer("p1"));
        r.c.send_message("p1", "one more thing").unwrap();
        assert!(!r.c.has_idle_timer("p1"), "a message means the agent works again");
        sleep_s(100).await;
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Running);
        sleep_s(25).await;
        assert_eq!(r.c.status("p1").unwrap().status, ProcessStatus::Exited, "1 s reply + 120 s timer");
    }
}
