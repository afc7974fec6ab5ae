//! The TrafficSplit document (`apiVersion: trafficshift.dev/v1alpha1`).
//!
//! Doc comments on these types become the JSON Schema (`trafficshift schema`) and the reference docs.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod aws;
mod duration;
#[cfg(test)]
mod fixture;
pub mod load;
pub mod schema;
pub mod validate;

pub use duration::HumanDuration;
pub use load::{load_paths, DocCache, Loaded, SplitDoc};

pub const API_VERSION: &str = "trafficshift.dev/v1alpha1";
pub const KIND: &str = "TrafficSplit";

/// Weights by backend name, in percent (0-100, summing to 100).
pub type Weights = BTreeMap<String, u32>;

/// A TrafficSplit: one Route53 weighted record set, shared between backends, moved toward `weights`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "TrafficSplit")]
pub struct TrafficSplit {
    /// Must be `trafficshift.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `TrafficSplit`.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: SplitSpec,
}

/// Identity of the split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Name of the split: `[a-z0-9-]{1,63}`, unique per controller. Used in metrics, status and the
    /// ownership TXT record.
    #[schemars(regex(pattern = r"^[a-z0-9-]{1,63}$"))]
    pub name: String,
    /// Free-form labels, kept for tooling; trafficshift does not interpret them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The desired state of the split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SplitSpec {
    pub record: RecordSpec,
    /// The backends sharing the record. Each becomes one weighted record (its name is the SetIdentifier).
    pub backends: Vec<Backend>,
    /// Desired split in percent by backend name: every backend listed, each 0-100, summing to 100,
    /// not all zero.
    pub weights: Weights,
    /// How to move from the current split to `weights`. Without it, trafficshift goes straight to
    /// `weights` (still scaling ECS capacity before raising its weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Health gates checked while a rollout is in progress; a step advances only while all pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    /// How the traffic each backend really receives is measured (CloudWatch request counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<Observe>,
    /// Reach this split's zone and backends in another AWS account by assuming a role there.
    /// Without it the controller's own credentials (and account) are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSpec>,
}

/// Credentials of a cross-account split: the role assumed (on top of the controller's own
/// credentials) for every AWS call the split makes. Splits with the same four values share one
/// set of clients, one credential cache and, per account, one Route53 rate limit.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsSpec {
    /// The role to assume: `arn:aws:iam::<12-digit account>:role/<path/name>` (also `aws-cn` and
    /// `aws-us-gov` partitions). Its trust policy must allow the controller's role.
    pub role_arn: String,
    /// The `sts:ExternalId` the role's trust policy requires (2-1224 characters), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Region of the split's clients (ECS, load balancers, API Gateway, CloudWatch) and of the STS
    /// endpoint, e.g. `eu-west-1`. Default: the controller's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The role session name seen in the target account's CloudTrail: 2-64 characters of
    /// letters, digits and `_+=,.@-`. Default `trafficshift`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
}

impl AwsSpec {
    /// The account the role lives in (the ARN's 12 digits), once `validate` accepted the ARN.
    pub fn account_id(&self) -> Option<&str> {
        let account = self.role_arn.split(':').nth(4)?;
        (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
    }
}

/// Traffic measurement settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Observe {
    /// Request counts are summed over this trailing window (1m-1h, whole minutes: CloudWatch
    /// periods are 60 s). A longer window is steadier but lags a weight change longer. Default 5m.
    #[serde(default = "default_observe_window")]
    pub window: HumanDuration,
}

fn default_observe_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// A CloudWatch metric counting a backend's requests, summed per 60 s period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMetric {
    /// CloudWatch namespace, e.g. `AWS/ApplicationELB`.
    pub namespace: String,
    /// Metric name, e.g. `RequestCount`.
    pub metric_name: String,
    /// Dimensions (name -> value) that select exactly this backend's series.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: BTreeMap<String, String>,
    /// Statistic: `Sum` (default) or `SampleCount`; a request count needs one of those.
    #[serde(default = "default_stat")]
    pub stat: String,
}

fn default_stat() -> String {
    "Sum".into()
}

