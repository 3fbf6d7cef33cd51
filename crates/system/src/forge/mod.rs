//! A GitHub-compatible forge: the subset of GitHub's REST and GraphQL APIs
//! the SCM client uses (plus GitLab's merge-request read), with state in
//! SQLite, and a control API (`/_control/…`) through which tests and the
//! simulator play the humans and CI around a PR: set check results, add
//! review threads, move a base branch under a PR, merge or close it from
//! outside, and inject faults (5xx/429 bursts, invalid JSON, schema
//! mismatches, delays).
//!
//! Deterministic: SHAs come from a seeded `SmallRng`, probabilistic faults
//! from another stream of the same seed, times from a [`Clock`].

mod api;
mod control;
mod faults;

pub use faults::{Fault, FaultKind};

use crate::time::Clock;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, MutexGuard};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS repos (
    owner TEXT NOT NULL, name TEXT NOT NULL, default_branch TEXT NOT NULL,
    allow_squash INTEGER NOT NULL, allow_merge INTEGER NOT NULL, allow_rebase INTEGER NOT NULL,
    require_review INTEGER NOT NULL,
    PRIMARY KEY (owner, name));
CREATE TABLE IF NOT EXISTS refs (
    owner TEXT NOT NULL, name TEXT NOT NULL, branch TEXT NOT NULL, sha TEXT NOT NULL,
    PRIMARY KEY (owner, name, branch));
CREATE TABLE IF NOT EXISTS pulls (
    owner TEXT NOT NULL, name TEXT NOT NULL, number INTEGER NOT NULL,
    title TEXT NOT NULL, head_ref TEXT NOT NULL, head_sha TEXT NOT NULL, base_ref TEXT NOT NULL,
    state TEXT NOT NULL, merged INTEGER NOT NULL DEFAULT 0, merged_at INTEGER, merge_method TEXT,
    draft INTEGER NOT NULL DEFAULT 0, conflicted INTEGER NOT NULL DEFAULT 0, decision TEXT,
    mergeable_override TEXT, created_at INTEGER NOT NULL,
    PRIMARY KEY (owner, name, number));
CREATE TABLE IF NOT EXISTS check_runs (
    id INTEGER PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, sha TEXT NOT NULL,
    run_name TEXT NOT NULL, status TEXT NOT NULL, conclusion TEXT);
CREATE TABLE IF NOT EXISTS statuses (
    id INTEGER PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, sha TEXT NOT NULL,
    context TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS threads (
    id INTEGER PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, number INTEGER NOT NULL,
    resolved INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS comments (
    id INTEGER PRIMARY KEY, thread_id INTEGER NOT NULL, author TEXT NOT NULL, body TEXT NOT NULL);
";

#[derive(Clone, Debug)]
pub struct ForgeConfig {
    /// The host in `html_url`s (`https://<web_host>/o/r/pull/N`).
    pub web_host: String,
    /// When set, API calls need `Authorization: token <t>` (or `Bearer`); else 401.
    pub token: Option<String>,
    pub seed: u64,
}

impl Default for ForgeConfig {
    fn default() -> Self {
        ForgeConfig { web_host: "github.com".into(), token: None, seed: 0 }
    }
}

/// An error a forge operation answers with (status + GitHub-style message).
#[derive(Clone, Debug, PartialEq)]
pub struct ForgeError {
    pub status: u16,
    pub message: String,
}

impl ForgeError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ForgeError { status, message: message.into() }
    }
    fn not_found() -> Self {
        ForgeError::new(404, "Not Found")
    }
}

impl From<rusqlite::Error> for ForgeError {
    fn from(e: rusqlite::Error) -> Self {
        ForgeError::new(500, format!("forge storage: {e}"))
    }
}

pub type ForgeResult<T> = Result<T, ForgeError>;

/// Repository settings (merge methods GitHub lets a repo disable).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RepoSettings {
    pub default_branch: String,
    pub allow_squash: bool,
    pub allow_merge: bool,
    pub allow_rebase: bool,
    /// Branch protection: an approving review is required to merge.
    pub require_review: bool,
}

impl Default for RepoSettings {
    fn default() -> Self {
        RepoSettings {
            default_branch: "main".into(),
            allow_squash: true,
            allow_merge: true,
            allow_rebase: true,
            require_review: false,
        }
    }
}

