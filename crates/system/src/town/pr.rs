//! What PR polls and merges mean for an MR (`poll_pr` / `merge_pr`'s
//! deferred halves, spec §3.4 #20/#21 and §6.9). The SCM calls ran outside
//! the town (`crate::scm::run_poll` / `run_merge`); here their reports are
//! applied: error counters and thresholds, `pr_status_changed`, the conflict
//! flag, awaiting-approval metadata, feedback detection, the auto-merge timer.
//!
//! Every reader uses the rig-resolved settings (upstream read the town's).

use super::beads::{self, DepKind, Failure};
use super::ctx::Ctx;
use super::events;
use super::state;
use crate::defects::{self, Defect};
use crate::error::Result;
use crate::model::pr_url::PrUrl;
use crate::model::{BeadType, EventType, RigSettings};
use crate::scm::{FailureClass, MergeReport, PollReport, PollWants, PrFeedback, PrState, PrStatus, ScmError};
use rusqlite::{params, OptionalExtension};
use serde_json::json;

/// Consecutive 5xx/429 answers before the MR fails.
pub const TRANSIENT_FAILURE_THRESHOLD: i64 = 10;
/// Consecutive unusable bodies before the MR fails.
pub const INVALID_RESPONSE_THRESHOLD: i64 = 3;

/// The effective settings of the MR's rig (town settings for a rig-less MR).
pub fn settings_for(cx: &Ctx<'_>, rig_id: Option<&str>) -> Result<RigSettings> {
    let cfg = state::load_or_seed_config(cx.conn)?;
    let rig = match rig_id {
        Some(r) => state::find_rig(cx.conn, r)?,
        None => None,
    };
    Ok(RigSettings::resolve(
        &cfg,
        &rig.map(|r| r.config).unwrap_or_default(),
        super::reconciler::constants::DEFAULT_MAX_DISPATCH_ATTEMPTS,
    ))
}

pub fn wants_auto_merge(s: &RigSettings) -> bool {
    s.auto_merge && s.auto_merge_delay_minutes.is_some()
}

/// What a poll should fetch beyond the status.
pub fn poll_wants(s: &RigSettings) -> PollWants {
    PollWants {
        feedback: s.has_refinery_config && (s.auto_resolve_pr_feedback || wants_auto_merge(s)),
        auto_resolve: s.has_refinery_config && s.auto_resolve_pr_feedback,
    }
}

#[derive(Debug)]
struct PollRow {
    branch: String,
    has_conflicts: bool,
    awaiting_approval: bool,
    ready_since: Option<i64>,
    transient: i64,
    non_transient: i64,
}

fn poll_row(cx: &Ctx<'_>, mr: &str) -> Result<Option<PollRow>> {
    Ok(cx
        .conn
        .prepare_cached(
            "SELECT branch, has_conflicts, awaiting_approval, auto_merge_ready_since, poll_transient_count, \
             poll_non_transient_count FROM review_metadata WHERE bead_id = ?1",
        )?
        .query_row([mr], |r| {
            Ok(PollRow {
                branch: r.get(0)?,
                has_conflicts: r.get(1)?,
                awaiting_approval: r.get(2)?,
                ready_since: r.get(3)?,
                transient: r.get(4)?,
                non_transient: r.get(5)?,
            })
        })
        .optional()?)
}

fn exec(cx: &Ctx<'_>, sql: &str, mr: &str, value: impl rusqlite::ToSql) -> Result<()> {
    cx.conn.prepare_cached(sql)?.execute(params![mr, value])?;
    Ok(())
}

fn exec1(cx: &Ctx<'_>, sql: &str, mr: &str) -> Result<()> {
    cx.conn.prepare_cached(sql)?.execute([mr])?;
    Ok(())
}

