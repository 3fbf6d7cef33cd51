//! The fault injector: a plan of timed faults (Poisson arrivals of the
//! per-hour kinds at the seed's sampled rates, plus the scripted timeline),
//! timers that end or follow up a fault, and the container's life cycle
//! (drain, crash, restart as a new instance). Nothing new fires at or after
//! `heal_at`; healing repairs the network, ends outages, stops the dice and
//! takes the agents' own faults away (sessions already hung stay hung).

use super::config::WorldConfig;
use super::hosts::{lock, EPOCH, OWNER};
use super::oracles;
use super::run::{Box_, Sampled, World};
use super::workload::arrivals;
use super::{Unit, FAULT_KINDS};
use gastown::container::{session, DrainReport};
use gastown::forge::{CheckRun, Fault, FaultKind};
use gastown::wire::ProcessStatus;
use rand::rngs::StdRng;
use rand::Rng;

/// One planned fault.
#[derive(Clone, Debug)]
pub struct Planned {
    pub at: u64,
    pub kind: String,
    pub between: Option<(String, String)>,
    pub lasts: Option<u64>,
}

/// Timed faults in firing order.
pub struct Plan {
    items: Vec<Planned>,
    next: usize,
}

impl Plan {
    pub fn new(cfg: &WorldConfig, s: &Sampled, rng: &mut StdRng) -> Plan {
        let heal = cfg.heal_at();
        let mut items = Vec::new();
        for k in FAULT_KINDS.iter().filter(|k| k.unit == Unit::PerHour) {
            let rate = s.rates.get(k.name).copied().unwrap_or(0.0);
            for at in arrivals(rng, rate, heal, 10_000) {
                items.push(Planned { at, kind: k.name.to_owned(), between: None, lasts: None });
            }
        }
        for t in &cfg.timeline {
            if t.at_ms < heal {
                items.push(Planned { at: t.at_ms, kind: t.fault.clone(), between: t.between.clone(), lasts: t.for_ms });
            }
        }
        items.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.kind.cmp(&b.kind)));
        Plan { items, next: 0 }
    }
}

/// Follow-ups of faults.
#[derive(Clone, Debug)]
pub enum Timer {
    Restart { keep_disk: bool },
    HardEvict,
    Repair(String, String),
    Release(String, String),
    Unpin,
    OutageEnd,
    MergeableRestore(String, u64),
    ChecksRestore(String, u64),
}

const HOSTS: [&str; 3] = ["town", "container", "forge"];

