//! Effects that reach out of the town: agent starts, stops and messages go
//! to the container's control server over HTTP; PR polls and merges go to
//! whatever [`PrEffects`] is plugged in (the SCM client).

use super::host::TownHostConfig;
use crate::auth::Signer;
use crate::net::{HttpClient, SendFuture};
use crate::time::Clock;
use crate::town::effects::{Effect, Outcome, StartAgent};
use crate::wire::{AgentProcessStatus, MessageBody, StartAgentRequest};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upstream gives a container start 60 s.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Stops and messages are best effort and short.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `PollPr` / `MergePr` effects.
pub trait PrEffects: Send + Sync {
    fn run<'a>(&'a self, effect: &'a Effect) -> SendFuture<'a, Outcome>;
}

pub struct ContainerRunner {
    http: HttpClient,
    container_url: String,
    api_url: String,
    town_id: String,
    signer: Signer,
    clock: Arc<dyn Clock>,
    pr: RwLock<Option<Arc<dyn PrEffects>>>,
}

impl ContainerRunner {
    pub(super) fn new(
        http: HttpClient,
        cfg: &TownHostConfig,
        town_id: String,
        signer: Signer,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ContainerRunner {
            http,
            container_url: cfg.container_url.trim_end_matches('/').to_owned(),
            api_url: cfg.api_url.trim_end_matches('/').to_owned(),
            town_id,
            signer,
            clock,
            pr: RwLock::new(None),
        }
    }

    pub(super) fn set_pr_effects(&self, pr: Arc<dyn PrEffects>) {
        *self.pr.write().unwrap_or_else(|p| p.into_inner()) = Some(pr);
    }

    pub(super) fn http(&self) -> &HttpClient {
        &self.http
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.container_url)
    }

    pub(super) fn container_token(&self) -> String {
        self.signer.container_token(&self.town_id, self.clock.now())
    }

    /// Run one effect. Never fails: a failure is an outcome.
    pub async fn run(&self, effect: &Effect) -> Outcome {
        match effect {
            Effect::StartAgent(s) => self.start(s).await,
            Effect::StopAgent { agent_id, reason } => {
                let r =
                    self.http.post(self.url(&format!("/agents/{agent_id}/stop"))).timeout(CONTROL_TIMEOUT).send().await;
                if let Err(e) = r {
                    tracing::info!(agent = %agent_id, %reason, error = %e, "stop_agent: container unreachable");
                }
                Outcome::Done
            }
            Effect::DeliverNudge { nudge_id, agent_id, message, .. } => {
                let delivered = self.message(agent_id, message).await;
                Outcome::NudgeDelivery { nudge_id: nudge_id.clone(), delivered }
            }
            Effect::MessageMayor { mayor_id, about_bead, text } => {
                let delivered = match mayor_id {
                    Some(id) => self.message_mayor(id, text).await,
                    None => false,
                };
                Outcome::MayorMessage { about_bead: about_bead.clone(), delivered }
            }
            Effect::PollPr { .. } | Effect::MergePr { .. } => {
                let pr = self.pr.read().unwrap_or_else(|p| p.into_inner()).clone();
                match pr {
                    Some(pr) => pr.run(effect).await,
                    None => Outcome::Done,
                }
            }
            Effect::Analytics { name, data } => {
                tracing::debug!(%name, %data, "analytics");
                Outcome::Done
            }
        }
    }

    /// `POST /agents/start`. "Already running" counts as started (a timeout
    /// may have hidden an earlier success).
    async fn start(&self, s: &StartAgent) -> Outcome {
        let error = self.post_start(s).await.err();
        Outcome::AgentStart {
            agent_id: s.agent_id.clone(),
            bead_id: s.bead_id.clone(),
            started: error.is_none(),
            error,
        }
    }

    /// `POST /agents/start`: the session's status when the container sent it,
    /// `None` when it answered that the agent was already running.
    async fn post_start(&self, s: &StartAgent) -> Result<Option<AgentProcessStatus>, String> {
        let now = self.clock.now();
        let req = StartAgentRequest {
            agent: s.clone(),
            town_id: self.town_id.clone(),
            api_url: self.api_url.clone(),
            agent_token: self.signer.agent_token(&self.town_id, &s.agent_id, now),
            container_token: self.signer.container_token(&self.town_id, now),
        };
        let r = self.http.post(self.url("/agents/start")).json(&req).timeout(START_TIMEOUT).send().await;
        match r {
            Ok(resp) if resp.ok() => Ok(resp.json().ok()),
            Ok(resp) if resp.status == 500 && resp.text().contains("already running") => Ok(None),
            Ok(resp) => Err(format!("container answered {}: {}", resp.status, truncate(&resp.text(), 300))),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn message(&self, agent: &str, text: &str) -> bool {
        self.post_message(agent, text).await == Some(true)
    }

    /// `Some(accepted)`, or `None` when the container has no live session for
    /// the agent: it does not know it (404) or its session ended (409, a
    /// failed start or a crash). Upstream starts the mayor whenever it is not
    /// alive in the container, not only when it is unknown there.
    async fn post_message(&self, agent: &str, text: &str) -> Option<bool> {
        let body = MessageBody { prompt: text.to_owned() };
        let r = self.http.post(self.url(&format!("/agents/{agent}/message"))).json(&body).timeout(CONTROL_TIMEOUT);
        match r.send().await {
            Ok(resp) if resp.status == 404 || resp.status == 409 => None,
            Ok(resp) => Some(resp.ok()),
            Err(_) => Some(false),
        }
    }

    /// A message for the mayor. A container with no live mayor session
    /// (it does not know the mayor, or the session ended) gets the mayor
    /// started with the message as its prompt. A fresh session takes it as its
    /// first turn; a resumed one skips initial prompts, so the message follows
    /// as a turn of the resumed conversation.
    async fn message_mayor(&self, mayor: &str, text: &str) -> bool {
        if let Some(accepted) = self.post_message(mayor, text).await {
            return accepted;
        }
        let start = StartAgent {
            agent_id: mayor.to_owned(),
            bead_id: String::new(),
            rig_id: format!("mayor-{}", self.town_id),
            role: crate::model::AgentRole::Mayor,
            name: "mayor".into(),
            identity: format!("mayor-{}", self.town_id),
            prompt: text.to_owned(),
            branch: None,
            target_branch: None,
            start_point: None,
            pr_url: None,
        };
        match self.post_start(&start).await {
            Ok(Some(status)) if !status.resumed => true,
            Ok(_) => self.message(mayor, text).await,
            Err(_) => false,
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The SCM client runs PR effects against GitHub or the local forge.
impl PrEffects for crate::scm::ScmClient {
    fn run<'a>(&'a self, effect: &'a Effect) -> SendFuture<'a, Outcome> {
        Box::pin(async move { crate::scm::run_effect(self, effect).await.unwrap_or(Outcome::Done) })
    }
}
