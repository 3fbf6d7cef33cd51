//! The Gastown simulator.
//!
//! Today: an in-process, event-driven driver. The town runs on a
//! [`ManualClock`]; a scripted container answers effects; a seeded workload
//! slings beads and convoys; the invariant checker runs after every tick; a
//! rolling hash of the trace proves that a seed replays byte for byte. The
//! networked world (turmoil hosts for town, container and forge), the fault
//! catalogue and scenario files build on this.

pub mod bench;
pub mod driver;
pub mod engine;
pub mod net;
pub mod report;
pub mod scenario;
pub mod shrink;
pub mod trace;
pub mod world;

pub use driver::{run_seed, SeedResult, SimParams};