/// A check run to set on a PR's head commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRun {
    pub name: String,
    /// `queued`, `in_progress`, `completed`.
    pub status: String,
    /// `success`, `failure`, `skipped`, `cancelled`, … (completed runs).
    #[serde(default)]
    pub conclusion: Option<String>,
}

impl CheckRun {
    pub fn completed(name: &str, conclusion: &str) -> Self {
        CheckRun { name: name.into(), status: "completed".into(), conclusion: Some(conclusion.into()) }
    }
    pub fn pending(name: &str) -> Self {
        CheckRun { name: name.into(), status: "in_progress".into(), conclusion: None }
    }
}

/// A legacy commit status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitStatus {
    pub context: String,
    /// `success`, `pending`, `failure`, `error`.
    pub state: String,
}

/// Canned review threads.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadKind {
    Approval,
    Lgtm,
    BotStatus,
    Blocking,
}

impl ThreadKind {
    fn canned(self) -> (&'static str, &'static str) {
        match self {
            ThreadKind::Approval => ("reviewer", "Approved, looks good to me."),
            ThreadKind::Lgtm => ("reviewer", "LGTM"),
            ThreadKind::BotStatus => ("review-bot[bot]", "Automated review passed: no issues found."),
            ThreadKind::Blocking => ("reviewer", "Please handle the error returned by save() instead of ignoring it."),
        }
    }
}

/// One pull request as the forge stores it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pull {
    pub owner: String,
    pub name: String,
    pub number: u64,
    pub title: String,
    pub head_ref: String,
    pub head_sha: String,
    pub base_ref: String,
    pub state: String,
    pub merged: bool,
    pub merge_method: Option<String>,
    pub draft: bool,
    pub conflicted: bool,
    pub decision: Option<String>,
    pub mergeable_override: Option<String>,
}

