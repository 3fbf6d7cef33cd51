//! Versioned migrations. `PRAGMA user_version` records how many have run.
//!
//! Timestamps are INTEGER milliseconds since the epoch and are always bound as
//! parameters; no statement here or elsewhere calls SQLite's clock or RNG.
//! Everything the reconciler reads lives in typed columns (not JSON metadata),
//! so a tick's snapshot does no JSON parsing beyond the label arrays.

pub const MIGRATIONS: &[&str] = &[
    // 1: the bead-centric tables.
    r#"
CREATE TABLE beads (
    bead_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    title TEXT NOT NULL,
    body TEXT,
    rig_id TEXT,
    parent_bead_id TEXT,
    assignee_agent_bead_id TEXT,
    priority TEXT NOT NULL DEFAULT 'medium',
    labels TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    dispatch_attempts INTEGER NOT NULL DEFAULT 0,
    last_dispatch_attempt_at INTEGER,
    created_by TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    closed_at INTEGER
);
-- The snapshot reads only live rows; terminal history never enters this index.
-- (`beads` keeps its rowid because bodies can be large; the small metadata
-- tables keyed by bead id are WITHOUT ROWID: one B-tree seek per lookup.)
-- It covers every column the snapshot reads, so the load never visits table
-- rows (which carry titles, bodies and metadata).
CREATE INDEX beads_live ON beads(type, status, created_at, bead_id, rig_id, assignee_agent_bead_id, labels,
    dispatch_attempts, last_dispatch_attempt_at, created_by, updated_at)
    WHERE status IN ('open', 'in_progress', 'in_review');
CREATE INDEX beads_parent ON beads(parent_bead_id) WHERE parent_bead_id IS NOT NULL;
CREATE INDEX beads_assignee_live ON beads(assignee_agent_bead_id)
    WHERE assignee_agent_bead_id IS NOT NULL AND status IN ('open', 'in_progress', 'in_review');
-- The dispatch circuit breaker counts recent re-dispatches.
CREATE INDEX beads_redispatch ON beads(last_dispatch_attempt_at) WHERE dispatch_attempts > 1;
CREATE INDEX beads_rig_status ON beads(rig_id, status);

-- Append-only: keyed by an integer rowid so inserts append instead of landing
-- at random in a UUID index (nothing looks an event up by its id).
CREATE TABLE bead_events (
    seq INTEGER PRIMARY KEY,
    bead_event_id TEXT NOT NULL,
    bead_id TEXT NOT NULL,
    agent_id TEXT,
    event_type TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
);
CREATE INDEX bead_events_bead ON bead_events(bead_id, created_at);
-- Append-only; lets the oracles read "status changes since the last check".
CREATE INDEX bead_events_time ON bead_events(created_at) WHERE event_type = 'status_changed';

CREATE TABLE bead_dependencies (
    bead_id TEXT NOT NULL,
    depends_on_bead_id TEXT NOT NULL,
    dependency_type TEXT NOT NULL DEFAULT 'blocks',
    PRIMARY KEY (bead_id, depends_on_bead_id)
) WITHOUT ROWID;
CREATE INDEX bead_dependencies_target ON bead_dependencies(depends_on_bead_id, dependency_type);

-- name, rig_id and created_at repeat the agent bead's (they never change), so
-- agent queries stay single-table: a join to `beads` keyed by a bound id makes
-- SQLite re-prepare the statement on every use (it checks the derived
-- `beads.bead_id = ?` against the partial indexes of `beads`).
CREATE TABLE agent_metadata (
    bead_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    rig_id TEXT,
    created_at INTEGER NOT NULL,
    identity TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'idle',
    current_hook_bead_id TEXT,
    dispatch_attempts INTEGER NOT NULL DEFAULT 0,
    checkpoint TEXT,
    last_activity_at INTEGER,
    last_dispatched_at INTEGER,
    agent_status_message TEXT,
    agent_status_updated_at INTEGER,
    last_event_type TEXT,
    last_event_at INTEGER,
    active_tools TEXT NOT NULL DEFAULT '[]',
    stalled_at INTEGER
) WITHOUT ROWID;
CREATE INDEX agent_metadata_hook ON agent_metadata(current_hook_bead_id) WHERE current_hook_bead_id IS NOT NULL;

CREATE TABLE review_metadata (
    bead_id TEXT PRIMARY KEY,
    branch TEXT NOT NULL,
    target_branch TEXT NOT NULL DEFAULT 'main',
    merge_commit TEXT,
    pr_url TEXT,
    retry_count INTEGER NOT NULL DEFAULT 0,
    babysit INTEGER NOT NULL DEFAULT 0,
    last_poll_at INTEGER,
    poll_transient_count INTEGER NOT NULL DEFAULT 0,
    poll_non_transient_count INTEGER NOT NULL DEFAULT 0,
    poll_error_kind TEXT,
    has_conflicts INTEGER NOT NULL DEFAULT 0,
    conflicts_detected_at INTEGER,
    awaiting_approval INTEGER NOT NULL DEFAULT 0,
    awaiting_approval_observed_at INTEGER,
    review_decision TEXT,
    merge_state_status TEXT,
    auto_merge_ready_since INTEGER,
    auto_merge_pending INTEGER NOT NULL DEFAULT 0,
    convoy_id TEXT,
    last_feedback_check_at INTEGER
) WITHOUT ROWID;

CREATE TABLE convoy_metadata (
    bead_id TEXT PRIMARY KEY,
    total_beads INTEGER NOT NULL DEFAULT 0,
    closed_beads INTEGER NOT NULL DEFAULT 0,
    landed_at INTEGER,
    feature_branch TEXT,
    merge_mode TEXT NOT NULL DEFAULT 'review-then-land',
    staged INTEGER NOT NULL DEFAULT 0,
    ready_to_land INTEGER NOT NULL DEFAULT 0,
    landing_mr_attempts INTEGER NOT NULL DEFAULT 0,
    last_landing_mr_attempt_at INTEGER
) WITHOUT ROWID;

CREATE TABLE escalation_metadata (
    bead_id TEXT PRIMARY KEY,
    severity TEXT NOT NULL,
    category TEXT,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    re_escalation_count INTEGER NOT NULL DEFAULT 0,
    acknowledged_at INTEGER
) WITHOUT ROWID;
CREATE INDEX escalation_pending ON escalation_metadata(acknowledged, re_escalation_count)
    WHERE acknowledged = 0 AND re_escalation_count < 3;

CREATE TABLE agent_nudges (
    nudge_id TEXT PRIMARY KEY,
    agent_bead_id TEXT NOT NULL,
    message TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'wait-idle',
    priority TEXT NOT NULL DEFAULT 'normal',
    source TEXT NOT NULL DEFAULT 'system',
    created_at INTEGER NOT NULL,
    delivered_at INTEGER,
    expires_at INTEGER
);
CREATE INDEX agent_nudges_pending ON agent_nudges(agent_bead_id) WHERE delivered_at IS NULL;
CREATE INDEX agent_nudges_expiring ON agent_nudges(expires_at) WHERE delivered_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX agent_nudges_dedup ON agent_nudges(source, created_at);

CREATE TABLE town_events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    agent_id TEXT,
    bead_id TEXT,
    payload TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    processed_at INTEGER
);
CREATE INDEX town_events_pending ON town_events(created_at, seq) WHERE processed_at IS NULL;
CREATE INDEX town_events_processed ON town_events(created_at) WHERE processed_at IS NOT NULL;
CREATE INDEX town_events_bead ON town_events(bead_id) WHERE bead_id IS NOT NULL;
CREATE INDEX town_events_agent ON town_events(agent_id) WHERE agent_id IS NOT NULL;

CREATE TABLE rigs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    git_url TEXT NOT NULL DEFAULT '',
    default_branch TEXT NOT NULL DEFAULT 'main',
    config TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
);

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    // 2: what the town keeps for its container: agents' session snapshots.
    r#"
CREATE TABLE session_snapshots (
    agent_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    stored_at INTEGER NOT NULL
);
"#,
];
