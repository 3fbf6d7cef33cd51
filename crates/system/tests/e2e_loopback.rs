//! Town and container over real loopback TCP, each behind its own HTTP
//! server, as production runs them: a scripted polecat takes a bead to
//! review; a graceful drain mid-work reopens the bead with an eviction note;
//! the mayor's conversation survives a container replacement whole.

use gastown::container::session::TurnRole;
use gastown::container::{BootEnv, Container, ContainerConfig, ScriptConfig, ScriptedRuntime, Timings};
use gastown::model::{AgentRole, BeadStatus, TownConfig};
use gastown::net::{HttpClient, TokioConnector};
use gastown::runtime::{TownHost, TownHostConfig};
use gastown::time::{Clock, ManualClock, Timestamp, TokioClock};
use gastown::town::{AddRig, Town, TownOptions};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const T0: Timestamp = Timestamp(1_780_000_000_000);

struct World {
    host: Arc<TownHost>,
    town_clock: ManualClock,
    http: HttpClient,
    town_url: String,
    container_addr: SocketAddr,
    container: Container,
    container_server: JoinHandle<()>,
    script: ScriptConfig,
    timings: Timings,
    _dir: tempfile::TempDir,
}

fn fast_script(work_ms: u64) -> ScriptConfig {
    ScriptConfig {
        seed: 11,
        start_ms: (10, 30),
        work_ms: (work_ms, work_ms),
        activity_every_ms: 100,
        reply_ms: (20, 50),
        ..ScriptConfig::default()
    }
}

impl World {
    async fn start(script: ScriptConfig, timings: Timings) -> World {
        let dir = tempfile::tempdir().unwrap();
        let town_clock = ManualClock::new(T0);
        let conn = gastown::store::open_file(&dir.path().join("town.db")).unwrap();
        let mut town =
            Town::open(conn, Arc::new(town_clock.clone()), TownOptions { town_id: "t1".into(), seed: 3 }).unwrap();
        town.set_config(TownConfig::new_town_defaults()).unwrap();
        town.add_rig(AddRig {
            id: Some("r1".into()),
            name: "app".into(),
            git_url: "https://forge.test/gastown/r1.git".into(),
            ..Default::default()
        })
        .unwrap();
        let town_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let container_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let town_url = format!("http://{}", town_listener.local_addr().unwrap());
        let container_addr = container_listener.local_addr().unwrap();
        let http = HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(10));
        let cfg = TownHostConfig {
            api_url: town_url.clone(),
            container_url: format!("http://{container_addr}"),
            secret: b"e2e".to_vec(),
        };
        let host = TownHost::new(town, Arc::new(town_clock.clone()), http.clone(), cfg);
        tokio::spawn(gastown::net::serve(town_listener, gastown::api::router(host.clone())));
        let (container, container_server) =
            boot_container(dir.path().join("container-1"), "c1", None, &script, &timings, container_listener);
        World {
            host,
            town_clock,
            http,
            town_url,
            container_addr,
            container,
            container_server,
            script,
            timings,
            _dir: dir,
        }
    }

    /// Replace the container: the old process is gone (its disk with it), a
    /// new instance boots on the same address from the town's registry.
    async fn replace_container(&mut self, instance: &str) {
        self.container_server.abort();
        let _ = (&mut self.container_server).await;
        let listener = TcpListener::bind(self.container_addr).await.unwrap();
        let boot = BootEnv {
            api_url: self.town_url.clone(),
            town_id: "t1".into(),
            container_token: self.host.signer.container_token("t1", self.town_clock.now()),
        };
        let disk = self._dir.path().join(format!("container-{instance}"));
        let (c, server) = boot_container(disk, instance, Some(boot), &self.script, &self.timings, listener);
        self.container = c;
        self.container_server = server;
    }

    fn user(&self) -> String {
        self.host.user_token(self.town_clock.now().plus_ms(3_600_000))
    }

    async fn user_post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r =
            self.http.post(format!("{}{path}", self.town_url)).bearer(&self.user()).json(&body).send().await.unwrap();
        assert!(r.ok(), "{path}: {} {}", r.status, r.text());
        r.json().unwrap()
    }

    async fn sling(&self) -> (String, String) {
        let v = self.user_post("/api/towns/t1/rigs/r1/sling", json!({"title": "fix the parser"})).await;
        (v["data"]["bead_id"].as_str().unwrap().into(), v["data"]["agent_id"].as_str().unwrap().into())
    }

    fn bead_status(&self, bead: &str) -> BeadStatus {
        self.host.with_town(|t| t.bead(bead)).unwrap().status
    }

    /// Tick (advancing the town's clock by the alarm cadence) until `done`.
    async fn tick_until(&self, what: &str, mut done: impl FnMut(&World) -> bool) {
        for _ in 0..200 {
            if done(self) {
                return;
            }
            self.town_clock.advance_ms(5_000);
            self.host.tick_once().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never reached: {what}");
    }
}

