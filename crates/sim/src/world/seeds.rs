//! The root seed and the named streams derived from it: each concern draws
//! from its own RNG, so adding draws to one (say, a new fault) does not
//! shift the others.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// Named sub-seeds of one root seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seeds {
    pub root: u64,
    /// turmoil's world RNG (message latency, host order).
    pub network: u64,
    pub workload: u64,
    pub faults: u64,
    /// Sampling the per-seed ranges (swarm testing).
    pub swarm: u64,
    /// The scripted agents (each agent's stream is derived from this and its id).
    pub agents: u64,
    /// CI and reviewers.
    pub people: u64,
    /// The town's id generator, the forge's SHAs and its fault dice.
    pub town: u64,
    pub forge: u64,
}

/// SplitMix64 over the root and a name hash: stable across platforms.
fn derive(root: u64, name: &str) -> u64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let mut z = root ^ h;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Seeds {
    pub fn new(root: u64) -> Seeds {
        Seeds {
            root,
            network: derive(root, "network"),
            workload: derive(root, "workload"),
            faults: derive(root, "faults"),
            swarm: derive(root, "swarm"),
            agents: derive(root, "agents"),
            people: derive(root, "people"),
            town: derive(root, "town"),
            forge: derive(root, "forge"),
        }
    }

    pub fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }
}
