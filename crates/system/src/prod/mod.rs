//! Production mode: `gastown up` runs the town, the container and (unless
//! pointed at GitHub) the local forge on 127.0.0.1, on a real clock, real TCP
//! and real files, with the same code the simulator runs.
//!
//! | file | what |
//! |---|---|
//! | `config.rs` | the TOML configuration file (town and rig settings, agents, SCM) |
//! | `datadir.rs` | the data directory: persisted secret, town id, user token, boot count, clock |
//! | `clock.rs` | [`ScaledClock`]: wall time, optionally sped up (`--time-scale`, tests and demos) |
//! | `forge_pr.rs` | [`ForgePrOpener`]: scripted polecats open real PRs over the forge's REST API |
//! | `external.rs` | [`ExternalRuntime`]: `--agent-command`, an external coding agent in a git worktree |
//! | `metrics.rs` | `/metrics` in Prometheus text format |
//! | `up.rs` | the wiring: servers, alarm loop, operator routes (evict), SIGTERM |
//!
//! Production code may read the OS clock (through `time::SystemClock`), spawn
//! processes and read `/dev/urandom`; the simulator never builds any of this.

pub mod clock;
pub mod config;
pub mod datadir;
pub mod external;
pub mod forge_pr;
pub mod metrics;
pub mod up;

pub use clock::ScaledClock;
pub use config::{ConfigError, FileConfig};
pub use external::ExternalRuntime;
pub use forge_pr::ForgePrOpener;
pub use up::{run_up, UpOptions};

/// A production-mode failure: what went wrong and where, for the CLI to print.
#[derive(Debug, thiserror::Error)]
pub enum ProdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

impl ProdError {
    pub fn io(what: &'static str, path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ProdError::Io { what, path: path.as_ref().display().to_string(), source }
    }
}