/// The Route53 record that trafficshift owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordSpec {
    /// Hosted zone: its name (trailing dot optional) or its id (`Z...`).
    pub hosted_zone: String,
    /// Fully qualified record name inside the zone (trailing dot optional).
    pub name: String,
    /// Record type: `A` or `AAAA` (alias records) or `CNAME` (then `ttl` applies).
    #[serde(rename = "type")]
    pub record_type: RecordType,
    /// TTL in seconds for CNAME records (alias records have none). Also sets the default drain delay
    /// (2 x TTL, at least 60 s). Default 60.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub ttl: i64,
    /// Convert an existing non-weighted record of this name and type into the weighted set, in one
    /// atomic change. Its target keeps 100% at first. Without this flag such a record is an error.
    #[serde(default)]
    pub adopt_existing: bool,
    /// Once one backend remains, at 100% (backends removed from the document retired and
    /// drained), collapse the weighted set into a plain record pointing where that backend's
    /// weighted record pointed, in one atomic change that also deletes the state TXT: the
    /// reverse of `adoptExisting`. The name is then handed back as an ordinary record and left
    /// alone. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_when_single: bool,
}

fn default_ttl() -> i64 {
    60
}

/// Route53 record type of the weighted set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RecordType {
    A,
    AAAA,
    CNAME,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::AAAA => "AAAA",
            RecordType::CNAME => "CNAME",
        }
    }
    pub fn is_alias(self) -> bool {
        !matches!(self, RecordType::CNAME)
    }
}

/// One backend. Exactly one of `apiGateway`, `ecs` or `target` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// Backend name, `[A-Za-z0-9_-]{1,128}`; becomes the Route53 SetIdentifier.
    pub name: String,
    /// An API Gateway custom domain (REST first, then HTTP APIs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_gateway: Option<ApiGatewayBackend>,
    /// An ECS service behind an ALB/NLB target group; its desired count follows its share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<EcsBackend>,
    /// A fixed target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<FixedTarget>,
    /// The CloudWatch metric that counts this backend's requests. Default: `AWS/ApplicationELB`
    /// `RequestCount` of an ECS backend's target groups, `AWS/ApiGateway` `Count` of the APIs
    /// mapped to an apiGateway backend's domain; a `target` backend has none unless set here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_metric: Option<RequestMetric>,
}

/// API Gateway backend: the alias target is the custom domain's regional domain name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiGatewayBackend {
    /// The custom domain name configured in API Gateway (e.g. `api.example.com`).
    pub domain_name: String,
}

/// ECS backend: the alias target is the load balancer of the service's first target group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EcsBackend {
    /// Cluster name or ARN.
    pub cluster: String,
    /// Service name or ARN.
    pub service: String,
    /// Tasks needed to carry 100% of the traffic: desiredCount = clamp(ceil(tasksAtFullTraffic x
    /// share/100), minTasks, maxTasks).
    #[schemars(range(min = 1))]
    pub tasks_at_full_traffic: u32,
    /// Lower bound of the desired count, also at 0% (keeps the service warm). Default 1.
    #[serde(default = "default_min_tasks")]
    pub min_tasks: u32,
    /// Upper bound of the desired count. Default: max(tasksAtFullTraffic, minTasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tasks: Option<u32>,
}

fn default_min_tasks() -> u32 {
    1
}

impl EcsBackend {
    pub fn max_tasks(&self) -> u32 {
        self.max_tasks
            .unwrap_or(self.tasks_at_full_traffic.max(self.min_tasks))
    }
}

/// A fixed target: exactly one of `alias` or `cname`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixedTarget {
    /// Alias target (for `A`/`AAAA` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<AliasSpec>,
    /// Canonical name (for `CNAME` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cname: Option<String>,
}

/// A Route53 alias target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AliasSpec {
    /// DNS name of the target (e.g. an ALB's DNS name).
    pub dns_name: String,
    /// Hosted zone id of the target (e.g. the ALB's canonical hosted zone id).
    pub hosted_zone_id: String,
    /// Let Route53 skip this record while its target is unhealthy. Default true.
    #[serde(default = "default_true")]
    pub evaluate_target_health: bool,
}

fn default_true() -> bool {
    true
}

