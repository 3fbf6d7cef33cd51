//! `gastown up`: the town API on 127.0.0.1:PORT, the container's control
//! server and the local forge on other loopback ports, all in one process,
//! their state in the data directory.
//!
//! Start: open (or create) the town; apply the configuration file (or, for a
//! new town without one, the demo: one rig `demo` on the local forge and the
//! full PR pipeline with auto-merge at once); serve; boot the container from
//! the town's registry; run the alarm loop. SIGTERM (or Ctrl-C): drain the
//! container (spec §2.12), then stop the alarm loop after its current tick.

use super::clock::ScaledClock;
use super::config::{FileConfig, GithubConfig};
use super::datadir::DataDir;
use super::external::ExternalRuntime;
use super::forge_pr::{ForgePrOpener, RigResolver};
use super::metrics::Metrics;
use super::ProdError;
use crate::api::{authorize_user, ApiError};
use crate::container::{AgentRuntime, BootEnv, Container, ContainerConfig, ScriptConfig, ScriptedRuntime, Timings};
use crate::forge::{Forge, ForgeConfig, RepoSettings};
use crate::model::{MergeMode, ReviewMode, TownConfig};
use crate::net::{HttpClient, TokioConnector};
use crate::runtime::{TownHost, TownHostConfig};
use crate::scm::{ScmClient, ScmConfig};
use crate::time::{Clock, Timestamp};
use crate::town::{AddRig, Town, TownOptions};
use crate::wire::Envelope;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The bead statuses `gastown status` always lists.
pub const BEAD_STATUSES: [&str; 5] = ["open", "in_progress", "in_review", "closed", "failed"];
/// The local forge's web host: PR URLs read `https://forge.localhost/o/r/pull/N`.
pub const FORGE_WEB_HOST: &str = "forge.localhost";
pub const DEMO_OWNER: &str = "gastown";
pub const DEMO_RIG: &str = "demo";
/// How often the alarm loop looks at the alarm (an RPC may have brought it earlier).
const ALARM_POLL: Duration = Duration::from_millis(200);
/// User tokens written to the data directory live this long.
const USER_TOKEN_TTL_MS: i64 = 365 * 24 * 3600 * 1000;

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub port: u16,
    pub config: Option<PathBuf>,
    pub agent_command: Option<String>,
    /// Use GitHub (or another GitHub-compatible API) instead of the local forge.
    pub github_api: Option<String>,
    /// The environment variable holding the GitHub token.
    pub github_token_env: Option<String>,
    /// Run the town's clock (and the container's timers) this many times faster.
    pub time_scale: u32,
    /// This binary, for external agents to call `gastown gt`.
    pub bin: Option<PathBuf>,
}

/// The settings of a new town without a configuration file: the full PR
/// pipeline, review on, auto-merge as soon as the PR is green.
pub fn demo_town_config() -> TownConfig {
    let mut cfg = TownConfig::new_town_defaults();
    cfg.staged_convoys_default = false;
    cfg.convoy_merge_mode = MergeMode::ReviewThenLand;
    if let Some(r) = cfg.refinery.as_mut() {
        r.code_review = true;
        r.review_mode = ReviewMode::Comments;
        r.auto_merge = true;
        r.auto_merge_delay_minutes = Some(0);
    }
    cfg
}

/// Every container duration divided by the time scale.
fn scaled_timings(scale: u32) -> Timings {
    let d = Timings::default();
    let s = |x: Duration| (x / scale.max(1)).max(Duration::from_millis(10));
    Timings {
        polecat_idle: s(d.polecat_idle),
        refinery_idle: s(d.refinery_idle),
        triage_idle: s(d.triage_idle),
        draining_idle: s(d.draining_idle),
        heartbeat_interval: s(d.heartbeat_interval),
        drain_wait: s(d.drain_wait),
        drain_poll: s(d.drain_poll),
        drain_poll_idle: s(d.drain_poll_idle),
        snapshot_bound: d.snapshot_bound,
    }
}

struct Slot {
    container: Container,
    server: JoinHandle<()>,
}

