//! The three turmoil hosts (town, container, forge) and the state that
//! outlives a host restart. turmoil's `bounce` drops everything created
//! inside a host's future and calls its factory again; what is captured by
//! the factory (`Shared`, data directories) survives. That is the
//! durability boundary: the town's database file and the forge live on; the
//! container's disk is its own directory, wiped by the world on a hard
//! eviction (a new instance gets a new directory).

use super::config::{MergeStrategy, WorldConfig};
use crate::net::{TurmoilConnector, TurmoilListener};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use gastown::container::{
    BootEnv, Container, ContainerConfig, DrainReport, PrOpener, PrRequest, ScriptConfig, ScriptedRuntime,
};
use gastown::forge::{Fault, FaultKind, Forge, ForgeConfig, RepoSettings};
use gastown::model::{MergeMode, RigOverrides, TownConfig};
use gastown::net::{HttpClient, SendFuture};
use gastown::runtime::{TickObserver, TickPhase, TownHost, TownHostConfig};
use gastown::scm::{ScmClient, ScmConfig};
use gastown::time::{Timestamp, TokioClock};
use gastown::town::invariants::Violation;
use gastown::town::{AddRig, TickReport, Town, TownOptions};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tower::ServiceExt;

/// The fixed epoch: simulated time 0 is this wall-clock instant.
pub const EPOCH: Timestamp = Timestamp(1_780_000_000_000);
pub const SECRET: &[u8] = b"sim-secret";
pub const TOWN_ID: &str = "sim-town";
pub const OWNER: &str = "acme";
pub const FORGE_TOKEN: &str = "forge-token";
pub const TOWN_PORT: u16 = 8787;
pub const CONTAINER_PORT: u16 = 8080;
pub const FORGE_PORT: u16 = 9000;
pub const FORGE_URL: &str = "http://forge:9000";
pub const TOWN_URL: &str = "http://town:8787";

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn rig_id(i: u32) -> String {
    format!("rig-{i}")
}
pub fn repo_name(rig: &str) -> String {
    format!("app{}", rig.trim_start_matches("rig-"))
}

