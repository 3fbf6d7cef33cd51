#!/usr/bin/env python3
"""Re-apply the cargo-mutants survivors of reports/harness-power.md by hand and
check that the unit tests now kill each one (paths are relative to
crates/system/src/town).

Faster than a cargo-mutants run (no copy of the tree, the warm test build is
reused). Each mutant is one textual edit of a source line; the file is
restored whatever happens. Exit 1 if any mutant survives.

    python3 tools/recheck-mutants.py            # every survivor
    python3 tools/recheck-mutants.py convoys    # those whose file path contains "convoys"

With --scenarios it asks the other half of the harness instead: would the CI
gate's scenarios (scenarios/*.toml at their own seed counts, every invariant
and liveness) have caught the mutant without the unit tests? Each mutant gets
a release build and a whole gate run, about 5 min of one core; the verdict
names the invariants that fired, or whether only the baseline's deterministic
metrics moved (the gate fails on that too, but it says nothing about
correctness). Run it in a scratch worktree so the edits never touch yours:

    git worktree add /tmp/mutwt HEAD && python3 /tmp/mutwt/tools/recheck-mutants.py --scenarios
"""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOWN = ROOT / "crates/system/src/town"

# (file, text on the mutated line, its replacement, unit-test filter)
SURVIVORS = [
    ("reconciler/gupp.rs", "a.status == AgentStatus::Stalled && stale", "a.status == AgentStatus::Stalled || stale", "gupp"),
    ("reconciler/gupp.rs", "elapsed > GUPP_FORCE_STOP_MS", "elapsed >= GUPP_FORCE_STOP_MS", "gupp"),
    ("reconciler/review_queue.rs", "r.pr_url.is_some() && r.babysit", "r.pr_url.is_some() || r.babysit", "review_queue"),
    ("reconciler/review_queue.rs", "!s.agents_hooked_to(mr).any(", "true || !s.agents_hooked_to(mr).any(", "review_queue"),
    ("reconciler/review_queue.rs", "ABANDONED_MR_TIMEOUT_MS) && s.agents_hooked_to", "ABANDONED_MR_TIMEOUT_MS) || s.agents_hooked_to", "review_queue"),
    ("reconciler/review_queue.rs", "mr.status != BeadStatus::Open || mr.rig_id", "mr.status != BeadStatus::Open && mr.rig_id", "review_queue"),
    ("reconciler/review_queue.rs", "mr.rig_id.as_deref() != Some(rig) || s.in_review", "mr.rig_id.as_deref() != Some(rig) && s.in_review", "review_queue"),
    ("reconciler/review_queue.rs", 'c != "system") && !defects', 'c != "system") || !defects', "review_queue"),
    ("reconciler/review_queue.rs", "&& !defects::on(Defect::Rule5IgnoresCap)", "&& defects::on(Defect::Rule5IgnoresCap)", "review_queue"),
    ("reconciler/review_queue.rs", "r.status != AgentStatus::Idle || r.hook.is_some()", "r.status != AgentStatus::Idle && r.hook.is_some()", "review_queue"),
    ("reconciler/review_queue.rs", "a.role == AgentRole::Refinery && a.status == AgentStatus::Idle", "a.role == AgentRole::Refinery || a.status == AgentStatus::Idle", "review_queue"),
    ("reconciler/review_queue.rs", "mr.last_dispatch_attempt_at) || breaker", "mr.last_dispatch_attempt_at) && breaker", "review_queue"),
    # shard 0/3: the actions module had no tests of its own
    ("actions.rs", "(*to == BeadStatus::Failed)", "(*to != BeadStatus::Failed)", "town::actions"),
    ("actions.rs", "if bead.bead_type == BeadType::MergeRequest {\n                let babysit", "if bead.bead_type != BeadType::MergeRequest {\n                let babysit", "town::actions"),
    ("actions.rs", "fn apply_merge(cx: &mut Ctx<'_>, mr: &str, pr_url: &str) -> Result<Option<Effect>> {", "fn apply_merge(cx: &mut Ctx<'_>, mr: &str, pr_url: &str) -> Result<Option<Effect>> {\n    return Ok(None);", "town::actions"),
    ("actions.rs", "if pr.in_repo_of(&rig.git_url) == Some(false)", "if pr.in_repo_of(&rig.git_url) != Some(false)", "town::actions"),
    # shard 0/3, eleventh session: GC's apply-time guard met only an agent both hooked and working
    ("actions.rs", "agent.current_hook_bead_id.is_some() || !matches!", "agent.current_hook_bead_id.is_some() && !matches!", "gc_deletes"),
    # shard 0/3, eleventh session: Rule 1b never met a non-open bead with an assignee
    ("reconciler/beads.rs", "b.status == BeadStatus::Open && b.assignee.is_some()", "b.status == BeadStatus::Open || b.assignee.is_some()", "rule1b"),
    ("reconciler/beads.rs", "a.status == AgentStatus::Idle && a.role != AgentRole::Refinery", "a.status == AgentStatus::Idle || a.role != AgentRole::Refinery", "rule2"),
    ("reconciler/beads.rs", "b.last_dispatch_attempt_at)\n            || b.blocked", "b.last_dispatch_attempt_at)\n            && b.blocked", "rule2"),
    ("reconciler/beads.rs", "|| s.draining\n            || breaker", "|| s.draining\n            && breaker", "rule2"),
    ("reconciler/beads.rs", "HEARTBEAT_STALE_MS)\n                && !defects", "HEARTBEAT_STALE_MS)\n                || !defects", "rule3"),
    # shard 1/3, eleventh session: an ended member MR was never shown not to hold the landing
    ("reconciler/convoys.rs", "mr.bead_type == BeadType::MergeRequest && mr.status.is_live()", "mr.bead_type == BeadType::MergeRequest || mr.status.is_live()", "convoys"),
]


