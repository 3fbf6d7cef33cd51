//! `--agent-command CMD`: each agent session runs an external coding-agent
//! command (through `sh -c`), one process per turn, in a working directory of
//! its own: a git worktree of the rig's repository when the rig's `git_url`
//! is a local repository and `git` is installed, else a plain directory.
//!
//! The process gets the turn's prompt on stdin and in `GASTOWN_PROMPT`, and
//! environment variables naming the agent, the town API and its agent token;
//! it reports with `gastown gt done --branch B [--pr-url U] [--summary S]`
//! (`GASTOWN_BIN` is the path of the `gastown` binary). Each stdout line is
//! an activity event; the tail of stdout becomes the assistant turn. Exit
//! status 0 ends the turn idle, anything else is a crash.

use super::forge_pr::RigResolver;
use crate::container::agent::agent_branch;
use crate::container::{Agent, AgentIo, AgentRuntime, SessionSpec, TurnEnd};
use crate::model::AgentRole;
use crate::net::SendFuture;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The agent environment variables (what `gastown gt` reads).
pub const ENV_API_URL: &str = "GASTOWN_API_URL";
pub const ENV_TOWN_ID: &str = "GASTOWN_TOWN_ID";
pub const ENV_RIG_ID: &str = "GASTOWN_RIG_ID";
pub const ENV_AGENT_ID: &str = "GASTOWN_AGENT_ID";
pub const ENV_AGENT_TOKEN: &str = "GASTOWN_AGENT_TOKEN";
/// The bead the session was dispatched for; `gt done` sends it along.
pub const ENV_BEAD_ID: &str = "GASTOWN_BEAD_ID";

pub struct ExternalRuntime {
    command: String,
    work_root: PathBuf,
    rigs: RigResolver,
    /// This binary, for agents to call `gastown gt …`.
    bin: Option<PathBuf>,
}

impl ExternalRuntime {
    pub fn new(command: impl Into<String>, work_root: PathBuf, rigs: RigResolver, bin: Option<PathBuf>) -> Self {
        ExternalRuntime { command: command.into(), work_root, rigs, bin }
    }
}

impl AgentRuntime for ExternalRuntime {
    fn create(&self, spec: &SessionSpec) -> Box<dyn Agent> {
        let a = &spec.request.agent;
        Box::new(ExternalAgent {
            command: self.command.clone(),
            workdir: self.work_root.join(&a.agent_id),
            repo: (self.rigs)(&a.rig_id),
            bin: self.bin.clone(),
        })
    }
}

struct ExternalAgent {
    command: String,
    workdir: PathBuf,
    repo: Option<(String, String)>,
    bin: Option<PathBuf>,
}

/// A rig's `git_url` naming a repository on this machine.
fn local_repo(git_url: &str) -> Option<PathBuf> {
    let p = Path::new(git_url.strip_prefix("file://").unwrap_or(git_url));
    (p.is_absolute() && p.join(".git").exists()).then(|| p.to_path_buf())
}

async fn git(args: &[&str], cwd: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new("git")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("git {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl ExternalAgent {
    async fn prepare(&self, io: &AgentIo) -> Result<(), String> {
        if self.workdir.exists() {
            return Ok(()); // a restart: keep what the agent had
        }
        let parent = self.workdir.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(parent).await.map_err(|e| format!("create {}: {e}", parent.display()))?;
        let repo = self.repo.as_ref().and_then(|(url, default)| local_repo(url).map(|p| (p, default.clone())));
        if let (Some((repo, default)), AgentRole::Polecat | AgentRole::Refinery) = (repo, io.role()) {
            let branch = agent_branch(io.request());
            let start = io.request().agent.start_point.clone().unwrap_or(default);
            let dir = self.workdir.display().to_string();
            match git(&["worktree", "add", "-B", &branch, &dir, &start], &repo).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(agent = io.agent_id(), error = %e, "no git worktree; using a plain directory"),
            }
        }
        tokio::fs::create_dir_all(&self.workdir).await.map_err(|e| format!("create {}: {e}", self.workdir.display()))
    }

    async fn run(&self, io: &AgentIo, prompt: &str) -> TurnEnd {
        let req = io.request();
        let a = &req.agent;
        let rig = if a.role == AgentRole::Mayor || a.rig_id.is_empty() { "_" } else { a.rig_id.as_str() };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .current_dir(&self.workdir)
            .env(ENV_API_URL, &req.api_url)
            .env(ENV_TOWN_ID, &req.town_id)
            .env(ENV_RIG_ID, rig)
            .env(ENV_AGENT_ID, &a.agent_id)
            .env(ENV_AGENT_TOKEN, &req.agent_token)
            .env("GASTOWN_AGENT_ROLE", a.role.as_str())
            .env("GASTOWN_AGENT_NAME", &a.name)
            .env(ENV_BEAD_ID, &a.bead_id)
            .env("GASTOWN_BRANCH", agent_branch(req))
            .env("GASTOWN_TARGET_BRANCH", a.target_branch.as_deref().unwrap_or(""))
            .env("GASTOWN_PR_URL", a.pr_url.as_deref().unwrap_or(""))
            .env("GASTOWN_PROMPT", prompt)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(bin) = &self.bin {
            cmd.env("GASTOWN_BIN", bin);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return TurnEnd::Crash(format!("cannot run the agent command: {e}")),
        };
        if let Some(mut stdin) = child.stdin.take() {
            // An agent that does not read its stdin must not fail the turn.
            let _ = stdin.write_all(prompt.as_bytes()).await;
        }
        let mut tail: Vec<String> = Vec::new();
        if let Some(out) = child.stdout.take() {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                io.activity("message.part.updated", &["bash"]);
                tail.push(line);
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
        }
        let status = child.wait().await;
        if !tail.is_empty() {
            io.assistant_turn(&tail.join("\n"));
        }
        match status {
            Ok(s) if s.success() => TurnEnd::Idle,
            Ok(s) => TurnEnd::Crash(format!("agent command exited with {s}")),
            Err(e) => TurnEnd::Crash(format!("agent command: {e}")),
        }
    }
}

impl Agent for ExternalAgent {
    fn start<'a>(&'a mut self, io: &'a AgentIo) -> SendFuture<'a, Result<(), String>> {
        Box::pin(async move { self.prepare(io).await })
    }

    fn turn<'a>(&'a mut self, io: &'a AgentIo, prompt: &'a str) -> SendFuture<'a, TurnEnd> {
        Box::pin(async move { self.run(io, prompt).await })
    }
}