fn boot_container(
    disk: std::path::PathBuf,
    instance: &str,
    boot: Option<BootEnv>,
    script: &ScriptConfig,
    timings: &Timings,
    listener: TcpListener,
) -> (Container, JoinHandle<()>) {
    let mut cfg = ContainerConfig::new(disk, instance);
    cfg.timings = timings.clone();
    cfg.boot = boot;
    let runtime = Arc::new(ScriptedRuntime::new(script.clone()));
    let c = Container::over_http(cfg, Arc::new(TokioClock::new(T0)), Arc::new(TokioConnector), runtime);
    c.boot();
    let server = c.clone();
    let handle = tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    (c, handle)
}

#[tokio::test]
async fn a_scripted_polecat_takes_a_bead_from_open_to_in_review() {
    let w = World::start(fast_script(300), Timings::default()).await;
    let (bead, agent) = w.sling().await;
    w.tick_until("bead in review", |w| w.bead_status(&bead) == BeadStatus::InReview).await;
    let mrs = w.host.with_town(|t| t.beads_of(gastown::model::BeadType::MergeRequest, None)).unwrap();
    assert_eq!(mrs.len(), 1);
    let turns = w.container.session_turns(&agent);
    assert!(turns.iter().any(|t| t.role == TurnRole::User && t.text.contains("fix the parser")), "{turns:?}");
}

#[tokio::test]
async fn drain_mid_work_reopens_the_bead_with_an_eviction_note() {
    let timings = Timings {
        drain_wait: Duration::from_millis(800),
        drain_poll: Duration::from_millis(100),
        drain_poll_idle: Duration::from_millis(50),
        ..Timings::default()
    };
    let w = World::start(fast_script(600_000), timings).await;
    let (bead, agent) = w.sling().await;
    w.tick_until("agent running", |w| {
        w.container.status(&agent).is_some_and(|s| s.status == gastown::wire::ProcessStatus::Running)
    })
    .await;
    let report = w.container.drain().await;
    assert!(report.town_notified, "{report:?}");
    assert_eq!(report.frozen, vec![agent.clone()]);
    assert_eq!(report.eviction_contexts, 1);
    assert!(w.host.with_town(|t| t.drain_state()).unwrap().draining);
    assert!(w.host.with_town(|t| t.container_registry()).unwrap().is_empty(), "registry empty after a drain");
    // Past the heartbeat staleness window, the eviction report reopens the bead.
    w.town_clock.advance_ms(120_000);
    w.tick_until("bead reopened", |w| w.bead_status(&bead) == BeadStatus::Open).await;
    let body = w.host.with_town(|t| t.bead(&bead)).unwrap().body.unwrap_or_default();
    assert!(body.contains("eviction") && body.contains("gt/"), "{body}");
}

#[tokio::test]
async fn the_mayor_conversation_is_complete_after_the_container_restarts() {
    let timings =
        Timings { drain_wait: Duration::from_millis(300), drain_poll: Duration::from_millis(50), ..Timings::default() };
    let mut w = World::start(fast_script(300), timings).await;
    w.user_post("/api/towns/t1/mayor/message", json!({"message": "first: plan the release"})).await;
    let mayor =
        w.host.with_town(|t| t.agents()).unwrap().into_iter().find(|a| a.role == AgentRole::Mayor).unwrap().agent_id;
    let replies =
        |w: &World| w.container.session_turns(&mayor).iter().filter(|t| t.role == TurnRole::Assistant).count();
    w.tick_until("first reply", |w| replies(w) >= 1).await;
    w.user_post("/api/towns/t1/mayor/message", json!({"message": "second: add a changelog"})).await;
    w.tick_until("second reply", |w| replies(w) >= 2).await;

    w.container.drain().await;
    w.replace_container("2").await;
    assert!(w.container.session_turns(&mayor).is_empty(), "a new container starts with an empty disk");
    w.user_post("/api/towns/t1/mayor/message", json!({"message": "third: ship it"})).await;
    w.tick_until("third reply", |w| replies(w) >= 3).await;

    let turns = w.container.session_turns(&mayor);
    let users: Vec<&str> = turns.iter().filter(|t| t.role == TurnRole::User).map(|t| t.text.as_str()).collect();
    assert_eq!(users.len(), 3, "every user message exactly once, none repeated on resume: {users:?}");
    assert!(users[0].contains("first") && users[1].contains("second") && users[2].contains("third"), "{users:?}");
    assert_eq!(replies(&w), 3, "{turns:?}");
}