def unit_tests(tests: str) -> str:
    r = subprocess.run(["cargo", "test", "-q", "-p", "gastown", "--lib", tests], cwd=ROOT, capture_output=True, text=True)
    if "error[" in r.stderr:
        return "UNVIABLE"
    return "KILLED" if r.returncode != 0 else "SURVIVED"


def gate_scenarios(_tests: str) -> str:
    build = subprocess.run(["cargo", "build", "-q", "--release", "-p", "gastown-sim"], cwd=ROOT, capture_output=True, text=True)
    if build.returncode != 0:
        return "UNVIABLE"
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scenarios").glob("*.toml"))
    cmd = [str(ROOT / "target/release/gastown-sim"), "run", *files, "--json", "--progress-every", "0",
           "--baseline", str(ROOT / "reports/sim-baseline.json")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    try:
        scenarios = json.loads(r.stdout)["scenarios"]
    except (ValueError, KeyError):
        return f"ERROR    gastown-sim exited {r.returncode}: {r.stderr.strip()[-300:]}"
    fired = sorted({f"{s['name']}:{f['invariant']}" for s in scenarios for f in s["failures"]})
    if fired:
        return "KILLED   by " + ", ".join(fired)
    if "difference(s) in deterministic metrics" in r.stderr:
        return "BASELINE only the deterministic metrics moved"
    return "SURVIVED"


def main() -> int:
    args = sys.argv[1:]
    check = gate_scenarios if "--scenarios" in args else unit_tests
    args = [a for a in args if a != "--scenarios"]
    only = args[0] if args else ""
    survived = 0
    for name, old, new, tests in SURVIVORS:
        if only not in name:
            continue
        path = TOWN / name
        src = path.read_text()
        if src.count(old) != 1:
            print(f"STALE  {name}: {old!r} occurs {src.count(old)} times; update this list")
            survived += 1
            continue
        try:
            path.write_text(src.replace(old, new, 1))
            verdict = check(tests)
            if not verdict.startswith(("KILLED", "UNVIABLE")):
                survived += 1
            print(f"{verdict:<8} {name}: {old} -> {new}", flush=True)
        finally:
            path.write_text(src)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
