//! External-PR adoption ("babysitting"): a PR the town did not open joins the
//! review queue as an MR that the town polls, repairs (feedback and conflict
//! beads) and merges like its own, but never hands to a refinery: somebody
//! outside already wrote and reviewed it. The MR tracks no source bead.

use super::beads::{self, NewBead};
use super::ctx::Ctx;
use super::state;
use crate::error::{Result, TownError};
use crate::model::pr_url::PrUrl;
use crate::model::{labels, BeadType};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};

/// What a user (or the mayor) hands the town to babysit.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptPr {
    pub pr_url: String,
    /// The PR's head branch.
    pub branch: String,
    /// Its base branch; the rig's default branch when absent.
    #[serde(default)]
    pub target_branch: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub head_sha: Option<String>,
    /// Whether agents fixing the PR may force-push its branch (default: no).
    #[serde(default)]
    pub force_push_allowed: bool,
}

/// The adoption's MR, and whether this call created it (a second adoption of
/// the same PR returns the live MR of the first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Adopted {
    pub mr_bead_id: String,
    pub created: bool,
}

/// Put an outside PR on `rig`'s review queue as a babysat MR. The PR must
/// belong to the rig's repository; a PR a live MR of the town already
/// carries is refused unless that MR is itself an adoption of it.
pub fn adopt(cx: &mut Ctx<'_>, rig_id: &str, a: &AdoptPr, by: &str) -> Result<Adopted> {
    let rig = state::get_rig(cx, rig_id)?;
    if a.branch.trim().is_empty() {
        return Err(TownError::invalid("external PR", "branch is empty"));
    }
    let pr = PrUrl::parse(&a.pr_url)?;
    match pr.in_repo_of(&rig.git_url) {
        Some(true) => {}
        _ => {
            return Err(TownError::invalid(
                "external PR",
                format!("{} is not a PR of rig {rig_id}'s repository ({})", a.pr_url, rig.git_url),
            ))
        }
    }
    if let Some((mr, babysat)) = live_mr_carrying(cx, &a.pr_url)? {
        if babysat {
            return Ok(Adopted { mr_bead_id: mr, created: false });
        }
        return Err(TownError::invalid("external PR", format!("{} is already under review as MR {mr}", a.pr_url)));
    }
    let target = a.target_branch.clone().filter(|t| !t.trim().is_empty()).unwrap_or(rig.default_branch);
    let title = a.title.clone().filter(|t| !t.trim().is_empty()).unwrap_or_else(|| format!("Babysit: {}", a.pr_url));
    let b = NewBead::new(BeadType::MergeRequest, title)
        .body(a.body.clone())
        .rig(Some(rig_id))
        .label(labels::MERGE_REQUEST)
        .label(labels::BABYSIT)
        .by(Some(by))
        .meta("source_agent_id", json!(null))
        .meta("babysit", json!(true))
        .meta("pr_url", json!(a.pr_url))
        .meta("head_sha", json!(a.head_sha))
        .meta("force_push_allowed", json!(a.force_push_allowed))
        .meta("babysit_started_at", json!(cx.now.0));
    let mr = beads::insert(cx, b)?;
    cx.conn
        .prepare_cached(
            "INSERT INTO review_metadata (bead_id, branch, target_branch, pr_url, babysit) VALUES (?1, ?2, ?3, ?4, 1)",
        )?
        .execute(params![mr, a.branch, target, a.pr_url])?;
    let mut m = Map::new();
    m.insert("pr_url".into(), json!(a.pr_url));
    m.insert("target_branch".into(), json!(target));
    beads::log_event(cx, &mr, None, "babysit_started", None, Some(&a.branch), Some(&m))?;
    Ok(Adopted { mr_bead_id: mr, created: true })
}

