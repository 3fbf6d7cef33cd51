//! What SCM calls report, as plain data: the town applies these (it never
//! talks to a forge itself), so they carry no I/O and serialize for traces.

use crate::model::pr_url::Provider;
use serde::{Deserialize, Serialize};

/// A pull request's lifecycle state.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrState {
    Open,
    Merged,
    Closed,
}

impl PrState {
    pub const fn as_str(self) -> &'static str {
        match self {
            PrState::Open => "open",
            PrState::Merged => "merged",
            PrState::Closed => "closed",
        }
    }
}

/// `checkPRStatus`'s success value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrStatus {
    pub state: PrState,
    /// GitHub's `mergeable_state` (`clean`, `dirty`, `blocked`, `behind`,
    /// `unstable`, `has_hooks`, `draft`, `unknown`); `None` for GitLab.
    pub mergeable_state: Option<String>,
    pub head_branch: Option<String>,
    pub base_branch: Option<String>,
    pub head_sha: Option<String>,
    pub title: Option<String>,
}

/// Why a body could not be used.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidKind {
    JsonParse,
    SchemaMismatch,
}

/// The error classes of an SCM call (spec: town.md §6.6, container.md §6.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScmError {
    /// No credential for the provider; `resolution_chain` lists what was tried.
    NoToken { provider: Provider, resolution_chain: Vec<String> },
    /// Neither a GitHub pull request nor a GitLab merge request URL we serve.
    UnrecognizedUrl { url: String, why: String },
    /// A GitLab URL on a host we would not send the GitLab token to.
    HostMismatch { expected: String, got: String },
    /// The forge answered with a non-2xx status. Transient for 5xx and 429.
    HttpError { status: u16, status_text: String, transient: bool },
    /// The forge answered 2xx with a body we cannot use.
    InvalidResponse { invalid: InvalidKind, sample_keys: Vec<String> },
    /// No answer at all (connect failure, timeout, broken exchange, or a URL
    /// our HTTP stack cannot dial). Upstream's thrown exceptions: logged only.
    Network { detail: String },
}

/// How a poll failure counts against an MR.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Fail the MR now.
    Immediate,
    /// 5xx / 429: fail after 10 in a row.
    Transient,
    /// Unusable body: fail after 3 in a row.
    InvalidResponse,
    /// No answer: logged, no counter changes.
    Unreachable,
}

impl ScmError {
    /// The stored `poll_error_kind`.
    pub const fn kind(&self) -> &'static str {
        match self {
            ScmError::NoToken { .. } => "no_token",
            ScmError::UnrecognizedUrl { .. } => "unrecognized_url",
            ScmError::HostMismatch { .. } => "host_mismatch",
            ScmError::HttpError { .. } => "http_error",
            ScmError::InvalidResponse { .. } => "invalid_response",
            ScmError::Network { .. } => "network",
        }
    }

    pub const fn class(&self) -> FailureClass {
        match self {
            ScmError::NoToken { .. } | ScmError::UnrecognizedUrl { .. } | ScmError::HostMismatch { .. } => {
                FailureClass::Immediate
            }
            ScmError::HttpError { transient: true, .. } => FailureClass::Transient,
            ScmError::HttpError { transient: false, .. } => FailureClass::Immediate,
            ScmError::InvalidResponse { .. } => FailureClass::InvalidResponse,
            ScmError::Network { .. } => FailureClass::Unreachable,
        }
    }

    pub fn http(status: u16) -> ScmError {
        ScmError::HttpError {
            status,
            status_text: status_text(status).to_owned(),
            transient: status >= 500 || status == 429,
        }
    }

    /// The human text stored as `failureMessage` when the MR fails.
    pub fn message(&self) -> String {
        match self {
            ScmError::NoToken { provider, resolution_chain } => format!(
                "No {provider:?} token available to poll the PR (tried: {}). Configure one for the town; \
                 note that polecats may push with their own credentials, so a PR can exist without one.",
                resolution_chain.join(", ")
            ),
            ScmError::UnrecognizedUrl { url, why } => format!("Unrecognized PR URL `{url}`: {why}"),
            ScmError::HostMismatch { expected, got } => {
                format!("Refusing to send the GitLab token to `{got}`: the configured instance is `{expected}`")
            }
            ScmError::HttpError { status: 401, .. } => "The forge token is invalid or expired (HTTP 401).".into(),
            ScmError::HttpError { status: 403, .. } => "The forge token lacks permission (HTTP 403): it needs \
                 `pull-requests: read`, or a secondary rate limit was hit."
                .into(),
            ScmError::HttpError { status: 404, .. } => {
                "PR/MR not found (HTTP 404) — branch deleted or wrong URL?".into()
            }
            ScmError::HttpError { status, transient: true, .. } => {
                format!("The forge returned HTTP {status}. Retrying.")
            }
            ScmError::HttpError { status, .. } => format!("The forge returned HTTP {status}. Not retryable."),
            ScmError::InvalidResponse { invalid, sample_keys } => format!(
                "The forge's response could not be used ({invalid:?}; keys: {}). Please file a bug.",
                sample_keys.join(", ")
            ),
            ScmError::Network { detail } => format!("The forge could not be reached: {detail}"),
        }
    }
}

impl std::fmt::Display for ScmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// `checkPRFeedback`'s value: review and CI signals of an open PR.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrFeedback {
    pub has_unresolved_comments: bool,
    pub has_failing_checks: bool,
    pub all_checks_pass: bool,
    pub has_unchecked_runs: bool,
    pub awaiting_approval: bool,
    pub changes_requested: bool,
    pub review_decision: Option<String>,
    pub merge_state_status: Option<String>,
    pub is_draft: bool,
    /// The review half (GraphQL) answered. Upstream treated a failed review
    /// query as "no comments, no decision", which could look all-green; we
    /// count it as not green (DEVIATIONS.md).
    pub reviews_known: bool,
}

impl PrFeedback {
    /// Work for a polecat: blocking comments, failing CI or runs we could not inspect.
    pub fn needs_work(&self) -> bool {
        self.has_unresolved_comments || self.has_failing_checks || self.has_unchecked_runs
    }

    /// Everything a merge needs.
    pub fn all_green(&self) -> bool {
        self.reviews_known
            && !self.has_unresolved_comments
            && !self.has_failing_checks
            && self.all_checks_pass
            && !self.awaiting_approval
            && !self.changes_requested
    }
}

/// What the town asks a poll to fetch beyond the status (rig-resolved
/// settings at the time the poll was planned).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollWants {
    /// Fetch review/CI feedback (the rig has a refinery config and auto-resolve
    /// or auto-merge is on).
    pub feedback: bool,
    /// Auto-resolve is on: re-check the status before reporting work (bug j).
    pub auto_resolve: bool,
}

/// What a `poll_pr` effect found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PollReport {
    Failed {
        error: ScmError,
    },
    Checked {
        status: PrStatus,
        feedback: Option<PrFeedback>,
        /// The status re-check made right before reporting work (bug j):
        /// `Some(Ok(state))`, `Some(Err(error))`, or `None` when not needed.
        recheck: Option<Result<PrState, String>>,
    },
}

/// What a `merge_pr` effect did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum MergeReport {
    Merged {
        method: String,
    },
    /// The fresh feedback check found the PR no longer all green.
    NotGreen {
        feedback: PrFeedback,
    },
    Failed {
        reason: String,
    },
}