/// Simulated ms since the start, inside a host.
pub fn host_now_ms() -> i64 {
    turmoil::sim_elapsed().map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A PR an agent opened on the forge.
#[derive(Clone, Debug)]
pub struct PrRecord {
    pub bead_id: String,
    pub agent_id: String,
    pub repo: String,
    pub number: u64,
    pub url: String,
    pub opened_ms: i64,
}

/// The container's life as the world steers it.
#[derive(Debug, Default)]
pub struct ContainerSlot {
    pub instance: u64,
    pub dir: PathBuf,
    pub container: Option<Container>,
    /// The world asks the running instance to drain (graceful eviction).
    pub drain_requested: bool,
    /// Set by the instance when its drain finished.
    pub drain_done: Option<DrainReport>,
}

/// Per-request fault dice (town front and forge front), on the faults stream.
pub struct Dice {
    pub rng: StdRng,
    pub active: bool,
    pub p: BTreeMap<&'static str, f64>,
    /// Agents whose snapshot upload was lost or held (exempt from the drain-history oracle).
    pub tampered_uploads: BTreeSet<String>,
}

impl Dice {
    pub fn roll(&mut self, kind: &'static str) -> bool {
        let p = self.p.get(kind).copied().unwrap_or(0.0);
        self.active && p > 0.0 && self.rng.random_bool(p.min(1.0))
    }
}

/// Extra ticks the world asked for.
#[derive(Debug, Default)]
pub struct TownCtl {
    pub jobs: VecDeque<&'static str>,
    /// Start an extra tick when the next tick's effects begin (overlap).
    pub overlap_next: bool,
}

/// What the hosts share with the world. Everything here outlives restarts.
pub struct Shared {
    pub cfg: WorldConfig,
    pub data: PathBuf,
    pub town: Mutex<Option<Arc<TownHost>>>,
    pub forge: Mutex<Option<Arc<Forge>>>,
    pub container: Mutex<ContainerSlot>,
    pub script: ScriptConfig,
    pub town_ctl: Mutex<TownCtl>,
    pub town_wake: Notify,
    /// Tick reports with their wall-clock cost (µs), drained by the world.
    pub ticks: Mutex<Vec<(TickReport, u64)>>,
    /// Ticks that ended in an error: (sim ms, error), drained by the world.
    pub failed_ticks: Mutex<Vec<(i64, String)>>,
    tick_wall: Mutex<(Option<super::measure::Stopwatch>, u64)>,
    /// Trace records from inside hosts (RPCs), drained by the world: (sim ms, kind, body).
    pub records: Mutex<Vec<(i64, &'static str, String)>>,
    /// Violations seen from outside the town (the workload's postconditions on
    /// its own calls), drained by the world: (sim ms, violation).
    pub checks: Mutex<Vec<(i64, Violation)>>,
    pub dice: Mutex<Dice>,
    pub faults: Mutex<Vec<(i64, String)>>,
    /// PRs merged by `merge_mid_feedback_read`: (sim ms, PR url), drained by the world.
    pub mid_read_merges: Mutex<Vec<(i64, String)>>,
    pub prs: Mutex<Vec<PrRecord>>,
    pub squash_disabled: bool,
    /// Bumped at every tick phase: a step without a change saw no tick.
    pub tick_starts: Mutex<u64>,
    pub workload_done: Mutex<bool>,
    /// Set at the heal: the agents' own faults stop too (every container's runtime shares it).
    pub agents_healed: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    pub fn new(cfg: WorldConfig, data: PathBuf, script: ScriptConfig, dice: Dice, squash_disabled: bool) -> Arc<Self> {
        Arc::new(Shared {
            cfg,
            container: Mutex::new(ContainerSlot { instance: 1, dir: data.join("container-1"), ..Default::default() }),
            data,
            town: Mutex::new(None),
            forge: Mutex::new(None),
            script,
            town_ctl: Mutex::new(TownCtl::default()),
            town_wake: Notify::new(),
            ticks: Mutex::new(Vec::new()),
            failed_ticks: Mutex::new(Vec::new()),
            tick_wall: Mutex::new((None, 0)),
            records: Mutex::new(Vec::new()),
            checks: Mutex::new(Vec::new()),
            dice: Mutex::new(dice),
            faults: Mutex::new(Vec::new()),
            mid_read_merges: Mutex::new(Vec::new()),
            prs: Mutex::new(Vec::new()),
            squash_disabled,
            tick_starts: Mutex::new(0),
            workload_done: Mutex::new(false),
            agents_healed: Arc::default(),
        })
    }

    pub fn town(&self) -> Option<Arc<TownHost>> {
        lock(&self.town).clone()
    }
    pub fn forge(&self) -> Option<Arc<Forge>> {
        lock(&self.forge).clone()
    }
    pub fn record(&self, kind: &'static str, body: String) {
        lock(&self.records).push((host_now_ms(), kind, body));
    }
    /// A fault fired inside a host.
    pub fn fault(&self, kind: &str) {
        lock(&self.faults).push((host_now_ms(), kind.to_owned()));
    }
}

/// Times a tick's synchronous phases and hands its report to the world.
struct Observer(Arc<Shared>);

impl TickObserver for Observer {
    fn phase(&self, phase: TickPhase) {
        *lock(&self.0.tick_starts) += 1;
        let mut w = lock(&self.0.tick_wall);
        match phase {
            TickPhase::BeginStart | TickPhase::FinishStart => w.0 = Some(super::measure::Stopwatch::start()),
            TickPhase::BeginEnd | TickPhase::FinishEnd => {
                if let Some(sw) = w.0.take() {
                    w.1 += sw.micros();
                }
            }
        }
        if phase == TickPhase::BeginEnd {
            drop(w);
            let mut ctl = lock(&self.0.town_ctl);
            if ctl.overlap_next {
                ctl.overlap_next = false;
                ctl.jobs.push_back("overlapping_tick");
                drop(ctl);
                self.0.town_wake.notify_one();
            }
        }
    }
    fn inject_failure(&self) -> Option<String> {
        if !lock(&self.0.dice).roll("failed_tick") {
            return None;
        }
        self.0.fault("failed_tick");
        Some("injected: the alarm handler failed".into())
    }
    fn tick_done(&self, report: &TickReport) {
        let cost = std::mem::take(&mut lock(&self.0.tick_wall).1);
        lock(&self.0.ticks).push((report.clone(), cost));
    }
    fn tick_failed(&self, error: &gastown::TownError) {
        lock(&self.0.failed_ticks).push((host_now_ms(), error.to_string()));
    }
}

// ------------------------------------------------------------------ town

fn build_town(sh: &Shared, clock: Arc<TokioClock>) -> gastown::Result<Town> {
    let path = sh.data.join("town.db");
    let fresh = !path.exists();
    let conn = gastown::store::open_file(&path)?;
    let mut town = Town::open(conn, clock, TownOptions { town_id: TOWN_ID.into(), seed: sh.script.seed ^ 0x70_77 })?;
    if fresh {
        let t = &sh.cfg.town;
        let mut config = TownConfig::new_town_defaults();
        config.merge_strategy = match t.merge_strategy {
            MergeStrategy::Direct => gastown::model::MergeStrategy::Direct,
            MergeStrategy::Pr => gastown::model::MergeStrategy::Pr,
        };
        config.convoy_merge_mode = merge_mode(t.convoy_merge_mode);
        config.staged_convoys_default = false;
        town.set_config(config)?;
        for i in 0..t.rigs {
            let id = rig_id(i);
            town.add_rig(AddRig {
                id: Some(id.clone()),
                name: repo_name(&id),
                git_url: format!("https://github.com/{OWNER}/{}.git", repo_name(&id)),
                default_branch: None,
                config: RigOverrides {
                    code_review: Some(t.code_review),
                    auto_merge_delay_minutes: Some(t.auto_merge_delay_minutes),
                    auto_resolve_pr_feedback: Some(t.auto_resolve),
                    auto_resolve_merge_conflicts: Some(t.auto_resolve),
                    ..Default::default()
                },
            })?;
        }
    }
    Ok(town)
}

pub fn merge_mode(m: super::config::ConvoyMergeMode) -> MergeMode {
    match m {
        super::config::ConvoyMergeMode::ReviewThenLand => MergeMode::ReviewThenLand,
        super::config::ConvoyMergeMode::ReviewAndMerge => MergeMode::ReviewAndMerge,
    }
}

fn http() -> HttpClient {
    HttpClient::new(Arc::new(TurmoilConnector), Duration::from_secs(10))
}

pub fn town_host(sim: &mut turmoil::Sim<'_>, sh: Arc<Shared>) {
    sim.host("town", move || {
        let sh = sh.clone();
        async move {
            let clock = Arc::new(TokioClock::new(EPOCH.plus_ms(host_now_ms())));
            let town = build_town(&sh, clock.clone()).map_err(|e| e.to_string())?;
            let cfg = TownHostConfig {
                api_url: TOWN_URL.into(),
                container_url: format!("http://container:{CONTAINER_PORT}"),
                secret: SECRET.to_vec(),
            };
            let host = TownHost::new(town, clock, http(), cfg);
            let scm = ScmClient::new(http(), ScmConfig::for_forge(FORGE_URL, "github.com", Some(FORGE_TOKEN)));
            host.set_pr_effects(Arc::new(scm));
            host.set_tick_observer(Arc::new(Observer(sh.clone())));
            *lock(&sh.town) = Some(host.clone());
            tokio::spawn(host.clone().run_alarm_loop());
            // Extra ticks the world injects (alarm twice, overlapping ticks).
            let (h2, sh2) = (host.clone(), sh.clone());
            tokio::spawn(async move {
                loop {
                    sh2.town_wake.notified().await;
                    while let Some(kind) = lock(&sh2.town_ctl).jobs.pop_front() {
                        sh2.fault(kind);
                        let h = h2.clone();
                        tokio::spawn(async move {
                            let _ = h.tick_once().await;
                        });
                    }
                }
            });
            let front = axum::Router::new()
                .fallback(town_front)
                .with_state(Front { sh: sh.clone(), inner: gastown::api::router(host) });
            gastown::net::serve(TurmoilListener::bind(TOWN_PORT).await?, front).await?;
            Ok(())
        }
    });
}

#[derive(Clone)]
struct Front {
    sh: Arc<Shared>,
    inner: axum::Router,
}

/// In front of the town's API: trace every RPC; lose, hold or duplicate
/// requests as the fault dice say.
async fn town_front(State(f): State<Front>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return (axum::http::StatusCode::BAD_REQUEST, "body").into_response();
    };
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let post = method == "POST";
    let snapshot = post && path.ends_with("/db-snapshot");
    let agent = path.split("/agents/").nth(1).and_then(|r| r.split('/').next()).unwrap_or("").to_owned();
    let (lost, held, dup) = {
        let mut d = lock(&f.sh.dice);
        let lost = snapshot && d.roll("snapshot_upload_lost");
        let held = snapshot && !lost && d.roll("snapshot_upload_reordered");
        let dup = post
            && !snapshot
            && (path.contains("/agents/") || path.contains("/container-"))
            && d.roll("duplicate_request");
        let held_ms = if held { d.rng.random_range(2_000..=20_000u64) } else { 0 };
        if lost || held {
            d.tampered_uploads.insert(agent.clone());
        }
        (lost, held_ms, dup)
    };
    if lost {
        f.sh.fault("snapshot_upload_lost");
        f.sh.record("rpc", format!("{method} {path} -> lost"));
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "upload lost").into_response();
    }
    if held > 0 {
        f.sh.fault("snapshot_upload_reordered");
        tokio::time::sleep(Duration::from_millis(held)).await;
    }
    let make = || Request::from_parts(parts.clone(), Body::from(bytes.clone()));
    let mut resp = f.inner.clone().oneshot(make()).await.into_response();
    if dup {
        f.sh.fault("duplicate_request");
        f.sh.record("rpc", format!("{method} {path} -> {} (duplicated)", resp.status().as_u16()));
        resp = f.inner.clone().oneshot(make()).await.into_response();
    }
    f.sh.record("rpc", format!("{method} {path} -> {}", resp.status().as_u16()));
    resp
}

