//! The container registry and boot hydration (spec §2.11).
//!
//! The registry is the list of agents this container is running (starting or
//! running), kept by the town so a new container can bring them back. Each
//! sync replaces the whole list. Syncs run one at a time and each sends the
//! list as it is at send time, so the newest state always lands last (upstream
//! fires them concurrently and a stale list could win).
//!
//! Boot hydration fetches the registry and starts each entry in turn: the
//! mayor resumes its latest session (its initial prompt is not sent again),
//! the others start fresh sessions with their original prompt. Starts that
//! arrive meanwhile wait for hydration to finish.

use super::town_link::{LinkError, TownCall, TownReply};
use super::Container;
use crate::wire::RegistryEntry;

impl Container {
    /// The registry entries for the current state.
    pub fn registry_entries(&self) -> Vec<RegistryEntry> {
        let st = self.st();
        st.agents
            .values()
            .filter(|r| r.live())
            .map(|r| RegistryEntry {
                agent_id: r.request.agent.agent_id.clone(),
                request: r.request.clone(),
                workdir: r.workdir.display().to_string(),
            })
            .collect()
    }

    /// Replace the town's registry with the current list, now.
    pub async fn sync_registry_now(&self) -> Result<(), LinkError> {
        let _one_at_a_time = self.inner.registry_lock.lock().await;
        let Some(town) = self.st().town.clone() else {
            return Err(LinkError::Unauthorized("no town known yet".into()));
        };
        let entries = self.registry_entries();
        let n = entries.len();
        self.authed(TownCall::PutRegistry(town, entries)).await.map(|_| {
            tracing::debug!(entries = n, "registry synced");
        })
    }

    /// Fire-and-forget registry sync.
    pub(super) fn sync_registry(&self) {
        let c = self.clone();
        self.spawn(async move {
            if let Err(e) = c.sync_registry_now().await {
                tracing::warn!(error = %e, "registry sync failed");
            }
        });
    }

    /// Start the container's background work: with a boot environment, the
    /// heartbeat reporter and hydration from the registry (starts wait for
    /// it). Call once, before serving.
    pub fn boot(&self) {
        let Some(env) = self.inner.config.boot.clone() else { return };
        {
            let mut st = self.st();
            st.town = Some(super::TownAddr { api_url: env.api_url, town_id: env.town_id });
            st.token = Some(env.container_token);
        }
        self.ensure_heartbeat();
        self.inner.hydrated.send_replace(false);
        let c = self.clone();
        self.spawn(async move {
            let n = c.hydrate_from_registry().await;
            tracing::info!(started = n, "boot hydration complete");
            c.inner.hydrated.send_replace(true);
        });
    }

