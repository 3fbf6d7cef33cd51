//! The SCM client: what the town asks of GitHub (and, for status, GitLab):
//! `check_pr_status`, `check_pr_feedback`, `merge_pr`, `create_branch`, with
//! upstream's error classes. Base URLs and tokens are configuration, so the
//! same client talks to the forge in tests and the simulator and to
//! api.github.com in production (once the HTTP stack speaks TLS).
//!
//! [`run_poll`] and [`run_merge`] run the town's `PollPr` / `MergePr`
//! effects and return the [`Outcome`]s the town applies.

pub mod classifier;
pub mod types;

pub use classifier::{LlmClassifier, LlmClassifierConfig, ReviewThread, RuleBasedClassifier, ThreadClassifier};
pub use types::{
    FailureClass, InvalidKind, MergeReport, PollReport, PollWants, PrFeedback, PrState, PrStatus, ScmError,
};

use crate::model::pr_url::{PrUrl, Provider};
use crate::net::{HttpClient, HttpResponse, Method};
use crate::town::effects::{Effect, Outcome};
use classifier::ThreadComment;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

pub const USER_AGENT: &str = "Gastown-Refinery/1.0";
/// Merge methods in the order they are tried.
pub const MERGE_METHODS: [&str; 3] = ["squash", "merge", "rebase"];

/// Where the forges are and how to authenticate. Deserializable so a host
/// can read it from its configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScmConfig {
    /// The host of GitHub PR URLs (`https://<host>/o/r/pull/N`).
    pub github_web_host: String,
    /// REST base: `https://api.github.com`, or the forge's `http://host:port`.
    pub github_api_url: String,
    /// GraphQL endpoint; defaults to `<github_api_url>/graphql`.
    pub github_graphql_url: Option<String>,
    pub github_token: Option<String>,
    pub gitlab_token: Option<String>,
    /// A self-hosted GitLab (its web URL); `gitlab.com` is always accepted.
    pub gitlab_instance_url: Option<String>,
    /// Where GitLab API calls go; defaults to the PR's `https://<host>`.
    pub gitlab_api_url: Option<String>,
    pub timeout_ms: u64,
    /// `None`: the rule-based classifier.
    pub llm_classifier: Option<LlmClassifierConfig>,
}

impl Default for ScmConfig {
    fn default() -> Self {
        ScmConfig {
            github_web_host: "github.com".into(),
            github_api_url: "https://api.github.com".into(),
            github_graphql_url: None,
            github_token: None,
            gitlab_token: None,
            gitlab_instance_url: None,
            gitlab_api_url: None,
            timeout_ms: 30_000,
            llm_classifier: None,
        }
    }
}

impl ScmConfig {
    /// Talk to a forge at `base` (e.g. `http://127.0.0.1:4000`) for PR URLs on `web_host`.
    pub fn for_forge(base: &str, web_host: &str, token: Option<&str>) -> Self {
        ScmConfig {
            github_web_host: web_host.into(),
            github_api_url: base.trim_end_matches('/').into(),
            github_token: token.map(str::to_owned),
            ..ScmConfig::default()
        }
    }
}

/// A PR URL that the client will serve.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub pr: PrUrl,
    pub owner: String,
    pub name: String,
}

/// The SCM client. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ScmClient {
    http: HttpClient,
    cfg: ScmConfig,
    classifier: Arc<dyn ThreadClassifier>,
}

impl std::fmt::Debug for ScmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScmClient").field("api", &self.cfg.github_api_url).finish()
    }
}

#[derive(Deserialize)]
struct RefBody {
    object: RefObject,
}
#[derive(Deserialize)]
struct RefObject {
    sha: String,
}

/// Why `create_branch` did nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum BranchError {
    /// No token or not a GitHub remote: skipped, as upstream does.
    Skipped(String),
    Scm(ScmError),
}

impl ScmClient {
    /// The classifier is the LLM one when configured, else the rule-based one.
    pub fn new(http: HttpClient, cfg: ScmConfig) -> Self {
        let classifier: Arc<dyn ThreadClassifier> = match &cfg.llm_classifier {
            Some(l) => Arc::new(LlmClassifier::new(http.clone(), l.clone())),
            None => Arc::new(RuleBasedClassifier),
        };
        ScmClient { http, cfg, classifier }
    }

