//! The JSON bodies that cross the wire between town, container and users.
//!
//! One module so both ends of every route share one definition. Field names
//! are snake_case; timestamps are integer milliseconds since the epoch.
//! Town responses use upstream's envelope: `{"success": true, "data": …}` or
//! `{"success": false, "error": "…"}`.

use crate::town::effects::StartAgent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Header carrying a session snapshot's version (see [`SnapshotMeta`]).
pub const SNAPSHOT_VERSION_HEADER: &str = "x-snapshot-version";
/// Header naming the agent a container token acts for.
pub const AGENT_ID_HEADER: &str = "x-gastown-agent-id";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<T> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Envelope { success: true, data: Some(data), error: None }
    }
    pub fn err(error: impl Into<String>) -> Self {
        Envelope { success: false, data: None, error: Some(error.into()) }
    }
}

// ------------------------------------------------------------ container API

/// `POST /agents/start` on the container: what to run, and how to reach the town.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StartAgentRequest {
    #[serde(flatten)]
    pub agent: StartAgent,
    pub town_id: String,
    /// The town's base URL as the container reaches it (`http://town:8787`).
    pub api_url: String,
    /// Token scoped to this agent (what the agent's tools use).
    pub agent_token: String,
    /// Token scoped to the town's container (heartbeats, registry, drain).
    pub container_token: String,
}

#[derive(Copy, Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    Starting,
    Running,
    Stopping,
    Exited,
    Failed,
}

/// `GET /agents/:id/status` on the container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentProcessStatus {
    pub agent_id: String,
    pub status: ProcessStatus,
    pub session_id: Option<String>,
    pub started_at: i64,
    pub last_activity_at: Option<i64>,
    #[serde(default)]
    pub active_tools: Vec<String>,
    pub message_count: u32,
    pub exit_reason: Option<String>,
    /// The session continues an earlier one (the mayor's): it skipped the
    /// start's initial prompt, which a caller must send as a message instead.
    #[serde(default)]
    pub resumed: bool,
}

/// `GET /health` on the container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub status: String,
    /// Agents starting or running.
    pub agents: u32,
    pub uptime_ms: i64,
    #[serde(default)]
    pub draining: bool,
    pub instance_id: String,
}

/// `POST /agents/:id/message` on the container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MessageBody {
    pub prompt: String,
}

/// `POST /refresh-token` on the container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RefreshTokenBody {
    pub token: String,
    #[serde(default)]
    pub town_id: Option<String>,
}

// ----------------------------------------------------- town, agent-facing

/// `POST …/agents/:id/heartbeat`: proof of life plus the activity watermark.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatBody {
    #[serde(default)]
    pub status: Option<ProcessStatus>,
    #[serde(default)]
    pub last_event_type: Option<String>,
    #[serde(default)]
    pub last_event_at: Option<i64>,
    #[serde(default)]
    pub active_tools: Option<Vec<String>>,
    #[serde(default)]
    pub message_count: Option<u32>,
    #[serde(default)]
    pub container_instance_id: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatReply {
    /// Set while the town is draining: the container answers `/container-ready` with it.
    pub drain_nonce: Option<String>,
}

/// `POST …/agents/:id/done` (`gt done`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DoneBody {
    pub branch: String,
    #[serde(default)]
    pub pr_url: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    /// The bead the reporting session was dispatched for (the container
    /// stamps it). Not in upstream's body: without it the town cannot tell a
    /// late report of an earlier session from one about the current hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bead_id: Option<String>,
}

/// `POST …/agents/:id/completed`: the process exited.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CompletedBody {
    pub status: crate::town::review::ExitStatus,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST …/agents/:id/waiting` (mayor went idle).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WaitingBody {
    #[serde(default)]
    pub fired_at: Option<i64>,
}

/// `POST …/agents/:id/request-changes` (refinery).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RequestChangesBody {
    pub feedback: String,
    #[serde(default)]
    pub files: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RequestChangesReply {
    pub rework_bead_id: String,
}

/// `POST …/agents/:id/checkpoint`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointBody {
    pub data: Value,
}

/// One entry of `GET …/agents/:id/pending-nudges` (urgent first, then oldest).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PendingNudge {
    pub nudge_id: String,
    pub message: String,
}

/// `POST …/agents/:id/nudge-delivered`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NudgeDeliveredBody {
    pub nudge_id: String,
}

/// `POST …/agents/:id/eviction-context`: where the evicted work was pushed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvictionContextBody {
    pub branch: String,
    pub agent_name: String,
    pub saved_at: i64,
}

/// `POST …/rigs/:rig/escalations`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EscalationBody {
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IdReply {
    pub id: String,
}

// ---------------------------------------------------- town, container-level

/// `POST /api/towns/:town/container-eviction`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvictionReply {
    pub nonce: String,
}

/// `POST /api/towns/:town/container-ready`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerReadyBody {
    pub nonce: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerReadyReply {
    pub cleared: bool,
}

/// `GET /api/towns/:town/drain-status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrainStatusReply {
    pub draining: bool,
    pub drain_nonce: Option<String>,
}

/// One entry of the container registry: what the container was running, so a
/// new boot can bring it back. The whole list is replaced on every sync.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RegistryEntry {
    pub agent_id: String,
    pub request: StartAgentRequest,
    pub workdir: String,
}

/// `POST /api/towns/:town/refresh-container-token` answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenReply {
    pub token: String,
}

/// What the town keeps about a stored session snapshot. Uploads carry a
/// version (the container's capture time in ms, then a sequence number
/// within the same ms); an upload older than the stored one is refused, so a
/// delayed upload can never replace a newer snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SnapshotMeta {
    pub agent_id: String,
    pub version: i64,
    pub size_bytes: u64,
}
