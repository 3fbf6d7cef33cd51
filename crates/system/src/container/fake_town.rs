//! An in-memory town for the container's tests (and any test that wants a
//! container without a real town): records every call with its token and
//! outcome, keeps a registry, versioned snapshots and pending nudges, and
//! can refuse tokens or play unreachable for chosen calls.

use super::town_link::{LinkError, StoredSnapshot, TownCall, TownLink, TownReply};
use crate::net::SendFuture;
use crate::wire::{
    ContainerReadyReply, DrainStatusReply, EvictionReply, HeartbeatReply, IdReply, PendingNudge, RegistryEntry,
    RequestChangesReply, TokenReply,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The fake town's state; tests read and set it through [`FakeTown::with`].
#[derive(Debug, Default)]
pub struct FakeState {
    /// Every call: the token it carried, the call, and whether it was answered successfully.
    pub log: Vec<(String, TownCall, bool)>,
    pub registry: Vec<RegistryEntry>,
    /// agent id → (version, bytes).
    pub snapshots: BTreeMap<String, (i64, Vec<u8>)>,
    /// agent id → nudges not yet delivered.
    pub nudges: BTreeMap<String, Vec<PendingNudge>>,
    /// Returned in heartbeat replies while set.
    pub drain_nonce: Option<String>,
    /// `None`: every token is accepted. `Some(set)`: only these (plus the
    /// refresh route, which accepts any token, as the town accepts expired ones).
    pub valid_tokens: Option<BTreeSet<String>>,
    /// Call names (see [`TownCall::name`]) answered as unreachable.
    pub unreachable: BTreeSet<&'static str>,
    /// Call names refused with the given HTTP status.
    pub refused: BTreeMap<&'static str, u16>,
    issued: u32,
}

#[derive(Debug, Default)]
pub struct FakeTown {
    state: Mutex<FakeState>,
}

impl FakeTown {
    pub fn new() -> Arc<FakeTown> {
        Arc::new(FakeTown::default())
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every call received, in order.
    pub fn calls(&self) -> Vec<TownCall> {
        self.with(|s| s.log.iter().map(|(_, c, _)| c.clone()).collect())
    }

    pub fn log(&self) -> Vec<(String, TownCall, bool)> {
        self.with(|s| s.log.clone())
    }

    /// How many calls named `name` arrived (successful or not).
    pub fn count(&self, name: &str) -> usize {
        self.with(|s| s.log.iter().filter(|(_, c, _)| c.name() == name).count())
    }

    pub fn registry(&self) -> Vec<RegistryEntry> {
        self.with(|s| s.registry.clone())
    }

    pub fn snapshot_version(&self, agent_id: &str) -> Option<i64> {
        self.with(|s| s.snapshots.get(agent_id).map(|(v, _)| *v))
    }

    fn answer(s: &mut FakeState, token: &str, call: &TownCall) -> Result<TownReply, LinkError> {
        if s.unreachable.contains(call.name()) {
            return Err(LinkError::Unreachable(format!("{} is down", call.name())));
        }
        if let Some(status) = s.refused.get(call.name()) {
            return Err(LinkError::Refused { status: *status, message: format!("{} refused", call.name()) });
        }
        let refresh = matches!(call, TownCall::RefreshContainerToken(_));
        if !refresh && s.valid_tokens.as_ref().is_some_and(|v| !v.contains(token)) {
            return Err(LinkError::Unauthorized("token expired".into()));
        }
        Ok(match call {
            TownCall::Heartbeat(..) => TownReply::Heartbeat(HeartbeatReply { drain_nonce: s.drain_nonce.clone() }),
            TownCall::Done(..)
            | TownCall::Completed(..)
            | TownCall::Waiting(..)
            | TownCall::Checkpoint(..)
            | TownCall::EvictionContext(..) => TownReply::Ack,
            TownCall::RequestChanges(a, _) => {
                TownReply::RequestChanges(RequestChangesReply { rework_bead_id: format!("rework-{}", a.agent_id) })
            }
            TownCall::PendingNudges(a) => TownReply::Nudges(s.nudges.get(&a.agent_id).cloned().unwrap_or_default()),
            TownCall::NudgeDelivered(a, b) => {
                if let Some(list) = s.nudges.get_mut(&a.agent_id) {
                    list.retain(|n| n.nudge_id != b.nudge_id);
                }
                TownReply::Ack
            }
            TownCall::GetSnapshot(a) => TownReply::Snapshot(
                s.snapshots.get(&a.agent_id).map(|(v, b)| StoredSnapshot { version: Some(*v), bytes: b.clone() }),
            ),
            TownCall::PutSnapshot { agent, version, bytes } => {
                if let Some((stored, _)) = s.snapshots.get(&agent.agent_id) {
                    if *version <= *stored {
                        return Err(LinkError::Conflict(format!("version {version} is not newer than {stored}")));
                    }
                }
                s.snapshots.insert(agent.agent_id.clone(), (*version, bytes.clone()));
                TownReply::Ack
            }
            TownCall::DeleteSnapshot(a) => {
                s.snapshots.remove(&a.agent_id);
                TownReply::Ack
            }
            TownCall::Escalate(..) => TownReply::Id(IdReply { id: format!("esc-{}", s.log.len()) }),
            TownCall::ContainerEviction(_) => {
                let nonce = format!("nonce-{}", s.log.len());
                s.drain_nonce = Some(nonce.clone());
                TownReply::Eviction(EvictionReply { nonce })
            }
            TownCall::ContainerReady(_, b) => {
                let cleared = s.drain_nonce.as_deref() == Some(b.nonce.as_str());
                if cleared {
                    s.drain_nonce = None;
                }
                TownReply::Ready(ContainerReadyReply { cleared })
            }
            TownCall::DrainStatus(_) => TownReply::DrainStatus(DrainStatusReply {
                draining: s.drain_nonce.is_some(),
                drain_nonce: s.drain_nonce.clone(),
            }),
            TownCall::GetRegistry(_) => TownReply::Registry(s.registry.clone()),
            TownCall::PutRegistry(_, entries) => {
                s.registry = entries.clone();
                TownReply::Ack
            }
            TownCall::RefreshContainerToken(_) => {
                s.issued += 1;
                let token = format!("tok-refreshed-{}", s.issued);
                if let Some(v) = s.valid_tokens.as_mut() {
                    v.insert(token.clone());
                }
                TownReply::Token(TokenReply { token })
            }
        })
    }
}

impl TownLink for FakeTown {
    fn call<'a>(&'a self, token: &'a str, call: &'a TownCall) -> SendFuture<'a, Result<TownReply, LinkError>> {
        let answer = self.with(|s| {
            let a = FakeTown::answer(s, token, call);
            s.log.push((token.to_owned(), call.clone(), a.is_ok()));
            a
        });
        Box::pin(async move { answer })
    }
}
