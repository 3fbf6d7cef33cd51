//! Scripted polecats open real PRs: push the branch (the local forge's
//! control API stands in for `git push`), then `POST /repos/{o}/{r}/pulls`
//! over the forge's (or GitHub's) REST API, as `gh pr create` would.

use crate::container::{PrOpener, PrRequest};
use crate::model::pr_url::repo_of_git_url;
use crate::net::{HttpClient, SendFuture};
use serde_json::{json, Value};
use std::sync::Arc;

/// Where a rig's repository is: `(git_url, default_branch)` by rig id.
pub type RigResolver = Arc<dyn Fn(&str) -> Option<(String, String)> + Send + Sync>;

pub struct ForgePrOpener {
    http: HttpClient,
    /// REST base (`http://127.0.0.1:PORT` for the local forge, `https://api.github.com`).
    api: String,
    token: Option<String>,
    /// The local forge: create the repository and push branches through `/_control`.
    local: bool,
    rigs: RigResolver,
}

impl ForgePrOpener {
    pub fn new(http: HttpClient, api: &str, token: Option<String>, local: bool, rigs: RigResolver) -> Self {
        ForgePrOpener { http, api: api.trim_end_matches('/').to_owned(), token, local, rigs }
    }

    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value), String> {
        let mut r =
            self.http.post(format!("{}{path}", self.api)).json(&body).header("accept", "application/vnd.github+json");
        if let Some(t) = &self.token {
            r = r.bearer(t);
        }
        let resp = r.send().await.map_err(|e| format!("POST {path}: {e}"))?;
        let v = resp.json::<Value>().unwrap_or(Value::Null);
        Ok((resp.status, v))
    }

    async fn branch_exists(&self, repo: &str, branch: &str) -> Result<bool, String> {
        let mut r = self.http.get(format!("{}/repos/{repo}/git/ref/heads/{branch}", self.api));
        if let Some(t) = &self.token {
            r = r.bearer(t);
        }
        let resp = r.send().await.map_err(|e| format!("GET ref {branch}: {e}"))?;
        Ok(resp.ok())
    }

    async fn push(&self, repo: &str, branch: &str) -> Result<(), String> {
        match self.post(&format!("/_control/repos/{repo}/push"), json!({"branch": branch, "conflict": false})).await? {
            (s, _) if (200..300).contains(&s) => Ok(()),
            (s, v) => Err(format!("push {branch}: {s} {v}")),
        }
    }

    async fn open(&self, pr: &PrRequest) -> Result<String, String> {
        let (git_url, default_branch) =
            (self.rigs)(&pr.rig_id).ok_or_else(|| format!("rig {} is unknown", pr.rig_id))?;
        let repo = repo_of_git_url(&git_url).ok_or_else(|| format!("rig {}: no owner/repo in {git_url}", pr.rig_id))?;
        let base = pr.target_branch.clone().filter(|b| !b.trim().is_empty()).unwrap_or(default_branch);
        if self.local {
            let (owner, name) = repo.split_once('/').unwrap_or((&repo, ""));
            let (s, v) = self.post("/_control/repos", json!({"owner": owner, "name": name})).await?;
            // 422: it exists already.
            if !(200..300).contains(&s) && s != 422 {
                return Err(format!("create repo {repo}: {s} {v}"));
            }
            // A convoy's feature branch exists once someone pushes it.
            if !self.branch_exists(&repo, &base).await? {
                self.push(&repo, &base).await?;
            }
            self.push(&repo, &pr.branch).await?;
        }
        let body = json!({"title": pr.title, "head": pr.branch, "base": base});
        let (status, v) = self.post(&format!("/repos/{repo}/pulls"), body).await?;
        if (200..300).contains(&status) {
            return v["html_url"].as_str().map(str::to_owned).ok_or_else(|| format!("PR answer without html_url: {v}"));
        }
        // A PR for this branch is already open (an agent restarted after opening it): use it.
        let msg = v["message"].as_str().unwrap_or_default();
        if status == 422 {
            if let Some(n) = msg.rsplit_once("(#").and_then(|(_, n)| n.trim_end_matches(')').parse::<u64>().ok()) {
                let web = self.web_url(&repo, n).await?;
                return Ok(web);
            }
        }
        Err(format!("create PR {repo} {}→{base}: {status} {v}", pr.branch))
    }

    async fn web_url(&self, repo: &str, n: u64) -> Result<String, String> {
        let mut r = self.http.get(format!("{}/repos/{repo}/pulls/{n}", self.api));
        if let Some(t) = &self.token {
            r = r.bearer(t);
        }
        let resp = r.send().await.map_err(|e| format!("GET PR {n}: {e}"))?;
        let v: Value = resp.json().map_err(|e| format!("GET PR {n}: {e}"))?;
        v["html_url"].as_str().map(str::to_owned).ok_or_else(|| format!("PR {n} without html_url"))
    }
}

impl PrOpener for ForgePrOpener {
    fn open_pr<'a>(&'a self, pr: &'a PrRequest) -> SendFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let r = self.open(pr).await;
            match &r {
                Ok(url) => tracing::info!(bead = %pr.bead_id, branch = %pr.branch, %url, "PR opened"),
                Err(e) => tracing::warn!(bead = %pr.bead_id, branch = %pr.branch, error = %e, "PR not opened"),
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::{Forge, ForgeConfig};
    use crate::net::TokioConnector;
    use crate::time::ManualClock;
    use std::time::Duration;

    #[tokio::test]
    async fn opens_prs_on_the_local_forge_and_reuses_an_open_one() {
        let forge = Forge::in_memory(
            Arc::new(ManualClock::new(crate::time::Timestamp(1_000))),
            ForgeConfig { web_host: "forge.localhost".into(), ..Default::default() },
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(crate::net::serve(l, forge.router()));
        let http = HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(5));
        let rigs: RigResolver = Arc::new(|rig: &str| {
            (rig == "r1").then(|| ("https://forge.localhost/gastown/demo.git".to_owned(), "main".to_owned()))
        });
        let o = ForgePrOpener::new(http, &base, None, true, rigs);
        let mut req = PrRequest {
            rig_id: "r1".into(),
            bead_id: "b1".into(),
            agent_id: "a1".into(),
            branch: "gt/toast/b1".into(),
            target_branch: Some("convoy/feature".into()),
            title: "t".into(),
        };
        let url = o.open_pr(&req).await.unwrap();
        assert_eq!(url, "https://forge.localhost/gastown/demo/pull/1");
        assert_eq!(o.open_pr(&req).await.unwrap(), url, "the open PR for the branch is reused");
        assert_eq!(forge.pull("gastown", "demo", 1).unwrap().base_ref, "convoy/feature");
        req.rig_id = "nope".into();
        assert!(o.open_pr(&req).await.unwrap_err().contains("unknown"));
    }
}
