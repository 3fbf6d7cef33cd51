//! The GitHub REST/GraphQL subset (and GitLab's MR read) over HTTP.

use super::{Forge, ForgeError, Pull};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

type St = State<Arc<Forge>>;

impl IntoResponse for ForgeError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(json!({"message": self.message, "documentation_url": "https://docs.github.com/rest"})))
            .into_response()
    }
}

pub(super) fn routes() -> Router<Arc<Forge>> {
    Router::new()
        .route("/repos/{owner}/{repo}", get(get_repo))
        .route("/repos/{owner}/{repo}/git/ref/{*git_ref}", get(get_ref))
        .route("/repos/{owner}/{repo}/git/refs", post(create_ref))
        .route("/repos/{owner}/{repo}/pulls", post(create_pull))
        .route("/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
        .route("/repos/{owner}/{repo}/pulls/{number}/merge", put(merge_pull))
        .route("/repos/{owner}/{repo}/commits/{sha}/check-runs", get(check_runs))
        .route("/repos/{owner}/{repo}/commits/{sha}/status", get(combined_status))
        .route("/graphql", post(graphql))
        .route("/api/v4/projects/{project}/merge_requests/{iid}", get(gitlab_mr))
}

fn authorize(forge: &Forge, headers: &HeaderMap) -> Result<(), ForgeError> {
    let Some(want) = &forge.cfg.token else { return Ok(()) };
    let got = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let got = got.strip_prefix("token ").or_else(|| got.strip_prefix("Bearer ")).unwrap_or("");
    let gitlab = headers.get("private-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if got == want || gitlab == want {
        Ok(())
    } else {
        Err(ForgeError::new(401, "Bad credentials"))
    }
}

fn pull_json(forge: &Forge, p: &Pull) -> Result<Value, ForgeError> {
    let base_sha = forge.branch_sha(&p.owner, &p.name, &p.base_ref)?;
    let mergeable_state = forge.mergeable_state(p)?;
    Ok(json!({
        "html_url": forge.pr_url(&p.owner, &p.name, p.number),
        "number": p.number,
        "state": p.state,
        "title": p.title,
        "draft": p.draft,
        "merged": p.merged,
        "merge_method": p.merge_method,
        "mergeable": if p.state == "open" { Value::Bool(mergeable_state != "dirty") } else { Value::Null },
        "mergeable_state": mergeable_state,
        "head": {"ref": p.head_ref, "sha": p.head_sha},
        "base": {"ref": p.base_ref, "sha": base_sha},
    }))
}

async fn get_repo(State(f): St, h: HeaderMap, Path((owner, repo)): Path<(String, String)>) -> Response {
    let r = authorize(&f, &h).and_then(|_| f.repo(&owner, &repo));
    match r {
        Ok(s) => Json(json!({
            "full_name": format!("{owner}/{repo}"),
            "default_branch": s.default_branch,
            "allow_squash_merge": s.allow_squash,
            "allow_merge_commit": s.allow_merge,
            "allow_rebase_merge": s.allow_rebase,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_ref(State(f): St, h: HeaderMap, Path((owner, repo, git_ref)): Path<(String, String, String)>) -> Response {
    let r = authorize(&f, &h).and_then(|_| {
        let branch = git_ref.strip_prefix("heads/").ok_or_else(|| ForgeError::new(404, "Not Found"))?;
        let sha = f.branch_sha(&owner, &repo, branch)?.ok_or_else(|| ForgeError::new(404, "Not Found"))?;
        Ok(json!({"ref": format!("refs/{git_ref}"), "object": {"sha": sha, "type": "commit"}}))
    });
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct NewRef {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
}

async fn create_ref(
    State(f): St,
    h: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    body: Option<Json<NewRef>>,
) -> Response {
    let r = authorize(&f, &h).and_then(|_| {
        let Json(b) = body.ok_or_else(|| ForgeError::new(400, "Problems parsing JSON"))?;
        let branch = b
            .git_ref
            .strip_prefix("refs/heads/")
            .ok_or_else(|| ForgeError::new(422, "Reference name must start with 'refs/heads/'"))?;
        f.create_ref(&owner, &repo, branch, &b.sha)?;
        Ok(json!({"ref": b.git_ref, "object": {"sha": b.sha, "type": "commit"}}))
    });
    match r {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct NewPull {
    title: String,
    head: String,
    base: String,
    #[serde(default)]
    draft: bool,
}

async fn create_pull(
    State(f): St,
    h: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    body: Option<Json<NewPull>>,
) -> Response {
    let r = authorize(&f, &h).and_then(|_| {
        let Json(b) = body.ok_or_else(|| ForgeError::new(400, "Problems parsing JSON"))?;
        let p = f.create_pull(&owner, &repo, &b.title, &b.head, &b.base)?;
        if b.draft {
            f.set_draft(&owner, &repo, p.number, true)?;
        }
        pull_json(&f, &f.pull(&owner, &repo, p.number)?)
    });
    match r {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_pull(State(f): St, h: HeaderMap, Path((owner, repo, number)): Path<(String, String, u64)>) -> Response {
    let r = authorize(&f, &h).and_then(|_| pull_json(&f, &f.pull(&owner, &repo, number)?));
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize, Default)]
struct MergeBody {
    #[serde(default)]
    merge_method: Option<String>,
    #[serde(default)]
    sha: Option<String>,
}

async fn merge_pull(
    State(f): St,
    h: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    body: Option<Json<MergeBody>>,
) -> Response {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let r = authorize(&f, &h).and_then(|_| {
        let method = b.merge_method.as_deref().unwrap_or("merge");
        f.merge_pull(&owner, &repo, number, method, b.sha.as_deref())
    });
    match r {
        Ok(sha) => {
            Json(json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn check_runs(
    State(f): St,
    h: HeaderMap,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let per_page = q.get("per_page").and_then(|p| p.parse::<u32>().ok()).unwrap_or(30).clamp(1, 100);
    let r = authorize(&f, &h).and_then(|_| {
        f.repo(&owner, &repo)?;
        f.check_runs(&owner, &repo, &sha, per_page)
    });
    match r {
        Ok((runs, total)) => {
            let runs: Vec<Value> = runs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    json!({"id": i + 1, "name": r.name, "head_sha": sha, "status": r.status, "conclusion": r.conclusion})
                })
                .collect();
            Json(json!({"total_count": total, "check_runs": runs})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn combined_status(
    State(f): St,
    h: HeaderMap,
    Path((owner, repo, sha)): Path<(String, String, String)>,
) -> Response {
    let r = authorize(&f, &h).and_then(|_| {
        f.repo(&owner, &repo)?;
        f.combined_status(&owner, &repo, &sha)
    });
    match r {
        Ok((state, total, list)) => {
            Json(json!({"state": state, "sha": sha, "total_count": total, "statuses": list})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Recognises the client's `pullRequest` query; anything else is an error
/// in GraphQL's style (200 with `errors`).
async fn graphql(State(f): St, h: HeaderMap, body: Option<Json<Value>>) -> Response {
    if let Err(e) = authorize(&f, &h) {
        return e.into_response();
    }
    let Some(Json(body)) = body else {
        return ForgeError::new(400, "Problems parsing JSON").into_response();
    };
    let query = body.get("query").and_then(Value::as_str).unwrap_or("");
    if !query.contains("pullRequest") {
        return Json(json!({"errors": [{"message": "this forge only answers pullRequest queries"}]})).into_response();
    }
    let vars = body.get("variables").cloned().unwrap_or(Value::Null);
    let owner = vars.get("owner").and_then(Value::as_str).unwrap_or("");
    let name = vars.get("name").and_then(Value::as_str).unwrap_or("");
    let number = vars.get("number").and_then(Value::as_u64).unwrap_or(0);
    match f.graphql_pull(owner, name, number) {
        Ok(pr) => Json(json!({"data": {"repository": {"pullRequest": pr}}})).into_response(),
        Err(e) if e.status == 404 => Json(json!({
            "data": {"repository": {"pullRequest": null}},
            "errors": [{"type": "NOT_FOUND", "message": format!("Could not resolve to a PullRequest with the number of {number}.")}],
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// GitLab `GET /projects/:id/merge_requests/:iid` (id = url-encoded path).
async fn gitlab_mr(State(f): St, h: HeaderMap, Path((project, iid)): Path<(String, u64)>) -> Response {
    let r = authorize(&f, &h).and_then(|_| {
        let (owner, name) = project.split_once('/').ok_or_else(|| ForgeError::new(404, "404 Project Not Found"))?;
        let p = f.pull(owner, name, iid)?;
        let state = match (p.state.as_str(), p.merged) {
            (_, true) => "merged",
            ("closed", _) => "closed",
            _ => "opened",
        };
        Ok(json!({"iid": iid, "state": state, "title": p.title, "source_branch": p.head_ref,
                  "target_branch": p.base_ref, "sha": p.head_sha}))
    });
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