    /// Start every agent the town's registry lists; answers how many started.
    pub async fn hydrate_from_registry(&self) -> usize {
        let Some(town) = self.st().town.clone() else { return 0 };
        let entries = match self.authed(TownCall::GetRegistry(town)).await {
            Ok(TownReply::Registry(e)) => e,
            Ok(other) => {
                tracing::warn!(?other, "unexpected registry answer");
                return 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, "registry fetch failed; no hydration");
                return 0;
            }
        };
        let mut started = 0;
        for entry in entries {
            let mut req = entry.request;
            if req.agent.agent_id != entry.agent_id {
                tracing::warn!(entry = %entry.agent_id, "registry entry disagrees with its request; skipped");
                continue;
            }
            // The stored request carries the token of its time; use the current one.
            if let Some(t) = self.container_token() {
                req.container_token = t;
            }
            match self.start_inner(req).await {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(agent_id = %entry.agent_id, error = %e, "hydration start failed"),
            }
        }
        started
    }

    /// Wait until boot hydration is over.
    pub async fn wait_hydrated(&self) {
        let mut rx = self.inner.hydrated.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use crate::container::fake_town::FakeTown;
    use crate::container::session::TurnRole;
    use crate::container::town_link::TownCall;
    use crate::container::{BootEnv, ScriptConfig};
    use crate::model::AgentRole;
    use crate::wire::{ProcessStatus, RegistryEntry};

    fn boot_env() -> BootEnv {
        BootEnv { api_url: "http://town:8787".into(), town_id: "town1".into(), container_token: "tok-boot".into() }
    }

    #[tokio::test(start_paused = true)]
    async fn registry_lists_live_agents_after_each_change() {
        let r = rig(ScriptConfig { work_ms: (600_000, 600_000), ..quick_script() });
        r.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        r.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
        settle().await;
        let ids: Vec<_> = r.town.registry().into_iter().map(|e| e.agent_id).collect();
        assert_eq!(ids, ["m1", "p1"]);
        r.c.stop("p1").unwrap();
        settle().await;
        let ids: Vec<_> = r.town.registry().into_iter().map(|e| e.agent_id).collect();
        assert_eq!(ids, ["m1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn hydration_restarts_what_the_registry_lists_mayor_resumed_others_fresh() {
        // First container: a mayor that talked, a polecat at work.
        let town = FakeTown::new();
        let first = rig_with(ScriptConfig { work_ms: (600_000, 600_000), ..quick_script() }, town.clone(), |_| {});
        first.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
        first.c.start(request("p1", AgentRole::Polecat)).await.unwrap();
        sleep_s(2).await;
        first.c.send_message("m1", "build the thing").unwrap();
        sleep_s(2).await;
        first.c.stop_all().await; // the process goes away (no drain): the registry still lists both
        assert_eq!(town.registry().len(), 2);

        let waiting = |calls: Vec<TownCall>| {
            calls.iter().filter(|c| matches!(c, TownCall::Waiting(a, _) if a.agent_id == "m1")).count()
        };
        let waiting_before = waiting(town.calls());
        // Second container, new disk, same town.
        let second = rig_with(quick_script(), town.clone(), |c| c.boot = Some(boot_env()));
        second.c.boot();
        // A dispatch arriving during hydration waits for it.
        let c = second.c.clone();
        let late = tokio::spawn(async move { c.start(request("p2", AgentRole::Polecat)).await });
        second.c.wait_hydrated().await;
        assert_eq!(second.c.status("m1").unwrap().status, ProcessStatus::Running);
        assert_eq!(second.c.status("p1").unwrap().status, ProcessStatus::Running);
        assert!(late.await.unwrap().is_ok());
        settle().await;
        let mayor = second.c.session_turns("m1");
        let prompts = mayor.iter().filter(|t| t.text == "initial prompt for m1").count();
        assert_eq!(prompts, 1, "resumed, initial prompt not repeated: {mayor:?}");
        assert!(mayor.iter().any(|t| t.text == "build the thing" && t.role == TurnRole::User));
        assert_eq!(second.c.status("m1").unwrap().message_count, 0, "nothing was sent on resume");
        // The turn the first container was in is gone; the resumed mayor is
        // idle and says so (else the town keeps it `working` for good).
        assert_eq!(waiting(town.calls()) - waiting_before, 1, "one /waiting for the resumed mayor");
        let polecat = second.c.session_turns("p1");
        assert_eq!(polecat.len(), 1, "fresh session with its original prompt: {polecat:?}");
        assert_eq!(polecat[0].text, "initial prompt for p1");
        // Hydrated requests carry the current container token.
        let entry: Vec<RegistryEntry> = town.registry();
        let hydrated: Vec<_> = entry.iter().filter(|e| e.agent_id != "p2").collect();
        assert_eq!(hydrated.len(), 2);
        assert!(hydrated.iter().all(|e| e.request.container_token == "tok-boot"));
        assert!(second.c.heartbeat_running());
    }

    #[tokio::test(start_paused = true)]
    async fn hydration_with_an_unreachable_town_opens_the_gate() {
        let town = FakeTown::new();
        town.with(|s| {
            s.unreachable.insert("get-registry");
        });
        let r = rig_with(quick_script(), town, |c| c.boot = Some(boot_env()));
        r.c.boot();
        r.c.wait_hydrated().await;
        assert!(r.c.statuses().is_empty());
        assert!(r.c.start(request("p1", AgentRole::Polecat)).await.is_ok());
    }
}
