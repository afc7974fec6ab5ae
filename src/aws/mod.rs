//! AWS at the edges: small traits the reconciler depends on, one module per service implementing
//! them with the official SDK. Unit tests use hand-written fakes of these traits; integration tests
//! run the real implementations against moto.

use async_trait::async_trait;

use crate::Result;

pub mod accounts;
pub mod apigateway;
pub mod autoscaling;
pub mod cloudwatch;
pub mod connect;
pub mod ecs;
pub mod elbv2;
pub mod limiter;
pub mod metric_data;
pub mod retry;
pub mod route53;

/// A Route53 alias target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasTarget {
    /// Lower-case, with trailing dot.
    pub dns_name: String,
    pub hosted_zone_id: String,
    pub evaluate_target_health: bool,
}

/// One Route53 resource record set, as read or as to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    /// Lower-case, fully qualified, trailing dot. Route53's `\052` escape is decoded to `*`.
    pub name: String,
    /// "A", "AAAA", "CNAME", "TXT", ...
    pub rtype: String,
    pub set_identifier: Option<String>,
    pub weight: Option<i64>,
    pub ttl: Option<i64>,
    pub alias: Option<AliasTarget>,
    /// ResourceRecords values, verbatim (TXT values keep their quotes).
    pub values: Vec<String>,
    /// Any other routing policy field (region, failover, geo, health check id...) makes this record
    /// foreign to us; we keep the health check id so a DELETE can repeat the record exactly.
    pub health_check_id: Option<String>,
    /// True when the record uses a routing policy other than simple or weighted.
    pub other_routing: bool,
}

impl RecordSet {
    pub fn is_weighted(&self) -> bool {
        self.weight.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    Create,
    Delete,
    Upsert,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub action: ChangeAction,
    pub record: RecordSet,
}

/// A hosted zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Id without the `/hostedzone/` prefix.
    pub id: String,
    /// Lower-case, trailing dot.
    pub name: String,
    pub record_count: i64,
    pub private: bool,
}

/// Route53: zones, records, atomic change batches.
#[async_trait]
pub trait Dns: Send + Sync {
    /// Resolve a zone by id (`Z...`) or by name (exact match). NotFound names the zone; a name
    /// that matches several zones (public or private) is a Conflict naming their ids.
    async fn find_zone(&self, name_or_id: &str) -> Result<Zone>;
    /// Every record of the zone (one paged pass, 300 per page).
    async fn list_all(&self, zone_id: &str) -> Result<Vec<RecordSet>>;
    /// Records whose name is `name` or under it, read from `name` onward in Route53's order and
    /// stopping at the first record past `_trafficshift.<name>` (usually one call).
    async fn list_from(&self, zone_id: &str, name: &str) -> Result<Vec<RecordSet>>;
    /// Submit one atomic change batch; returns the change id.
    async fn change(&self, zone_id: &str, comment: &str, changes: &[Change]) -> Result<String>;
    /// One GetChange: whether the change is INSYNC (false while it is PENDING). Never waits, so
    /// a slow propagation holds no reconcile cycle.
    async fn insync(&self, change_id: &str) -> Result<bool>;
}

/// What trafficshift needs to know about an ECS service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsService {
    pub cluster: String,
    pub service: String,
    pub arn: String,
    pub status: String,
    pub desired: i32,
    pub running: i32,
    pub pending: i32,
    /// Number of entries in `deployments`.
    pub deployments: usize,
    /// `rolloutState` of the PRIMARY deployment, e.g. COMPLETED, IN_PROGRESS, FAILED.
    pub rollout_state: Option<String>,
    /// Target group ARNs from `loadBalancers`, in order.
    pub target_groups: Vec<String>,
}

impl EcsService {
    /// The AWS SDKs' ServicesStable waiter: one deployment, running == desired, rollout not FAILED.
    pub fn is_stable(&self) -> bool {
        self.deployments == 1
            && self.running == self.desired
            && self.rollout_state.as_deref() != Some("FAILED")
    }
}

/// ECS: describe (batched by 10 per cluster) and set desired counts.
#[async_trait]
pub trait Ecs: Send + Sync {
    /// Describe services of one cluster (the implementation batches 10 per call). A service that
    /// does not exist (or is INACTIVE) is absent from the result.
    async fn describe(&self, cluster: &str, services: &[String]) -> Result<Vec<EcsService>>;
    async fn set_desired(&self, cluster: &str, service: &str, desired: i32) -> Result<()>;
}

/// Resolves backends to alias targets: API Gateway custom domains and ELB target groups.
#[async_trait]
pub trait Targets: Send + Sync {
    /// Custom domain -> (regionalDomainName, regionalHostedZoneId); REST API (apigateway) first,
    /// then HTTP API (apigatewayv2).
    async fn api_gateway_domain(&self, domain_name: &str) -> Result<AliasTarget>;
    /// Target group ARN -> its (first) load balancer's (DNSName, CanonicalHostedZoneId).
    async fn target_group_lb(&self, target_group_arn: &str) -> Result<AliasTarget>;
    /// Target group ARN -> (healthy, total registered) targets.
    async fn target_health(&self, target_group_arn: &str) -> Result<(u32, u32)>;
}

// The bounds are part of the persisted rollout state, so the pure core owns their type.
pub use crate::state::ScalableTarget;

/// Application Auto Scaling, `ecs:service:DesiredCount` targets only.
#[async_trait]
pub trait Autoscaling: Send + Sync {
    /// The scalable targets of these `(cluster, service)` pairs (batched, 50 resource ids per
    /// call). Services without one are absent from the answer.
    async fn ecs_targets(
        &self,
        services: &[(String, String)],
    ) -> Result<std::collections::HashMap<(String, String), ScalableTarget>>;
    /// Set the target's bounds (RegisterScalableTarget on an existing target updates it in place).
    async fn set_bounds(&self, cluster: &str, service: &str, bounds: ScalableTarget) -> Result<()>;
}

/// CloudWatch alarms.
#[async_trait]
pub trait Alarms: Send + Sync {
    /// Alarm name -> state value ("OK", "ALARM", "INSUFFICIENT_DATA"). Missing alarms are absent.
    async fn alarm_states(&self, names: &[String]) -> Result<Vec<(String, String)>>;
}

/// All AWS edges, shared by the controller.
#[derive(Clone)]
pub struct Aws {
    pub dns: std::sync::Arc<dyn Dns>,
    pub ecs: std::sync::Arc<dyn Ecs>,
    pub targets: std::sync::Arc<dyn Targets>,
    pub alarms: std::sync::Arc<dyn Alarms>,
    pub autoscaling: std::sync::Arc<dyn Autoscaling>,
}
