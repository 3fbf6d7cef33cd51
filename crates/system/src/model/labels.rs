//! The label catalogue. Labels are stored as a JSON array of strings; the
//! reconciler only cares about a handful of them, which it reads as a bit set.

use serde::{Deserialize, Serialize};

pub const CONVOY: &str = "gt:convoy";
pub const MERGE_REQUEST: &str = "gt:merge-request";
pub const BABYSIT: &str = "gt:babysit";
pub const ESCALATION: &str = "gt:escalation";
pub const MESSAGE: &str = "gt:message";
pub const REWORK: &str = "gt:rework";
pub const PR_FEEDBACK: &str = "gt:pr-feedback";
pub const PR_CONFLICT: &str = "gt:pr-conflict";
pub const PR_FIXUP: &str = "gt:pr-fixup";
pub const TRIAGE_REQUEST: &str = "gt:triage-request";
pub const TRIAGE: &str = "gt:triage";
pub const HELD: &str = "gt:held";

/// Labels with behaviour attached.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Label {
    Rework = 1,
    PrFeedback = 2,
    PrConflict = 4,
    PrFixup = 8,
    TriageRequest = 16,
    Triage = 32,
    Held = 64,
    Babysit = 128,
}

impl Label {
    pub fn from_text(s: &str) -> Option<Label> {
        Some(match s {
            REWORK => Label::Rework,
            PR_FEEDBACK => Label::PrFeedback,
            PR_CONFLICT => Label::PrConflict,
            PR_FIXUP => Label::PrFixup,
            TRIAGE_REQUEST => Label::TriageRequest,
            TRIAGE => Label::Triage,
            HELD => Label::Held,
            BABYSIT => Label::Babysit,
            _ => return None,
        })
    }
}

/// The behavioural labels of one bead, as bits.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSet(u16);

impl LabelSet {
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> Self {
        let mut bits = 0;
        for l in labels {
            if let Some(label) = Label::from_text(l) {
                bits |= label as u16;
            }
        }
        LabelSet(bits)
    }
    /// Parse the stored JSON array; unparsable text carries no behavioural labels.
    pub fn from_json(text: &str) -> Self {
        if text.len() <= 2 {
            return LabelSet(0);
        }
        let labels: Vec<String> = serde_json::from_str(text).unwrap_or_default();
        Self::from_labels(labels.iter().map(String::as_str))
    }
    pub const fn has(self, l: Label) -> bool {
        self.0 & (l as u16) != 0
    }
    /// Fix-up work that `gt_done` closes directly instead of opening a new review.
    pub const fn is_fixup_work(self) -> bool {
        self.0 & (Label::Rework as u16 | Label::PrFeedback as u16 | Label::PrConflict as u16 | Label::PrFixup as u16)
            != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_elements_only() {
        let s = LabelSet::from_json(r#"["gt:held","gt:pr-feedback-ish","x"]"#);
        assert!(s.has(Label::Held));
        assert!(!s.has(Label::PrFeedback));
        assert!(!LabelSet::from_json("not json").has(Label::Held));
        assert!(LabelSet::from_json(r#"["gt:rework"]"#).is_fixup_work());
    }
}