    pub fn with_classifier(mut self, c: Arc<dyn ThreadClassifier>) -> Self {
        self.classifier = c;
        self
    }

    pub fn config(&self) -> &ScmConfig {
        &self.cfg
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms.max(1))
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.github_api_url.trim_end_matches('/'))
    }

    fn graphql_url(&self) -> String {
        self.cfg.github_graphql_url.clone().unwrap_or_else(|| self.api("/graphql"))
    }

    /// Classify a PR URL for this client's configuration.
    pub fn target(&self, url: &str) -> Result<Target, ScmError> {
        let pr =
            PrUrl::parse(url).map_err(|e| ScmError::UnrecognizedUrl { url: url.to_owned(), why: e.to_string() })?;
        match pr.provider {
            Provider::GitHub => {
                if !pr.host.eq_ignore_ascii_case(&self.cfg.github_web_host) {
                    return Err(ScmError::UnrecognizedUrl {
                        url: url.to_owned(),
                        why: format!("host `{}` is not the GitHub host `{}`", pr.host, self.cfg.github_web_host),
                    });
                }
            }
            Provider::GitLab => {
                let instance = self.cfg.gitlab_instance_url.as_deref().and_then(host_of);
                let ok = pr.host.eq_ignore_ascii_case("gitlab.com")
                    || instance.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(&pr.host));
                if !ok {
                    return Err(ScmError::HostMismatch {
                        expected: instance.unwrap_or_else(|| "gitlab.com".into()),
                        got: pr.host.clone(),
                    });
                }
            }
        }
        let (owner, name) = match pr.repo.split_once('/') {
            Some((o, n)) => (o.to_owned(), n.to_owned()),
            None => (pr.repo.clone(), String::new()),
        };
        Ok(Target { pr, owner, name })
    }

    fn github_token(&self) -> Result<&str, ScmError> {
        self.cfg.github_token.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| ScmError::NoToken {
            provider: Provider::GitHub,
            resolution_chain: vec!["scm.github_token".into()],
        })
    }

    async fn github(&self, method: Method, url: String, body: Option<&Value>) -> Result<HttpResponse, ScmError> {
        let token = self.github_token()?;
        let mut req = self
            .http
            .request(method, url)
            .header("authorization", &format!("token {token}"))
            .header("accept", "application/vnd.github+json")
            .header("user-agent", USER_AGENT)
            .timeout(self.timeout());
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.map_err(|e| ScmError::Network { detail: e.to_string() })
    }

    /// `checkPRStatus`.
    pub async fn check_pr_status(&self, url: &str) -> Result<PrStatus, ScmError> {
        let t = self.target(url)?;
        match t.pr.provider {
            Provider::GitHub => {
                let path = format!("/repos/{}/{}/pulls/{}", t.owner, t.name, t.pr.number);
                let resp = self.github(Method::GET, self.api(&path), None).await?;
                parse_github_pr(&ok_json(&resp)?)
            }
            Provider::GitLab => self.gitlab_status(&t).await,
        }
    }

    async fn gitlab_status(&self, t: &Target) -> Result<PrStatus, ScmError> {
        let token = self.cfg.gitlab_token.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| ScmError::NoToken {
            provider: Provider::GitLab,
            resolution_chain: vec!["town.git_auth.gitlab_token".into()],
        })?;
        let base = self.cfg.gitlab_api_url.clone().unwrap_or_else(|| format!("https://{}", t.pr.host));
        let url = format!(
            "{}/api/v4/projects/{}/merge_requests/{}",
            base.trim_end_matches('/'),
            t.pr.repo.replace('/', "%2F"),
            t.pr.number
        );
        let resp = self
            .http
            .get(url)
            .header("private-token", token)
            .header("user-agent", USER_AGENT)
            .timeout(self.timeout())
            .send()
            .await
            .map_err(|e| ScmError::Network { detail: e.to_string() })?;
        let v = ok_json(&resp)?;
        let state = v.get("state").and_then(Value::as_str).ok_or_else(|| schema_mismatch(&v))?;
        let state = match state {
            "merged" => PrState::Merged,
            "closed" => PrState::Closed,
            _ => PrState::Open,
        };
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(PrStatus {
            state,
            mergeable_state: None,
            head_branch: s("source_branch"),
            base_branch: s("target_branch"),
            head_sha: s("sha"),
            title: s("title"),
        })
    }

    /// `checkPRFeedback`: `None` for non-GitHub URLs or without a token. Each
    /// half that fails leaves its conservative default.
    pub async fn check_pr_feedback(&self, url: &str) -> Option<PrFeedback> {
        let t = self.target(url).ok().filter(|t| t.pr.provider == Provider::GitHub)?;
        self.github_token().ok()?;
        let mut f = PrFeedback::default();
        if let Some(review) = self.review_state(&t).await {
            f.reviews_known = true;
            f.review_decision = review.decision;
            f.merge_state_status = review.merge_state;
            f.is_draft = review.is_draft;
            f.has_unresolved_comments = if review.more_threads {
                true
            } else if review.unresolved.is_empty() {
                false
            } else {
                self.classifier.blocking(&review.unresolved).await
            };
        }
        self.checks(&t, &mut f).await;
        f.awaiting_approval = f.review_decision.as_deref() == Some("REVIEW_REQUIRED")
            || f.merge_state_status.as_deref() == Some("BLOCKED");
        f.changes_requested = f.review_decision.as_deref() == Some("CHANGES_REQUESTED");
        Some(f)
    }

    async fn review_state(&self, t: &Target) -> Option<ReviewState> {
        let body = json!({
            "query": REVIEW_QUERY,
            "variables": {"owner": t.owner, "name": t.name, "number": t.pr.number},
        });
        let resp = self.github(Method::POST, self.graphql_url(), Some(&body)).await.ok()?;
        if !resp.ok() {
            return None;
        }
        let v: Value = resp.json().ok()?;
        let pr = v.pointer("/data/repository/pullRequest").filter(|p| p.is_object())?;
        let threads = pr.get("reviewThreads")?;
        let more_threads = threads.pointer("/pageInfo/hasNextPage").and_then(Value::as_bool)?;
        let mut unresolved = Vec::new();
        for node in threads.get("nodes")?.as_array()? {
            if node.get("isResolved")?.as_bool()? {
                continue;
            }
            let mut comments = Vec::new();
            for c in node.pointer("/comments/nodes")?.as_array()? {
                comments.push(ThreadComment {
                    author: c.pointer("/author/login").and_then(Value::as_str).unwrap_or("ghost").to_owned(),
                    body: c.get("body")?.as_str()?.to_owned(),
                });
            }
            unresolved.push(ReviewThread { comments });
        }
        let s = |k: &str| pr.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(ReviewState {
            decision: s("reviewDecision"),
            merge_state: s("mergeStateStatus"),
            is_draft: pr.get("isDraft").and_then(Value::as_bool).unwrap_or(false),
            more_threads,
            unresolved,
        })
    }

    /// Check runs of the head commit, then the legacy combined status.
    /// Any failure leaves `all_checks_pass = false`.
    async fn checks(&self, t: &Target, f: &mut PrFeedback) {
        let pr = format!("/repos/{}/{}/pulls/{}", t.owner, t.name, t.pr.number);
        let Ok(resp) = self.github(Method::GET, self.api(&pr), None).await else { return };
        let Some(sha) = ok_json(&resp).ok().and_then(|v| v.pointer("/head/sha")?.as_str().map(str::to_owned)) else {
            return;
        };
        let runs = format!("/repos/{}/{}/commits/{sha}/check-runs?per_page=100", t.owner, t.name);
        let Ok(resp) = self.github(Method::GET, self.api(&runs), None).await else { return };
        let Ok(v) = ok_json(&resp) else { return };
        let (Some(total), Some(list)) =
            (v.get("total_count").and_then(Value::as_u64), v.get("check_runs").and_then(Value::as_array))
        else {
            return;
        };
        f.has_unchecked_runs = total > list.len() as u64;
        let mut all_done_ok = true;
        for r in list {
            let status = r.get("status").and_then(Value::as_str).unwrap_or("");
            let conclusion = r.get("conclusion").and_then(Value::as_str);
            let ok = matches!(conclusion, Some("success" | "skipped"));
            if status == "completed" && !ok {
                f.has_failing_checks = true;
            }
            if status != "completed" || !ok {
                all_done_ok = false;
            }
        }
        f.all_checks_pass = list.is_empty() || (!f.has_unchecked_runs && all_done_ok);
        if !f.all_checks_pass {
            return;
        }
        let combined = format!("/repos/{}/{}/commits/{sha}/status", t.owner, t.name);
        let legacy = match self.github(Method::GET, self.api(&combined), None).await {
            Ok(resp) => ok_json(&resp).ok(),
            Err(_) => None,
        };
        let Some(v) = legacy else {
            f.all_checks_pass = false;
            return;
        };
        let count = v.get("total_count").and_then(Value::as_u64).unwrap_or(0);
        let state = v.get("state").and_then(Value::as_str).unwrap_or("");
        if count > 0 && state != "success" {
            f.all_checks_pass = false;
            if matches!(state, "failure" | "error") {
                f.has_failing_checks = true;
            }
        }
    }

    /// `mergePR`: squash, then merge, then rebase, moving on only when the
    /// repository disallows a method (405 "not allowed"). Returns the method used.
    pub async fn merge_pr(&self, url: &str) -> Result<&'static str, String> {
        let t = self.target(url).map_err(|e| e.to_string())?;
        if t.pr.provider != Provider::GitHub {
            return Err("merging is supported for GitHub pull requests only".into());
        }
        let path = format!("/repos/{}/{}/pulls/{}/merge", t.owner, t.name, t.pr.number);
        for method in MERGE_METHODS {
            let body = json!({ "merge_method": method });
            let resp = self.github(Method::PUT, self.api(&path), Some(&body)).await.map_err(|e| e.to_string())?;
            if resp.ok() {
                return Ok(method);
            }
            if resp.status == 405 && resp.text().to_lowercase().contains("not allowed") {
                continue;
            }
            return Err(format!("merge ({method}) refused with HTTP {}: {}", resp.status, short(&resp.text())));
        }
        Err("every merge method is disabled on the repository".into())
    }

    /// `createConvoyBranch`: create `branch` at the head of `from` in the
    /// GitHub repository of `git_url`. An existing branch (422) is success.
    pub async fn create_branch(&self, git_url: &str, from: &str, branch: &str) -> Result<(), BranchError> {
        let repo = crate::model::pr_url::repo_of_git_url(git_url)
            .ok_or_else(|| BranchError::Skipped(format!("`{git_url}` is not a repository URL")))?;
        let host_ok = git_url.contains(&self.cfg.github_web_host);
        if !host_ok {
            return Err(BranchError::Skipped(format!("`{git_url}` is not on {}", self.cfg.github_web_host)));
        }
        self.github_token().map_err(|e| BranchError::Skipped(e.to_string()))?;
        let head = format!("/repos/{repo}/git/ref/heads/{from}");
        let resp = self.github(Method::GET, self.api(&head), None).await.map_err(BranchError::Scm)?;
        let v = ok_json(&resp).map_err(BranchError::Scm)?;
        let sha = serde_json::from_value::<RefBody>(v.clone()).map_err(|_| BranchError::Scm(schema_mismatch(&v)))?;
        let body = json!({ "ref": format!("refs/heads/{branch}"), "sha": sha.object.sha });
        let resp = self
            .github(Method::POST, self.api(&format!("/repos/{repo}/git/refs")), Some(&body))
            .await
            .map_err(BranchError::Scm)?;
        if resp.ok() || resp.status == 422 {
            return Ok(());
        }
        Err(BranchError::Scm(ScmError::http(resp.status)))
    }
}

