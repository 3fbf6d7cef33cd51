//! The reconciler: a pure function from a [`TownSnapshot`] to the list of
//! [`Action`]s that move the town toward its desired state. All rule groups
//! read the same snapshot; nothing is applied until the whole list is built,
//! then actions are applied in list order.

pub mod agents;
pub mod beads;
pub mod constants;
pub mod convoys;
pub mod gc;
pub mod gupp;
pub mod review_queue;

#[cfg(test)]
pub(crate) mod testkit;

use super::actions::Action;
use super::snapshot::TownSnapshot;
use crate::time::stale;
use constants::{dispatch_cooldown_ms, BREAKER_FAILURE_THRESHOLD};

pub fn reconcile(s: &TownSnapshot) -> Vec<Action> {
    let mut out = Vec::with_capacity(32);
    agents::reconcile(s, &mut out);
    beads::reconcile(s, &mut out);
    review_queue::reconcile(s, &mut out);
    convoys::reconcile(s, &mut out);
    gupp::reconcile(s, &mut out);
    gc::reconcile(s, &mut out);
    out
}

/// The dispatch circuit breaker: too many recent failed dispatches pause all dispatch.
pub fn breaker_open(s: &TownSnapshot) -> bool {
    s.breaker_failures >= BREAKER_FAILURE_THRESHOLD
}

/// A bead is cooling down after a dispatch attempt; never without a last attempt.
pub fn in_cooldown(s: &TownSnapshot, attempts: u32, last: Option<crate::time::Timestamp>) -> bool {
    !stale(s.now, last, dispatch_cooldown_ms(attempts))
}