impl World {
    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        if hi > lo {
            self.fault_rng.random_range(lo..=hi)
        } else {
            lo
        }
    }

    pub(crate) fn fault_step(&mut self, sim: &mut turmoil::Sim<'_>) {
        let now = self.now;
        // Planned faults.
        while let Some(p) = self.plan.items.get(self.plan.next).cloned() {
            if p.at > now {
                break;
            }
            self.plan.next += 1;
            if now < self.heal_at {
                self.inject(sim, &p);
            }
        }
        // Timers (follow-ups run even after heal: a restart must happen).
        let mut due = Vec::new();
        self.timers.retain(|(at, t)| {
            if *at <= now {
                due.push(t.clone());
                false
            } else {
                true
            }
        });
        for t in due {
            self.on_timer(sim, t);
        }
        // The container's drain, and evictions waiting for a start.
        if let Box_::Draining { since, crash_at } = self.container {
            let done = lock(&self.sh.container).drain_done.take();
            if let Some(report) = done {
                self.mark("drain_completed");
                if !report.frozen.is_empty() {
                    self.mark("drain_froze_agents");
                }
                self.after_drain_oracles(since, &report);
                sim.crash("container");
                self.container = Box_::Down;
                let delay = self.range(self.sampled.restart_delay_ms);
                self.timers.push((now + delay, Timer::Restart { keep_disk: false }));
            } else if crash_at.is_some_and(|t| t <= now) {
                self.fired(now, "eviction_during_drain");
                self.crash_container(sim, false);
            }
        }
        if self.evict_on_start_until > now && self.container == Box_::Up {
            let c = lock(&self.sh.container).container.clone();
            if c.is_some_and(|c| c.statuses().iter().any(|s| s.status == ProcessStatus::Starting)) {
                self.evict_on_start_until = 0;
                self.fired(now, "eviction_during_start");
                self.crash_container(sim, false);
            }
        }
    }

    fn after_drain_oracles(&mut self, since: u64, report: &DrainReport) {
        let (Some(town), Some(c)) = (self.sh.town(), lock(&self.sh.container).container.clone()) else { return };
        let tampered = lock(&self.sh.dice).tampered_uploads.clone();
        // The container's own record: when each stored snapshot was read,
        // which a version or the time the upload landed do not tell.
        let stored_at = c
            .statuses()
            .iter()
            .filter_map(|s| Some((s.agent_id.clone(), c.last_snapshot_taken(&s.agent_id)?)))
            .collect();
        let at = |ms: u64| EPOCH.plus_ms(i64::try_from(ms).unwrap_or(i64::MAX));
        let link_cuts: Vec<_> = self.link_cuts.iter().map(|&(from, until)| (at(from), until.map(at))).collect();
        let history = oracles::DrainHistory {
            tampered: &tampered,
            stored_at: &stored_at,
            link_cuts: &link_cuts,
            began: at(since),
            registry_synced: report.final_registry_synced,
        };
        let scratch = self.sh.data.join("scratch");
        for v in oracles::after_drain(&town, &c, &scratch, &history) {
            self.violation(self.now, v);
        }
    }

    /// Crash the container now (memory lost); unless `keep_disk`, its disk too.
    fn crash_container(&mut self, sim: &mut turmoil::Sim<'_>, keep_disk: bool) {
        let now = self.now;
        self.pinned = None;
        sim.crash("container");
        self.container = Box_::Down;
        if !keep_disk {
            if self.roll("stale_snapshot") {
                self.corrupt_a_snapshot();
            }
            let dir = lock(&self.sh.container).dir.clone();
            let _ = std::fs::remove_dir_all(&dir);
            let delay = self.range(self.sampled.restart_delay_ms);
            self.timers.push((now + delay, Timer::Restart { keep_disk: false }));
        } else {
            self.timers.push((now + 1_000, Timer::Restart { keep_disk: true }));
        }
    }

    /// A stored snapshot becomes undecodable (and newer than anything
    /// uploaded), so the replacement must fall back when it hydrates.
    fn corrupt_a_snapshot(&mut self) {
        let Some(town) = self.sh.town() else { return };
        let agents: Vec<String> = town
            .with_town_quietly(|t| Ok(t.container_registry()?.into_iter().map(|e| e.agent_id).collect()))
            .unwrap_or_default();
        if agents.is_empty() {
            return;
        }
        let agent = agents[self.fault_rng.random_range(0..agents.len())].clone();
        let _ = town.with_town_quietly(|t| t.put_session_snapshot(&agent, i64::MAX / 2, b"not a sqlite database"));
        lock(&self.sh.dice).tampered_uploads.insert(agent);
        self.fired(self.now, "stale_snapshot");
    }

    fn restart_container(&mut self, sim: &mut turmoil::Sim<'_>, keep_disk: bool) {
        {
            let mut slot = lock(&self.sh.container);
            slot.instance += 1;
            if !keep_disk {
                slot.dir = self.sh.data.join(format!("container-{}", slot.instance));
            }
            slot.container = None;
        }
        let registry =
            self.sh.town().map_or(0, |t| t.with_town_quietly(|t| t.container_registry()).map_or(0, |r| r.len()));
        if registry > 0 {
            self.mark("boot_hydration");
        }
        sim.bounce("container");
        self.container = Box_::Up;
        if self.roll("double_eviction") {
            self.fired(self.now, "double_eviction");
            let at = self.now + self.range((10_000, 120_000));
            self.timers.push((at, Timer::HardEvict));
        }
    }

    fn open_prs(&self) -> Vec<(String, u64, String)> {
        let Some(forge) = self.sh.forge() else { return Vec::new() };
        lock(&self.sh.prs)
            .iter()
            .filter(|p| forge.pull(OWNER, &p.repo, p.number).is_ok_and(|x| x.state == "open"))
            .map(|p| (p.repo.clone(), p.number, p.url.clone()))
            .collect()
    }

    fn pick_open_pr(&mut self) -> Option<(String, u64, String)> {
        let open = self.open_prs();
        if open.is_empty() {
            return None;
        }
        let i = self.fault_rng.random_range(0..open.len());
        Some(open[i].clone())
    }

    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, p: &Planned) {
        let now = self.now;
        let lasts = p.lasts.unwrap_or_else(|| self.range(self.sampled.partition_ms));
        match p.kind.as_str() {
            "graceful_eviction" if self.container == Box_::Up => {
                self.fired(now, "graceful_eviction");
                lock(&self.sh.container).drain_requested = true;
                let crash_at = self.roll("eviction_during_drain").then(|| now + self.range((1_000, 120_000)));
                self.container = Box_::Draining { since: now, crash_at };
            }
            "eviction_during_drain" if self.container == Box_::Up => {
                // Timeline: a graceful eviction cut short.
                self.fired(now, "graceful_eviction");
                lock(&self.sh.container).drain_requested = true;
                let at = now + self.range((1_000, 60_000));
                self.container = Box_::Draining { since: now, crash_at: Some(at) };
            }
            "hard_eviction" if self.container == Box_::Up => {
                self.fired(now, "hard_eviction");
                self.crash_container(sim, false);
                if let Some(l) = p.lasts {
                    if let Some((_, Timer::Restart { .. })) = self.timers.last_mut() {
                        *self.timers.last_mut().map(|t| &mut t.0).unwrap_or(&mut 0) = now + l;
                    }
                }
            }
            "eviction_during_start" => self.evict_on_start_until = now + 10 * 60_000,
            "wal_lost_at_crash" if self.container == Box_::Up => {
                self.fired(now, "wal_lost_at_crash");
                let dir = lock(&self.sh.container).dir.clone();
                self.crash_container(sim, true);
                remove_wal_files(&dir);
            }
            "wal_busy_snapshot" if self.container == Box_::Up && self.pinned.is_none() => {
                let Some(c) = lock(&self.sh.container).container.clone() else { return };
                let live: Vec<String> = c
                    .statuses()
                    .into_iter()
                    .filter(|s| s.status == ProcessStatus::Running)
                    .map(|s| s.agent_id)
                    .collect();
                if live.is_empty() {
                    return;
                }
                let agent = live[self.fault_rng.random_range(0..live.len())].clone();
                let path = session::db_path(&c.config().data_dir, &agent);
                if let Some(conn) = pin_reader(&path) {
                    self.fired(now, "wal_busy_snapshot");
                    lock(&self.sh.dice).tampered_uploads.insert(agent);
                    let until = now + self.range((30_000, 120_000));
                    self.pinned = Some((conn, until));
                    self.timers.push((until, Timer::Unpin));
                }
            }
            "duplicate_tick" => {
                lock(&self.sh.town_ctl).jobs.push_back("duplicate_tick");
                self.sh.town_wake.notify_one();
            }
            "overlapping_tick" => lock(&self.sh.town_ctl).overlap_next = true,
            "forge_outage" => {
                if let Some(f) = self.sh.forge() {
                    self.fired(now, "forge_outage");
                    f.add_fault(Fault::new(FaultKind::Status { status: 503 }));
                    self.timers.push((now + lasts, Timer::OutageEnd));
                }
            }
            "mergeable_flap" => {
                if let (Some(f), Some((repo, n, _))) = (self.sh.forge(), self.pick_open_pr()) {
                    self.fired(now, "mergeable_flap");
                    let state = if self.fault_rng.random_bool(0.5) { "unknown" } else { "dirty" };
                    let _ = f.set_mergeable_override(OWNER, &repo, n, Some(state));
                    let at = now + self.range((60_000, 180_000));
                    self.timers.push((at, Timer::MergeableRestore(repo, n)));
                }
            }
            "checks_flap" => {
                if let (Some(f), Some((repo, n, _))) = (self.sh.forge(), self.pick_open_pr()) {
                    self.fired(now, "checks_flap");
                    let _ = f.set_checks(OWNER, &repo, n, &[CheckRun::completed("ci", "failure")], &[]);
                    let at = now + self.range((60_000, 300_000));
                    self.timers.push((at, Timer::ChecksRestore(repo, n)));
                }
            }
            "external_merge" | "external_close" => {
                if let (Some(f), Some((repo, n, url))) = (self.sh.forge(), self.pick_open_pr()) {
                    self.fired(now, &p.kind);
                    if p.kind == "external_merge" {
                        self.external.insert(url);
                        let _ = f.merge_from_outside(OWNER, &repo, n);
                    } else {
                        let _ = f.close_pull(OWNER, &repo, n);
                    }
                }
            }
            "partition_town_container" | "partition_town_forge" | "partition" => {
                let (a, b) = p.between.clone().unwrap_or_else(|| {
                    let other = if p.kind == "partition_town_forge" { "forge" } else { "container" };
                    ("town".into(), other.into())
                });
                if HOSTS.contains(&a.as_str()) && HOSTS.contains(&b.as_str()) && a != b {
                    self.fired(now, &p.kind);
                    self.cut_begins(&a, &b);
                    sim.partition(a.as_str(), b.as_str());
                    self.timers.push((now + lasts, Timer::Repair(a, b)));
                }
            }
            "hold_town_container" | "hold" => {
                let (a, b) = p.between.clone().unwrap_or_else(|| ("town".into(), "container".into()));
                if HOSTS.contains(&a.as_str()) && HOSTS.contains(&b.as_str()) && a != b {
                    self.fired(now, &p.kind);
                    self.cut_begins(&a, &b);
                    sim.hold(a.as_str(), b.as_str());
                    self.timers.push((now + lasts, Timer::Release(a, b)));
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, sim: &mut turmoil::Sim<'_>, t: Timer) {
        match t {
            Timer::Restart { keep_disk } => {
                if self.container == Box_::Down {
                    self.restart_container(sim, keep_disk);
                }
            }
            Timer::HardEvict => {
                if self.container == Box_::Up && self.now < self.heal_at {
                    self.crash_container(sim, false);
                }
            }
            Timer::Repair(a, b) => {
                self.cut_ends(&a, &b);
                sim.repair(a.as_str(), b.as_str());
            }
            Timer::Release(a, b) => {
                self.cut_ends(&a, &b);
                sim.release(a.as_str(), b.as_str());
            }
            Timer::Unpin => self.pinned = None,
            Timer::OutageEnd => {
                if let Some(f) = self.sh.forge() {
                    f.clear_faults();
                }
            }
            Timer::MergeableRestore(repo, n) => {
                if let Some(f) = self.sh.forge() {
                    let _ = f.set_mergeable_override(OWNER, &repo, n, None);
                }
            }
            Timer::ChecksRestore(repo, n) => {
                if let Some(f) = self.sh.forge() {
                    let _ = f.set_checks(OWNER, &repo, n, &[CheckRun::completed("ci", "success")], &[]);
                }
            }
        }
    }

    /// A partition (or a hold) between town and container begins: snapshot
    /// uploads sent meanwhile never reach the town (or arrive after the
    /// container gave up on them).
    fn cut_begins(&mut self, a: &str, b: &str) {
        if is_town_container(a, b) {
            self.link_cuts.push((self.now, None));
        }
    }

    /// A repair or a release between town and container: turmoil keeps one
    /// state per link, so either makes it healthy and ends every cut still open.
    fn cut_ends(&mut self, a: &str, b: &str) {
        if is_town_container(a, b) {
            let now = self.now;
            for cut in self.link_cuts.iter_mut().filter(|c| c.1.is_none()) {
                cut.1 = Some(now);
            }
        }
    }

    /// `heal_at`: no new faults; partitions repaired, holds released, outages over.
    pub(crate) fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        self.healed = true;
        lock(&self.sh.dice).active = false;
        self.sh.agents_healed.store(true, std::sync::atomic::Ordering::Relaxed);
        {
            let mut ctl = lock(&self.sh.town_ctl);
            ctl.overlap_next = false;
        }
        let mut keep = Vec::new();
        for (at, t) in std::mem::take(&mut self.timers) {
            match t {
                Timer::Repair(..)
                | Timer::Release(..)
                | Timer::Unpin
                | Timer::OutageEnd
                | Timer::MergeableRestore(..)
                | Timer::ChecksRestore(..) => self.on_timer(sim, t),
                Timer::HardEvict => {}
                Timer::Restart { .. } => keep.push((at, t)),
            }
        }
        self.timers = keep;
        self.evict_on_start_until = 0;
        self.trace.record(self.now as i64, "heal", &"");
    }
}

fn is_town_container(a: &str, b: &str) -> bool {
    matches!((a, b), ("town", "container") | ("container", "town"))
}

fn remove_wal_files(dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            remove_wal_files(&p);
        } else if p.to_string_lossy().ends_with("-wal") {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// A reader that holds a read transaction open: the WAL cannot be
/// checkpointed past it until it is dropped.
fn pin_reader(path: &std::path::Path) -> Option<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(std::time::Duration::ZERO).ok()?;
    conn.execute_batch("BEGIN").ok()?;
    conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).ok()?;
    Some(conn)
}