// ------------------------------------------------------------------ forge

pub fn forge_host(sim: &mut turmoil::Sim<'_>, sh: Arc<Shared>, seed: u64) {
    sim.host("forge", move || {
        let sh = sh.clone();
        async move {
            let forge = match sh.forge() {
                Some(f) => f,
                None => {
                    let clock = Arc::new(TokioClock::new(EPOCH.plus_ms(host_now_ms())));
                    let cfg = ForgeConfig { web_host: "github.com".into(), token: Some(FORGE_TOKEN.into()), seed };
                    let forge = Forge::in_memory(clock, cfg);
                    let settings = RepoSettings {
                        allow_squash: !sh.squash_disabled,
                        require_review: sh.cfg.town.require_review,
                        ..RepoSettings::default()
                    };
                    for i in 0..sh.cfg.town.rigs {
                        forge.create_repo(OWNER, &repo_name(&rig_id(i)), &settings).map_err(|e| e.message)?;
                    }
                    *lock(&sh.forge) = Some(forge.clone());
                    forge
                }
            };
            let front = axum::Router::new().fallback(forge_front).with_state(ForgeFront {
                sh: sh.clone(),
                forge: forge.clone(),
                inner: forge.router(),
            });
            gastown::net::serve(TurmoilListener::bind(FORGE_PORT).await?, front).await?;
            Ok(())
        }
    });
}

