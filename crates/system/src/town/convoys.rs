//! Convoys: groups of issue beads with a dependency DAG, created staged or
//! active, landed through a feature branch (review-then-land) or merged task
//! by task (review-and-merge).

use super::beads::{self, CloseCause, DepKind, NewBead};
use super::ctx::{short, Ctx};
use super::events;
use super::state;
use crate::error::{Result, TownError};
use crate::model::{labels, BeadStatus, BeadType, EventType, MergeMode, TownConfig};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvoyTask {
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    /// Indices of earlier tasks in the same request this task waits for.
    #[serde(default)]
    pub depends_on: Vec<usize>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlingConvoy {
    pub rig_id: String,
    pub title: String,
    pub tasks: Vec<ConvoyTask>,
    #[serde(default)]
    pub merge_mode: Option<MergeMode>,
    #[serde(default)]
    pub staged: Option<bool>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConvoyCreated {
    pub convoy_id: String,
    pub feature_branch: String,
    pub staged: bool,
    pub bead_ids: Vec<String>,
}

/// Convoy metadata as stored.
#[derive(Clone, Debug, Serialize)]
pub struct ConvoyMeta {
    pub total_beads: u32,
    pub closed_beads: u32,
    pub feature_branch: Option<String>,
    pub merge_mode: MergeMode,
    pub staged: bool,
    pub ready_to_land: bool,
    pub landing_mr_attempts: u32,
    pub landed_at: Option<crate::time::Timestamp>,
}

pub fn meta(cx: &Ctx<'_>, convoy: &str) -> Result<Option<ConvoyMeta>> {
    Ok(cx
        .conn
        .prepare_cached(
            "SELECT total_beads, closed_beads, feature_branch, merge_mode, staged, ready_to_land, \
             landing_mr_attempts, landed_at FROM convoy_metadata WHERE bead_id = ?1",
        )?
        .query_row([convoy], |r| {
            Ok(ConvoyMeta {
                total_beads: r.get(0)?,
                closed_beads: r.get(1)?,
                feature_branch: r.get(2)?,
                merge_mode: r.get(3)?,
                staged: r.get(4)?,
                ready_to_land: r.get(5)?,
                landing_mr_attempts: r.get(6)?,
                landed_at: r.get::<_, Option<i64>>(7)?.map(crate::time::Timestamp),
            })
        })
        .optional()?)
}

/// `convoy/<slug>/<id8>/head`: the slug is the lower-cased title with every
/// run of other characters turned into `-`, trimmed, at most 40 characters.
pub fn feature_branch_name(title: &str, convoy_id: &str) -> String {
    let mut slug = String::new();
    for c in title.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let mut slug: String = slug.trim_matches('-').chars().take(40).collect();
    slug = slug.trim_end_matches('-').to_owned();
    if slug.is_empty() {
        slug = "convoy".to_owned();
    }
    format!("convoy/{slug}/{}/head", short(convoy_id))
}

/// Refuse out-of-range and self references, then cycles (Kahn's algorithm),
/// before anything is written.
pub fn check_dependencies(tasks: &[ConvoyTask]) -> Result<()> {
    let n = tasks.len();
    for (i, t) in tasks.iter().enumerate() {
        for &d in &t.depends_on {
            if d >= n {
                return Err(TownError::invalid(
                    "convoy dependencies",
                    format!("task {i} depends on task {d}, but there are only {n} tasks (0..{n})"),
                ));
            }
            if d == i {
                return Err(TownError::invalid("convoy dependencies", format!("task {i} depends on itself")));
            }
        }
    }
    let mut indegree = vec![0usize; n];
    for (i, t) in tasks.iter().enumerate() {
        let mut seen = t.depends_on.clone();
        seen.sort_unstable();
        seen.dedup();
        indegree[i] = seen.len();
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut done = 0;
    while let Some(d) = ready.pop() {
        done += 1;
        for (i, t) in tasks.iter().enumerate() {
            if t.depends_on.contains(&d) {
                indegree[i] -= 1;
                if indegree[i] == 0 {
                    ready.push(i);
                }
            }
        }
    }
    if done < n {
        return Err(TownError::invalid(
            "convoy dependencies",
            format!("the dependency graph contains a cycle: {} tasks are involved in circular dependencies", n - done),
        ));
    }
    Ok(())
}

pub fn sling(cx: &mut Ctx<'_>, cfg: &TownConfig, input: SlingConvoy) -> Result<ConvoyCreated> {
    if input.tasks.is_empty() {
        return Err(TownError::invalid("convoy", "a convoy needs at least one task"));
    }
    if input.title.trim().is_empty() {
        return Err(TownError::invalid("convoy", "title is empty"));
    }
    check_dependencies(&input.tasks)?;
    state::get_rig(cx, &input.rig_id)?;
    let staged = input.staged.unwrap_or(cfg.staged_convoys_default);
    let merge_mode = input.merge_mode.unwrap_or(cfg.convoy_merge_mode);

    let mut convoy = NewBead::new(BeadType::Convoy, input.title.clone()).label(labels::CONVOY).by(Some("user"));
    convoy.metadata = input.metadata.clone();
    let convoy_id = beads::insert(cx, convoy)?;
    let branch = feature_branch_name(&input.title, &convoy_id);
    beads::set_meta(cx, &convoy_id, "feature_branch", &json!(branch))?;
    cx.conn
        .prepare_cached(
            "INSERT INTO convoy_metadata (bead_id, total_beads, feature_branch, merge_mode, staged) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![convoy_id, input.tasks.len() as i64, branch, merge_mode, staged])?;

    let mut ids = Vec::with_capacity(input.tasks.len());
    for task in &input.tasks {
        let mut b = NewBead::new(BeadType::Issue, task.title.clone()).rig(Some(&input.rig_id)).body(task.body.clone());
        b.metadata = input.metadata.clone();
        b.metadata.insert("convoy_id".into(), json!(convoy_id));
        b.metadata.insert("feature_branch".into(), json!(branch));
        b.created_by = Some("user".into());
        let id = beads::insert(cx, b)?;
        beads::add_dependency(cx, &id, &convoy_id, DepKind::Tracks)?;
        ids.push(id);
    }
    for (i, task) in input.tasks.iter().enumerate() {
        for &d in &task.depends_on {
            beads::add_dependency(cx, &ids[i], &ids[d], DepKind::Blocks)?;
        }
    }
    for (i, task) in input.tasks.iter().enumerate() {
        events::record(
            cx,
            EventType::BeadCreated,
            None,
            Some(&ids[i]),
            json!({"bead_type": "issue", "rig_id": input.rig_id, "has_blockers": !task.depends_on.is_empty(), "convoy_id": convoy_id}),
        )?;
    }
    Ok(ConvoyCreated { convoy_id, feature_branch: branch, staged, bead_ids: ids })
}

pub fn start(cx: &mut Ctx<'_>, convoy: &str) -> Result<()> {
    let m = meta(cx, convoy)?.ok_or_else(|| TownError::not_found("Convoy", convoy))?;
    if !m.staged {
        return Err(TownError::invalid("convoy", format!("convoy {convoy} is not staged")));
    }
    cx.conn.prepare_cached("UPDATE convoy_metadata SET staged = 0 WHERE bead_id = ?1")?.execute([convoy])?;
    events::record(cx, EventType::ConvoyStarted, None, None, json!({"convoy_id": convoy}))?;
    Ok(())
}

/// Add an existing issue bead to a convoy, optionally blocked by other beads.
pub fn add_bead(cx: &mut Ctx<'_>, convoy: &str, bead: &str, blocked_by: &[String]) -> Result<()> {
    meta(cx, convoy)?.ok_or_else(|| TownError::not_found("Convoy", convoy))?;
    let b = beads::get(cx, bead)?;
    if b.bead_type != BeadType::Issue {
        return Err(TownError::invalid("convoy member", format!("bead {bead} is a {}, not an issue", b.bead_type)));
    }
    // The landing MR goes to a member's rig: a convoy of rig-less members
    // would be ready to land with nowhere to land, forever.
    if b.rig_id.is_none() {
        return Err(TownError::invalid("convoy member", format!("bead {bead} belongs to no rig")));
    }
    for blocker in blocked_by {
        beads::get(cx, blocker)?;
        // A bead blocked by itself, directly or through others, is never
        // dispatched and holds its convoy open forever.
        if blocks_path(cx, blocker, bead)? {
            return Err(TownError::invalid(
                "convoy dependencies",
                format!("bead {bead} blocked by {blocker} would close a dependency cycle"),
            ));
        }
    }
    let already = beads::dependencies_of(cx, bead, DepKind::Tracks)?.iter().any(|t| t == convoy);
    if !already {
        beads::add_dependency(cx, bead, convoy, DepKind::Tracks)?;
        cx.conn
            .prepare_cached("UPDATE convoy_metadata SET total_beads = total_beads + 1 WHERE bead_id = ?1")?
            .execute([convoy])?;
    }
    for blocker in blocked_by {
        beads::add_dependency(cx, bead, blocker, DepKind::Blocks)?;
    }
    Ok(())
}

/// Is `to` reachable from `from` along `blocks` edges (or the same bead)?
fn blocks_path(cx: &Ctx<'_>, from: &str, to: &str) -> Result<bool> {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(b) = todo.pop() {
        if b == to {
            return Ok(true);
        }
        if seen.insert(b.clone()) {
            todo.extend(beads::dependencies_of(cx, &b, DepKind::Blocks)?);
        }
    }
    Ok(false)
}

pub fn remove_bead(cx: &mut Ctx<'_>, convoy: &str, bead: &str) -> Result<()> {
    meta(cx, convoy)?.ok_or_else(|| TownError::not_found("Convoy", convoy))?;
    let removed = cx
        .conn
        .prepare_cached(
            "DELETE FROM bead_dependencies WHERE bead_id = ?1 AND depends_on_bead_id = ?2 AND dependency_type = 'tracks'",
        )?
        .execute([bead, convoy])?;
    if removed == 0 {
        return Err(TownError::invalid("convoy member", format!("bead {bead} is not in convoy {convoy}")));
    }
    cx.conn
        .prepare_cached("UPDATE convoy_metadata SET total_beads = MAX(total_beads - 1, 0) WHERE bead_id = ?1")?
        .execute([convoy])?;
    for sibling in beads::dependents_of(cx, convoy, DepKind::Tracks)? {
        cx.conn
            .prepare_cached(
                "DELETE FROM bead_dependencies WHERE dependency_type = 'blocks' AND \
                 ((bead_id = ?1 AND depends_on_bead_id = ?2) OR (bead_id = ?2 AND depends_on_bead_id = ?1))",
            )?
            .execute([bead, &sibling])?;
    }
    Ok(())
}

/// Force-close: every live tracked bead is unhooked and closed, then the convoy.
pub fn close(cx: &mut Ctx<'_>, convoy: &str) -> Result<()> {
    let m = meta(cx, convoy)?.ok_or_else(|| TownError::not_found("Convoy", convoy))?;
    for bead in beads::dependents_of(cx, convoy, DepKind::Tracks)? {
        if beads::status_of(cx, &bead)?.is_some_and(|s| s.is_live()) {
            super::agents::unhook_all_from(cx, &bead, "convoy closed")?;
            beads::update_status_because(cx, &bead, BeadStatus::Closed, "system", None, CloseCause::ConvoyForceClosed)?;
        }
    }
    beads::update_status_because(cx, convoy, BeadStatus::Closed, "system", None, CloseCause::ConvoyForceClosed)?;
    cx.conn
        .prepare_cached(
            "UPDATE convoy_metadata SET closed_beads = ?2, landed_at = COALESCE(landed_at, ?3) WHERE bead_id = ?1",
        )?
        .execute(params![convoy, m.total_beads, cx.now.0])?;
    Ok(())
}

/// Count tracked issues that are done: terminal, with no live MR tracking them.
fn count_done(cx: &Ctx<'_>, convoy: &str) -> Result<u32> {
    Ok(cx
        .conn
        .prepare_cached(
            "SELECT COUNT(*) FROM bead_dependencies d JOIN beads t ON t.bead_id = d.bead_id \
         WHERE d.depends_on_bead_id = ?1 AND d.dependency_type = 'tracks' AND t.type = 'issue' \
         AND t.status IN ('closed', 'failed') AND NOT EXISTS ( \
            SELECT 1 FROM bead_dependencies m JOIN beads mr ON mr.bead_id = m.bead_id \
            WHERE m.depends_on_bead_id = t.bead_id AND m.dependency_type = 'tracks' \
            AND mr.type = 'merge_request' AND mr.status IN ('open', 'in_progress'))",
        )?
        .query_row([convoy], |r| r.get(0))?)
}

/// Progress accounting on every terminal transition of a tracked bead. When
/// all are done a review-then-land convoy with a feature branch becomes ready
/// to land (the reconciler lands it); any other convoy closes.
pub fn on_bead_terminal(cx: &mut Ctx<'_>, bead: &str) -> Result<()> {
    for convoy in beads::dependencies_of(cx, bead, DepKind::Tracks)? {
        recount(cx, &convoy)?;
    }
    Ok(())
}

pub fn recount(cx: &mut Ctx<'_>, convoy: &str) -> Result<()> {
    let Some(m) = meta(cx, convoy)? else { return Ok(()) };
    let done = count_done(cx, convoy)?;
    cx.conn
        .prepare_cached("UPDATE convoy_metadata SET closed_beads = ?2 WHERE bead_id = ?1")?
        .execute(params![convoy, done])?;
    if m.total_beads == 0 || done < m.total_beads {
        return Ok(());
    }
    if m.merge_mode == MergeMode::ReviewThenLand && m.feature_branch.is_some() {
        if !m.ready_to_land {
            cx.conn
                .prepare_cached("UPDATE convoy_metadata SET ready_to_land = 1 WHERE bead_id = ?1")?
                .execute([convoy])?;
            beads::touch(cx, convoy)?;
        }
    } else if beads::update_status_because(cx, convoy, BeadStatus::Closed, "system", None, CloseCause::Other)? {
        cx.conn
            .prepare_cached("UPDATE convoy_metadata SET landed_at = COALESCE(landed_at, ?2) WHERE bead_id = ?1")?
            .execute(params![convoy, cx.now.0])?;
    }
    Ok(())
}

/// The convoy an issue belongs to (its first `tracks` target that is a convoy).
pub fn convoy_of(cx: &Ctx<'_>, bead: &str) -> Result<Option<String>> {
    for t in beads::dependencies_of(cx, bead, DepKind::Tracks)? {
        if meta(cx, &t)?.is_some() {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(deps: &[usize]) -> ConvoyTask {
        ConvoyTask { title: "x".into(), body: None, depends_on: deps.to_vec() }
    }

    #[test]
    fn feature_branch_slug() {
        assert_eq!(
            feature_branch_name("Fix the  Login-Flow!", "abcdef1234"),
            "convoy/fix-the-login-flow/abcdef12/head"
        );
        assert_eq!(feature_branch_name("!!!", "abcdef1234"), "convoy/convoy/abcdef12/head");
        let long = feature_branch_name(&"a".repeat(60), "abcdef1234");
        assert_eq!(long, format!("convoy/{}/abcdef12/head", "a".repeat(40)));
        assert_eq!(
            feature_branch_name(&format!("{}-b", "a".repeat(39)), "abcdef12"),
            format!("convoy/{}/abcdef12/head", "a".repeat(39))
        );
    }

    #[test]
    fn cycles_self_and_out_of_range_are_refused() {
        assert!(check_dependencies(&[t(&[]), t(&[0]), t(&[0, 1])]).is_ok());
        let e = check_dependencies(&[t(&[1]), t(&[0])]).unwrap_err();
        assert!(e.to_string().contains("2 tasks"), "{e}");
        let e = check_dependencies(&[t(&[2]), t(&[0]), t(&[1]), t(&[])]).unwrap_err();
        assert!(e.to_string().contains("3 tasks"), "{e}");
        assert!(check_dependencies(&[t(&[0])]).unwrap_err().to_string().contains("itself"));
        assert!(check_dependencies(&[t(&[5])]).unwrap_err().to_string().contains("only 1 tasks"));
    }
}
