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
