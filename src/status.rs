//! The status model served on `/status` and read by `trafficshift status`.
//! Conditions follow Kubernetes conventions.

use serde::{Deserialize, Serialize};

/// Everything `/status` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerStatus {
    pub version: String,
    /// RFC 3339.
    pub generated_at: String,
    pub owner_id: String,
    pub dry_run: bool,
    pub config: ConfigStatus,
    pub splits: Vec<SplitStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    pub paths: Vec<String>,
    pub valid: bool,
    /// `file:line:column: message` for every problem of the last load.
    pub errors: Vec<String>,
    pub last_load: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitStatus {
    pub name: String,
    /// `api.example.com. A` style.
    pub record: String,
    pub hosted_zone: String,
    /// One of metrics::STATES.
    pub state: String,
    pub conditions: Vec<Condition>,
    /// Current step (0 = start split) and number of steps.
    pub step: usize,
    pub steps: usize,
    pub progress: f64,
    /// Half the L1 distance between observed and step weights, 0-1.
    pub drift: f64,
    pub backends: Vec<BackendStatus>,
    pub gates: Vec<GateStatus>,
    /// RFC 3339 time the next step is due, while progressing.
    pub next_step_at: Option<String>,
    /// What the split waits for, in words ("ECS service prod/api stable at 10 tasks", "interval").
    pub waiting_for: Option<String>,
    pub last_reconcile: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    /// Hash of the document in force.
    pub observed_generation: String,
    /// When this controller first saw the split.
    pub first_seen: String,
    /// Newest last, at most 20.
    pub events: Vec<Event>,
    /// The latest on-call override (`trafficshift abort` ...) in the state TXT.
    #[serde(default, rename = "override", skip_serializing_if = "Option::is_none")]
    pub override_: Option<OverrideStatus>,
}

/// An on-call override: what, who, when, why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverrideStatus {
    /// promote, promote-full, abort, retry, pause, resume, suspend, unsuspend.
    pub action: String,
    /// The caller's ARN (`sts:GetCallerIdentity`).
    pub actor: String,
    /// RFC 3339.
    pub at: String,
    pub reason: String,
    /// The controller has carried it out (one-shot actions).
    pub done: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    pub name: String,
    pub target_weight: u32,
    pub step_weight: u32,
    /// None when no record of this backend exists in Route53.
    pub observed_weight: Option<u32>,
    pub ecs: Option<EcsStatus>,
    /// Share of the split's requests this backend served over `observe.window` (0-1), from
    /// CloudWatch; None while unknown. Default for statuses from controllers without it.
    #[serde(default)]
    pub traffic_share: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EcsStatus {
    pub desired: i32,
    pub running: i32,
    pub stable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    pub name: String,
    /// None until first checked.
    pub passing: Option<bool>,
    pub consecutive_failures: u32,
    pub value: Option<f64>,
    pub message: String,
    pub last_check: Option<String>,
}

/// A Kubernetes-style condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, Progressing, Degraded, Paused.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// One CamelCase word.
    pub reason: String,
    pub message: String,
    /// Changes only when `status` flips.
    pub last_transition_time: String,
    pub observed_generation: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub time: String,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub type_: String,
    /// StepAdvanced, GateFailed, RolledBack, DriftCorrected, Conflict, ConfigRejected, ...
    pub reason: String,
    pub message: String,
}

/// RFC 3339 (UTC, seconds) of a unix time.
pub fn rfc3339(unix_secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Current unix time in seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Current unix time in milliseconds.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