#[derive(Clone)]
struct ForgeFront {
    sh: Arc<Shared>,
    forge: Arc<Forge>,
    inner: axum::Router,
}

/// In front of the forge: roll the per-call dice and arm the forge's own
/// fault injection (`Forge::add_fault`, one request) for this very call.
async fn forge_front(State(f): State<ForgeFront>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    if !path.starts_with("/_control") {
        let fired = {
            let mut d = lock(&f.sh.dice);
            if d.roll("forge_5xx") {
                Some(("forge_5xx", FaultKind::Status { status: 502 }))
            } else if d.roll("forge_429") {
                Some(("forge_429", FaultKind::Status { status: 429 }))
            } else if method == "GET" && d.roll("forge_invalid_json") {
                Some(("forge_invalid_json", FaultKind::InvalidJson))
            } else if method == "GET" && path.contains("/pulls/") && d.roll("forge_404") {
                Some(("forge_404", FaultKind::Status { status: 404 }))
            } else {
                None
            }
        };
        if let Some((name, kind)) = fired {
            f.sh.fault(name);
            f.forge.add_fault(Fault::new(kind).on(&method, &path).times(1));
        }
    }
    let (req, feedback_read) = if method == "POST" && path == "/graphql" {
        match graphql_pr(req).await {
            Ok(split) => split,
            Err(resp) => return resp,
        }
    } else {
        (req, None)
    };
    let resp = f.inner.clone().oneshot(req).await.into_response();
    f.sh.record("forge", format!("{method} {path} -> {}", resp.status().as_u16()));
    if let Some((owner, name, number)) = feedback_read.filter(|_| resp.status().is_success()) {
        if lock(&f.sh.dice).roll("merge_mid_feedback_read") && f.forge.merge_from_outside(&owner, &name, number).is_ok()
        {
            f.sh.fault("merge_mid_feedback_read");
            lock(&f.sh.mid_read_merges).push((host_now_ms(), f.forge.pr_url(&owner, &name, number)));
        }
    }
    resp
}

