#!/usr/bin/env python3
"""Re-apply the cargo-mutants survivors of reports/harness-power.md by hand and
check that the unit tests now kill each one.

Faster than a cargo-mutants run (no copy of the tree, the warm test build is
reused). Each mutant is one textual edit of a source line; the file is
restored whatever happens. Exit 1 if any mutant survives.

    python3 tools/recheck-mutants.py
"""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECONCILER = ROOT / "crates/system/src/town/reconciler"

# (file, text on the mutated line, its replacement, unit-test filter)
SURVIVORS = [
    ("gupp.rs", "a.status == AgentStatus::Stalled && stale", "a.status == AgentStatus::Stalled || stale", "gupp"),
    ("gupp.rs", "elapsed > GUPP_FORCE_STOP_MS", "elapsed >= GUPP_FORCE_STOP_MS", "gupp"),
    ("review_queue.rs", "r.pr_url.is_some() && r.babysit", "r.pr_url.is_some() || r.babysit", "review_queue"),
    ("review_queue.rs", "!s.agents_hooked_to(mr).any(", "true || !s.agents_hooked_to(mr).any(", "review_queue"),
    ("review_queue.rs", "ABANDONED_MR_TIMEOUT_MS) && s.agents_hooked_to", "ABANDONED_MR_TIMEOUT_MS) || s.agents_hooked_to", "review_queue"),
    ("review_queue.rs", "mr.status != BeadStatus::Open || mr.rig_id", "mr.status != BeadStatus::Open && mr.rig_id", "review_queue"),
    ("review_queue.rs", "mr.rig_id.as_deref() != Some(rig) || s.in_review", "mr.rig_id.as_deref() != Some(rig) && s.in_review", "review_queue"),
    ("review_queue.rs", 'c != "system") && !defects', 'c != "system") || !defects', "review_queue"),
    ("review_queue.rs", "&& !defects::on(Defect::Rule5IgnoresCap)", "&& defects::on(Defect::Rule5IgnoresCap)", "review_queue"),
    ("review_queue.rs", "r.status != AgentStatus::Idle || r.hook.is_some()", "r.status != AgentStatus::Idle && r.hook.is_some()", "review_queue"),
    ("review_queue.rs", "a.role == AgentRole::Refinery && a.status == AgentStatus::Idle", "a.role == AgentRole::Refinery || a.status == AgentStatus::Idle", "review_queue"),
    ("review_queue.rs", "mr.last_dispatch_attempt_at) || breaker", "mr.last_dispatch_attempt_at) && breaker", "review_queue"),
]


def main() -> int:
    survived = 0
    for name, old, new, tests in SURVIVORS:
        path = RECONCILER / name
        src = path.read_text()
        if src.count(old) != 1:
            print(f"STALE  {name}: {old!r} occurs {src.count(old)} times; update this list")
            survived += 1
            continue
        try:
            path.write_text(src.replace(old, new, 1))
            r = subprocess.run(["cargo", "test", "-q", "-p", "gastown", "--lib", tests], cwd=ROOT, capture_output=True, text=True)
            if "error[" in r.stderr:
                verdict = "UNVIABLE"
            elif r.returncode != 0:
                verdict = "KILLED"
            else:
                verdict = "SURVIVED"
                survived += 1
            print(f"{verdict:<8} {name}: {old} -> {new}", flush=True)
        finally:
            path.write_text(src)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