/// Everything `gastown up` runs, shared by its tasks and operator routes.
struct Prod {
    host: Arc<TownHost>,
    http: HttpClient,
    clock: ScaledClock,
    data: DataDir,
    metrics: Metrics,
    runtime: Arc<dyn AgentRuntime>,
    timings: Timings,
    container_addr: SocketAddr,
    api_url: String,
    boot: u64,
    next_instance: AtomicU64,
    slot: tokio::sync::Mutex<Option<Slot>>,
}

/// The local forge's API token: a hash of the town secret (never the secret itself).
fn forge_token(secret: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::new().chain_update(b"gastown local forge token\0").chain_update(secret).finalize();
    format!("gtf_{}", d.iter().take(20).map(|b| format!("{b:02x}")).collect::<String>())
}

async fn bind(addr: &str, what: &str) -> Result<TcpListener, ProdError> {
    TcpListener::bind(addr).await.map_err(|e| ProdError::Other(format!("cannot listen on {addr} for the {what}: {e}")))
}

fn local(l: &TcpListener) -> Result<SocketAddr, ProdError> {
    l.local_addr().map_err(|e| ProdError::Other(format!("listener address: {e}")))
}

fn storage<'a, E: std::fmt::Display>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(E) -> ProdError + 'a {
    move |e| ProdError::Other(format!("{what} {}: {e}", path.display()))
}