struct ReviewState {
    decision: Option<String>,
    merge_state: Option<String>,
    is_draft: bool,
    more_threads: bool,
    unresolved: Vec<ReviewThread>,
}

/// The GraphQL query the client sends (the forge recognises it by `pullRequest`).
pub const REVIEW_QUERY: &str = "query($owner: String!, $name: String!, $number: Int!) { \
    repository(owner: $owner, name: $name) { pullRequest(number: $number) { \
    reviewDecision mergeStateStatus isDraft \
    reviewThreads(first: 100) { pageInfo { hasNextPage } nodes { isResolved \
    comments(first: 5) { nodes { body author { login } } } } } } } }";

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next()?;
    (!host.is_empty()).then(|| host.to_owned())
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

fn sample_keys(v: &Value) -> Vec<String> {
    match v {
        Value::Object(m) => m.keys().take(8).cloned().collect(),
        _ => Vec::new(),
    }
}

fn schema_mismatch(v: &Value) -> ScmError {
    ScmError::InvalidResponse { invalid: InvalidKind::SchemaMismatch, sample_keys: sample_keys(v) }
}

/// A 2xx JSON body, or the classified error.
fn ok_json(resp: &HttpResponse) -> Result<Value, ScmError> {
    if !resp.ok() {
        return Err(ScmError::http(resp.status));
    }
    serde_json::from_slice(&resp.body)
        .map_err(|_| ScmError::InvalidResponse { invalid: InvalidKind::JsonParse, sample_keys: Vec::new() })
}

