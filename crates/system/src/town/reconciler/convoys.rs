//! Convoy rules: progress, readiness, and landing through one landing MR at a
//! time with a bounded number of attempts and exponential cooldown (bug n).

use super::constants::{landing_cooldown_ms, MAX_LANDING_MR_ATTEMPTS};
use crate::defects::{self, Defect};
use crate::model::{BeadStatus, BeadType, MergeMode};
use crate::town::actions::Action;
use crate::town::snapshot::{SnapConvoy, TownSnapshot};
use serde_json::json;

pub fn reconcile(s: &TownSnapshot, out: &mut Vec<Action>) {
    for c in s.convoys.values() {
        convoy(s, c, out);
    }
}

fn convoy(s: &TownSnapshot, c: &SnapConvoy, out: &mut Vec<Action>) {
    let members: Vec<_> = s.trackers_of(&c.id).filter(|b| b.bead_type == BeadType::Issue).collect();
    let total = members.len() as u32;
    let done = members.iter().filter(|b| b.status.is_terminal()).count() as u32;
    let in_flight = members
        .iter()
        .any(|m| s.trackers_of(&m.id).any(|mr| mr.bead_type == BeadType::MergeRequest && mr.status.is_live()));
    if done != c.closed_beads {
        out.push(Action::UpdateConvoyProgress { convoy_id: c.id.clone(), closed_beads: done });
    }
    if !(total > 0 && done >= total && !in_flight) {
        return;
    }
    let Some(feature_branch) = c.feature_branch.as_deref().filter(|_| c.merge_mode == MergeMode::ReviewThenLand) else {
        out.push(Action::CloseConvoy { convoy_id: c.id.clone() });
        return;
    };
    if !c.ready_to_land {
        out.push(Action::SetConvoyReadyToLand { convoy_id: c.id.clone() });
        return;
    }
    let landing: Vec<_> = s.trackers_of(&c.id).filter(|b| b.bead_type == BeadType::MergeRequest).collect();
    if landing.iter().any(|m| m.status == BeadStatus::Closed) {
        out.push(Action::CloseConvoy { convoy_id: c.id.clone() });
        return;
    }
    if landing.iter().any(|m| m.status.is_live()) && !defects::on(Defect::LandingMrWhileOneIsLive) {
        return;
    }
    let awaited = landing
        .iter()
        .any(|m| m.status == BeadStatus::Failed && s.reviews.get(&m.id).is_some_and(|r| r.awaiting_approval));
    if awaited {
        out.push(Action::EmitEvent {
            event_name: "reconciler.respawn_suppressed",
            data: json!({ "convoyId": c.id, "suppressedAttempt": c.landing_mr_attempts + 1 }),
        });
        return;
    }
    if c.landing_mr_attempts >= MAX_LANDING_MR_ATTEMPTS && !defects::on(Defect::LandingAttemptsUnbounded) {
        let reason = format!("Landing MR creation failed after {} attempts", c.landing_mr_attempts);
        out.push(Action::FailConvoy { convoy_id: c.id.clone(), reason: reason.into() });
        return;
    }
    if let (true, Some(last)) = (c.landing_mr_attempts > 0, c.last_landing_mr_attempt_at) {
        if s.now.since(last) < landing_cooldown_ms(c.landing_mr_attempts) {
            return;
        }
    }
    let Some(rig) = members.iter().find_map(|m| m.rig_id.as_deref()) else { return };
    let target = s.rigs.get(rig).map_or("main", |r| r.default_branch.as_str());
    out.push(Action::CreateLandingMr {
        convoy_id: c.id.clone(),
        rig_id: rig.to_owned(),
        feature_branch: feature_branch.to_owned(),
        target_branch: target.to_owned(),
    });
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn landing_kit(attempts: u32, last_ago: Option<i64>) -> Kit {
        let mut k = Kit::new();
        let c = k.convoy("c", MergeMode::ReviewThenLand, Some("convoy/x/12345678/head"));
        c.ready_to_land = true;
        c.closed_beads = 1;
        c.landing_mr_attempts = attempts;
        c.last_landing_mr_attempt_at = last_ago.map(|ms| NOW.minus_ms(ms));
        k.issue("t", BeadStatus::Closed);
        k.track("t", "c");
        k
    }

    fn landed(out: &[Action]) -> bool {
        out.iter().any(|a| matches!(a, Action::CreateLandingMr { .. }))
    }

    #[test]
    fn progress_then_ready_then_land() {
        let mut k = Kit::new();
        k.convoy("c", MergeMode::ReviewThenLand, Some("convoy/x/12345678/head"));
        k.issue("a", BeadStatus::Closed);
        k.issue("b", BeadStatus::InProgress);
        k.track("a", "c");
        k.track("b", "c");
        let out = k.run(reconcile);
        assert_eq!(out, vec![Action::UpdateConvoyProgress { convoy_id: "c".into(), closed_beads: 1 }]);
        k.s.bead_mut("b").unwrap().status = BeadStatus::Failed;
        k.s.convoys.get_mut("c").unwrap().closed_beads = 2;
        assert_eq!(k.run(reconcile), vec![Action::SetConvoyReadyToLand { convoy_id: "c".into() }]);
        k.s.convoys.get_mut("c").unwrap().ready_to_land = true;
        assert!(landed(&k.run(reconcile)));
    }

    #[test]
    fn waits_while_a_member_mr_is_in_flight_and_lands_once_it_ended() {
        let mut k = landing_kit(0, None);
        k.mr("m", BeadStatus::InProgress, Some("t"), None);
        assert!(k.run(reconcile).is_empty());
        // A merged or failed member MR is history, not work in flight.
        for ended in [BeadStatus::Closed, BeadStatus::Failed] {
            k.s.bead_mut("m").unwrap().status = ended;
            assert!(landed(&k.run(reconcile)), "member MR {ended:?} held the landing");
        }
    }

    #[test]
    fn one_landing_mr_at_a_time_and_close_when_merged() {
        let mut k = landing_kit(1, Some(10 * 60_000));
        k.mr("land", BeadStatus::InProgress, Some("c"), None);
        assert!(k.run(reconcile).is_empty());
        k.s.bead_mut("land").unwrap().status = BeadStatus::Closed;
        assert_eq!(k.run(reconcile), vec![Action::CloseConvoy { convoy_id: "c".into() }]);
    }

    #[test]
    fn cooldown_cap_and_approval_suppression() {
        // After 2 attempts the cooldown is 2 min.
        let mut k = landing_kit(2, Some(119_999));
        k.mr("l1", BeadStatus::Failed, Some("c"), None);
        assert!(!landed(&k.run(reconcile)));
        let mut k = landing_kit(2, Some(120_000));
        k.mr("l1", BeadStatus::Failed, Some("c"), None);
        assert!(landed(&k.run(reconcile)));
        let mut k = landing_kit(5, Some(3_600_000));
        k.mr("l1", BeadStatus::Failed, Some("c"), None);
        assert!(matches!(k.run(reconcile)[0], Action::FailConvoy { .. }));
        let mut k = landing_kit(5, Some(3_600_000));
        k.mr("l1", BeadStatus::Failed, Some("c"), None);
        k.s.reviews.get_mut("l1").unwrap().awaiting_approval = true;
        assert!(matches!(k.run(reconcile)[0], Action::EmitEvent { event_name: "reconciler.respawn_suppressed", .. }));
    }

    #[test]
    fn review_and_merge_and_branchless_convoys_close() {
        let mut k = Kit::new();
        k.convoy("c", MergeMode::ReviewAndMerge, Some("convoy/x/12345678/head")).closed_beads = 1;
        k.issue("t", BeadStatus::Closed);
        k.track("t", "c");
        assert_eq!(k.run(reconcile), vec![Action::CloseConvoy { convoy_id: "c".into() }]);
        let mut k = Kit::new();
        k.convoy("c", MergeMode::ReviewThenLand, None).closed_beads = 1;
        k.issue("t", BeadStatus::Closed);
        k.track("t", "c");
        assert_eq!(k.run(reconcile), vec![Action::CloseConvoy { convoy_id: "c".into() }]);
        let mut k = Kit::new();
        k.convoy("empty", MergeMode::ReviewAndMerge, None);
        assert!(k.run(reconcile).is_empty(), "an empty convoy never closes by itself");
    }
}
