//! The production HTTP stack over turmoil's simulated TCP: the town's API
//! served on one host, called from a client, with simulated time.

use gastown::net::HttpClient;
use gastown::runtime::{TownHost, TownHostConfig};
use gastown::time::{Timestamp, TokioClock};
use gastown::town::{AddRig, Town, TownOptions};
use gastown_sim::net::{TurmoilConnector, TurmoilListener};
use std::sync::Arc;
use std::time::Duration;

const EPOCH: Timestamp = Timestamp(1_780_000_000_000);
const SECRET: &[u8] = b"sim-secret";

fn town_host() -> Arc<TownHost> {
    let clock = Arc::new(TokioClock::new(EPOCH));
    let conn = gastown::store::open_in_memory().unwrap();
    let mut town = Town::open(conn, clock.clone(), TownOptions { town_id: "t1".into(), seed: 1 }).unwrap();
    town.add_rig(AddRig { id: Some("r1".into()), name: "app".into(), ..Default::default() }).unwrap();
    let http = HttpClient::new(Arc::new(TurmoilConnector), Duration::from_secs(10));
    let cfg = TownHostConfig {
        api_url: "http://town:8787".into(),
        container_url: "http://container:8080".into(),
        secret: SECRET.to_vec(),
    };
    TownHost::new(town, clock, http, cfg)
}

#[test]
fn the_town_api_answers_over_turmoil_tcp() {
    let mut sim = turmoil::Builder::new()
        .rng_seed(5)
        .epoch(std::time::UNIX_EPOCH + Duration::from_millis(EPOCH.0 as u64))
        .simulation_duration(Duration::from_secs(60))
        .build();
    sim.host("town", || async {
        let host = town_host();
        tokio::spawn(host.clone().run_alarm_loop());
        gastown::net::serve(TurmoilListener::bind(8787).await?, gastown::api::router(host)).await?;
        Ok(())
    });
    // A container that refuses every start: the town must cope.
    sim.host("container", || async {
        let router =
            axum::Router::new().fallback(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining") });
        gastown::net::serve(TurmoilListener::bind(8080).await?, router).await?;
        Ok(())
    });
    sim.client("user", async {
        let http = HttpClient::new(Arc::new(TurmoilConnector), Duration::from_secs(10));
        let signer = gastown::auth::Signer::new(SECRET);
        let token = signer.user_token("t1", EPOCH.plus_ms(3_600_000));
        let r = http
            .post("http://town:8787/api/towns/t1/rigs/r1/sling")
            .bearer(&token)
            .json(&serde_json::json!({"title": "fix"}))
            .send()
            .await?;
        assert_eq!(r.status, 201, "{}", r.text());
        tokio::time::sleep(Duration::from_secs(20)).await;
        let r = http.get("http://town:8787/api/towns/t1/status").bearer(&token).send().await?;
        let v: serde_json::Value = r.json()?;
        assert_eq!(
            v["data"]["beads"]["issue:in_progress"].as_u64().or(v["data"]["beads"]["in_progress"].as_u64()),
            Some(1),
            "{v}"
        );
        Ok(())
    });
    sim.run().unwrap();
}

/// The smoke test: town and container as two turmoil hosts, the
/// real container runtime with a scripted polecat; one bead from sling to
/// `in_review`, on simulated time.
#[test]
fn a_bead_goes_from_sling_to_in_review_between_two_turmoil_hosts() {
    use gastown::container::{Container, ContainerConfig, ScriptConfig, ScriptedRuntime};
    let disk = tempfile::tempdir().unwrap();
    let disk_path = disk.path().to_path_buf();
    let mut sim = turmoil::Builder::new()
        .rng_seed(9)
        .epoch(std::time::UNIX_EPOCH + Duration::from_millis(EPOCH.0 as u64))
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(10))
        .build();
    sim.host("town", || async {
        let host = town_host();
        tokio::spawn(host.clone().run_alarm_loop());
        gastown::net::serve(TurmoilListener::bind(8787).await?, gastown::api::router(host)).await?;
        Ok(())
    });
    sim.host("container", move || {
        let disk = disk_path.clone();
        async move {
            let script = ScriptConfig { seed: 4, work_ms: (20_000, 40_000), ..ScriptConfig::default() };
            let c = Container::over_http(
                ContainerConfig::new(disk, "c1"),
                Arc::new(TokioClock::new(EPOCH)),
                Arc::new(TurmoilConnector),
                Arc::new(ScriptedRuntime::new(script)),
            );
            c.boot();
            c.serve(TurmoilListener::bind(8080).await?).await?;
            Ok(())
        }
    });
    sim.client("user", async {
        let http = HttpClient::new(Arc::new(TurmoilConnector), Duration::from_secs(10));
        let token = gastown::auth::Signer::new(SECRET).user_token("t1", EPOCH.plus_ms(3_600_000));
        let r = http
            .post("http://town:8787/api/towns/t1/rigs/r1/sling")
            .bearer(&token)
            .json(&serde_json::json!({"title": "fix"}))
            .send()
            .await?;
        assert_eq!(r.status, 201, "{}", r.text());
        let bead = r.json::<serde_json::Value>()?["data"]["bead_id"].as_str().unwrap().to_owned();
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let r = http.get(format!("http://town:8787/api/towns/t1/beads/{bead}")).bearer(&token).send().await?;
            let v: serde_json::Value = r.json()?;
            if v["data"]["status"] == "in_review" {
                return Ok(());
            }
        }
        Err("the bead never reached in_review".into())
    });
    sim.run().unwrap();
}
