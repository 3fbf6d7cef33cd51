//! The TOML configuration file of `gastown up` (`--config FILE`).
//!
//! ```toml
//! [town]                         # model::TownConfig, the same keys as the JSON config
//! merge_strategy = "pr"
//! convoy_merge_mode = "review-then-land"
//! [town.refinery]
//! code_review = true
//! auto_merge_delay_minutes = 0
//!
//! [[rigs]]                       # added at start when no rig of that name exists
//! name = "demo"
//! git_url = "https://forge.localhost/gastown/demo.git"
//! default_branch = "main"
//! [rigs.config]                  # model::RigOverrides
//! code_review = false
//!
//! [agents]                       # the scripted runtime (when no command is given)
//! start_ms = [200, 800]
//! work_ms = [1000, 3000]
//! command = "my-agent --prompt-from-stdin"   # same as --agent-command
//!
//! [github]                       # same as --github-api; the token comes from an env variable
//! api_url = "https://api.github.com"
//! web_host = "github.com"
//! token_env = "GITHUB_TOKEN"
//! ```
//!
//! Unknown keys are errors; every error names the file, the line and column
//! and the key.

use crate::model::{RigOverrides, TownConfig};
use serde::Deserialize;
use std::path::Path;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("config file {path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        ConfigError { path: path.display().to_string(), message: message.into() }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Town settings; applied at every start when present.
    #[serde(default)]
    pub town: Option<TownConfig>,
    #[serde(default)]
    pub rigs: Vec<RigEntry>,
    #[serde(default)]
    pub agents: AgentsConfig,
    #[serde(default)]
    pub github: Option<GithubConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigEntry {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub git_url: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub config: RigOverrides,
}

/// The scripted agents' pace (inclusive millisecond ranges), or an external command.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    pub start_ms: (u64, u64),
    pub work_ms: (u64, u64),
    pub reply_ms: (u64, u64),
    /// Seed of the scripted agents' behaviour model.
    pub seed: u64,
    pub command: Option<String>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig { start_ms: (200, 800), work_ms: (1_000, 3_000), reply_ms: (300, 1_000), seed: 1, command: None }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    pub api_url: String,
    pub web_host: String,
    /// The environment variable holding the token.
    pub token_env: String,
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            api_url: "https://api.github.com".into(),
            web_host: "github.com".into(),
            token_env: "GITHUB_TOKEN".into(),
        }
    }
}

impl FileConfig {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Parse and validate `text` (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::new(path, located(text, &e)))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if let Some(t) = &self.town {
            t.validate().map_err(|e| ConfigError::new(path, format!("[town]: {e}")))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.rigs.iter().enumerate() {
            let at = format!("[[rigs]] #{} ({:?})", i + 1, r.name);
            if r.name.trim().is_empty() {
                return Err(ConfigError::new(path, format!("{at}: name is empty")));
            }
            if !names.insert(r.name.as_str()) {
                return Err(ConfigError::new(path, format!("{at}: a rig named {:?} is listed twice", r.name)));
            }
            r.config.validate().map_err(|e| ConfigError::new(path, format!("{at}.config: {e}")))?;
        }
        let a = &self.agents;
        for (key, (lo, hi)) in [("start_ms", a.start_ms), ("work_ms", a.work_ms), ("reply_ms", a.reply_ms)] {
            if lo > hi {
                return Err(ConfigError::new(
                    path,
                    format!("[agents].{key} = [{lo}, {hi}]: the low end exceeds the high end"),
                ));
            }
        }
        if a.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(ConfigError::new(path, "[agents].command is empty"));
        }
        if let Some(g) = &self.github {
            if !(g.api_url.starts_with("http://") || g.api_url.starts_with("https://")) {
                return Err(ConfigError::new(
                    path,
                    format!("[github].api_url = {:?} is not an http(s) URL", g.api_url),
                ));
            }
        }
        Ok(())
    }
}

/// A TOML error as "line L, column C: message".
fn located(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MergeStrategy;

    fn parse(text: &str) -> Result<FileConfig, String> {
        FileConfig::parse(text, Path::new("g.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            r#"
[town]
merge_strategy = "pr"
[town.refinery]
code_review = false
auto_merge_delay_minutes = 0

[[rigs]]
name = "app"
git_url = "https://github.com/acme/app.git"
[rigs.config]
max_concurrent_polecats = 2

[agents]
work_ms = [10, 20]
command = "true"

[github]
token_env = "MY_TOKEN"
"#,
        )
        .unwrap();
        let town = c.town.unwrap();
        assert_eq!(town.merge_strategy, MergeStrategy::Pr);
        assert_eq!(town.refinery.unwrap().auto_merge_delay_minutes, Some(0));
        assert_eq!(c.rigs[0].config.max_concurrent_polecats, Some(2));
        assert_eq!(c.agents.work_ms, (10, 20));
        assert_eq!(c.agents.start_ms, AgentsConfig::default().start_ms);
        assert_eq!(c.github.unwrap().token_env, "MY_TOKEN");
        assert_eq!(parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let e = parse("[town]\nmerge_strategy = \"pr\"\nmerge_stratgy = \"pr\"\n").unwrap_err();
        assert!(e.starts_with("config file g.toml: line 3, column 1:"), "{e}");
        assert!(e.contains("merge_stratgy"), "{e}");

        let e = parse("[town]\nmerge_strategy = \"sideways\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("sideways"), "{e}");

        let e = parse("[agents]\nwork_ms = [5, 1]\n").unwrap_err();
        assert!(e.contains("[agents].work_ms") && e.contains("low end"), "{e}");

        let e =
            parse("[[rigs]]\nname = \"a\"\ngit_url = \"x\"\n[[rigs]]\nname = \"a\"\ngit_url = \"y\"\n").unwrap_err();
        assert!(e.contains("listed twice"), "{e}");

        let e =
            parse("[[rigs]]\nname = \"a\"\ngit_url = \"x\"\n[rigs.config]\nmax_dispatch_attempts = 0\n").unwrap_err();
        assert!(e.contains("[[rigs]] #1") && e.contains("max_dispatch_attempts"), "{e}");

        let e = parse("[town]\nmax_polecats_per_rig = 0\n").unwrap_err();
        assert!(e.contains("[town]") && e.contains("max_polecats_per_rig"), "{e}");

        let e = parse("this is not toml").unwrap_err();
        assert!(e.contains("line 1"), "{e}");

        let e = parse("[github]\napi_url = \"ftp://x\"\n").unwrap_err();
        assert!(e.contains("[github].api_url"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = FileConfig::load(Path::new("/nonexistent/gastown.toml")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/gastown.toml") && e.contains("cannot read"), "{e}");
    }
}
