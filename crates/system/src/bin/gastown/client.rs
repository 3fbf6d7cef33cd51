//! The user commands and agent tools: HTTP calls to the town's API.

use super::{Cmd, ConvoyCmd, GtCmd, RigCmd};
use gastown::net::{HttpClient, TokioConnector};
use gastown::prod::datadir::DataDir;
use gastown::prod::external::{ENV_AGENT_ID, ENV_AGENT_TOKEN, ENV_API_URL, ENV_BEAD_ID, ENV_RIG_ID, ENV_TOWN_ID};
use gastown::prod::up::BEAD_STATUSES;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A failure to report: printed as `gastown: <message>`, exit status 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(msg: impl Into<String>) -> CliError {
    CliError(msg.into())
}

pub struct Client {
    http: HttpClient,
    base: String,
    token: String,
    town: String,
}

fn http() -> HttpClient {
    HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(30))
}

/// The `data` of an envelope answer, or an error naming the request and the server's message.
fn unwrap(
    what: &str,
    base: &str,
    r: Result<gastown::net::HttpResponse, gastown::net::HttpError>,
) -> Result<Value, CliError> {
    let resp = r.map_err(|e| {
        err(format!("cannot reach the gastown server at {base} ({what}): {e}; is `gastown up` running?"))
    })?;
    let v: Value = resp.json().map_err(|_| {
        err(format!("{what}: {base} answered {} with something that is not JSON: {}", resp.status, resp.text()))
    })?;
    if resp.ok() && v["success"] == json!(true) {
        return Ok(v["data"].clone());
    }
    let msg = v["error"].as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    Err(err(format!("{what}: the server answered {}: {msg}", resp.status)))
}

