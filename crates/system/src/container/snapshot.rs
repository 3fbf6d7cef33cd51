//! Session snapshots to the town (spec §2.10). A snapshot checkpoints the
//! WAL and uploads the main file only if the checkpoint completed; uploads
//! carry a version that only grows within a container (its clock in ms, or
//! one more than the last version when the clock has not moved), so the
//! town can refuse an older upload that arrives after a newer one.

use super::session::{self, CheckpointResult, SnapshotRead};
use super::town_link::{LinkError, TownCall};
use super::Container;
use crate::wire::StartAgentRequest;

/// What a snapshot attempt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// No session database on disk.
    NoDatabase,
    /// The WAL checkpoint was incomplete: nothing uploaded.
    Skipped(CheckpointResult),
    Uploaded {
        version: i64,
        size_bytes: usize,
    },
    /// The town holds a newer snapshot (409).
    Refused(String),
    Failed(String),
    /// The bound ran out first.
    TimedOut,
}

impl Container {
    fn next_snapshot_version(&self) -> i64 {
        let now = self.now().ms();
        let mut st = self.st();
        let v = now.max(st.last_snapshot_version.saturating_add(1));
        st.last_snapshot_version = v;
        v
    }

    /// Snapshot an agent's session database now.
    pub async fn snapshot(&self, req: &StartAgentRequest) -> SnapshotOutcome {
        let id = &req.agent.agent_id;
        let path = session::db_path(&self.inner.config.data_dir, id);
        let taken = self.now();
        let read = session::read_for_snapshot(&path);
        // The version is taken when the bytes are read, not when they land.
        let bytes = match read {
            Ok(SnapshotRead::NoDatabase) => return SnapshotOutcome::NoDatabase,
            Ok(SnapshotRead::Incomplete(r)) => {
                tracing::warn!(agent_id = %id, busy = r.busy, log = r.log, checkpointed = r.checkpointed,
                    "snapshot skipped: wal_checkpoint_incomplete");
                return SnapshotOutcome::Skipped(r);
            }
            Ok(SnapshotRead::Bytes(b)) => b,
            Err(e) => {
                tracing::warn!(agent_id = %id, error = %e, "snapshot failed");
                return SnapshotOutcome::Failed(e.to_string());
            }
        };
        let version = self.next_snapshot_version();
        let size_bytes = bytes.len();
        let call = TownCall::PutSnapshot { agent: self.agent_addr(req), version, bytes };
        match self.authed(call).await {
            Ok(_) => {
                let mut st = self.st();
                let newest = st.snapshots_taken.entry(id.clone()).or_insert(taken);
                *newest = (*newest).max(taken);
                drop(st);
                tracing::info!(agent_id = %id, version, size_bytes, "snapshot saved");
                SnapshotOutcome::Uploaded { version, size_bytes }
            }
            Err(LinkError::Conflict(m)) => {
                tracing::info!(agent_id = %id, version, "snapshot refused: the town holds a newer one");
                SnapshotOutcome::Refused(m)
            }
            Err(e) => {
                tracing::warn!(agent_id = %id, error = %e, "snapshot upload failed");
                SnapshotOutcome::Failed(e.to_string())
            }
        }
    }

    /// [`Container::snapshot`] within the configured bound (drain, stop_all).
    pub(super) async fn snapshot_bounded(&self, req: &StartAgentRequest) -> SnapshotOutcome {
        let bound = self.inner.config.timings.snapshot_bound;
        tokio::time::timeout(bound, self.snapshot(req)).await.unwrap_or(SnapshotOutcome::TimedOut)
    }