/// Run `gastown up` until SIGTERM or Ctrl-C.
pub async fn run_up(opts: UpOptions) -> Result<(), ProdError> {
    let data = DataDir::create(&opts.data_dir)?;
    let file = match &opts.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let github = match (&opts.github_api, &file.github) {
        (Some(url), g) => Some(GithubConfig { api_url: url.clone(), ..g.clone().unwrap_or_default() }),
        (None, g) => g.clone(),
    };
    let github = github.map(|mut g| {
        if let Some(env) = &opts.github_token_env {
            g.token_env = env.clone();
        }
        g
    });
    let agent_command = opts.agent_command.clone().or(file.agents.command.clone());

    // ---- listeners first: a second `gastown up` on the same port stops here, before touching the data
    let town_listener = bind(&format!("127.0.0.1:{}", opts.port), "town API").await?;
    let town_addr = local(&town_listener)?;
    let container_listener = bind("127.0.0.1:0", "container").await?;
    let container_addr = local(&container_listener)?;
    let api_url = format!("http://{town_addr}");

    let secret = data.secret()?;
    let town_id = data.town_id()?;
    // A little past the last time handed out: commits after the last save stay in the past.
    let not_before = data.last_clock()?.map(|t| t.plus_ms(2_000 * i64::from(opts.time_scale.max(1))));
    let clock = ScaledClock::new(opts.time_scale, not_before);
    let clock_arc: Arc<dyn Clock> = Arc::new(clock);

    // ---- the town
    let town_db = data.path("town.db");
    let fresh = !town_db.exists();
    let conn = crate::store::open_file(&town_db).map_err(storage("cannot open the town database", &town_db))?;
    // Counted only once the town database is ours: a second `gastown up`
    // on this data directory stops at the open above and changes nothing.
    let boot = data.next_boot()?;
    let seed = DataDir::new_seed()?;
    let mut town = Town::open(conn, clock_arc.clone(), TownOptions { town_id: town_id.clone(), seed })
        .map_err(storage("cannot open the town database", &town_db))?;
    if town.id() != town_id {
        return Err(ProdError::Other(format!(
            "{} belongs to town {} but {} says {town_id}",
            town_db.display(),
            town.id(),
            data.path("town-id").display()
        )));
    }
    let town_err = |e: crate::TownError| ProdError::Other(format!("town setup: {e}"));
    if let Some(cfg) = file.town.clone() {
        town.set_config(cfg).map_err(town_err)?;
    } else if fresh {
        town.set_config(demo_town_config()).map_err(town_err)?;
    }
    let existing: Vec<String> = town.rigs().map_err(town_err)?.into_iter().map(|r| r.name).collect();
    let mut wanted: Vec<AddRig> = file
        .rigs
        .iter()
        .map(|r| AddRig {
            id: r.id.clone(),
            name: r.name.clone(),
            git_url: r.git_url.clone(),
            default_branch: r.default_branch.clone(),
            config: r.config.clone(),
        })
        .collect();
    if fresh && file.rigs.is_empty() && github.is_none() {
        wanted.push(AddRig {
            id: None,
            name: DEMO_RIG.into(),
            git_url: format!("https://{FORGE_WEB_HOST}/{DEMO_OWNER}/{DEMO_RIG}.git"),
            default_branch: Some("main".into()),
            config: Default::default(),
        });
    }
    for rig in wanted {
        if existing.contains(&rig.name) {
            continue;
        }
        let r = town.add_rig(rig).map_err(town_err)?;
        tracing::info!(rig = %r.name, id = %r.id, git_url = %r.git_url, "rig added");
    }

    let http = HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(30));

    // ---- the forge (or GitHub)
    let (scm_cfg, pr_api, pr_token, local_forge) = match &github {
        Some(g) => {
            let token = std::env::var(&g.token_env).ok().filter(|t| !t.trim().is_empty());
            if token.is_none() {
                tracing::warn!(env = %g.token_env, "no GitHub token in the environment: PR polls and merges will fail");
            }
            let cfg = ScmConfig::for_forge(&g.api_url, &g.web_host, token.as_deref());
            (cfg, g.api_url.clone(), token, false)
        }
        None => {
            let forge_db = data.path("forge.db");
            let conn =
                rusqlite::Connection::open(&forge_db).map_err(storage("cannot open the forge database", &forge_db))?;
            let _ = conn.pragma_update(None, "journal_mode", "WAL");
            // Commit SHAs must not repeat across restarts: seed with the boot.
            let fseed = secret.iter().fold(boot, |h, b| h.rotate_left(5) ^ u64::from(*b));
            // The forge wants a token like GitHub does; derived from the secret so it survives restarts.
            let ftoken = forge_token(&secret);
            let fcfg = ForgeConfig { web_host: FORGE_WEB_HOST.into(), token: Some(ftoken.clone()), seed: fseed };
            let forge = Forge::open(conn, clock_arc.clone(), fcfg)
                .map_err(storage("cannot open the forge database", &forge_db))?;
            match forge.create_repo(DEMO_OWNER, DEMO_RIG, &RepoSettings::default()) {
                Err(e) if e.status != 422 => return Err(ProdError::Other(format!("forge: {}", e.message))),
                _ => {} // created, or there from an earlier start
            }
            let forge_listener = bind("127.0.0.1:0", "forge").await?;
            let forge_url = format!("http://{}", local(&forge_listener)?);
            let router = forge.router();
            tokio::spawn(async move {
                if let Err(e) = crate::net::serve(forge_listener, router).await {
                    tracing::error!(error = %e, "forge server stopped");
                }
            });
            tracing::info!(url = %forge_url, web_host = FORGE_WEB_HOST, "local forge up");
            (ScmConfig::for_forge(&forge_url, FORGE_WEB_HOST, Some(&ftoken)), forge_url, Some(ftoken), true)
        }
    };

    // ---- the town host
    let host_cfg = TownHostConfig {
        api_url: api_url.clone(),
        container_url: format!("http://{container_addr}"),
        secret: secret.clone(),
    };
    let host = TownHost::new(town, clock_arc.clone(), http.clone(), host_cfg);
    host.set_pr_effects(Arc::new(ScmClient::new(http.clone(), scm_cfg)));
    let token = host.user_token(host.now().plus_ms(USER_TOKEN_TTL_MS));
    data.save_user_token(&token)?;

    // ---- the agent runtime
    let h2 = host.clone();
    let rigs: RigResolver = Arc::new(move |rig_id: &str| {
        let rigs = h2.with_town(|t| t.rigs()).ok()?;
        rigs.into_iter().find(|r| r.id == rig_id).map(|r| (r.git_url, r.default_branch))
    });
    let runtime: Arc<dyn AgentRuntime> = match &agent_command {
        Some(cmd) => {
            tracing::info!(command = %cmd, "agents run an external command");
            Arc::new(ExternalRuntime::new(cmd.clone(), data.path("container").join("work"), rigs, opts.bin.clone()))
        }
        None => {
            let a = &file.agents;
            let script = ScriptConfig {
                seed: a.seed,
                start_ms: a.start_ms,
                work_ms: a.work_ms,
                activity_every_ms: 500,
                reply_ms: a.reply_ms,
                ..ScriptConfig::default()
            };
            let opener = ForgePrOpener::new(http.clone(), &pr_api, pr_token, local_forge, rigs);
            if !local_forge {
                tracing::warn!("scripted agents push no code: PRs against GitHub need --agent-command");
            }
            Arc::new(ScriptedRuntime::new(script).with_pr_opener(Arc::new(opener)))
        }
    };

    let prod = Arc::new(Prod {
        host: host.clone(),
        http: http.clone(),
        clock,
        data: data.clone(),
        metrics: Metrics::default(),
        runtime,
        timings: scaled_timings(opts.time_scale),
        container_addr,
        api_url: api_url.clone(),
        boot,
        next_instance: AtomicU64::new(1),
        slot: tokio::sync::Mutex::new(None),
    });

    // ---- serve
    let router = crate::api::router(host.clone()).merge(operator_routes(prod.clone()));
    let mut town_server = tokio::spawn(crate::net::serve(town_listener, router));
    let first = prod.boot_container(container_listener);
    *prod.slot.lock().await = Some(first);
    prod.hand_off_drain().await;
    data.write("url", &api_url, false)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let alarm = tokio::spawn(alarm_loop(prod.clone(), stop_rx));
    tracing::info!(
        url = %api_url,
        town_id = %host.town_id(),
        data_dir = %data.root().display(),
        boot,
        time_scale = clock.scale(),
        "gastown up"
    );

    // ---- run until told to stop
    let why = wait_for_stop(&mut town_server).await?;
    tracing::info!(signal = why, "shutting down: draining the container");
    if let Some(slot) = prod.slot.lock().await.take() {
        let report = slot.container.shutdown().await;
        tracing::info!(?report, "container drained");
        slot.server.abort();
    }
    let _ = stop_tx.send(true);
    let _ = alarm.await;
    let _ = data.save_clock(host.now());
    let _ = std::fs::remove_file(data.path("url"));
    tracing::info!("town stopped after its current tick");
    Ok(())
}