impl Client {
    /// Learn the town id from the server; find a user token.
    pub async fn connect(url: &str, token: Option<&str>, data_dir: &Path) -> Result<Client, CliError> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(err(format!("--url {url:?} is not an http:// URL")));
        }
        let token = match token.filter(|t| !t.trim().is_empty()) {
            Some(t) => t.trim().to_owned(),
            None => {
                let dir = DataDir::existing(data_dir);
                match dir.user_token() {
                    Ok(Some(t)) if !t.is_empty() => t,
                    Ok(_) => {
                        return Err(err(format!(
                            "no user token: pass --token, set GASTOWN_TOKEN, or point --data-dir at the directory \
                             `gastown up` uses (no token in {})",
                            dir.path("user-token").display()
                        )))
                    }
                    Err(e) => return Err(err(e.to_string())),
                }
            }
        };
        let http = http();
        let info = unwrap("town info", &base, http.get(format!("{base}/api/town")).send().await)?;
        let town =
            info["town_id"].as_str().ok_or_else(|| err(format!("{base}/api/town: no town_id in {info}")))?.to_owned();
        Ok(Client { http, base, token, town })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/towns/{}{path}", self.base, self.town)
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        let r = self.http.get(self.url(path)).bearer(&self.token).send().await;
        unwrap(&format!("GET {path}"), &self.base, r)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        let r = self.http.post(self.url(path)).bearer(&self.token).json(&body).send().await;
        unwrap(&format!("POST {path}"), &self.base, r)
    }

    async fn delete(&self, path: &str) -> Result<Value, CliError> {
        let r = self.http.delete(self.url(path)).bearer(&self.token).send().await;
        unwrap(&format!("DELETE {path}"), &self.base, r)
    }

    /// A rig id from a name or id.
    async fn rig_id(&self, rig: &str) -> Result<String, CliError> {
        let rigs = self.get("/rigs").await?;
        let list = rigs.as_array().cloned().unwrap_or_default();
        if let Some(r) = list.iter().find(|r| r["id"] == json!(rig) || r["name"] == json!(rig)) {
            return Ok(r["id"].as_str().unwrap_or(rig).to_owned());
        }
        let names: Vec<&str> = list.iter().filter_map(|r| r["name"].as_str()).collect();
        Err(err(format!(
            "no rig named {rig:?} (rigs: {})",
            if names.is_empty() { "none".into() } else { names.join(", ") }
        )))
    }

    /// `gastown status --json`: every bead status present, zero when none.
    pub async fn status(&self) -> Result<Value, CliError> {
        let mut v = self.get("/status").await?;
        let beads = v["beads"].as_object().cloned().unwrap_or_default();
        let mut full: Map<String, Value> = BEAD_STATUSES.iter().map(|s| ((*s).to_owned(), json!(0))).collect();
        full.extend(beads);
        v["beads"] = Value::Object(full);
        for k in ["agents", "convoys"] {
            if !v[k].is_object() {
                v[k] = json!({});
            }
        }
        v["town_id"] = json!(self.town);
        Ok(v)
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

fn counts_line(v: &Value) -> String {
    let m = v.as_object().cloned().unwrap_or_default();
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join("  ")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("-")
}

pub async fn user_command(c: &Client, cmd: Cmd) -> Result<(), CliError> {
    match cmd {
        Cmd::Status { json } => {
            let v = c.status().await?;
            if json {
                print_json(&v);
            } else {
                println!("town {} at {}", c.town, c.base);
                let order: Vec<String> = BEAD_STATUSES.iter().map(|s| format!("{s} {}", v["beads"][s])).collect();
                println!("beads:    {}", order.join("  "));
                println!("agents:   {}", counts_line(&v["agents"]));
                println!("convoys:  {}", counts_line(&v["convoys"]));
                println!("pending events: {}", v["pending_events"]);
            }
        }
        Cmd::Rig(RigCmd::Add { name, git_url, default_branch, id }) => {
            let r = c
                .post("/rigs", json!({"name": name, "git_url": git_url, "default_branch": default_branch, "id": id}))
                .await?;
            println!("rig {} added ({})", s(&r, "name"), s(&r, "id"));
        }
        Cmd::Rig(RigCmd::List { json }) => {
            let v = c.get("/rigs").await?;
            if json {
                print_json(&v);
            } else {
                for r in v.as_array().into_iter().flatten() {
                    println!("{}  {}  {}  {}", s(r, "id"), s(r, "name"), s(r, "git_url"), s(r, "default_branch"));
                }
            }
        }
        Cmd::Sling { rig, title, body, priority, json } => {
            let rig = c.rig_id(&rig).await?;
            let v = c
                .post(&format!("/rigs/{rig}/sling"), json!({"title": title, "body": body, "priority": priority}))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("bead {} slung (agent {})", s(&v, "bead_id"), s(&v, "agent_id"));
            }
        }
        Cmd::Babysit { rig, pr_url, branch, target_branch, title, head_sha, force_push_allowed, json } => {
            let rig = c.rig_id(&rig).await?;
            let body = json!({
                "pr_url": pr_url, "branch": branch, "target_branch": target_branch, "title": title,
                "head_sha": head_sha, "force_push_allowed": force_push_allowed,
            });
            let v = c.post(&format!("/rigs/{rig}/external-prs"), body).await?;
            if json {
                print_json(&v);
            } else if v["created"].as_bool() == Some(false) {
                println!("already babysat as MR {}", s(&v, "mr_bead_id"));
            } else {
                println!("MR {} babysits {pr_url}", s(&v, "mr_bead_id"));
            }
        }
        Cmd::Convoy(ConvoyCmd::Create { rig, title, tasks, chain, staged, merge_mode, json }) => {
            let rig = c.rig_id(&rig).await?;
            let tasks: Vec<Value> = tasks
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"title": t, "depends_on": if chain && i > 0 { vec![i - 1] } else { vec![] }}))
                .collect();
            let body =
                json!({"rig_id": rig, "title": title, "tasks": tasks, "staged": staged, "merge_mode": merge_mode});
            let v = c.post("/convoys", body).await?;
            if json {
                print_json(&v);
            } else {
                let beads: Vec<&str> =
                    v["bead_ids"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                println!(
                    "convoy {} created ({}), beads: {}",
                    s(&v, "convoy_id"),
                    if staged { "staged" } else { "started" },
                    beads.join(" ")
                );
            }
        }
        Cmd::Convoy(ConvoyCmd::Start { id }) => {
            c.post(&format!("/convoys/{id}/start"), json!({})).await?;
            println!("convoy {id} started");
        }
        Cmd::Convoy(ConvoyCmd::Close { id }) => {
            c.post(&format!("/convoys/{id}/close"), json!({})).await?;
            println!("convoy {id} closed");
        }
        Cmd::Convoy(ConvoyCmd::List { json }) => list_beads(c, Some("convoy".into()), None, json).await?,
        Cmd::Beads { ty, status, json } => list_beads(c, ty, status, json).await?,
        Cmd::DeleteBead { id, json } => {
            let v = c.delete(&format!("/beads/{id}")).await?;
            if json {
                print_json(&v);
            } else {
                println!("bead {id} deleted");
                for (key, what) in [
                    ("unhooked_agents", "agents released"),
                    ("failed_reviews", "reviews failed"),
                    ("reopened", "sources reopened"),
                    ("convoys", "convoys left"),
                    ("failed_convoys", "convoys failed (no member left)"),
                ] {
                    let ids: Vec<&str> = v[key].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    if !ids.is_empty() {
                        println!("  {what}: {}", ids.join(" "));
                    }
                }
            }
        }
        Cmd::Agents { json } => {
            let v = c.get("/agents").await?;
            if json {
                print_json(&v);
            } else {
                for a in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:9} {:12} {:10} hook {}",
                        s(a, "agent_id"),
                        s(a, "role"),
                        s(a, "name"),
                        s(a, "status"),
                        s(a, "current_hook_bead_id")
                    );
                }
            }
        }
        Cmd::Hook { agent, bead, json } => {
            let v = c.post(&format!("/agents/{agent}/hook"), json!({"bead_id": bead})).await?;
            if json {
                print_json(&v);
            } else {
                println!("agent {agent} hooked to {bead} ({})", s(&v, "status"));
            }
        }
        Cmd::Unhook { agent, json } => {
            let v = c.post(&format!("/agents/{agent}/unhook"), json!({})).await?;
            if json {
                print_json(&v);
            } else {
                println!("agent {agent} unhooked ({})", s(&v, "status"));
            }
        }
        Cmd::Mayor { message } => {
            c.post("/mayor/message", json!({"message": message})).await?;
            println!("message sent to the mayor");
        }
        Cmd::Evict { hard } => {
            let v = c.post("/operator/evict", json!({"hard": hard})).await?;
            println!("container replaced by {} ({})", s(&v, "instance_id"), if hard { "hard" } else { "drained" });
        }
        Cmd::Up(_) | Cmd::Gt(_) => unreachable!("handled by the caller"),
    }
    Ok(())
}

