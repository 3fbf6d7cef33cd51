//! Gastown's control plane: the town (state, events, reconciler, tick).
//!
//! Everything here is deterministic given a clock and a seed: time comes from
//! [`time::Clock`], ids from a seeded [`ids::IdGen`], and no code path reads
//! the OS clock or entropy (see `clippy.toml`).

pub mod api;
pub mod auth;
pub mod container;
pub mod defects;
pub mod error;
pub mod forge;
pub mod generate;
pub mod ids;
pub mod model;
pub mod net;
pub mod prod;
pub mod runtime;
pub mod scm;
pub mod store;
pub mod time;
pub mod town;
pub mod wire;

pub use error::{Result, TownError};
pub use town::Town;
