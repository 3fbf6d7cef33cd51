//! Production mode end to end: the real `gastown` binary (`gastown up` plus
//! the user commands) on free loopback ports in a temporary data directory.
//!
//! 1. Sling three beads and a three-task convoy; wait until every bead is
//!    closed, every PR is merged on the local forge and the convoy has landed.
//! 2. Sling three more beads and another convoy; `kill -9` the server while
//!    they are in flight; restart it on the same data directory and port;
//!    wait until everything converges again, and check that nothing committed
//!    before the crash was lost (same town, same beads, same merged PRs).
//! 3. SIGTERM: the server drains and exits 0.
//!
//! The server runs with `--time-scale 20` (a hidden, documented flag): the
//! town's clock and the container's timers run 20× faster than real time, so
//! the 5 s alarm cadence, 60 s PR poll interval and the staleness windows the
//! restart recovery waits on take a twentieth of their real time.

use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gastown");
const SCALE: &str = "20";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Server {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    starts: u32,
    extra: Vec<String>,
}

impl Server {
    fn start(dir: &Path, port: u16) -> Server {
        Self::start_with(dir, port, &[])
    }

    fn start_with(dir: &Path, port: u16, extra: &[&str]) -> Server {
        let mut s = Server {
            child: None,
            dir: dir.to_owned(),
            port,
            starts: 0,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("server-{}.log", self.starts))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(BIN)
            .args(["up", "--port", &self.port.to_string(), "--time-scale", SCALE])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn gastown up");
        self.child = Some(child);
        self.wait_until("the server answers", 30, |s| s.cli(&["status", "--json"]).0);
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Run a user command against this server: (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--url")
            .arg(format!("http://127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .env_remove("GASTOWN_TOKEN")
            .output()
            .expect("run gastown");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn json(&self, args: &[&str]) -> Value {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "gastown {args:?} failed: {err}\n--- server log ---\n{}", self.log_tail());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("gastown {args:?}: not JSON ({e}): {out}"))
    }

    fn wait_until(&self, what: &str, secs: u64, mut done: impl FnMut(&Server) -> bool) {
        for _ in 0..secs * 4 {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let status = self.cli(&["status"]).1;
        panic!("not reached within {secs} s: {what}\n{status}\n--- server log ---\n{}", self.log_tail());
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }

    fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status().unwrap();
        assert!(ok.success());
        for _ in 0..240 {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let _ = c.kill();
        panic!("no exit within 60 s of SIGTERM\n{}", self.log_tail());
    }

    fn beads(&self, ty: &str) -> Vec<Value> {
        self.json(&["beads", "--type", ty, "--json"]).as_array().cloned().unwrap_or_default()
    }

    fn status_of(&self, ty: &str) -> std::collections::BTreeMap<String, String> {
        self.beads(ty)
            .into_iter()
            .map(|b| (b["bead_id"].as_str().unwrap().to_owned(), b["status"].as_str().unwrap().to_owned()))
            .collect()
    }

    /// Sling three beads and a three-task convoy; answers (bead ids, convoy id).
    fn sling_batch(&self, tag: &str) -> (Vec<String>, String) {
        let mut beads = Vec::new();
        for i in 1..=3 {
            let v = self.json(&["sling", "--rig", "demo", &format!("{tag}: fix bug {i}"), "--json"]);
            beads.push(v["bead_id"].as_str().unwrap().to_owned());
        }
        let title = format!("{tag}: release");
        let v = self.json(&["convoy", "create", "--rig", "demo", "--title", &title, "a", "b", "c", "--json"]);
        for b in v["bead_ids"].as_array().unwrap() {
            beads.push(b.as_str().unwrap().to_owned());
        }
        (beads, v["convoy_id"].as_str().unwrap().to_owned())
    }

    /// Every bead closed, every MR closed, the convoy closed.
    fn converged(&self, beads: &[String], convoy: &str) -> bool {
        let issues = self.status_of("issue");
        let convoys = self.status_of("convoy");
        let mrs = self.status_of("merge_request");
        beads.iter().all(|b| issues.get(b).is_some_and(|s| s == "closed"))
            && convoys.get(convoy).is_some_and(|s| s == "closed")
            && mrs.values().all(|s| s == "closed")
    }

    /// (merged, open) PRs on the local forge.
    fn forge_prs(&self) -> (u64, u64) {
        let conn = rusqlite::Connection::open_with_flags(
            self.dir.join("data/forge.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64;
        (q("SELECT COUNT(*) FROM pulls WHERE merged = 1"), q("SELECT COUNT(*) FROM pulls WHERE state = 'open'"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP/1.0 GET over std TCP (the answer's body).
fn http_get(port: u16, path: &str) -> String {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or(out)
}

/// Wall-clock seconds since `t0`, for the phase timings the test prints.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // a test's own wall time, not town time
fn secs_since(t0: &std::time::Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // see secs_since
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

#[test]
fn gastown_up_merges_everything_and_survives_kill_9() {
    let t0 = now();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(tmp.path(), port);
    let town = server.json(&["status", "--json"])["town_id"].as_str().unwrap().to_owned();
    let rigs = server.json(&["rig", "list", "--json"]);
    assert_eq!(rigs[0]["name"], "demo", "a new town gets the demo rig: {rigs}");

    // ---- 1: three beads and a convoy, all the way to merged and landed
    let (batch1, convoy1) = server.sling_batch("one");
    server.wait_until("batch 1 merged and the convoy landed", 240, |s| s.converged(&batch1, &convoy1));
    eprintln!("phase 1 (6 beads merged, convoy landed): {:.1} s", secs_since(&t0));
    let (merged1, open1) = server.forge_prs();
    assert!(merged1 >= 6, "every bead's PR is merged on the forge: {merged1} merged, {open1} open");
    let status = server.json(&["status", "--json"]);
    for k in ["open", "in_progress", "in_review", "closed", "failed"] {
        assert!(status["beads"][k].is_u64(), "status lists beads.{k}: {status}");
    }
    assert_eq!(status["beads"]["closed"], 6, "{status}");
    assert!(status["agents"].is_object() && status["convoys"]["closed"] == 1, "{status}");
    let closed_before: Vec<Value> = server.beads("issue");

    // ---- 2: another batch, kill -9 while it is in flight, restart
    let (batch2, convoy2) = server.sling_batch("two");
    server.wait_until("batch 2 in flight", 60, |s| {
        let st = s.status_of("issue");
        batch2.iter().any(|b| st.get(b).is_some_and(|x| x == "in_review" || x == "in_progress"))
    });
    let mid = server.status_of("issue");
    eprintln!(
        "kill -9 at {:.1} s with batch 2 at {:?}",
        secs_since(&t0),
        batch2.iter().map(|b| &mid[b]).collect::<Vec<_>>()
    );
    server.kill9();
    server.spawn();
    assert_eq!(server.json(&["status", "--json"])["town_id"], town.as_str(), "the same town after the restart");
    // A second `gastown up` on the same data directory is refused, and changes nothing there.
    let boots = || std::fs::read_to_string(tmp.path().join("data/boots")).unwrap();
    let boots_before = boots();
    let mut child = Command::new(BIN)
        .args(["up", "--port", &free_port().to_string(), "--data-dir"])
        .arg(tmp.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..120 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
        panic!("a second `gastown up` on the same data directory kept running");
    }
    let second = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("town.db is in use by another process"), "{err}");
    assert_eq!(boots(), boots_before, "the refused start counted no boot");
    let after: std::collections::BTreeMap<String, Value> =
        server.beads("issue").into_iter().map(|b| (b["bead_id"].as_str().unwrap().to_owned(), b)).collect();
    for b in &closed_before {
        let id = b["bead_id"].as_str().unwrap();
        assert_eq!(after.get(id), Some(b), "a bead closed before the crash is unchanged after it");
    }
    for id in mid.keys() {
        assert!(after.contains_key(id), "bead {id} committed before the crash survives it");
    }
    server.wait_until("batch 2 converges after kill -9", 300, |s| s.converged(&batch2, &convoy2));
    eprintln!("phase 2 converged after the restart: {:.1} s", secs_since(&t0));
    assert!(server.converged(&batch1, &convoy1), "batch 1 is still merged and landed");
    let (merged2, _) = server.forge_prs();
    assert!(merged2 >= merged1 + 6, "batch 2's PRs are merged too: {merged1} → {merged2}");
    let status = server.json(&["status", "--json"]);
    assert_eq!(status["beads"]["closed"], 12, "{status}");
    assert_eq!(status["convoys"]["closed"], 2, "{status}");

    // Metrics are served.
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains("gastown_tick_duration_seconds_count"), "{metrics}");
    assert!(metrics.contains("gastown_beads{status=\"closed\"} 12"), "{metrics}");

    // A finished bead can be deleted; a second delete is a clear error.
    let gone = &batch1[0];
    let d = server.json(&["delete-bead", gone, "--json"]);
    assert_eq!(d["bead_id"], gone.as_str(), "{d}");
    assert!(!server.status_of("issue").contains_key(gone), "bead {gone} is no longer listed");
    let (ok, _, err) = server.cli(&["delete-bead", gone]);
    assert!(!ok && err.contains("404") && err.contains(gone.as_str()), "{err}");

    // ---- 3: SIGTERM drains and exits cleanly
    let status = server.sigterm();
    assert!(status.success(), "exit status after SIGTERM: {status}\n{}", server.log_tail());
    assert!(server.log_tail().contains("town stopped after its current tick"), "{}", server.log_tail());
    eprintln!("total with SIGTERM drain: {:.1} s", secs_since(&t0));
}

#[test]
fn bad_input_is_a_clear_error_and_a_nonzero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).env_remove("GASTOWN_TOKEN").env_remove("GASTOWN_URL").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // A bad config file: named, with line and key.
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[town]\nmerge_strategy = \"sideways\"\n").unwrap();
    let data = tmp.path().join("d").display().to_string();
    let (code, err) = run(&["up", "--config", cfg.to_str().unwrap(), "--data-dir", &data, "--port", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bad.toml") && err.contains("line 2") && err.contains("sideways"), "{err}");
    // A server that is not there.
    let port = free_port().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let (code, err) = run(&["status", "--url", &url, "--token", "t"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach the gastown server") && err.contains(&url), "{err}");
    // No token anywhere.
    let (code, err) = run(&["status", "--url", &url, "--data-dir", &data]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no user token"), "{err}");
    // Bad arguments: clap's usage error.
    let (code, err) = run(&["sling", "title-without-rig"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--rig"), "{err}");
    // `gt` outside an agent session.
    let out = Command::new(BIN).args(["gt", "done", "--branch", "b"]).env_remove("GASTOWN_API_URL").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GASTOWN_API_URL is not set"));
}

/// `--agent-command`: an external agent runs in a git worktree of a local
/// repository and reports with `gastown gt done`; evictions (drained and hard)
/// replace the container and work still flows.
#[test]
fn an_external_agent_command_works_in_a_worktree_and_survives_evictions() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let git = |args: &[&str]| Command::new("git").args(args).current_dir(&repo).output().map(|o| o.status.success());
    std::fs::create_dir_all(&repo).unwrap();
    let have_git = git(&["init", "-q", "-b", "main"]).unwrap_or(false)
        && git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init"])
            .unwrap_or(false);
    let agent = tmp.path().join("agent.sh");
    std::fs::write(
        &agent,
        "#!/bin/sh\n\
         echo \"$GASTOWN_AGENT_ROLE in $(pwd)\"\n\
         [ \"$GASTOWN_AGENT_ROLE\" = mayor ] && exit 0\n\
         git rev-parse --abbrev-ref HEAD > seen-branch 2>/dev/null || echo none > seen-branch\n\
         \"$GASTOWN_BIN\" gt done --branch \"$GASTOWN_BRANCH\" --summary \"done by an external agent\"\n",
    )
    .unwrap();
    let cmd = format!("sh {}", agent.display());
    let server = Server::start_with(tmp.path(), free_port(), &["--agent-command", &cmd]);
    let rig = if have_git { repo.display().to_string() } else { "https://forge.localhost/gastown/demo.git".into() };
    let (ok, _, err) = server.cli(&["rig", "add", "local", &rig]);
    assert!(ok, "{err}");

    let done = |s: &Server, ids: &[String]| {
        let st = s.status_of("issue");
        ids.iter().all(|b| st.get(b).is_some_and(|x| x == "closed"))
    };
    let mut ids = Vec::new();
    for round in ["before", "after a drained eviction", "after a hard eviction"] {
        let v = server.json(&["sling", "--rig", "local", &format!("external: {round}"), "--json"]);
        ids.push(v["bead_id"].as_str().unwrap().to_owned());
        server.wait_until(&format!("external bead closed {round}"), 60, |s| done(s, &ids));
        match round {
            "before" => assert!(server.cli(&["evict"]).0),
            "after a drained eviction" => assert!(server.cli(&["evict", "--hard"]).0),
            _ => {}
        }
    }
    let agents = server.json(&["agents", "--json"]);
    let polecat = agents.as_array().unwrap().iter().find(|a| a["role"] == "polecat").unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen = std::fs::read_to_string(tmp.path().join(format!("data/container/work/{polecat}/seen-branch"))).unwrap();
    if have_git {
        assert!(seen.trim().starts_with("gt/"), "the agent ran in a worktree on its branch: {seen}");
    }
    let (ok, _, err) = server.cli(&["mayor", "hello from the test"]);
    assert!(ok, "{err}");
}