async fn list_beads(c: &Client, ty: Option<String>, status: Option<String>, json: bool) -> Result<(), CliError> {
    let mut q = Vec::new();
    if let Some(t) = ty {
        q.push(format!("type={t}"));
    }
    if let Some(s) = status {
        q.push(format!("status={s}"));
    }
    let path = if q.is_empty() { "/beads".to_owned() } else { format!("/beads?{}", q.join("&")) };
    let v = c.get(&path).await?;
    if json {
        print_json(&v);
    } else {
        for b in v.as_array().into_iter().flatten() {
            println!("{}  {:12} {}", s(b, "bead_id"), s(b, "status"), s(b, "title"));
        }
    }
    Ok(())
}

fn env(name: &str) -> Result<String, CliError> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).ok_or_else(|| {
        err(format!("{name} is not set: `gastown gt` runs inside an agent session started by `gastown up`"))
    })
}

/// `gastown gt …`: an agent tool call with the session's agent token.
pub async fn agent_tool(cmd: GtCmd) -> Result<(), CliError> {
    let (api, town, rig, agent, token) =
        (env(ENV_API_URL)?, env(ENV_TOWN_ID)?, env(ENV_RIG_ID)?, env(ENV_AGENT_ID)?, env(ENV_AGENT_TOKEN)?);
    let api = api.trim_end_matches('/');
    let agent_base = format!("{api}/api/towns/{town}/rigs/{rig}/agents/{agent}");
    let (url, body, what) = match cmd {
        GtCmd::Done { branch, pr_url, summary } => {
            // The session's bead, so the town can tell this report from one of a newer dispatch.
            let bead_id = env(ENV_BEAD_ID).ok();
            let body = json!({"branch": branch, "pr_url": pr_url, "summary": summary, "bead_id": bead_id});
            (format!("{agent_base}/done"), body, "gt done")
        }
        GtCmd::Escalate { title, body, priority } => (
            format!("{api}/api/towns/{town}/rigs/{rig}/escalations"),
            json!({"title": title, "body": body, "priority": priority}),
            "gt escalate",
        ),
        GtCmd::RequestChanges { feedback, files } => (
            format!("{agent_base}/request-changes"),
            json!({"feedback": feedback, "files": files}),
            "gt request-changes",
        ),
        GtCmd::Checkpoint { json: data } => {
            let data: Value = serde_json::from_str(&data)
                .map_err(|e| err(format!("gt checkpoint: the argument is not JSON: {e}")))?;
            (format!("{agent_base}/checkpoint"), json!({"data": data}), "gt checkpoint")
        }
    };
    let r = http().post(url).bearer(&token).json(&body).send().await;
    let v = unwrap(what, api, r)?;
    println!("{}", if v.is_null() { "ok".to_owned() } else { v.to_string() });
    Ok(())
}
