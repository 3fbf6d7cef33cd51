//! The heartbeat reporter (spec §2.8): every 30 s, one heartbeat per
//! starting or running agent, carrying the activity watermark. A drain nonce
//! in a reply is answered with `/container-ready`, once per container.
//!
//! Unlike upstream (which starts the reporter only at boot, and only if the
//! boot environment already holds a token), the reporter starts as soon as a
//! town and a token are known: from the boot env, the first start request or
//! a `/refresh-token`. It stops for good when the container drains.

use super::town_link::{TownAddr, TownCall, TownReply};
use super::Container;
use crate::wire::{ContainerReadyBody, HeartbeatBody};
use tokio::time::MissedTickBehavior;

impl Container {
    /// Start the reporter if it is not running and can run.
    pub(super) fn ensure_heartbeat(&self) {
        let mut st = self.st();
        if st.heartbeat.is_some() || st.heartbeat_stopped || st.token.is_none() || st.town.is_none() {
            return;
        }
        let c = self.clone();
        let period = self.inner.config.timings.heartbeat_interval;
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            every.tick().await; // the first tick is immediate; the first beat is one period in
            loop {
                every.tick().await;
                c.heartbeat_round().await;
            }
        });
        st.heartbeat = Some(task.abort_handle());
        tracing::info!("heartbeat reporter started");
    }

    /// Stop the reporter for good (drain, shutdown).
    pub(super) fn stop_heartbeat(&self) {
        let mut st = self.st();
        st.heartbeat_stopped = true;
        if let Some(h) = st.heartbeat.take() {
            h.abort();
        }
    }

    /// Whether the reporter is running.
    pub fn heartbeat_running(&self) -> bool {
        self.st().heartbeat.is_some()
    }

    /// One round: a heartbeat for every starting or running agent.
    pub async fn heartbeat_round(&self) {
        let beats: Vec<_> = {
            let st = self.st();
            st.agents
                .values()
                .filter(|r| r.live())
                .map(|r| {
                    let body = HeartbeatBody {
                        status: Some(r.status),
                        last_event_type: r.last_event_type.clone(),
                        last_event_at: r.last_event_at.map(|t| t.ms()),
                        active_tools: Some(r.active_tools.clone()),
                        message_count: Some(r.message_count),
                        container_instance_id: Some(self.inner.config.instance_id.clone()),
                    };
                    (self.agent_addr(&r.request), body)
                })
                .collect()
        };
        for (addr, body) in beats {
            let town = addr.town.clone();
            match self.authed(TownCall::Heartbeat(addr, body)).await {
                Ok(TownReply::Heartbeat(reply)) => {
                    if let Some(nonce) = reply.drain_nonce {
                        self.acknowledge_ready(town, nonce).await;
                    }
                }
                Ok(other) => tracing::warn!(?other, "unexpected heartbeat answer"),
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    /// Answer a drain nonce with `/container-ready`, once per container
    /// lifetime (a failed attempt is retried on a later heartbeat).
    pub(super) async fn acknowledge_ready(&self, town: TownAddr, nonce: String) {
        let skip = {
            let st = self.st();
            st.ready_acknowledged || st.draining
        };
        if skip {
            return;
        }
        match self.authed(TownCall::ContainerReady(town, ContainerReadyBody { nonce })).await {
            Ok(reply) => {
                tracing::info!(?reply, "container-ready acknowledged");
                self.st().ready_acknowledged = true;
            }
            Err(e) => tracing::warn!(error = %e, "container-ready failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::container::fake_town::FakeTown;
    use crate::container::{ScriptConfig, TownCall};
    use crate::model::AgentRole;
    use crate::wire::ProcessStatus;
    use std::collections::BTreeSet;

    #[tokio::test(start_paused = true)]
    async fn heartbeat_every_30s_with_watermark_for_live_agents() {
        let r = rig(ScriptConfig { p_hang: 0.0, work_ms: (600_000, 600_000), ..quick_script() });
        assert!(!r.c.heartbeat_running(), "no token yet: no reporter");
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        assert!(r.c.heartbeat_running(), "the first start supplies a token: the reporter starts at once");
        sleep_s(29).await;
        assert_eq!(r.town.count("heartbeat"), 0);
        sleep_s(1).await;
        assert_eq!(r.town.count("heartbeat"), 1);
        sleep_s(60).await;
        assert_eq!(r.town.count("heartbeat"), 3);
        let beats: Vec<_> = r
            .town
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::Heartbeat(a, b) => Some((a, b)),
                _ => None,
            })
            .collect();
        let (addr, last) = beats.last().unwrap();
        assert_eq!((addr.rig.as_str(), addr.agent_id.as_str()), ("rig1", "p1"));
        assert_eq!(last.status, Some(ProcessStatus::Running));
        assert_eq!(last.container_instance_id.as_deref(), Some("inst-1"));
        assert_eq!(last.message_count, Some(1));
        assert_eq!(last.last_event_type.as_deref(), Some("message.part.updated"));
        assert_eq!(last.active_tools.as_deref(), Some(&["bash".to_owned(), "edit".to_owned()][..]));
        assert!(last.last_event_at.unwrap() >= T0 + 80_000);
        // A stopped agent is no longer reported.
        r.c.stop("p1").unwrap();
        sleep_s(60).await;
        assert_eq!(r.town.count("heartbeat"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_drain_nonce_answered_with_container_ready_once() {
        let r = rig(ScriptConfig { work_ms: (600_000, 600_000), ..quick_script() });
        r.town.with(|s| s.drain_nonce = Some("nonce-7".into()));
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        r.c.start(request("p2", AgentRole::Polecat)).await.unwrap();
        sleep_s(95).await;
        assert_eq!(r.town.count("heartbeat"), 6);
        let readies: Vec<_> = r
            .town
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                TownCall::ContainerReady(_, b) => Some(b.nonce),
                _ => None,
            })
            .collect();
        assert_eq!(readies, vec!["nonce-7".to_owned()]);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_refreshes_the_token_once_on_401_and_retries() {
        let r = rig_with(ScriptConfig { work_ms: (600_000, 600_000), ..quick_script() }, FakeTown::new(), |_| {});
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(10).await;
        // The container token expires: from now on only refreshed tokens are valid.
        r.town.with(|s| s.valid_tokens = Some(BTreeSet::new()));
        sleep_s(20).await;
        assert_eq!(r.town.count("refresh-container-token"), 1);
        let fresh = r.c.container_token().unwrap();
        assert_ne!(fresh, "tok-0");
        let beats: Vec<_> = r.town.log().into_iter().filter(|(_, c, _)| c.name() == "heartbeat").collect();
        let outcome: Vec<_> = beats.iter().map(|(tok, _, ok)| (tok.as_str(), *ok)).collect();
        assert_eq!(outcome, vec![("tok-0", false), (fresh.as_str(), true)], "refused, refreshed, retried");
        sleep_s(30).await;
        assert_eq!(r.town.count("refresh-container-token"), 1, "the fresh token keeps working");
        assert_eq!(r.town.count("heartbeat"), 3);
    }
}
