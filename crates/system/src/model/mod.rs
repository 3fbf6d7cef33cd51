//! Domain types: beads, agents, labels, events and configuration.

pub mod config;
pub mod labels;
pub mod pr_url;

pub use config::{MergeMode, MergeStrategy, ReviewMode, RigOverrides, RigSettings, TownConfig};
pub use labels::{Label, LabelSet};

/// Declares a string-backed enum with `as_str`, `parse` and serde in snake/kebab form.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    let valid: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    serde::de::Error::custom(format!(
                        "unknown {} `{}`, expected one of: {}",
                        stringify!($name), s, valid.join(", ")
                    ))
                })
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                $name::parse(s).ok_or_else(|| rusqlite::types::FromSqlError::Other(
                    format!("unknown {} `{}`", stringify!($name), s).into()))
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// What a bead is. Everything in the town is a bead.
    BeadType {
        Issue => "issue",
        Message => "message",
        Escalation => "escalation",
        MergeRequest => "merge_request",
        Convoy => "convoy",
        Molecule => "molecule",
        Agent => "agent",
    }
);

impl BeadType {
    /// Types an agent can be hooked to.
    pub const fn is_workable(self) -> bool {
        !matches!(self, BeadType::Escalation | BeadType::Convoy | BeadType::Agent | BeadType::Message)
    }
}

string_enum!(
    BeadStatus {
        Open => "open",
        InProgress => "in_progress",
        InReview => "in_review",
        Closed => "closed",
        Failed => "failed",
    }
);

impl BeadStatus {
    /// `closed` and `failed` are final: nothing leaves them.
    pub const fn is_terminal(self) -> bool {
        matches!(self, BeadStatus::Closed | BeadStatus::Failed)
    }
    pub const fn is_live(self) -> bool {
        !self.is_terminal()
    }
}

string_enum!(
    Priority {
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
);

string_enum!(
    AgentRole {
        Mayor => "mayor",
        Polecat => "polecat",
        Refinery => "refinery",
    }
);

string_enum!(
    AgentStatus {
        Idle => "idle",
        Working => "working",
        Waiting => "waiting",
        Stalled => "stalled",
        Dead => "dead",
        Exited => "exited",
    }
);

string_enum!(
    Severity {
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
);

impl Severity {
    /// One step up, saturating at critical.
    pub const fn bumped(self) -> Severity {
        match self {
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            Severity::High | Severity::Critical => Severity::Critical,
        }
    }
    pub const fn priority(self) -> Priority {
        match self {
            Severity::Critical => Priority::Critical,
            Severity::High => Priority::High,
            Severity::Low | Severity::Medium => Priority::Medium,
        }
    }
}

string_enum!(
    /// Facts recorded by RPC handlers and effects, applied at the start of a tick.
    EventType {
        AgentDone => "agent_done",
        AgentCompleted => "agent_completed",
        ContainerStatus => "container_status",
        ContainerEviction => "container_eviction",
        PrStatusChanged => "pr_status_changed",
        BeadCreated => "bead_created",
        BeadCancelled => "bead_cancelled",
        ConvoyStarted => "convoy_started",
        NudgeTimeout => "nudge_timeout",
        PrFeedbackDetected => "pr_feedback_detected",
        PrAutoMerge => "pr_auto_merge",
        PrConflictDetected => "pr_conflict_detected",
    }
);

string_enum!(
    NudgeMode {
        WaitIdle => "wait-idle",
        Immediate => "immediate",
        Queue => "queue",
    }
);

string_enum!(
    NudgePriority {
        Normal => "normal",
        Urgent => "urgent",
    }
);

string_enum!(
    /// The escalation ladder of the GUPP activity watchdog.
    NudgeTier {
        Warn => "warn",
        Escalate => "escalate",
        ForceStop => "force_stop",
    }
);

impl NudgeTier {
    /// The `agent_nudges.source` value the reconciler writes and dedups on.
    pub const fn source(self) -> &'static str {
        match self {
            NudgeTier::Warn => "reconciler:warn",
            NudgeTier::Escalate => "reconciler:escalate",
            NudgeTier::ForceStop => "reconciler:force_stop",
        }
    }
}

string_enum!(
    TriageType {
        DirtyPolecat => "dirty_polecat",
        StuckAgent => "stuck_agent",
        HelpRequest => "help_request",
        ZombieConfirm => "zombie_confirm",
        CrashLoop => "crash_loop",
        Escalation => "escalation",
    }
);
