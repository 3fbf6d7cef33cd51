//! Town and rig configuration, with the resolution order rig ?? town ?? default.

use super::string_enum;
use crate::error::{Result, TownError};
use serde::{Deserialize, Deserializer, Serialize};

string_enum!(
    MergeStrategy {
        Direct => "direct",
        Pr => "pr",
    }
);

string_enum!(
    ReviewMode {
        Rework => "rework",
        Comments => "comments",
    }
);

string_enum!(
    /// How a convoy's task MRs land: into a feature branch then one landing MR,
    /// or each straight into the default branch.
    MergeMode {
        ReviewThenLand => "review-then-land",
        ReviewAndMerge => "review-and-merge",
    }
);

/// The refinery section of the town configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefineryConfig {
    pub gates: Vec<String>,
    pub auto_merge: bool,
    pub require_clean_merge: bool,
    pub code_review: bool,
    pub review_mode: ReviewMode,
    pub auto_resolve_pr_feedback: bool,
    pub auto_resolve_merge_conflicts: bool,
    /// `None` disables auto-merge.
    pub auto_merge_delay_minutes: Option<u32>,
}

impl Default for RefineryConfig {
    fn default() -> Self {
        RefineryConfig {
            gates: Vec::new(),
            auto_merge: true,
            require_clean_merge: false,
            code_review: true,
            review_mode: ReviewMode::Rework,
            auto_resolve_pr_feedback: false,
            auto_resolve_merge_conflicts: true,
            auto_merge_delay_minutes: None,
        }
    }
}

/// Town-wide configuration. Unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TownConfig {
    pub merge_strategy: MergeStrategy,
    pub refinery: Option<RefineryConfig>,
    pub convoy_merge_mode: MergeMode,
    pub staged_convoys_default: bool,
    pub max_polecats_per_rig: Option<u32>,
}

impl Default for TownConfig {
    /// The schema defaults, used when a stored config omits a key.
    fn default() -> Self {
        TownConfig {
            merge_strategy: MergeStrategy::Direct,
            refinery: None,
            convoy_merge_mode: MergeMode::ReviewThenLand,
            staged_convoys_default: false,
            max_polecats_per_rig: None,
        }
    }
}

impl TownConfig {
    /// What a brand-new town is seeded with (upstream #2725): the full PR pipeline.
    pub fn new_town_defaults() -> Self {
        TownConfig {
            merge_strategy: MergeStrategy::Pr,
            staged_convoys_default: true,
            refinery: Some(RefineryConfig {
                gates: Vec::new(),
                auto_merge: true,
                require_clean_merge: true,
                code_review: true,
                review_mode: ReviewMode::Comments,
                auto_resolve_pr_feedback: true,
                auto_resolve_merge_conflicts: true,
                auto_merge_delay_minutes: Some(5),
            }),
            convoy_merge_mode: MergeMode::ReviewThenLand,
            max_polecats_per_rig: None,
        }
    }

    /// Parse and validate a JSON config, naming the offending key on error.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: TownConfig =
            serde_json::from_str(text).map_err(|e| TownError::invalid("town config", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.max_polecats_per_rig == Some(0) {
            return Err(TownError::invalid("town config", "max_polecats_per_rig must be at least 1"));
        }
        if let Some(r) = &self.refinery {
            check_delay(r.auto_merge_delay_minutes, "refinery.auto_merge_delay_minutes")?;
        }
        Ok(())
    }
}

const MAX_DELAY_MINUTES: u32 = 7 * 24 * 60;

fn check_delay(delay: Option<u32>, key: &str) -> Result<()> {
    match delay {
        Some(d) if d > MAX_DELAY_MINUTES => {
            Err(TownError::invalid("config", format!("{key} = {d} is out of range (0..={MAX_DELAY_MINUTES})")))
        }
        _ => Ok(()),
    }
}

/// Distinguishes an absent key (`None`) from an explicit `null` (`Some(None)`).
fn explicit_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Per-rig overrides; any key left out falls back to the town value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RigOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_mode: Option<ReviewMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_review: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_resolve_pr_feedback: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_resolve_merge_conflicts: Option<bool>,
    /// Present-but-null overrides the town value with "disabled".
    #[serde(deserialize_with = "explicit_null", skip_serializing_if = "Option::is_none")]
    pub auto_merge_delay_minutes: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_strategy: Option<MergeStrategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convoy_merge_mode: Option<MergeMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_polecats: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_dispatch_attempts: Option<u32>,
}