/// The PR a GraphQL read is about (`variables` owner, name, number), and the
/// request rebuilt around the body that had to be read to find out.
async fn graphql_pr(req: Request) -> Result<(Request, Option<(String, String, u64)>), Response> {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return Err((axum::http::StatusCode::BAD_REQUEST, "body").into_response());
    };
    let pr = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| {
        let vars = v.get("variables")?;
        Some((
            vars.get("owner")?.as_str()?.to_owned(),
            vars.get("name")?.as_str()?.to_owned(),
            vars.get("number")?.as_u64()?,
        ))
    });
    Ok((Request::from_parts(parts, Body::from(bytes)), pr))
}

// ------------------------------------------------------------------ container

/// Opens real PRs on the forge over the simulated network: push the branch
/// (control API, the agent's `git push`), then `POST /repos/{o}/{r}/pulls`.
struct ForgePrOpener {
    sh: Arc<Shared>,
    http: HttpClient,
}

impl PrOpener for ForgePrOpener {
    fn open_pr<'a>(&'a self, pr: &'a PrRequest) -> SendFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let repo = repo_name(&pr.rig_id);
            let push = self
                .http
                .post(format!("{FORGE_URL}/_control/repos/{OWNER}/{repo}/push"))
                .json(&serde_json::json!({ "branch": pr.branch }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !push.ok() {
                return Err(format!("push: {} {}", push.status, push.text()));
            }
            let base = pr.target_branch.clone().filter(|b| !b.is_empty()).unwrap_or_else(|| "main".into());
            if base != "main" {
                // A convoy's feature branch: make sure it exists (the town may not have created it yet).
                let _ = self
                    .http
                    .post(format!("{FORGE_URL}/_control/repos/{OWNER}/{repo}/push"))
                    .json(&serde_json::json!({ "branch": base }))
                    .send()
                    .await;
            }
            let r = self
                .http
                .post(format!("{FORGE_URL}/repos/{OWNER}/{repo}/pulls"))
                .header("authorization", &format!("token {FORGE_TOKEN}"))
                .json(&serde_json::json!({
                    "title": format!("{} {}", pr.bead_id, pr.title),
                    "head": pr.branch,
                    "base": base,
                }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.ok() {
                return Err(format!("create pull: {} {}", r.status, r.text()));
            }
            let v: serde_json::Value = r.json()?;
            let number = v["number"].as_u64().ok_or("no PR number")?;
            let url = v["html_url"].as_str().ok_or("no html_url")?.to_owned();
            lock(&self.sh.prs).push(PrRecord {
                bead_id: pr.bead_id.clone(),
                agent_id: pr.agent_id.clone(),
                repo,
                number,
                url: url.clone(),
                opened_ms: host_now_ms(),
            });
            Ok(url)
        })
    }
}

pub fn container_host(sim: &mut turmoil::Sim<'_>, sh: Arc<Shared>) {
    sim.host("container", move || {
        let sh = sh.clone();
        async move {
            let now = EPOCH.plus_ms(host_now_ms());
            let signer = gastown::auth::Signer::new(SECRET);
            let (dir, instance) = {
                let s = lock(&sh.container);
                (s.dir.clone(), s.instance)
            };
            let mut cfg = ContainerConfig::new(dir, format!("c{instance}"));
            cfg.boot = Some(BootEnv {
                api_url: TOWN_URL.into(),
                town_id: TOWN_ID.into(),
                container_token: signer.container_token(TOWN_ID, now),
            });
            let opener = Arc::new(ForgePrOpener { sh: sh.clone(), http: http() });
            let runtime = Arc::new(
                ScriptedRuntime::new(sh.script.clone())
                    .with_pr_opener(opener)
                    .with_heal_switch(Arc::clone(&sh.agents_healed)),
            );
            let clock = Arc::new(TokioClock::new(now));
            let c = Container::over_http(cfg, clock, Arc::new(TurmoilConnector), runtime);
            c.boot();
            {
                let mut s = lock(&sh.container);
                s.container = Some(c.clone());
                s.drain_requested = false;
                s.drain_done = None;
            }
            // SIGTERM as the world delivers it: drain, then report.
            let (c2, sh2) = (c.clone(), sh.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if lock(&sh2.container).drain_requested {
                        break;
                    }
                }
                let r = c2.drain().await;
                lock(&sh2.container).drain_done = Some(r);
            });
            c.serve(TurmoilListener::bind(CONTAINER_PORT).await?).await?;
            Ok(())
        }
    });
}