fn parse_github_pr(v: &Value) -> Result<PrStatus, ScmError> {
    let m: &Map<String, Value> = v.as_object().ok_or_else(|| schema_mismatch(v))?;
    let state = m.get("state").and_then(Value::as_str).ok_or_else(|| schema_mismatch(v))?;
    let merged = match m.get("merged") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(schema_mismatch(v)),
    };
    let mergeable_state = match m.get("mergeable_state") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(schema_mismatch(v)),
    };
    let state = if merged {
        PrState::Merged
    } else if state == "closed" {
        PrState::Closed
    } else if state == "open" {
        PrState::Open
    } else {
        return Err(schema_mismatch(v));
    };
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    Ok(PrStatus {
        state,
        mergeable_state,
        head_branch: s("/head/ref"),
        base_branch: s("/base/ref"),
        head_sha: s("/head/sha"),
        title: s("/title"),
    })
}

/// Run a `PollPr` effect: status; if open and settled (not `unknown`, not
/// `dirty`) and the town wants it, feedback once; if that shows work and
/// auto-resolve is on, re-check the status right before reporting (bug j).
pub async fn run_poll(client: &ScmClient, mr_bead_id: &str, pr_url: &str, wants: PollWants) -> Outcome {
    let report = poll(client, pr_url, wants).await;
    Outcome::PrPolled { mr_bead_id: mr_bead_id.to_owned(), pr_url: pr_url.to_owned(), report }
}

