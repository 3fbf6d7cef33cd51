//! Pull-request URLs: GitHub `https://host/owner/repo/pull/N` and GitLab
//! `https://host/group/.../project/-/merge_requests/N`.

use crate::error::{Result, TownError};
use serde::{Deserialize, Serialize};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    GitHub,
    GitLab,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrUrl {
    pub provider: Provider,
    pub host: String,
    /// `owner/repo` (GitHub) or the full project path (GitLab, subgroups included).
    pub repo: String,
    pub number: u64,
}

impl PrUrl {
    pub fn parse(url: &str) -> Result<PrUrl> {
        let bad = |why: &str| TownError::invalid("PR URL", format!("`{url}`: {why}"));
        let rest = url.strip_prefix("https://").ok_or_else(|| bad("must start with https://"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or(rest).trim_end_matches('/');
        let (host, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
        if host.is_empty() || host.contains('@') {
            return Err(bad("bad host"));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty path segment"));
        }
        let number = |s: &str| {
            s.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| bad("PR number is not a positive integer"))
        };
        if let [owner, repo, "pull", n] = parts.as_slice() {
            return Ok(PrUrl {
                provider: Provider::GitHub,
                host: host.into(),
                repo: format!("{owner}/{repo}"),
                number: number(n)?,
            });
        }
        if parts.len() >= 4 && parts[parts.len() - 2] == "merge_requests" && parts[parts.len() - 3] == "-" {
            return Ok(PrUrl {
                provider: Provider::GitLab,
                host: host.into(),
                repo: parts[..parts.len() - 3].join("/"),
                number: number(parts[parts.len() - 1])?,
            });
        }
        Err(bad("not a GitHub pull request or GitLab merge request URL"))
    }

    /// Whether the PR belongs to the repository of a git remote URL; `None`
    /// when the remote names no repository.
    pub fn in_repo_of(&self, git_url: &str) -> Option<bool> {
        repo_of_git_url(git_url).map(|r| r.eq_ignore_ascii_case(&self.repo))
    }
}

/// `owner/repo` of a git remote URL (https or ssh), credentials stripped.
pub fn repo_of_git_url(git_url: &str) -> Option<String> {
    let s = git_url.trim().trim_end_matches('/').trim_end_matches(".git");
    let path = if let Some(rest) = s.strip_prefix("git@") {
        rest.split_once(':')?.1.to_owned()
    } else {
        let after_scheme = s.split_once("://")?.1;
        let after_creds = after_scheme.rsplit_once('@').map_or(after_scheme, |(_, h)| h);
        after_creds.split_once('/')?.1.to_owned()
    };
    (!path.is_empty() && path.contains('/')).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_github_and_gitlab() {
        let p = PrUrl::parse("https://github.com/acme/widgets/pull/42").unwrap();
        assert_eq!((p.provider, p.repo.as_str(), p.number), (Provider::GitHub, "acme/widgets", 42));
        let g = PrUrl::parse("https://gitlab.example.com/a/b/c/-/merge_requests/7").unwrap();
        assert_eq!((g.provider, g.repo.as_str(), g.number), (Provider::GitLab, "a/b/c", 7));
    }

    #[test]
    fn rejects_bad_urls_with_reason() {
        for bad in [
            "http://github.com/a/b/pull/1",
            "https://github.com/a/b/pull/x",
            "https://github.com/a/b/issues/1",
            "https://github.com/a/b/pull/0",
            "https://",
            "",
        ] {
            let e = PrUrl::parse(bad).unwrap_err();
            assert!(e.to_string().contains("PR URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn git_remote_repo() {
        assert_eq!(repo_of_git_url("https://x:tok@github.com/acme/w.git").as_deref(), Some("acme/w"));
        assert_eq!(repo_of_git_url("git@github.com:acme/w.git").as_deref(), Some("acme/w"));
        assert_eq!(repo_of_git_url("").as_deref(), None);
    }
}