pub struct Forge {
    db: Mutex<Connection>,
    shas: Mutex<SmallRng>,
    faults: faults::Faults,
    clock: Arc<dyn Clock>,
    cfg: ForgeConfig,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Forge {
    /// A forge on `conn` (a file or `Connection::open_in_memory()`).
    pub fn open(conn: Connection, clock: Arc<dyn Clock>, cfg: ForgeConfig) -> rusqlite::Result<Arc<Forge>> {
        conn.execute_batch(SCHEMA)?;
        // Room for every statement the forge runs: pulls are read on every poll.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Arc::new(Forge {
            db: Mutex::new(conn),
            shas: Mutex::new(SmallRng::seed_from_u64(cfg.seed)),
            faults: faults::Faults::new(cfg.seed ^ 0x5eed_fa17),
            clock,
            cfg,
        }))
    }

    pub fn in_memory(clock: Arc<dyn Clock>, cfg: ForgeConfig) -> Arc<Forge> {
        // An in-memory database cannot fail to open or take the schema.
        let conn = Connection::open_in_memory().expect("in-memory sqlite");
        Self::open(conn, clock, cfg).expect("forge schema")
    }

    /// The HTTP service: GitHub subset, GitLab MR read, and `/_control`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        api::routes()
            .merge(control::routes())
            .layer(axum::middleware::from_fn_with_state(self.clone(), faults::layer))
            .with_state(self.clone())
    }

    pub fn web_host(&self) -> &str {
        &self.cfg.web_host
    }

    /// The `html_url` of a PR.
    pub fn pr_url(&self, owner: &str, name: &str, number: u64) -> String {
        format!("https://{}/{owner}/{name}/pull/{number}", self.cfg.web_host)
    }

    fn new_sha(&self) -> String {
        let bytes: [u8; 20] = lock(&self.shas).random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        lock(&self.db)
    }

    // ---------------- repositories and branches ----------------

    pub fn create_repo(&self, owner: &str, name: &str, s: &RepoSettings) -> ForgeResult<()> {
        let sha = self.new_sha();
        let db = self.db();
        let n = db.execute(
            "INSERT OR IGNORE INTO repos VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![owner, name, s.default_branch, s.allow_squash, s.allow_merge, s.allow_rebase, s.require_review],
        )?;
        if n == 0 {
            return Err(ForgeError::new(422, "name already exists on this account"));
        }
        db.execute("INSERT INTO refs VALUES (?1, ?2, ?3, ?4)", params![owner, name, s.default_branch, sha])?;
        Ok(())
    }

    pub fn set_repo_settings(&self, owner: &str, name: &str, s: &RepoSettings) -> ForgeResult<()> {
        let n = self.db().execute(
            "UPDATE repos SET default_branch = ?3, allow_squash = ?4, allow_merge = ?5, allow_rebase = ?6, \
             require_review = ?7 WHERE owner = ?1 AND name = ?2",
            params![owner, name, s.default_branch, s.allow_squash, s.allow_merge, s.allow_rebase, s.require_review],
        )?;
        if n == 0 {
            return Err(ForgeError::not_found());
        }
        Ok(())
    }

    pub fn repo(&self, owner: &str, name: &str) -> ForgeResult<RepoSettings> {
        repo_in(&self.db(), owner, name)
    }

    pub fn branch_sha(&self, owner: &str, name: &str, branch: &str) -> ForgeResult<Option<String>> {
        Ok(self
            .db()
            .query_row(
                "SELECT sha FROM refs WHERE owner = ?1 AND name = ?2 AND branch = ?3",
                params![owner, name, branch],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// `POST git/refs`: 422 when the branch exists.
    pub fn create_ref(&self, owner: &str, name: &str, branch: &str, sha: &str) -> ForgeResult<()> {
        let db = self.db();
        repo_in(&db, owner, name)?;
        let n = db.execute("INSERT OR IGNORE INTO refs VALUES (?1, ?2, ?3, ?4)", params![owner, name, branch, sha])?;
        if n == 0 {
            return Err(ForgeError::new(422, "Reference already exists"));
        }
        Ok(())
    }

    /// A push to `branch` (creating it if needed). Open PRs whose head it is
    /// get the new commit (and lose a conflict: the push is a rebase); open
    /// PRs based on it turn dirty when `conflict` is set. Returns the new SHA.
    pub fn push(&self, owner: &str, name: &str, branch: &str, conflict: bool) -> ForgeResult<String> {
        let sha = self.new_sha();
        let db = self.db();
        repo_in(&db, owner, name)?;
        db.execute("INSERT OR REPLACE INTO refs VALUES (?1, ?2, ?3, ?4)", params![owner, name, branch, sha])?;
        db.execute(
            "UPDATE pulls SET head_sha = ?4, conflicted = 0 WHERE owner = ?1 AND name = ?2 AND head_ref = ?3 \
             AND state = 'open'",
            params![owner, name, branch, sha],
        )?;
        if conflict {
            db.execute(
                "UPDATE pulls SET conflicted = 1 WHERE owner = ?1 AND name = ?2 AND base_ref = ?3 AND state = 'open'",
                params![owner, name, branch],
            )?;
        }
        Ok(sha)
    }

    // ---------------- pull requests ----------------

    /// `POST pulls`: the head branch must exist; one open PR per head/base.
    pub fn create_pull(&self, owner: &str, name: &str, title: &str, head: &str, base: &str) -> ForgeResult<Pull> {
        let now = self.clock.now().0;
        let db = self.db();
        repo_in(&db, owner, name)?;
        let sha = |b: &str| -> ForgeResult<Option<String>> {
            Ok(db
                .query_row(
                    "SELECT sha FROM refs WHERE owner = ?1 AND name = ?2 AND branch = ?3",
                    params![owner, name, b],
                    |r| r.get(0),
                )
                .optional()?)
        };
        let head_sha =
            sha(head)?.ok_or_else(|| ForgeError::new(422, format!("Validation Failed: head `{head}` invalid")))?;
        sha(base)?.ok_or_else(|| ForgeError::new(422, format!("Validation Failed: base `{base}` invalid")))?;
        let dup: Option<i64> = db
            .query_row(
                "SELECT number FROM pulls WHERE owner = ?1 AND name = ?2 AND head_ref = ?3 AND base_ref = ?4 \
                 AND state = 'open'",
                params![owner, name, head, base],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(n) = dup {
            return Err(ForgeError::new(422, format!("A pull request already exists for {head} (#{n})")));
        }
        let number: i64 = db.query_row(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM pulls WHERE owner = ?1 AND name = ?2",
            params![owner, name],
            |r| r.get(0),
        )?;
        db.execute(
            "INSERT INTO pulls (owner, name, number, title, head_ref, head_sha, base_ref, state, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', ?8)",
            params![owner, name, number, title, head, head_sha, base, now],
        )?;
        pull_in(&db, owner, name, number as u64)
    }

    pub fn pull(&self, owner: &str, name: &str, number: u64) -> ForgeResult<Pull> {
        pull_in(&self.db(), owner, name, number)
    }

    /// GitHub's `mergeable_state` for a PR.
    pub fn mergeable_state(&self, p: &Pull) -> ForgeResult<String> {
        if let Some(o) = &p.mergeable_override {
            return Ok(o.clone());
        }
        if p.state != "open" {
            return Ok("unknown".into());
        }
        if p.conflicted {
            return Ok("dirty".into());
        }
        if p.draft {
            return Ok("draft".into());
        }
        let repo = self.repo(&p.owner, &p.name)?;
        if repo.require_review && p.decision.as_deref() != Some("APPROVED") {
            return Ok("blocked".into());
        }
        let (runs, _) = self.check_runs(&p.owner, &p.name, &p.head_sha, 1000)?;
        let bad = runs
            .iter()
            .any(|r| r.status != "completed" || !matches!(r.conclusion.as_deref(), Some("success" | "skipped")));
        let combined = self.combined_status(&p.owner, &p.name, &p.head_sha)?;
        if bad || (combined.1 > 0 && combined.0 != "success") {
            return Ok("unstable".into());
        }
        Ok("clean".into())
    }

    /// `PUT pulls/N/merge`.
    pub fn merge_pull(
        &self,
        owner: &str,
        name: &str,
        number: u64,
        method: &str,
        sha: Option<&str>,
    ) -> ForgeResult<String> {
        let p = self.pull(owner, name, number)?;
        let repo = self.repo(owner, name)?;
        let (allowed, what) = match method {
            "merge" => (repo.allow_merge, "Merge commits"),
            "squash" => (repo.allow_squash, "Squash merges"),
            "rebase" => (repo.allow_rebase, "Rebase merges"),
            _ => return Err(ForgeError::new(422, format!("Invalid merge_method `{method}`"))),
        };
        if !allowed {
            return Err(ForgeError::new(405, format!("{what} are not allowed on this repository.")));
        }
        if p.state != "open" || p.conflicted {
            return Err(ForgeError::new(405, "Pull Request is not mergeable"));
        }
        if let Some(s) = sha {
            if s != p.head_sha {
                return Err(ForgeError::new(409, "Head branch was modified. Review and try the merge again."));
            }
        }
        if repo.require_review && p.decision.as_deref() != Some("APPROVED") {
            return Err(ForgeError::new(
                405,
                "At least 1 approving review is required by reviewers with write access.",
            ));
        }
        self.complete_merge(owner, name, number, method)
    }

    fn complete_merge(&self, owner: &str, name: &str, number: u64, method: &str) -> ForgeResult<String> {
        let sha = self.new_sha();
        let now = self.clock.now().0;
        let db = self.db();
        let p = pull_in(&db, owner, name, number)?;
        if p.state != "open" {
            return Err(ForgeError::new(405, "Pull Request is not mergeable"));
        }
        db.execute(
            "UPDATE pulls SET state = 'closed', merged = 1, merged_at = ?4, merge_method = ?5 \
             WHERE owner = ?1 AND name = ?2 AND number = ?3",
            params![owner, name, number as i64, now, method],
        )?;
        db.execute(
            "UPDATE refs SET sha = ?4 WHERE owner = ?1 AND name = ?2 AND branch = ?3",
            params![owner, name, p.base_ref, sha],
        )?;
        Ok(sha)
    }

    /// A human merges the PR in the web UI (no checks asked).
    pub fn merge_from_outside(&self, owner: &str, name: &str, number: u64) -> ForgeResult<String> {
        self.complete_merge(owner, name, number, "merge")
    }

    /// A human closes the PR without merging.
    pub fn close_pull(&self, owner: &str, name: &str, number: u64) -> ForgeResult<()> {
        let n = self.db().execute(
            "UPDATE pulls SET state = 'closed' WHERE owner = ?1 AND name = ?2 AND number = ?3 AND state = 'open'",
            params![owner, name, number as i64],
        )?;
        if n == 0 {
            return Err(ForgeError::new(422, "pull request is not open"));
        }
        Ok(())
    }

    fn update_pull(&self, owner: &str, name: &str, number: u64, set: &str, value: Option<&str>) -> ForgeResult<()> {
        let sql = format!("UPDATE pulls SET {set} = ?4 WHERE owner = ?1 AND name = ?2 AND number = ?3");
        if self.db().execute(&sql, params![owner, name, number as i64, value])? == 0 {
            return Err(ForgeError::not_found());
        }
        Ok(())
    }

    /// `APPROVED`, `CHANGES_REQUESTED`, `REVIEW_REQUIRED` or none.
    pub fn set_review_decision(&self, owner: &str, name: &str, number: u64, d: Option<&str>) -> ForgeResult<()> {
        self.update_pull(owner, name, number, "decision", d)
    }

    /// Force `mergeable_state` (e.g. `unknown` while "GitHub computes"); `None` clears.
    pub fn set_mergeable_override(&self, owner: &str, name: &str, number: u64, s: Option<&str>) -> ForgeResult<()> {
        self.update_pull(owner, name, number, "mergeable_override", s)
    }

    pub fn set_draft(&self, owner: &str, name: &str, number: u64, draft: bool) -> ForgeResult<()> {
        self.update_pull(owner, name, number, "draft", Some(if draft { "1" } else { "0" }))
    }

    // ---------------- CI ----------------

    /// Replace the check runs and statuses of the PR's current head commit.
    pub fn set_checks(
        &self,
        owner: &str,
        name: &str,
        number: u64,
        runs: &[CheckRun],
        statuses: &[CommitStatus],
    ) -> ForgeResult<()> {
        let p = self.pull(owner, name, number)?;
        let db = self.db();
        db.execute(
            "DELETE FROM check_runs WHERE owner = ?1 AND name = ?2 AND sha = ?3",
            params![owner, name, p.head_sha],
        )?;
        db.execute(
            "DELETE FROM statuses WHERE owner = ?1 AND name = ?2 AND sha = ?3",
            params![owner, name, p.head_sha],
        )?;
        for r in runs {
            db.execute(
                "INSERT INTO check_runs (owner, name, sha, run_name, status, conclusion) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![owner, name, p.head_sha, r.name, r.status, r.conclusion],
            )?;
        }
        for s in statuses {
            db.execute(
                "INSERT INTO statuses (owner, name, sha, context, state) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![owner, name, p.head_sha, s.context, s.state],
            )?;
        }
        Ok(())
    }

    /// Up to `per_page` runs of a commit, and the total.
    pub fn check_runs(&self, owner: &str, name: &str, sha: &str, per_page: u32) -> ForgeResult<(Vec<CheckRun>, u64)> {
        let db = self.db();
        let total: i64 = db.query_row(
            "SELECT COUNT(*) FROM check_runs WHERE owner = ?1 AND name = ?2 AND sha = ?3",
            params![owner, name, sha],
            |r| r.get(0),
        )?;
        let mut st = db.prepare(
            "SELECT run_name, status, conclusion FROM check_runs WHERE owner = ?1 AND name = ?2 AND sha = ?3 \
             ORDER BY id LIMIT ?4",
        )?;
        let runs = st
            .query_map(params![owner, name, sha, per_page], |r| {
                Ok(CheckRun { name: r.get(0)?, status: r.get(1)?, conclusion: r.get(2)? })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((runs, total.max(0) as u64))
    }

    /// Combined legacy status: (state, total_count, statuses).
    pub fn combined_status(&self, owner: &str, name: &str, sha: &str) -> ForgeResult<(String, u64, Vec<CommitStatus>)> {
        let db = self.db();
        let mut st =
            db.prepare("SELECT context, state FROM statuses WHERE owner = ?1 AND name = ?2 AND sha = ?3 ORDER BY id")?;
        let list = st
            .query_map(params![owner, name, sha], |r| Ok(CommitStatus { context: r.get(0)?, state: r.get(1)? }))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let state = if list.iter().any(|s| matches!(s.state.as_str(), "failure" | "error")) {
            "failure"
        } else if list.is_empty() || list.iter().any(|s| s.state != "success") {
            "pending"
        } else {
            "success"
        };
        Ok((state.into(), list.len() as u64, list))
    }

    // ---------------- reviews ----------------

    /// Add a review thread of a canned kind (or with `body`). Returns its id.
    pub fn add_thread(
        &self,
        owner: &str,
        name: &str,
        number: u64,
        kind: ThreadKind,
        body: Option<&str>,
    ) -> ForgeResult<i64> {
        self.pull(owner, name, number)?;
        let (author, canned) = kind.canned();
        let db = self.db();
        db.execute(
            "INSERT INTO threads (owner, name, number) VALUES (?1, ?2, ?3)",
            params![owner, name, number as i64],
        )?;
        let id = db.last_insert_rowid();
        db.execute(
            "INSERT INTO comments (thread_id, author, body) VALUES (?1, ?2, ?3)",
            params![id, author, body.unwrap_or(canned)],
        )?;
        Ok(id)
    }

    /// Resolve every thread of a PR (the polecat addressed them).
    pub fn resolve_threads(&self, owner: &str, name: &str, number: u64) -> ForgeResult<()> {
        self.db().execute(
            "UPDATE threads SET resolved = 1 WHERE owner = ?1 AND name = ?2 AND number = ?3",
            params![owner, name, number as i64],
        )?;
        Ok(())
    }

    /// GraphQL `pullRequest` fields: decision, merge state, draft, threads.
    fn graphql_pull(&self, owner: &str, name: &str, number: u64) -> ForgeResult<Value> {
        let p = self.pull(owner, name, number)?;
        let repo = self.repo(owner, name)?;
        let merge_state = self.mergeable_state(&p)?.to_uppercase();
        let decision = p.decision.clone().or_else(|| repo.require_review.then(|| "REVIEW_REQUIRED".to_owned()));
        let db = self.db();
        let mut st =
            db.prepare("SELECT id, resolved FROM threads WHERE owner = ?1 AND name = ?2 AND number = ?3 ORDER BY id")?;
        let threads = st
            .query_map(params![owner, name, number as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut nodes = Vec::new();
        for (id, resolved) in threads.iter().take(100) {
            let mut cs =
                db.prepare_cached("SELECT author, body FROM comments WHERE thread_id = ?1 ORDER BY id LIMIT 5")?;
            let comments = cs
                .query_map([id], |r| {
                    Ok(json!({"body": r.get::<_, String>(1)?, "author": {"login": r.get::<_, String>(0)?}}))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            nodes.push(json!({"isResolved": resolved, "comments": {"nodes": comments}}));
        }
        Ok(json!({
            "reviewDecision": decision,
            "mergeStateStatus": merge_state,
            "isDraft": p.draft,
            "reviewThreads": {"pageInfo": {"hasNextPage": threads.len() > 100}, "nodes": nodes},
        }))
    }

    // ---------------- faults ----------------

    pub fn add_fault(&self, f: Fault) {
        self.faults.add(f);
    }

    pub fn clear_faults(&self) {
        self.faults.clear();
    }

    /// API requests seen (`METHOD /path`), oldest first; control calls excluded.
    pub fn requests(&self) -> Vec<String> {
        self.faults.requests()
    }

    pub fn clear_requests(&self) {
        self.faults.clear_requests();
    }
}

fn repo_in(db: &Connection, owner: &str, name: &str) -> ForgeResult<RepoSettings> {
    db.prepare_cached(
        "SELECT default_branch, allow_squash, allow_merge, allow_rebase, require_review FROM repos \
         WHERE owner = ?1 AND name = ?2",
    )?
    .query_row(params![owner, name], |r| {
        Ok(RepoSettings {
            default_branch: r.get(0)?,
            allow_squash: r.get(1)?,
            allow_merge: r.get(2)?,
            allow_rebase: r.get(3)?,
            require_review: r.get(4)?,
        })
    })
    .optional()?
    .ok_or_else(ForgeError::not_found)
}

fn pull_in(db: &Connection, owner: &str, name: &str, number: u64) -> ForgeResult<Pull> {
    db.prepare_cached(
        "SELECT title, head_ref, head_sha, base_ref, state, merged, merge_method, draft, conflicted, decision, \
         mergeable_override FROM pulls WHERE owner = ?1 AND name = ?2 AND number = ?3",
    )?
    .query_row(params![owner, name, number as i64], |r| {
        Ok(Pull {
            owner: owner.to_owned(),
            name: name.to_owned(),
            number,
            title: r.get(0)?,
            head_ref: r.get(1)?,
            head_sha: r.get(2)?,
            base_ref: r.get(3)?,
            state: r.get(4)?,
            merged: r.get(5)?,
            merge_method: r.get(6)?,
            draft: r.get(7)?,
            conflicted: r.get(8)?,
            decision: r.get(9)?,
            mergeable_override: r.get(10)?,
        })
    })
    .optional()?
    .ok_or_else(ForgeError::not_found)
}
