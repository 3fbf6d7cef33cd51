//! `gastown`: run a town for real (`gastown up`) and talk to it (the user
//! commands), plus the agent tools external agents call (`gastown gt …`).

// The allocator the simulator and the tick benchmark run on, so the figures
// they report are this binary's (ARCHITECTURE.md, "What a seed costs").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;

use clap::{Args, Parser, Subcommand, ValueEnum};
use client::{CliError, Client};
use gastown::prod::{run_up, UpOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "gastown", version, about = "Gastown: a town of AI coding agents (production mode and user commands)")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct Global {
    /// The town server the commands talk to.
    #[arg(long, env = "GASTOWN_URL", default_value = "http://127.0.0.1:8787", global = true)]
    url: String,
    /// A user token (default: the one `gastown up` wrote to the data directory).
    #[arg(long, env = "GASTOWN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The data directory (default: $HOME/.gastown).
    #[arg(long, env = "GASTOWN_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the town, its container and the local forge until SIGTERM or Ctrl-C.
    Up(UpArgs),
    /// Bead, agent and convoy counts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rigs (repositories the town works on).
    #[command(subcommand)]
    Rig(RigCmd),
    /// Create an issue bead in a rig and dispatch a polecat on it.
    Sling {
        /// The rig's name or id.
        #[arg(long)]
        rig: String,
        title: String,
        #[arg(long)]
        body: Option<String>,
        #[arg(long)]
        priority: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Hand an outside PR to the town: it polls, repairs and merges it, with no refinery review.
    Babysit {
        /// The rig's name or id (the PR must belong to its repository).
        #[arg(long)]
        rig: String,
        pr_url: String,
        /// The PR's head branch.
        #[arg(long)]
        branch: String,
        /// The PR's base branch (default: the rig's default branch).
        #[arg(long)]
        target_branch: Option<String>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        head_sha: Option<String>,
        /// Let agents fixing the PR force-push its branch.
        #[arg(long)]
        force_push_allowed: bool,
        #[arg(long)]
        json: bool,
    },
    /// Convoys: groups of beads that land together.
    #[command(subcommand)]
    Convoy(ConvoyCmd),
    /// List beads.
    Beads {
        /// issue, merge_request, convoy, … (default issue)
        #[arg(long = "type")]
        ty: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a bead: an agent hooked to it is released, an issue's live
    /// reviews fail, a review's waiting source reopens (agents and convoys
    /// cannot be deleted).
    DeleteBead {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List agents.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// Hand a bead to an agent; any other agent hooked to it lets go. The
    /// reconciler dispatches the agent on a later tick.
    Hook {
        agent: String,
        bead: String,
        #[arg(long)]
        json: bool,
    },
    /// Release an agent's hook (the bead keeps its assignee until the reconciler moves it).
    Unhook {
        agent: String,
        #[arg(long)]
        json: bool,
    },
    /// Send the mayor a message.
    Mayor { message: String },
    /// Replace the container: drain it first (default) or stop it abruptly (--hard).
    Evict {
        #[arg(long)]
        hard: bool,
    },
    /// Agent tools, for external agents (read GASTOWN_API_URL, GASTOWN_TOWN_ID,
    /// GASTOWN_RIG_ID, GASTOWN_AGENT_ID and GASTOWN_AGENT_TOKEN).
    #[command(subcommand)]
    Gt(GtCmd),
}

#[derive(Debug, Args)]
struct UpArgs {
    /// The town API's port on 127.0.0.1 (the container and forge take free ports).
    #[arg(long, default_value_t = 8787)]
    port: u16,
    /// A TOML configuration file (town and rig settings, agents, GitHub).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run this command (through sh -c) as each agent, in a git worktree.
    #[arg(long)]
    agent_command: Option<String>,
    /// Use this GitHub API instead of the local forge (e.g. https://api.github.com).
    #[arg(long)]
    github_api: Option<String>,
    /// The environment variable holding the GitHub token.
    #[arg(long, default_value = "GITHUB_TOKEN")]
    github_token_env: String,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Run the town's clock and the container's timers N times faster than
    /// real time (tests and quick demos; 1 in production).
    #[arg(long, default_value_t = 1, hide = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    time_scale: u32,
}

#[derive(Debug, Subcommand)]
enum RigCmd {
    /// Add a rig.
    Add {
        name: String,
        git_url: String,
        #[arg(long)]
        default_branch: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
    /// List rigs.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConvoyCmd {
    /// Create a convoy: one bead per TASK title.
    Create {
        #[arg(long)]
        rig: String,
        #[arg(long)]
        title: String,
        #[arg(required = true)]
        tasks: Vec<String>,
        /// Each task waits for the one before it.
        #[arg(long)]
        chain: bool,
        /// Create it staged (nothing dispatched until `convoy start`).
        #[arg(long)]
        staged: bool,
        /// review-then-land or review-and-merge (default: the town's).
        #[arg(long)]
        merge_mode: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start a staged convoy.
    Start { id: String },
    /// Close a convoy.
    Close { id: String },
    /// List convoys.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum GtCmd {
    /// Report the work done (gt_done).
    Done {
        #[arg(long)]
        branch: String,
        #[arg(long)]
        pr_url: Option<String>,
        #[arg(long)]
        summary: Option<String>,
    },
    /// Escalate to the mayor / a human.
    Escalate {
        title: String,
        #[arg(long)]
        body: Option<String>,
        #[arg(long)]
        priority: Option<String>,
    },
    /// Refinery: request changes on the PR under review.
    RequestChanges {
        feedback: String,
        #[arg(long = "file")]
        files: Vec<String>,
    },
    /// Save a checkpoint (any JSON).
    Checkpoint { json: String },
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h).join(".gastown"),
        _ => PathBuf::from(".gastown"),
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gastown: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gastown: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let data_dir = cli.global.data_dir.clone().unwrap_or_else(default_data_dir);
    match cli.cmd {
        Cmd::Up(a) => {
            init_logs(a.log_format);
            let opts = UpOptions {
                data_dir,
                port: a.port,
                config: a.config,
                agent_command: a.agent_command,
                github_api: a.github_api,
                github_token_env: Some(a.github_token_env),
                time_scale: a.time_scale,
                bin: std::env::current_exe().ok(),
            };
            run_up(opts).await.map_err(|e| CliError(e.to_string()))
        }
        Cmd::Gt(g) => client::agent_tool(g).await,
        cmd => {
            let c = Client::connect(&cli.global.url, cli.global.token.as_deref(), &data_dir).await?;
            client::user_command(&c, cmd).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn up_defaults_and_flags() {
        let Cmd::Up(a) = parse(&["gastown", "up"]).unwrap().cmd else { panic!() };
        assert_eq!((a.port, a.log_format, a.time_scale), (8787, LogFormat::Text, 1));
        let cli = parse(&[
            "gastown",
            "up",
            "--port",
            "9000",
            "--data-dir",
            "/tmp/x",
            "--log-format",
            "json",
            "--agent-command",
            "claude -p",
            "--github-api",
            "https://api.github.com",
            "--config",
            "g.toml",
        ])
        .unwrap();
        assert_eq!(cli.global.data_dir, Some(PathBuf::from("/tmp/x")));
        let Cmd::Up(a) = cli.cmd else { panic!() };
        assert_eq!(a.port, 9000);
        assert_eq!(a.log_format, LogFormat::Json);
        assert_eq!(a.agent_command.as_deref(), Some("claude -p"));
        assert_eq!(a.config, Some(PathBuf::from("g.toml")));
    }

    #[test]
    fn bad_arguments_are_errors_naming_the_argument() {
        assert!(parse(&["gastown", "up", "--port", "99999"]).unwrap_err().contains("--port"));
        assert!(parse(&["gastown", "up", "--log-format", "xml"]).unwrap_err().contains("xml"));
        assert!(parse(&["gastown", "up", "--time-scale", "0"]).unwrap_err().contains("--time-scale"));
        assert!(parse(&["gastown", "sling", "title"]).unwrap_err().contains("--rig"));
        assert!(parse(&["gastown", "convoy", "create", "--rig", "r", "--title", "t"]).unwrap_err().contains("TASKS"));
        assert!(parse(&["gastown", "gt", "done"]).unwrap_err().contains("--branch"));
        assert!(parse(&["gastown", "frobnicate"]).is_err());
    }

    #[test]
    fn user_commands_parse() {
        let cli =
            parse(&["gastown", "--url", "http://h:1", "sling", "--rig", "demo", "fix it", "--body", "b"]).unwrap();
        assert_eq!(cli.global.url, "http://h:1");
        let Cmd::Sling { rig, title, body, .. } = cli.cmd else { panic!() };
        assert_eq!((rig.as_str(), title.as_str(), body.as_deref()), ("demo", "fix it", Some("b")));
        let cli =
            parse(&["gastown", "convoy", "create", "--rig", "demo", "--title", "c", "a", "b", "--chain"]).unwrap();
        let Cmd::Convoy(ConvoyCmd::Create { tasks, chain, .. }) = cli.cmd else { panic!() };
        assert_eq!((tasks.len(), chain), (2, true));
        assert!(matches!(parse(&["gastown", "evict", "--hard"]).unwrap().cmd, Cmd::Evict { hard: true }));
        assert!(matches!(parse(&["gastown", "status", "--json"]).unwrap().cmd, Cmd::Status { json: true }));
        let cli =
            parse(&["gastown", "babysit", "--rig", "demo", "https://github.com/a/b/pull/3", "--branch", "x"]).unwrap();
        let Cmd::Babysit { pr_url, branch, force_push_allowed, .. } = cli.cmd else { panic!() };
        assert_eq!(
            (pr_url.as_str(), branch.as_str(), force_push_allowed),
            ("https://github.com/a/b/pull/3", "x", false)
        );
        assert!(parse(&["gastown", "babysit", "--rig", "demo", "https://github.com/a/b/pull/3"])
            .unwrap_err()
            .contains("--branch"));
        let Cmd::DeleteBead { id, json } = parse(&["gastown", "delete-bead", "b-1"]).unwrap().cmd else { panic!() };
        assert_eq!((id.as_str(), json), ("b-1", false));
        assert!(parse(&["gastown", "delete-bead"]).is_err(), "the bead is required");
        let Cmd::Hook { agent, bead, .. } = parse(&["gastown", "hook", "a-1", "b-1"]).unwrap().cmd else { panic!() };
        assert_eq!((agent.as_str(), bead.as_str()), ("a-1", "b-1"));
        assert!(parse(&["gastown", "hook", "a-1"]).is_err(), "the bead is required");
        assert!(matches!(parse(&["gastown", "unhook", "a-1", "--json"]).unwrap().cmd, Cmd::Unhook { json: true, .. }));
        let cli = parse(&["gastown", "status", "--token", "tok"]).unwrap();
        assert_eq!(cli.global.token.as_deref(), Some("tok"), "global flags go after the subcommand too");
    }
}