/// Progressive rollout settings. Exactly one of `steps` or `stepPercent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// Increasing percentages (1-100) of the way from the split at rollout start to `weights`; the
    /// last is 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<u32>>,
    /// Alternative to `steps`: equal steps of this size (1-100), the last one 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_percent: Option<u32>,
    /// Minimum hold at each step, with every gate passing, before the next step (e.g. `5m`, `30s`).
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Wait after a backend's weight drops before scaling its ECS service down, and before the
    /// weighted record of a backend removed from the document is deleted. Default 2 x TTL, at
    /// least 60 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_delay: Option<HumanDuration>,
    /// Consecutive failing checks of one gate before `onGateFailure` acts. Default 3.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1))]
    pub failure_threshold: u32,
    /// What a gate failure does: `rollback` (to the split at rollout start) or `hold` (stay, report
    /// Degraded). Default rollback.
    #[serde(default)]
    pub on_gate_failure: OnGateFailure,
    /// Hold at the current step. Drift is still corrected.
    #[serde(default)]
    pub paused: bool,
    /// How long a step may wait for the ECS capacity trafficshift asked for (tasks running and
    /// healthy in every target group of the service) before the step fails: the split reports
    /// Degraded, then `onGateFailure` rolls back or holds. Fargate tasks take 30-90 s to start and
    /// new ALB targets stay `initial` for HealthyThreshold x Interval, so allow several minutes.
    /// Default 10m.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: HumanDuration,
    /// How often each gate is checked while the rollout may move (e.g. `30s`), so that
    /// `failureThreshold` x `gateInterval` is the time a gate must keep failing before
    /// `onGateFailure` acts. Default 30s.
    #[serde(default = "default_gate_interval")]
    pub gate_interval: HumanDuration,
    /// When steps may advance: a step is taken only inside one of these windows (none: any
    /// time). Rollbacks and drift corrections are never held by a window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<ChangeWindow>,
    /// Periods in which steps never advance, whatever `windows` says (e.g. a holiday freeze).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<Freeze>,
}

/// A recurring weekly period in which steps may advance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeWindow {
    /// Days on which the window opens (`mon` ... `sun`), in `timeZone`.
    pub days: Vec<Weekday>,
    /// Local opening time, `HH:MM` (24-hour).
    pub start: String,
    /// Local closing time, `HH:MM`, `24:00` for midnight. An end at or before `start` closes on
    /// the next day (an overnight window belongs to the day it opens).
    pub end: String,
    /// IANA time zone name (e.g. `Asia/Tokyo`, `Europe/Berlin`, `UTC`). Daylight saving time is
    /// followed: `09:00` is 09:00 local time all year.
    pub time_zone: String,
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// A change freeze: no step advances from `from` (inclusive) to `to` (exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Freeze {
    /// Start, RFC 3339 with an offset (e.g. `2026-12-24T00:00:00Z`).
    pub from: String,
    /// End, RFC 3339 with an offset; after `from`.
    pub to: String,
}

fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_progress_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_gate_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_failure_threshold() -> u32 {
    3
}

/// What a gate failure does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnGateFailure {
    /// Return to the split at rollout start at once; stay RolledBack until the document changes.
    #[default]
    Rollback,
    /// Stay at the current step and report Degraded; resume when the gates pass again.
    Hold,
}

/// A health gate. Exactly one check kind is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gate {
    /// Gate name, `[a-z0-9-]{1,63}`, unique within the split.
    pub name: String,
    /// Every named CloudWatch alarm must be in state OK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudwatch_alarm: Option<CloudwatchAlarmGate>,
    /// The ECS backend's service must be stable (the SDKs' ServicesStable definition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs_stable: Option<BackendRef>,
    /// The ECS backend's target group must have at least this share of healthy targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_health: Option<TargetHealthGate>,
    /// A Prometheus instant query must return one value within [min, max].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusGate>,
    /// An HTTP GET must answer with the expected status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGate>,
    /// Every backend's measured traffic share must be within `tolerance` percentage points of
    /// its current weight (see `spec.observe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_share: Option<TrafficShareGate>,
}

/// Traffic share gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficShareGate {
    /// Largest allowed difference, in percentage points (0-100), between a backend's share of the
    /// requests and its weight. Default 10.
    #[serde(default = "default_tolerance")]
    pub tolerance: u32,
    /// What an unknown share means (no measurement yet, or a backend without request data):
    /// `wait` (default), `pass` or `fail`.
    #[serde(default)]
    pub on_no_data: OnTrafficNoData,
    /// After the weights change, the share still reflects the old ones for about a TTL (resolver
    /// caches) plus the window: the gate waits that long before judging. Default: record TTL
    /// plus `observe.window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<HumanDuration>,
}

fn default_tolerance() -> u32 {
    10
}

/// What an unknown traffic share means to its gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnTrafficNoData {
    /// The step waits; no failure is counted toward `failureThreshold`.
    #[default]
    Wait,
    /// An unknown share passes.
    Pass,
    /// An unknown share fails: silence is not success.
    Fail,
}