/// A live MR already carrying `pr_url`, and whether it is babysat.
fn live_mr_carrying(cx: &Ctx<'_>, pr_url: &str) -> Result<Option<(String, bool)>> {
    Ok(cx
        .conn
        .prepare_cached(
            "SELECT b.bead_id, r.babysit FROM review_metadata r JOIN beads b ON b.bead_id = r.bead_id \
             WHERE r.pr_url = ?1 AND b.type = 'merge_request' AND b.status IN ('open', 'in_progress') \
             ORDER BY b.created_at, b.bead_id LIMIT 1",
        )?
        .query_row([pr_url], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BeadStatus, Label};
    use crate::town::effects::RecordingRunner;
    use crate::town::tests::{futures_executor, town};
    use crate::town::{SlingBead, Town, TownError};

    const PR: &str = "https://github.com/acme/app/pull/7";

    fn request(url: &str) -> AdoptPr {
        AdoptPr { pr_url: url.into(), branch: "contrib/fix".into(), ..AdoptPr::default() }
    }

    fn adopt_on(town: &mut Town, rig: &str, a: &AdoptPr) -> Result<Adopted> {
        town.adopt_external_pr(rig, a, "user")
    }

    #[test]
    fn an_adopted_pr_is_a_babysat_mr_with_no_source() {
        let (mut town, _, rig) = town();
        let a = AdoptPr { head_sha: Some("abc123".into()), ..request(PR) };
        let got = adopt_on(&mut town, &rig, &a).unwrap();
        assert!(got.created);
        let mr = town.bead(&got.mr_bead_id).unwrap();
        assert_eq!((mr.bead_type, mr.status), (BeadType::MergeRequest, BeadStatus::Open));
        assert!(mr.label_set().has(Label::Babysit) && mr.labels.iter().any(|l| l == labels::MERGE_REQUEST));
        assert_eq!(mr.meta_str("head_sha"), Some("abc123"));
        assert_eq!(mr.metadata.get("force_push_allowed"), Some(&json!(false)), "force-push is off unless asked");
        assert_eq!(mr.metadata.get("babysit"), Some(&json!(true)));
        let (babysit, target, url): (bool, String, String) = town
            .conn()
            .query_row(
                "SELECT babysit, target_branch, pr_url FROM review_metadata WHERE bead_id = ?1",
                [&got.mr_bead_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((babysit, target.as_str(), url.as_str()), (true, "main", PR));
        let tracks: i64 = town
            .conn()
            .query_row("SELECT COUNT(*) FROM bead_dependencies WHERE bead_id = ?1", [&got.mr_bead_id], |r| r.get(0))
            .unwrap();
        assert_eq!(tracks, 0, "an adopted PR tracks no source bead");
        let started: i64 = town
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM bead_events WHERE bead_id = ?1 AND event_type = 'babysit_started'",
                [&got.mr_bead_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(started, 1);
    }

    #[test]
    fn adopting_the_same_pr_twice_returns_the_first_mr() {
        let (mut town, _, rig) = town();
        let first = adopt_on(&mut town, &rig, &request(PR)).unwrap();
        let again = adopt_on(&mut town, &rig, &request(PR)).unwrap();
        assert_eq!(again, Adopted { mr_bead_id: first.mr_bead_id, created: false });
    }

    #[test]
    fn foreign_bad_and_already_reviewed_prs_are_refused_with_the_reason() {
        let (mut town, _, rig) = town();
        let foreign = adopt_on(&mut town, &rig, &request("https://github.com/other/app/pull/7")).unwrap_err();
        assert!(
            matches!(&foreign, TownError::Invalid { .. }) && foreign.to_string().contains("repository"),
            "{foreign}"
        );
        let bad = adopt_on(&mut town, &rig, &request("http://github.com/acme/app/pull/7")).unwrap_err();
        assert!(bad.to_string().contains("https://"), "{bad}");
        let no_branch = adopt_on(&mut town, &rig, &AdoptPr { branch: " ".into(), ..request(PR) }).unwrap_err();
        assert!(no_branch.to_string().contains("branch"), "{no_branch}");
        assert!(adopt_on(&mut town, "no-such-rig", &request(PR)).unwrap_err().is_not_found());
        let src = town
            .sling_bead(SlingBead { rig_id: rig.clone(), title: "work".into(), ..SlingBead::default() })
            .unwrap()
            .0
            .bead_id;
        let agent = town.agents().unwrap()[0].agent_id.clone();
        let mr = town.submit_to_review_queue(&agent, &src, "gt/x", Some(PR), None).unwrap();
        let taken = adopt_on(&mut town, &rig, &request(PR)).unwrap_err();
        assert!(taken.to_string().contains(&mr), "{taken}");
    }

    #[test]
    fn the_oracle_fires_on_an_agent_hooked_to_a_babysat_pr() {
        let (mut town, _, rig) = town();
        let got = adopt_on(&mut town, &rig, &request(PR)).unwrap();
        let mut checker = crate::town::invariants::Checker::new();
        let check = |town: &Town, checker: &mut crate::town::invariants::Checker| {
            let cfg = town.config().clone();
            checker.check(town.conn(), &cfg, town.now()).unwrap().into_iter().map(|v| v.invariant).collect::<Vec<_>>()
        };
        assert!(!check(&town, &mut checker).contains(&"babysat_pr_has_no_refinery"));
        let refinery = crate::model::AgentRole::Refinery;
        let agent = town.tx(|cx| crate::town::agents::get_or_create(cx, refinery, Some(&rig), "town-1")).unwrap();
        // A user's hook refuses it; the reconciler's dispatch (Rule 5 with bug d) does not ask.
        assert!(town.hook_bead(&agent, &got.mr_bead_id).is_err());
        town.tx(|cx| crate::town::agents::hook(cx, &agent, &got.mr_bead_id)).unwrap();
        assert!(check(&town, &mut checker).contains(&"babysat_pr_has_no_refinery"));
    }

    #[test]
    fn the_reconciler_polls_an_adopted_pr_and_never_sends_a_refinery() {
        let (mut town, _, rig) = town();
        let got = adopt_on(&mut town, &rig, &request(PR)).unwrap();
        let runner = RecordingRunner::new();
        for _ in 0..3 {
            futures_executor(town.tick(&runner)).unwrap().unwrap();
        }
        let mr = town.bead(&got.mr_bead_id).unwrap();
        assert_eq!(mr.status, BeadStatus::InProgress, "fast-tracked to polling");
        assert!(mr.assignee_agent_bead_id.is_none());
        assert!(town.agents().unwrap().iter().all(|a| a.current_hook_bead_id.as_deref() != Some(&got.mr_bead_id)));
    }
}
