//! What the town keeps on behalf of its container, whose disk is disposable:
//! the registry of running agents (for boot hydration), each agent's session
//! snapshot, and eviction notes on the beads whose work was force-saved.

use super::ctx::Ctx;
use super::{agents, beads, Town};
use crate::error::{Result, TownError};
use crate::store::{get_setting, put_setting};
use crate::wire::{EvictionContextBody, RegistryEntry, SnapshotMeta};
use rusqlite::{params, OptionalExtension};

const KEY_REGISTRY: &str = "container:registry";

/// Why a snapshot upload was not stored.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotRefused {
    /// A snapshot with this version or a newer one is already stored.
    NotNewer { stored: i64 },
}

impl Town {
    /// The registry as last synced by the container (empty if never).
    pub fn container_registry(&mut self) -> Result<Vec<RegistryEntry>> {
        self.read(|cx| match get_setting(cx.conn, KEY_REGISTRY)? {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| TownError::Corrupt { what: "container registry", detail: e.to_string() }),
        })
    }

    /// Full replacement, last write wins (the container always sends all it runs).
    pub fn set_container_registry(&mut self, entries: &[RegistryEntry]) -> Result<()> {
        let json = serde_json::to_string(entries)?;
        self.tx(|cx| put_setting(cx.conn, KEY_REGISTRY, &json))
    }

    /// Store a session snapshot unless a newer-or-equal version is stored:
    /// a delayed upload never replaces a later one (upstream's last-write-wins race).
    pub fn put_session_snapshot(
        &mut self,
        agent: &str,
        version: i64,
        bytes: &[u8],
    ) -> Result<std::result::Result<(), SnapshotRefused>> {
        self.tx(|cx| {
            if let Some(stored) = snapshot_version(cx, agent)? {
                if stored >= version {
                    return Ok(Err(SnapshotRefused::NotNewer { stored }));
                }
            }
            cx.conn
                .prepare_cached(
                    "INSERT INTO session_snapshots (agent_id, version, bytes, stored_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT(agent_id) DO UPDATE SET version = ?2, bytes = ?3, stored_at = ?4",
                )?
                .execute(params![agent, version, bytes, cx.now.0])?;
            Ok(Ok(()))
        })
    }

    pub fn session_snapshot(&mut self, agent: &str) -> Result<Option<(SnapshotMeta, Vec<u8>)>> {
        self.read(|cx| {
            let row = cx
                .conn
                .prepare_cached("SELECT version, bytes FROM session_snapshots WHERE agent_id = ?1")?
                .query_row([agent], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                .optional()?;
            Ok(row.map(|(version, bytes)| {
                (SnapshotMeta { agent_id: agent.to_owned(), version, size_bytes: bytes.len() as u64 }, bytes)
            }))
        })
    }

    /// Forget a snapshot (the container found it unusable). True if one was stored.
    pub fn delete_session_snapshot(&mut self, agent: &str) -> Result<bool> {
        self.tx(|cx| {
            Ok(cx.conn.prepare_cached("DELETE FROM session_snapshots WHERE agent_id = ?1")?.execute([agent])? > 0)
        })
    }

    /// The container force-saved an evicted agent's work on a branch: tell the
    /// next agent on the hooked bead where to pick it up.
    pub fn write_eviction_context(&mut self, agent: &str, ctx: &EvictionContextBody) -> Result<Option<String>> {
        self.tx(|cx| write_eviction_note(cx, agent, ctx))
    }
}

fn snapshot_version(cx: &Ctx<'_>, agent: &str) -> Result<Option<i64>> {
    Ok(cx
        .conn
        .prepare_cached("SELECT version FROM session_snapshots WHERE agent_id = ?1")?
        .query_row([agent], |r| r.get(0))
        .optional()?)
}

fn write_eviction_note(cx: &mut Ctx<'_>, agent: &str, ctx: &EvictionContextBody) -> Result<Option<String>> {
    if ctx.branch.trim().is_empty() {
        return Err(TownError::invalid("eviction context", "branch is empty"));
    }
    let a = agents::get(cx, agent)?;
    let Some(bead_id) = a.current_hook_bead_id else { return Ok(None) };
    let bead = beads::get(cx, &bead_id)?;
    let note = format!(
        "\n\n---\nContainer eviction note: {} was evicted at {} with work in progress. \
         Its work was pushed to branch `{}`; pull that branch and continue from there.",
        ctx.agent_name,
        crate::time::Timestamp(ctx.saved_at),
        ctx.branch
    );
    let body = format!("{}{note}", bead.body.unwrap_or_default());
    cx.conn
        .prepare_cached("UPDATE beads SET body = ?2, updated_at = ?3 WHERE bead_id = ?1")?
        .execute(params![bead_id, body, cx.now.0])?;
    beads::log_event(cx, &bead_id, Some(agent), "eviction_context", None, Some(&ctx.branch), None)?;
    Ok(Some(bead_id))
}

#[cfg(test)]
mod tests {
    use crate::town::tests::town;
    use crate::wire::EvictionContextBody;

    #[test]
    fn snapshot_an_older_upload_never_replaces_a_newer_one() {
        let (mut t, _clock, _rig) = town();
        assert!(t.put_session_snapshot("a1", 10, b"new").unwrap().is_ok());
        assert!(t.put_session_snapshot("a1", 9, b"old").unwrap().is_err());
        assert!(t.put_session_snapshot("a1", 10, b"same").unwrap().is_err());
        assert_eq!(t.session_snapshot("a1").unwrap().unwrap().1, b"new");
        assert!(t.put_session_snapshot("a1", 11, b"newer").unwrap().is_ok());
        assert!(t.delete_session_snapshot("a1").unwrap());
        assert!(t.session_snapshot("a1").unwrap().is_none());
    }

    #[test]
    fn registry_is_replaced_whole() {
        let (mut t, _clock, _rig) = town();
        assert!(t.container_registry().unwrap().is_empty());
        t.set_container_registry(&[]).unwrap();
        assert!(t.container_registry().unwrap().is_empty());
    }

    #[test]
    fn eviction_context_appends_a_note_to_the_hooked_bead() {
        let (mut t, _clock, _rig) = town();
        let (slung, _) = t
            .sling_bead(crate::town::SlingBead { rig_id: "rig-1".into(), title: "x".into(), ..Default::default() })
            .unwrap();
        let agent = slung.agent_id.unwrap();
        let ctx = EvictionContextBody { branch: "gt/toast/abc".into(), agent_name: "Toast".into(), saved_at: 0 };
        assert_eq!(t.write_eviction_context(&agent, &ctx).unwrap(), Some(slung.bead_id.clone()));
        let body = t.bead(&slung.bead_id).unwrap().body.unwrap();
        assert!(body.contains("gt/toast/abc") && body.contains("eviction"), "{body}");
        let empty = EvictionContextBody { branch: " ".into(), ..ctx };
        assert!(t.write_eviction_context(&agent, &empty).is_err());
    }
}