async fn poll(client: &ScmClient, pr_url: &str, wants: PollWants) -> PollReport {
    let status = match client.check_pr_status(pr_url).await {
        Ok(s) => s,
        Err(error) => return PollReport::Failed { error },
    };
    let settled = !matches!(status.mergeable_state.as_deref(), Some("unknown" | "dirty"));
    if status.state != PrState::Open || !wants.feedback || !settled {
        return PollReport::Checked { status, feedback: None, recheck: None };
    }
    let feedback = client.check_pr_feedback(pr_url).await;
    let recheck = match &feedback {
        Some(f) if wants.auto_resolve && f.needs_work() => {
            Some(client.check_pr_status(pr_url).await.map(|s| s.state).map_err(|e| e.to_string()))
        }
        _ => None,
    };
    PollReport::Checked { status, feedback, recheck }
}

/// Run a `MergePr` effect: a fresh feedback check, then the merge.
pub async fn run_merge(client: &ScmClient, mr_bead_id: &str, pr_url: &str) -> Outcome {
    let report = match client.check_pr_feedback(pr_url).await {
        Some(f) if !f.all_green() => MergeReport::NotGreen { feedback: f },
        _ => match client.merge_pr(pr_url).await {
            Ok(method) => MergeReport::Merged { method: method.to_owned() },
            Err(reason) => MergeReport::Failed { reason },
        },
    };
    Outcome::PrMerge { mr_bead_id: mr_bead_id.to_owned(), pr_url: pr_url.to_owned(), report }
}