    /// Fire-and-forget snapshot (exit, stop, mayor message).
    pub(super) fn snapshot_in_background(&self, req: StartAgentRequest) {
        let c = self.clone();
        self.spawn(async move {
            c.snapshot(&req).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::container::fake_town::FakeTown;
    use crate::container::session::db_path;
    use crate::model::AgentRole;
    use crate::wire::ProcessStatus;

    #[tokio::test(start_paused = true)]
    async fn snapshot_skipped_while_another_connection_holds_wal_frames() {
        let r = rig(quick_script());
        let req = request("m1", AgentRole::Mayor);
        r.c.start(req.clone()).await.unwrap();
        sleep_s(5).await;
        let path = db_path(&r.c.config().data_dir, "m1");
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader.query_row("SELECT count(*) FROM turns", [], |row| row.get(0)).unwrap();
        // The mayor's message writes WAL frames the reader keeps from the main file.
        r.c.send_message("m1", "hello").unwrap();
        let out = r.c.snapshot(&req).await;
        assert!(matches!(out, SnapshotOutcome::Skipped(cp) if !cp.complete()), "{out:?}");
        settle().await;
        assert_eq!(r.town.count("put-snapshot"), 0, "neither this nor the message's snapshot uploaded");
        reader.execute_batch("COMMIT").unwrap();
        assert!(matches!(r.c.snapshot(&req).await, SnapshotOutcome::Uploaded { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_versions_grow_and_older_uploads_are_refused() {
        let r = rig(quick_script());
        let req = request("m1", AgentRole::Mayor);
        r.c.start(req.clone()).await.unwrap();
        settle().await;
        let read_at = r.c.now();
        let SnapshotOutcome::Uploaded { version: v1, .. } = r.c.snapshot(&req).await else { panic!() };
        let SnapshotOutcome::Uploaded { version: v2, .. } = r.c.snapshot(&req).await else { panic!() };
        assert!(v2 > v1, "same clock ms, still a newer version");
        // The version ran ahead of the clock; the read time did not.
        assert_eq!(r.c.last_snapshot_taken("m1"), Some(read_at));
        // Another container uploaded something newer meanwhile.
        r.town.with(|s| s.snapshots.get_mut("m1").unwrap().0 = v2 + 1_000_000);
        sleep_s(5).await;
        assert!(matches!(r.c.snapshot(&req).await, SnapshotOutcome::Refused(_)));
        assert_eq!(r.c.last_snapshot_taken("m1"), Some(read_at), "a refused upload is not the town's copy");
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_mayor_after_each_message_and_on_stop() {
        let r = rig(quick_script());
        r.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
        settle().await;
        assert_eq!(r.town.count("put-snapshot"), 0);
        r.c.send_message("m1", "hi").unwrap();
        settle().await;
        assert_eq!(r.town.count("put-snapshot"), 1);
        r.c.stop("m1").unwrap();
        settle().await;
        assert_eq!(r.town.count("put-snapshot"), 2);
        assert_eq!(r.c.status("m1").unwrap().status, ProcessStatus::Exited);
    }

    #[tokio::test(start_paused = true)]
    async fn hydration_then_resume_does_not_repeat_the_initial_prompt() {
        let town = FakeTown::new();
        let a = rig_with(quick_script(), town.clone(), |_| {});
        assert!(!a.c.start(request("m1", AgentRole::Mayor)).await.unwrap().resumed, "a first session is fresh");
        sleep_s(2).await;
        a.c.send_message("m1", "status?").unwrap();
        sleep_s(2).await;
        a.c.stop("m1").unwrap();
        settle().await;
        let before = a.c.session_turns("m1");
        assert_eq!(before.len(), 4, "{before:?}");

        // A new container on a fresh disk hydrates from the town and resumes.
        let b = rig_with(quick_script(), town.clone(), |_| {});
        let s = b.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
        assert_eq!((s.message_count, s.resumed), (0, true), "nothing re-sent, and the caller is told so");
        sleep_s(5).await;
        let after = b.c.session_turns("m1");
        assert_eq!(after, before, "history intact, initial prompt once");
        // No turn ran (the history is unchanged), and the idle resumed mayor
        // said so once: two turns' /waiting plus the resume's.
        assert_eq!(town.count("waiting"), 3);
        b.c.send_message("m1", "and now?").unwrap();
        sleep_s(2).await;
        let texts: Vec<_> = b.c.session_turns("m1").into_iter().map(|t| t.text).collect();
        assert_eq!(texts.iter().filter(|t| *t == "initial prompt for m1").count(), 1);
        assert_eq!(texts.len(), 6);
        assert_eq!(texts[4], "and now?");
    }

    #[tokio::test(start_paused = true)]
    async fn hydration_of_a_corrupt_snapshot_falls_back_to_fresh_and_deletes_the_stored_copy() {
        let town = FakeTown::new();
        town.with(|s| s.snapshots.insert("m1".into(), (5, b"definitely not a sqlite database".repeat(200))));
        let r = rig_with(quick_script(), town, |_| {});
        let s = r.c.start(request("m1", AgentRole::Mayor)).await.unwrap();
        assert_eq!(s.status, ProcessStatus::Running);
        assert_eq!(s.message_count, 1, "a fresh session gets its initial prompt");
        settle().await;
        assert_eq!(r.town.count("delete-snapshot"), 1);
        assert_eq!(r.town.snapshot_version("m1"), None, "the stored copy is gone");
        let turns = r.c.session_turns("m1");
        assert_eq!(turns[0].text, "initial prompt for m1");
        // The stored version was seen: the next upload is newer than it anyway.
        let SnapshotOutcome::Uploaded { version, .. } = r.c.snapshot(&request("m1", AgentRole::Mayor)).await else {
            panic!()
        };
        assert!(version > 5);
    }
}
