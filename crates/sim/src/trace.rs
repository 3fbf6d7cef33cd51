//! The trace: one record per tick, RPC and fact, folded into a rolling hash so
//! two runs of a seed can be compared cheaply, and kept in memory so the first
//! difference can be named.

use fnv::FnvHasher;
use serde::Serialize;
use std::hash::Hasher;

#[derive(Default)]
pub struct Trace {
    hasher: FnvHasher,
    records: Vec<String>,
    keep: bool,
}

impl Trace {
    /// `keep` retains every record (for determinism diffs); otherwise only the hash.
    pub fn new(keep: bool) -> Self {
        Trace { hasher: FnvHasher::default(), records: Vec::new(), keep }
    }

    pub fn record(&mut self, at_ms: i64, kind: &str, body: &impl Serialize) {
        let line = format!("{at_ms} {kind} {}", serde_json::to_string(body).unwrap_or_default());
        self.hasher.write(line.as_bytes());
        self.hasher.write_u8(b'\n');
        if self.keep {
            self.records.push(line);
        }
    }

    pub fn hash(&self) -> String {
        format!("{:016x}", self.hasher.finish())
    }

    pub fn records(&self) -> &[String] {
        &self.records
    }
}

/// The index and both sides of the first record where two traces differ.
pub fn first_difference<'a>(a: &'a [String], b: &'a [String]) -> Option<(usize, Option<&'a str>, Option<&'a str>)> {
    let n = a.len().max(b.len());
    (0..n).find_map(|i| {
        let (x, y) = (a.get(i).map(String::as_str), b.get(i).map(String::as_str));
        (x != y).then_some((i, x, y))
    })
}
