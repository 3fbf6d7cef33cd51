//! Histograms: wall-clock tick cost (µs) and simulated event-to-applied
//! latency (ms). Wall time is only measured, never fed back into the world.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
}

/// The largest value a histogram holds: 1 hour in µs (or 1,000 hours in ms).
pub(crate) const HIST_MAX: u64 = 3_600_000_000;

pub(crate) fn new_hist() -> Histogram<u64> {
    // 3 significant digits over fixed bounds: cannot fail.
    Histogram::new_with_bounds(1, HIST_MAX, 3).expect("valid histogram bounds")
}

/// Record `v`, clamped into the histogram's bounds.
pub(crate) fn record(h: &mut Histogram<u64>, v: u64) {
    let _ = h.record(v.clamp(1, HIST_MAX));
}

pub(crate) fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        count: h.len(),
    }
}

pub(crate) fn raw(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// A wall-clock stopwatch. The one place the simulator reads the OS clock:
/// the reading goes into reports only, never into anything simulated.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::disallowed_types)]
pub(crate) struct Stopwatch(std::time::Instant);

#[allow(clippy::disallowed_types)]
impl Stopwatch {
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn start() -> Self {
        Stopwatch(std::time::Instant::now())
    }
    pub(crate) fn micros(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}