async fn wait_for_stop(server: &mut JoinHandle<std::io::Result<()>>) -> Result<&'static str, ProdError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| ProdError::Other(format!("cannot handle SIGTERM: {e}")))?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = tokio::signal::ctrl_c() => Ok("SIGINT"),
            r = server => Err(ProdError::Other(format!("the town API server stopped: {r:?}"))),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok("SIGINT"),
            r = server => Err(ProdError::Other(format!("the town API server stopped: {r:?}"))),
        }
    }
}

impl Prod {
    /// A new container instance on `listener`, hydrating from the town's registry.
    fn boot_container(&self, listener: TcpListener) -> Slot {
        let n = self.next_instance.fetch_add(1, Ordering::SeqCst);
        let instance = format!("c{}-{n}", self.boot);
        let mut cfg = ContainerConfig::new(self.data.path("container"), instance.clone());
        cfg.timings = self.timings.clone();
        cfg.boot = Some(BootEnv {
            api_url: self.api_url.clone(),
            town_id: self.host.town_id().to_owned(),
            container_token: self.host.signer.container_token(self.host.town_id(), self.host.now()),
        });
        let clock: Arc<dyn Clock> = Arc::new(self.clock);
        let c = Container::over_http(cfg, clock, Arc::new(TokioConnector), self.runtime.clone());
        c.boot();
        let server = c.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = server.serve(listener).await {
                tracing::error!(error = %e, "container server stopped");
            }
        });
        tracing::info!(instance = %instance, addr = %self.container_addr, "container up");
        Slot { container: c, server: handle }
    }

    /// A drain left over (a graceful stop or eviction): the new container is
    /// the replacement, so hand it the nonce now (it answers `/container-ready`,
    /// which ends the drain) instead of waiting out the drain timeout.
    async fn hand_off_drain(&self) {
        let Ok(drain) = self.host.with_town(|t| t.drain_state()) else { return };
        let (true, Some(nonce)) = (drain.draining, drain.nonce) else { return };
        let url = format!("http://{}/health", self.container_addr);
        let r =
            self.http.get(url).header("x-drain-nonce", &nonce).header("x-town-id", self.host.town_id()).send().await;
        match r {
            Ok(resp) if resp.ok() => tracing::info!("drain nonce handed to the new container"),
            other => tracing::warn!(?other, "drain hand-off failed; the drain times out by itself"),
        }
    }

    /// Replace the container: gracefully (drain, as on SIGTERM) or hard (the
    /// sessions just stop and the registry is kept, as when a container dies).
    async fn evict(&self, hard: bool) -> Result<Value, String> {
        let mut slot = self.slot.lock().await;
        let Some(old) = slot.take() else { return Err("no container is running".into()) };
        let report = if hard {
            old.container.stop_all().await;
            None
        } else {
            Some(old.container.shutdown().await)
        };
        old.server.abort();
        let _ = old.server.await;
        let listener =
            TcpListener::bind(self.container_addr).await.map_err(|e| format!("rebind {}: {e}", self.container_addr))?;
        let new = self.boot_container(listener);
        let instance = new.container.instance_id().to_owned();
        *slot = Some(new);
        drop(slot);
        if !hard {
            self.hand_off_drain().await;
        }
        Ok(json!({
            "hard": hard,
            "instance_id": instance,
            "frozen": report.as_ref().map(|r| r.frozen.clone()).unwrap_or_default(),
            "eviction_contexts": report.as_ref().map_or(0, |r| r.eviction_contexts),
        }))
    }
}

