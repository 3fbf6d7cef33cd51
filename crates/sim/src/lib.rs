//! The Gastown simulator: the real town, container and forge as turmoil
//! hosts in a deterministic world (`world`), driven by scenario files
//! (`scenario`) through one seam (`engine`), with reports (`report`),
//! shrinking (`shrink`), a rolling trace hash (`trace`) and the tick-latency
//! benchmark report (`bench`).

pub mod bench;
pub mod defects;
pub mod engine;
pub mod net;
pub mod report;
pub mod scenario;
pub mod shrink;
pub mod trace;
pub mod world;

/// Whether tokio was built with `--cfg tokio_unstable` (`.cargo/config.toml`
/// sets it). Only then does turmoil seed each host's tokio RNG, which picks
/// the branch order of unbiased `select!`s (axum's connection loop has one):
/// without it, a seed's trace can differ from one run to the next.
pub const TOKIO_SEEDED: bool = cfg!(tokio_unstable);

/// What to tell the user when [`TOKIO_SEEDED`] is false.
pub const TOKIO_UNSEEDED_WARNING: &str = "warning: built without `--cfg tokio_unstable` (a RUSTFLAGS variable \
replaces the one in .cargo/config.toml?): tokio's RNG is unseeded, so a seed's trace may differ between runs";

#[cfg(test)]
mod tests {
    /// A test rather than a compile error: a build without the flag still
    /// works (with a warning), but CI must not run one.
    #[test]
    #[allow(clippy::assertions_on_constants)]
    fn built_with_tokio_unstable() {
        assert!(super::TOKIO_SEEDED, "{}", super::TOKIO_UNSEEDED_WARNING);
    }
}