/// CloudWatch alarm gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudwatchAlarmGate {
    /// Alarm names; each must exist and be OK.
    pub alarm_names: Vec<String>,
    /// What an alarm in INSUFFICIENT_DATA means (a new alarm starts there, and an ALB 5xx metric
    /// is absent while there are no errors): `wait` (default: the step waits and no failure is
    /// counted), `pass` or `fail`.
    #[serde(default)]
    pub on_insufficient_data: OnInsufficientData,
}

/// What a CloudWatch alarm in INSUFFICIENT_DATA means to its gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnInsufficientData {
    /// The step waits; no failure is counted toward `failureThreshold`.
    #[default]
    Wait,
    /// The alarm counts as OK.
    Pass,
    /// The alarm counts as failing.
    Fail,
}

/// Reference to an ECS backend of this split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// Name of an `ecs` backend of this split.
    pub backend: String,
}

/// Target group health gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetHealthGate {
    /// Name of an `ecs` backend of this split.
    pub backend: String,
    /// Minimum percentage (0-100) of registered targets that must be healthy. Default 100.
    #[serde(default = "default_hundred")]
    pub min_healthy_percent: u32,
}

fn default_hundred() -> u32 {
    100
}

/// Prometheus query gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusGate {
    /// Base URL of the Prometheus server (e.g. `http://prometheus:9090`).
    pub address: String,
    /// PromQL instant query returning exactly one sample.
    pub query: String,
    /// The value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// What an empty result (or NaN) means: `fail` (default) or `pass`.
    #[serde(default)]
    pub on_no_data: OnNoData,
    /// Request timeout. Default 5s.
    #[serde(default = "default_gate_timeout")]
    pub timeout: HumanDuration,
}

/// What an empty Prometheus result means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnNoData {
    /// No data fails the gate: silence is not success.
    #[default]
    Fail,
    /// No data passes the gate.
    Pass,
}

/// HTTP check gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGate {
    /// URL to GET (http or https).
    pub url: String,
    /// Expected status code. Default 200.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Request timeout. Default 5s.
    #[serde(default = "default_gate_timeout")]
    pub timeout: HumanDuration,
}

fn default_status() -> u16 {
    200
}
fn default_gate_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl TrafficSplit {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.spec.backends.iter().find(|b| b.name == name)
    }
}

/// Lower-cased, fully qualified (trailing dot) DNS name.
pub fn fqdn(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    if n.ends_with('.') {
        n
    } else {
        format!("{n}.")
    }
}

impl SplitSpec {
    /// Rollout step percentages; `[100]` without a rollout block (straight to `weights`).
    pub fn steps(&self) -> Vec<u32> {
        match &self.rollout {
            Some(Rollout { steps: Some(s), .. }) if !s.is_empty() => s.clone(),
            Some(Rollout {
                step_percent: Some(p),
                ..
            }) if *p > 0 => {
                let mut v: Vec<u32> = (1..).map(|i| i * p).take_while(|&x| x < 100).collect();
                v.push(100);
                v
            }
            _ => vec![100],
        }
    }

    /// Minimum hold at each step (0 without a rollout block).
    pub fn interval(&self) -> Duration {
        self.rollout
            .as_ref()
            .map(|r| r.interval.get())
            .unwrap_or_default()
    }

    /// How long a step may wait for capacity: `rollout.progressDeadline`, 10m without a rollout.
    pub fn progress_deadline(&self) -> Duration {
        self.rollout
            .as_ref()
            .map(|r| r.progress_deadline.get())
            .unwrap_or_else(|| default_progress_deadline().get())
    }

    /// How often gates are checked: `rollout.gateInterval`, 30s without a rollout.
    pub fn gate_interval(&self) -> Duration {
        self.rollout
            .as_ref()
            .map(|r| r.gate_interval.get())
            .unwrap_or_else(|| default_gate_interval().get())
    }

    /// The traffic measurement window: `observe.window`, 5m by default.
    pub fn observe_window(&self) -> Duration {
        self.observe
            .as_ref()
            .map(|o| o.window.get())
            .unwrap_or_else(|| default_observe_window().get())
    }

    /// Wait after a backend's weight drops before scaling it down: `rollout.drainDelay`, else
    /// 2 x TTL, at least 60 s.
    pub fn drain_delay(&self) -> Duration {
        self.rollout
            .as_ref()
            .and_then(|r| r.drain_delay.map(|d| d.get()))
            .unwrap_or_else(|| Duration::from_secs((2 * self.record.ttl.max(0) as u64).max(60)))
    }
}