/// Run a PR effect; `None` for any other effect.
pub async fn run_effect(client: &ScmClient, effect: &Effect) -> Option<Outcome> {
    match effect {
        Effect::PollPr { mr_bead_id, pr_url, wants } => Some(run_poll(client, mr_bead_id, pr_url, *wants).await),
        Effect::MergePr { mr_bead_id, pr_url } => Some(run_merge(client, mr_bead_id, pr_url).await),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::TokioConnector;

    fn client() -> ScmClient {
        let mut cfg = ScmConfig::for_forge("http://127.0.0.1:9", "github.com", Some("t"));
        cfg.gitlab_instance_url = Some("https://git.example.com".into());
        ScmClient::new(HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(1)), cfg)
    }

    #[test]
    fn pr_urls_are_classified() {
        let c = client();
        let t = c.target("https://github.com/acme/widgets/pull/3").unwrap();
        assert_eq!((t.owner.as_str(), t.name.as_str(), t.pr.number), ("acme", "widgets", 3));
        let g = c.target("https://git.example.com/grp/sub/proj/-/merge_requests/9").unwrap();
        assert_eq!((g.pr.provider, g.pr.repo.as_str()), (Provider::GitLab, "grp/sub/proj"));
        assert!(c.target("https://gitlab.com/a/b/-/merge_requests/1").is_ok());
        for bad in
            ["", "nope", "http://github.com/a/b/pull/1", "https://github.com/a/b/pull/x", "https://ghe.corp/a/b/pull/1"]
        {
            assert_eq!(c.target(bad).unwrap_err().kind(), "unrecognized_url", "{bad}");
        }
        let e = c.target("https://evil.example/a/b/-/merge_requests/1").unwrap_err();
        assert_eq!(e, ScmError::HostMismatch { expected: "git.example.com".into(), got: "evil.example".into() });
        assert_eq!(e.class(), FailureClass::Immediate);
    }

    #[test]
    fn error_classes() {
        assert_eq!(ScmError::http(503).class(), FailureClass::Transient);
        assert_eq!(ScmError::http(429).class(), FailureClass::Transient);
        assert_eq!(ScmError::http(404).class(), FailureClass::Immediate);
        assert!(ScmError::http(404).message().contains("not found"));
        assert_eq!(ScmError::Network { detail: "x".into() }.class(), FailureClass::Unreachable);
    }

    #[test]
    fn github_pr_bodies_parse_or_classify() {
        let ok =
            json!({"state": "open", "merged": false, "mergeable_state": "clean", "head": {"ref": "b", "sha": "s"}});
        let s = parse_github_pr(&ok).unwrap();
        assert_eq!(
            (s.state, s.mergeable_state.as_deref(), s.head_sha.as_deref()),
            (PrState::Open, Some("clean"), Some("s"))
        );
        assert_eq!(parse_github_pr(&json!({"state": "closed", "merged": true})).unwrap().state, PrState::Merged);
        assert_eq!(parse_github_pr(&json!({"state": "closed"})).unwrap().state, PrState::Closed);
        for bad in [json!([1]), json!({"message": "hi"}), json!({"state": 1}), json!({"state": "open", "merged": "no"})]
        {
            let e = parse_github_pr(&bad).unwrap_err();
            assert!(matches!(e, ScmError::InvalidResponse { invalid: InvalidKind::SchemaMismatch, .. }), "{bad}");
        }
        let garbage = HttpResponse { status: 200, body: bytes::Bytes::from_static(b"<html>") };
        assert!(matches!(ok_json(&garbage), Err(ScmError::InvalidResponse { invalid: InvalidKind::JsonParse, .. })));
    }

    #[test]
    fn no_token_is_classified() {
        let c = ScmClient::new(
            HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(1)),
            ScmConfig::for_forge("http://127.0.0.1:9", "github.com", None),
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let e = rt.block_on(c.check_pr_status("https://github.com/a/b/pull/1")).unwrap_err();
        assert_eq!(e.kind(), "no_token");
        let e = rt.block_on(c.check_pr_status("https://gitlab.com/a/b/-/merge_requests/1")).unwrap_err();
        assert_eq!(e.kind(), "no_token");
        assert_eq!(rt.block_on(c.check_pr_feedback("https://github.com/a/b/pull/1")), None);
    }
}
