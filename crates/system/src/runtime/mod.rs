//! The town as a running service: the [`TownHost`] that owns the town
//! database behind a lock, runs effects over HTTP against the container (and
//! the forge), and drives the alarm loop. The HTTP API (`crate::api`) calls
//! into it; production mode and the simulator both build one.

mod alarm;
mod container_runner;
mod host;

pub use container_runner::{ContainerRunner, PrEffects};
pub use host::{TickObserver, TickPhase, TownHost, TownHostConfig};

#[cfg(test)]
mod tests;