impl RigOverrides {
    pub fn from_json(text: &str) -> Result<Self> {
        let o: RigOverrides =
            serde_json::from_str(text).map_err(|e| TownError::invalid("rig config", e.to_string()))?;
        o.validate()?;
        Ok(o)
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(n) = self.max_dispatch_attempts {
            if n == 0 || n > 1000 {
                return Err(TownError::invalid(
                    "rig config",
                    format!("max_dispatch_attempts = {n} is out of range (1..=1000)"),
                ));
            }
        }
        if self.max_concurrent_polecats == Some(0) {
            return Err(TownError::invalid("rig config", "max_concurrent_polecats must be at least 1"));
        }
        check_delay(self.auto_merge_delay_minutes.flatten(), "auto_merge_delay_minutes")
    }
}

/// The effective settings of one rig after resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct RigSettings {
    pub review_mode: ReviewMode,
    pub code_review: bool,
    pub auto_resolve_pr_feedback: bool,
    pub auto_resolve_merge_conflicts: bool,
    pub auto_merge: bool,
    pub auto_merge_delay_minutes: Option<u32>,
    pub merge_strategy: MergeStrategy,
    pub convoy_merge_mode: MergeMode,
    /// Per-rig dispatch cap; the rig override only, else the module default.
    pub max_dispatch_attempts: u32,
    pub has_refinery_config: bool,
}

impl RigSettings {
    pub fn resolve(town: &TownConfig, rig: &RigOverrides, default_max_attempts: u32) -> Self {
        let r = town.refinery.clone().unwrap_or_default();
        RigSettings {
            review_mode: rig.review_mode.unwrap_or(r.review_mode),
            code_review: rig.code_review.unwrap_or(r.code_review),
            auto_resolve_pr_feedback: rig.auto_resolve_pr_feedback.unwrap_or(r.auto_resolve_pr_feedback),
            auto_resolve_merge_conflicts: rig.auto_resolve_merge_conflicts.unwrap_or(r.auto_resolve_merge_conflicts),
            auto_merge: r.auto_merge,
            auto_merge_delay_minutes: match rig.auto_merge_delay_minutes {
                Some(v) => v,
                None => r.auto_merge_delay_minutes,
            },
            merge_strategy: rig.merge_strategy.unwrap_or(town.merge_strategy),
            convoy_merge_mode: rig.convoy_merge_mode.unwrap_or(town.convoy_merge_mode),
            max_dispatch_attempts: rig.max_dispatch_attempts.unwrap_or(default_max_attempts),
            has_refinery_config: town.refinery.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = TownConfig::from_json(r#"{"merge_strategy":"pr","bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = TownConfig::from_json(r#"{"merge_strategy":"yolo"}"#).unwrap_err();
        assert!(e.to_string().contains("direct, pr"), "{e}");
        let e = TownConfig::from_json(r#"{"refinery":{"auto_merge_delay_minutes":-1}}"#).unwrap_err();
        assert!(e.to_string().contains("-1"), "{e}");
        assert!(RigOverrides::from_json(r#"{"max_dispatch_attempts":0}"#).is_err());
        assert!(TownConfig::from_json(r#"{"refinery":{"auto_merge_delay_minutes":999999}}"#).is_err());
    }

    #[test]
    fn resolution_order_rig_then_town_then_default() {
        let mut town = TownConfig::new_town_defaults();
        let none = RigOverrides::default();
        let s = RigSettings::resolve(&town, &none, 5);
        assert_eq!(s.review_mode, ReviewMode::Comments);
        assert_eq!(s.auto_merge_delay_minutes, Some(5));
        assert_eq!(s.max_dispatch_attempts, 5);

        let rig = RigOverrides::from_json(
            r#"{"code_review":false,"auto_merge_delay_minutes":null,"max_dispatch_attempts":2}"#,
        )
        .unwrap();
        let s = RigSettings::resolve(&town, &rig, 5);
        assert!(!s.code_review);
        assert_eq!(s.auto_merge_delay_minutes, None, "explicit null on the rig wins");
        assert_eq!(s.max_dispatch_attempts, 2);

        town.refinery = None;
        let s = RigSettings::resolve(&town, &none, 5);
        assert!(s.code_review, "hard default");
        assert_eq!(s.review_mode, ReviewMode::Rework);
        assert!(!s.auto_resolve_pr_feedback);
        assert!(s.auto_resolve_merge_conflicts);
        assert_eq!(s.auto_merge_delay_minutes, None);
    }

    #[test]
    fn schema_defaults_differ_from_new_town_seed() {
        let d = TownConfig::default();
        assert_eq!(d.merge_strategy, MergeStrategy::Direct);
        assert!(!d.staged_convoys_default);
        let n = TownConfig::new_town_defaults();
        assert_eq!(n.merge_strategy, MergeStrategy::Pr);
        assert!(n.staged_convoys_default);
        assert_eq!(TownConfig::from_json("{}").unwrap(), d);
    }
}
