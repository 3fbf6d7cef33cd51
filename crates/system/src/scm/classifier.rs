//! Do unresolved review threads block a merge? A rule-based default and an
//! optional LLM classifier over HTTP. Any doubt or failure means blocking.

use crate::net::{HttpClient, SendFuture};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadComment {
    pub author: String,
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReviewThread {
    pub comments: Vec<ThreadComment>,
}

/// One verdict for a set of unresolved threads: true if any blocks.
pub trait ThreadClassifier: Send + Sync {
    fn blocking<'a>(&'a self, threads: &'a [ReviewThread]) -> SendFuture<'a, bool>;
}

/// Approvals, LGTM, praise, acknowledgements and bot status reports do not
/// block; anything else does, including a question or a hedge inside praise.
#[derive(Copy, Clone, Debug, Default)]
pub struct RuleBasedClassifier;

const NON_BLOCKING: &[&str] = &[
    "lgtm",
    "looks good",
    "approved",
    "approve",
    "ship it",
    "great work",
    "nice work",
    "well done",
    "thanks",
    "thank you",
    "no issues found",
    "review passed",
    "all checks passed",
    "checks passed",
    "build succeeded",
    "coverage",
    ":+1:",
    "\u{1f44d}",
];

const HEDGES: &[&str] = &[
    "?",
    " but ",
    "however",
    "should",
    "please",
    "consider",
    "bug",
    "fix",
    "nit",
    "suggest",
    "could you",
    "would you",
    "error",
    "security",
    "concern",
    "warning",
    "todo",
    "instead",
    "missing",
    "wrong",
    "fail",
    "don't",
    "do not",
    "must",
    "why",
];

impl RuleBasedClassifier {
    pub fn comment_blocks(body: &str) -> bool {
        let text = format!(" {} ", body.trim().to_lowercase());
        if text.trim().is_empty() {
            return true;
        }
        let benign = NON_BLOCKING.iter().any(|p| text.contains(p));
        let hedged = HEDGES.iter().any(|h| text.contains(h));
        !benign || hedged
    }

    pub fn classify(threads: &[ReviewThread]) -> bool {
        threads.iter().any(|t| t.comments.is_empty() || t.comments.iter().any(|c| Self::comment_blocks(&c.body)))
    }
}

impl ThreadClassifier for RuleBasedClassifier {
    fn blocking<'a>(&'a self, threads: &'a [ReviewThread]) -> SendFuture<'a, bool> {
        let verdict = Self::classify(threads);
        Box::pin(async move { verdict })
    }
}

/// Where an LLM classifier sends its chat-completion request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmClassifierConfig {
    /// An OpenAI-style `…/chat/completions` endpoint.
    pub url: String,
    pub token: Option<String>,
    pub model: String,
    #[serde(default = "default_llm_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_llm_timeout_ms() -> u64 {
    45_000
}

/// Asks a chat model for `{"blocking": bool, "reason": "…"}`. No answer, no
/// JSON object in the answer, or the wrong shape: blocking.
pub struct LlmClassifier {
    http: HttpClient,
    cfg: LlmClassifierConfig,
}

impl LlmClassifier {
    pub fn new(http: HttpClient, cfg: LlmClassifierConfig) -> Self {
        LlmClassifier { http, cfg }
    }

    pub fn prompt(threads: &[ReviewThread]) -> String {
        let mut p = String::from(
            "Classify these unresolved pull-request review threads. BLOCKING: the thread asks for a code change, \
             identifies a bug, security or correctness problem, or raises any warning, concern, suggestion or \
             question, even softly. NON-BLOCKING: pure approval, praise, LGTM, status reports (\"review passed\", \
             \"no issues found\"), acknowledgements. Answer with one bare JSON object \
             {\"blocking\": true|false, \"reason\": \"...\"} covering all threads (any blocking thread means true).\n",
        );
        for (i, t) in threads.iter().enumerate() {
            p.push_str(&format!("\nThread {}:\n", i + 1));
            for c in &t.comments {
                p.push_str(&format!("[{}]: {}\n", c.author, c.body));
            }
        }
        p
    }

    /// The verdict in a model's reply text; `None` when there is none.
    pub fn parse_verdict(reply: &Value) -> Option<bool> {
        let text = reply
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .or_else(|| reply.get("response").and_then(Value::as_str))?;
        let start = text.find('{')?;
        let end = text.rfind('}')?;
        if end < start {
            return None;
        }
        let obj: Value = serde_json::from_str(&text[start..=end]).ok()?;
        obj.get("blocking").and_then(Value::as_bool)
    }

    async fn ask(&self, threads: &[ReviewThread]) -> Option<bool> {
        let body = json!({
            "model": self.cfg.model,
            "temperature": 0,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": Self::prompt(threads)}],
        });
        let mut req = self.http.post(&self.cfg.url).json(&body).timeout(Duration::from_millis(self.cfg.timeout_ms));
        if let Some(t) = &self.cfg.token {
            req = req.bearer(t);
        }
        let resp = req.send().await.ok()?;
        if !resp.ok() {
            return None;
        }
        Self::parse_verdict(&resp.json::<Value>().ok()?)
    }
}

impl ThreadClassifier for LlmClassifier {
    fn blocking<'a>(&'a self, threads: &'a [ReviewThread]) -> SendFuture<'a, bool> {
        Box::pin(async move {
            if threads.is_empty() {
                return false;
            }
            self.ask(threads).await.unwrap_or(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(bodies: &[&str]) -> ReviewThread {
        ReviewThread {
            comments: bodies.iter().map(|b| ThreadComment { author: "rev".into(), body: (*b).into() }).collect(),
        }
    }

    #[test]
    fn approvals_praise_and_bot_reports_do_not_block() {
        for b in
            ["LGTM", "Looks good to me!", "Approved \u{1f44d}", "Review passed: no issues found", "Thanks, nice work"]
        {
            assert!(!RuleBasedClassifier::classify(&[thread(&[b])]), "{b}");
        }
    }

    #[test]
    fn requests_questions_and_hedged_praise_block() {
        for b in [
            "Please rename this variable",
            "LGTM but consider adding a test",
            "Why is this needed?",
            "This introduces a race",
            "",
        ] {
            assert!(RuleBasedClassifier::classify(&[thread(&[b])]), "{b:?}");
        }
        assert!(RuleBasedClassifier::classify(&[thread(&["LGTM"]), thread(&["nit: spacing"])]));
        assert!(RuleBasedClassifier::classify(&[thread(&[])]), "an empty thread is not understood, so it blocks");
        assert!(!RuleBasedClassifier::classify(&[]));
    }

    #[test]
    fn llm_replies_parse_or_block() {
        let ok = json!({"choices": [{"message": {"content": "Sure: {\"blocking\": false, \"reason\": \"lgtm\"}"}}]});
        assert_eq!(LlmClassifier::parse_verdict(&ok), Some(false));
        assert_eq!(LlmClassifier::parse_verdict(&json!({"response": "{\"blocking\": true}"})), Some(true));
        for bad in [json!({}), json!({"response": "no json"}), json!({"response": "{\"blocking\": \"yes\"}"})] {
            assert_eq!(LlmClassifier::parse_verdict(&bad), None, "{bad}");
        }
    }
}