/// Tick whenever the alarm is due; stop (between ticks) when told to.
async fn alarm_loop(p: Arc<Prod>, mut stop: watch::Receiver<bool>) {
    let mut saved_at: Option<Timestamp> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let now = p.host.now();
        if saved_at.is_none_or(|s| now.since(s) >= p.clock.town_ms(Duration::from_secs(1))) {
            if let Err(e) = p.data.save_clock(now) {
                tracing::warn!(error = %e, "could not save the clock");
            }
            saved_at = Some(now);
        }
        let due = match p.host.with_town(|t| t.alarm_at()) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading the alarm failed");
                None
            }
        };
        if due.is_some_and(|d| d <= now) {
            let started = tokio::time::Instant::now();
            let r = p.host.tick_once().await;
            p.metrics.observe_tick(started.elapsed(), r.is_ok());
            match r {
                Ok(Some(rep)) => {
                    tracing::debug!(
                        events = rep.events.applied.len(),
                        actions = rep.actions.len(),
                        effects = rep.effects.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "tick"
                    );
                    for v in &rep.invariant_violations {
                        tracing::warn!(violation = %v, "invariant violation");
                    }
                }
                Ok(None) => {
                    tracing::info!("town destroyed; alarm loop ends");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "tick failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        }
        let wait = due.map_or(ALARM_POLL, |d| p.clock.real(d.since(now)).min(ALARM_POLL));
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

// ------------------------------------------------------------ operator routes

fn operator_routes(p: Arc<Prod>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/town", get(town_info))
        .route("/api/towns/{town}/operator/evict", post(evict))
        .with_state(p)
}

async fn metrics(State(p): State<Arc<Prod>>) -> Response {
    let counts = p.host.with_town(|t| t.status_counts()).ok();
    let body = p.metrics.render(counts.as_ref());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Who this server is (unauthenticated: the commands learn the town id here).
async fn town_info(State(p): State<Arc<Prod>>) -> Json<Envelope<Value>> {
    Json(Envelope::ok(json!({
        "town_id": p.host.town_id(),
        "time_scale": p.clock.scale(),
        "boot": p.boot,
        "ticks": p.metrics.ticks(),
    })))
}

async fn evict(
    State(p): State<Arc<Prod>>,
    UrlPath(town): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Envelope<Value>>, ApiError> {
    authorize_user(&p.host, &headers, &town)?;
    let b: Value = crate::api::parse(&body)?;
    let hard = b.get("hard").and_then(Value::as_bool).unwrap_or(false);
    match p.evict(hard).await {
        Ok(v) => Ok(Json(Envelope::ok(v))),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}