/// Does any live bead block the MR (rework, feedback, conflict work)?
pub fn has_live_blocker(cx: &Ctx<'_>, mr: &str) -> Result<bool> {
    for b in beads::dependencies_of(cx, mr, DepKind::Blocks)? {
        if beads::status_of(cx, &b)?.is_some_and(|s| s.is_live()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Apply a `poll_pr` report. An MR that is gone or terminal ignores it.
pub fn apply_poll(cx: &mut Ctx<'_>, mr_id: &str, pr_url: &str, report: &PollReport) -> Result<()> {
    let Some(mr) = beads::find(cx, mr_id)?.filter(|b| b.bead_type == BeadType::MergeRequest && b.status.is_live())
    else {
        return Ok(());
    };
    let Some(row) = poll_row(cx, mr_id)? else { return Ok(()) };
    match report {
        PollReport::Failed { error } => poll_failed(cx, mr_id, mr.rig_id.as_deref(), &row, error),
        PollReport::Checked { status, feedback, recheck } => {
            exec1(
                cx,
                "UPDATE review_metadata SET poll_transient_count = 0, poll_non_transient_count = 0, \
                 poll_error_kind = NULL WHERE bead_id = ?1",
                mr_id,
            )?;
            let settings = settings_for(cx, mr.rig_id.as_deref())?;
            let source = mr.meta_str("source_bead_id").map(str::to_owned);
            polled(cx, mr_id, pr_url, source.as_deref(), &row, &settings, status, feedback.as_ref(), recheck)
        }
    }
}

fn poll_failed(cx: &mut Ctx<'_>, mr: &str, rig: Option<&str>, row: &PollRow, e: &ScmError) -> Result<()> {
    let fail_now = match e.class() {
        FailureClass::Unreachable => {
            // Upstream's thrown exceptions: logged, no counter change.
            tracing::warn!(mr, error = %e, "poll_pr: forge unreachable");
            return Ok(());
        }
        FailureClass::Immediate => true,
        FailureClass::Transient => {
            let n = row.transient + 1;
            cx.conn
                .prepare_cached(
                    "UPDATE review_metadata SET poll_transient_count = ?2, poll_non_transient_count = 0, \
                     poll_error_kind = ?3 WHERE bead_id = ?1",
                )?
                .execute(params![mr, n, e.kind()])?;
            n >= TRANSIENT_FAILURE_THRESHOLD
        }
        FailureClass::InvalidResponse => {
            let n = row.non_transient + 1;
            cx.conn
                .prepare_cached(
                    "UPDATE review_metadata SET poll_non_transient_count = ?2, poll_transient_count = 0, \
                     poll_error_kind = ?3 WHERE bead_id = ?1",
                )?
                .execute(params![mr, n, e.kind()])?;
            n >= INVALID_RESPONSE_THRESHOLD
        }
    };
    exec(cx, "UPDATE review_metadata SET poll_error_kind = ?2 WHERE bead_id = ?1", mr, e.kind())?;
    if !fail_now {
        return Ok(());
    }
    let message = e.message();
    let f = Failure::new("pr_poll_failed", message.clone(), "scm");
    beads::update_status(cx, mr, crate::model::BeadStatus::Failed, "system", Some(&f))?;
    beads::set_meta(cx, mr, "failureReason", &json!("pr_poll_failed"))?;
    beads::set_meta(cx, mr, "failureKind", &json!(e.kind()))?;
    beads::set_meta(cx, mr, "failureMessage", &json!(message))?;
    let status_code = match e {
        ScmError::HttpError { status, .. } => Some(*status),
        _ => None,
    };
    tracing::info!(mr, rig, kind = e.kind(), ?status_code, "pr.poll_failed");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn polled(
    cx: &mut Ctx<'_>,
    mr: &str,
    pr_url: &str,
    source: Option<&str>,
    row: &PollRow,
    settings: &RigSettings,
    status: &PrStatus,
    feedback: Option<&PrFeedback>,
    recheck: &Option<std::result::Result<PrState, String>>,
) -> Result<()> {
    if status.state != PrState::Open {
        events::record(
            cx,
            EventType::PrStatusChanged,
            None,
            Some(mr),
            json!({"pr_url": pr_url, "pr_state": status.state.as_str()}),
        )?;
        return Ok(());
    }
    if !settings.has_refinery_config {
        return Ok(());
    }
    match status.mergeable_state.as_deref() {
        // The forge is still computing: touch neither the conflict flag nor the timer.
        Some("unknown") => return Ok(()),
        Some("dirty") => {
            if !row.has_conflicts {
                exec(
                    cx,
                    "UPDATE review_metadata SET has_conflicts = 1, conflicts_detected_at = ?2 WHERE bead_id = ?1",
                    mr,
                    cx.now.0,
                )?;
                beads::touch(cx, mr)?;
                events::record(
                    cx,
                    EventType::PrConflictDetected,
                    None,
                    Some(mr),
                    json!({"mr_bead_id": mr, "source_bead_id": source, "pr_url": pr_url, "branch": row.branch}),
                )?;
            }
            return reset_timer(cx, mr);
        }
        Some("clean" | "blocked" | "has_hooks") if row.has_conflicts => {
            exec1(
                cx,
                "UPDATE review_metadata SET has_conflicts = 0, conflicts_detected_at = NULL WHERE bead_id = ?1",
                mr,
            )?;
            beads::touch(cx, mr)?;
        }
        _ => {}
    }
    let Some(f) = feedback else { return Ok(()) };
    record_approval(cx, mr, row, f)?;
    if settings.auto_resolve_pr_feedback && f.needs_work() {
        let still_open = matches!(recheck, Some(Ok(PrState::Open))) || defects::on(Defect::FeedbackWithoutRecheck);
        match recheck {
            // Bug j: report work only for a PR that is still open right now.
            _ if still_open => {
                if beads::live_blocker_with_label(cx, mr, crate::model::labels::PR_FEEDBACK)?.is_none() {
                    let pr = PrUrl::parse(pr_url).ok();
                    events::record(
                        cx,
                        EventType::PrFeedbackDetected,
                        None,
                        Some(mr),
                        json!({
                            "mr_bead_id": mr,
                            "pr_url": pr_url,
                            "pr_number": pr.as_ref().map(|p| p.number),
                            "repo": pr.as_ref().map(|p| p.repo.clone()),
                            "branch": row.branch,
                            "has_unresolved_comments": f.has_unresolved_comments,
                            "has_failing_checks": f.has_failing_checks,
                            "has_unchecked_runs": f.has_unchecked_runs,
                        }),
                    )?;
                }
                exec(cx, "UPDATE review_metadata SET last_feedback_check_at = ?2 WHERE bead_id = ?1", mr, cx.now.0)?;
            }
            other => {
                tracing::info!(mr, ?other, "poll_pr: PR no longer open (or re-check failed); no feedback recorded")
            }
        }
    }
    if !wants_auto_merge(settings) {
        return Ok(());
    }
    // Our fix: open fix-up work (rework, feedback, conflict beads) keeps the
    // timer at zero, so a merge always follows a full green delay after it.
    let green = f.all_green() && !has_live_blocker(cx, mr)?;
    if !green {
        return reset_timer(cx, mr);
    }
    match row.ready_since {
        None => exec(cx, "UPDATE review_metadata SET auto_merge_ready_since = ?2 WHERE bead_id = ?1", mr, cx.now.0),
        Some(since) => {
            let delay_ms = i64::from(settings.auto_merge_delay_minutes.unwrap_or(0)) * 60_000;
            if cx.now.0 - since >= delay_ms {
                events::record(
                    cx,
                    EventType::PrAutoMerge,
                    None,
                    Some(mr),
                    json!({"mr_bead_id": mr, "pr_url": pr_url}),
                )?;
            }
            Ok(())
        }
    }
}

fn reset_timer(cx: &Ctx<'_>, mr: &str) -> Result<()> {
    exec1(cx, "UPDATE review_metadata SET auto_merge_ready_since = NULL WHERE bead_id = ?1", mr)
}

/// Awaiting-approval metadata. The observation time is written on the
/// false→true edge only (upstream rewrote it every poll, so the "resolved"
/// duration measured one poll interval).
fn record_approval(cx: &Ctx<'_>, mr: &str, row: &PollRow, f: &PrFeedback) -> Result<()> {
    cx.conn
        .prepare_cached(
            "UPDATE review_metadata SET awaiting_approval = ?2, review_decision = ?3, merge_state_status = ?4, \
             awaiting_approval_observed_at = CASE WHEN ?2 = 0 THEN NULL \
               WHEN awaiting_approval = 0 OR awaiting_approval_observed_at IS NULL THEN ?5 \
               ELSE awaiting_approval_observed_at END \
             WHERE bead_id = ?1",
        )?
        .execute(params![mr, f.awaiting_approval, f.review_decision, f.merge_state_status, cx.now.0])?;
    if f.awaiting_approval != row.awaiting_approval {
        let edge = if f.awaiting_approval { "pr.awaiting_approval_detected" } else { "pr.awaiting_approval_resolved" };
        tracing::info!(mr, edge, "awaiting approval changed");
    }
    // No touch here: the poll action itself refreshed `updated_at` (bug q),
    // one place that keeps a polled MR from looking orphaned.
    Ok(())
}

/// Apply a `merge_pr` report: a merge becomes `pr_status_changed(merged)`;
/// anything else clears the pending flag and restarts the grace timer.
pub fn apply_merge(cx: &mut Ctx<'_>, mr_id: &str, pr_url: &str, report: &MergeReport) -> Result<()> {
    let Some(mr) = beads::find(cx, mr_id)?.filter(|b| b.bead_type == BeadType::MergeRequest && b.status.is_live())
    else {
        return Ok(());
    };
    match report {
        MergeReport::Merged { .. } => {
            events::record(
                cx,
                EventType::PrStatusChanged,
                None,
                Some(&mr.bead_id),
                json!({"pr_url": pr_url, "pr_state": "merged"}),
            )?;
        }
        MergeReport::NotGreen { .. } | MergeReport::Failed { .. } => {
            if let MergeReport::Failed { reason } = report {
                tracing::info!(mr = mr_id, %reason, "merge_pr failed; the timer restarts");
            }
            exec1(
                cx,
                "UPDATE review_metadata SET auto_merge_pending = 0, auto_merge_ready_since = NULL WHERE bead_id = ?1",
                mr_id,
            )?;
            beads::touch(cx, mr_id)?;
        }
    }
    Ok(())
}
