//! One reconcile cycle over the splits that are due. Level-triggered: every cycle reads the live
//! state (one Route53 listing per zone, batched ECS describes), decides, plans, then applies in
//! the order that never makes traffic worse: ECS scale-ups, the Route53 batch (weights and state
//! together, atomically), Application Auto Scaling bounds, ECS scale-downs. `plan` and
//! `--dry-run` run the same code minus apply.
//!
//! A Route53 change is submitted, not waited for: its id is kept in the `Context` and GetChange
//! is asked once per later cycle of its split until INSYNC. Nothing else waits on it except that
//! split's scale-downs, which wait for INSYNC plus the drain delay.
//!
//! The phases live in files named after what they do: `observe` (zones, records, ECS services,
//! alias targets), `gating` (when gates run and what their results add up to), `plan_split` (one
//! split's decision and changes, as data), `autoscaling` (scalable-target bounds) and `apply`
//! (the writes, in order, and the changes still PENDING).

mod accounts;
mod apply;
mod autoscaling;
#[cfg(test)]
mod fakes;
mod gating;
mod observe;
mod plan_split;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::aws::{Aws, EcsService, RecordSet, ScalableTarget, Zone};
use crate::gates::GateChecker;
use crate::plan::PlannedChange;
use crate::rollout::{Note, SplitState};
use crate::spec::{SplitDoc, Weights};
use crate::{Error, Result};

use apply::InFlight;
use observe::Cache;

pub use autoscaling::AasChange;
pub use gating::GateRecord;

/// Shared by every cycle.
pub struct Context {
    pub aws: Aws,
    pub gates: GateChecker,
    pub owner: String,
    pub dry_run: bool,
    /// Measured traffic shares (filled by the traffic poller) and the weights last read.
    pub traffic: std::sync::Arc<crate::traffic::Store>,
    cache: Mutex<Cache>,
    /// Route53 changes submitted and not yet seen INSYNC, by split name (in memory: after a
    /// restart the drains recorded in the TXT, counted from the write, are all there is).
    inflight: Mutex<HashMap<String, InFlight>>,
    /// When the change that lowered a backend's weight was seen INSYNC (unix seconds), by
    /// (split, backend): the backend's drain clock starts there.
    settled: Mutex<HashMap<(String, String), u64>>,
    /// Users' scalable-target bounds read before trafficshift first raised them, until a TXT
    /// write records them (see `autoscaling_changes`).
    bounds: Mutex<HashMap<(String, String), ScalableTarget>>,
    /// Every account's clients; `None` (tests, fakes) runs every split with `aws`.
    pub accounts: Option<std::sync::Arc<crate::aws::accounts::Accounts>>,
    /// One context per assumed role (`spec.aws`): its own caches and in-flight changes, since a
    /// zone id or a change id of one account means nothing in another.
    roles: Mutex<HashMap<crate::spec::AwsSpec, std::sync::Arc<Context>>>,
}

impl Context {
    pub fn new(aws: Aws, owner: impl Into<String>, dry_run: bool) -> Self {
        let traffic = std::sync::Arc::new(crate::traffic::Store::default());
        Context {
            gates: GateChecker::new(aws.clone()).with_traffic(traffic.clone()),
            traffic,
            aws,
            owner: owner.into(),
            dry_run,
            cache: Mutex::new(Cache::default()),
            inflight: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            bounds: Mutex::new(HashMap::new()),
            accounts: None,
            roles: Mutex::new(HashMap::new()),
        }
    }
}

/// A split to reconcile with its gate memory.
#[derive(Debug, Clone)]
pub struct Work {
    pub doc: SplitDoc,
    pub gates: BTreeMap<String, GateRecord>,
}

/// An ECS count change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsChange {
    pub backend: String,
    pub cluster: String,
    pub service: String,
    pub from: i32,
    pub to: i32,
}

/// What one reconcile of one split found and did.
#[derive(Debug, Clone)]
pub struct Report {
    pub state: SplitState,
    pub step: usize,
    pub steps: usize,
    pub progress: f64,
    pub waiting_for: Option<String>,
    pub next_step_at: Option<u64>,
    pub target: Weights,
    pub step_weights: Weights,
    pub observed: Option<Weights>,
    pub drift: f64,
    pub ecs: BTreeMap<String, EcsService>,
    pub route53: Vec<PlannedChange>,
    pub ecs_changes: Vec<EcsChange>,
    /// Scalable-target bounds changes of autoscaled ECS backends.
    pub autoscaling: Vec<AasChange>,
    pub notes: Vec<Note>,
    pub drift_corrected: bool,
    pub rolled_back: bool,
    /// Whether the writes were made (false in dry-run and plan).
    pub applied: bool,
    /// Drains still pending: unix time the last one ends.
    pub drain_until: Option<u64>,
    /// The Route53 change this cycle submitted, PENDING until a later cycle sees it INSYNC.
    pub pending_change: Option<String>,
    /// The latest on-call override in the state TXT (who, when, why).
    pub control: Option<crate::overrides::Override>,
}

impl Report {
    pub fn has_changes(&self) -> bool {
        !self.route53.is_empty() || !self.ecs_changes.is_empty() || !self.autoscaling.is_empty()
    }
}

/// The outcome of one split in a cycle.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub result: Result<Report>,
    pub gates: BTreeMap<String, GateRecord>,
}

struct Pending {
    work: Work,
    zone: Zone,
    records: Vec<RecordSet>,
    report: Option<Report>,
    error: Option<Error>,
}

/// Run one cycle. `apply` false computes the plan only.
/// `now_ms`: Unix time in milliseconds.
pub async fn cycle(ctx: &Context, work: Vec<Work>, now_ms: u64, apply: bool) -> Vec<Outcome> {
    accounts::cycle(ctx, work, now_ms, apply).await
}

/// One cycle of splits that all use `ctx.aws` (one account).
async fn cycle_in(ctx: &Context, work: Vec<Work>, now_ms: u64, apply: bool) -> Vec<Outcome> {
    // 0. Changes still PENDING from earlier cycles: one GetChange each, never a wait.
    let due: Vec<&str> = work.iter().map(|w| w.doc.split.name()).collect();
    ctx.check_inflight(&due, now_ms / 1000).await;
    // 1. Zones and listings: one pass per zone, or targeted lists when cheaper.
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut pending = observe::zones_and_listings(ctx, work, &mut outcomes).await;
    // 2. ECS: one batched describe per cluster (and one Application Auto Scaling describe).
    let live = observe::ecs(ctx, &pending).await;
    // 3. Resolve each distinct alias target once (splits often share an ALB or a domain), so the
    // concurrent per-split planning below finds them cached instead of all asking at once.
    observe::warm_targets(ctx, &pending, &live.services).await;
    // 4. Per split: classification, gates, decision, plan.
    plan_split::plan_all(ctx, &mut pending, &live, now_ms).await;
    // 5. Apply.
    if apply && !ctx.dry_run {
        apply::apply_all(ctx, &mut pending, now_ms / 1000).await;
    }
    outcomes.extend(pending.into_iter().map(Pending::into_outcome));
    outcomes
}

impl Pending {
    fn into_outcome(self) -> Outcome {
        let name = self.work.doc.split.name().to_string();
        let result = match (self.error, self.report) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => Ok(r),
            (None, None) => Err(Error::Other("internal: no report".into())),
        };
        Outcome {
            name,
            result,
            gates: self.work.gates,
        }
    }
}

/// Errors are not Clone (they wrap sources); a shared failure is copied as its message.
fn clone_err(e: &Error) -> Error {
    match e {
        Error::Aws {
            service,
            operation,
            failure,
            message,
        } => Error::Aws {
            service,
            operation,
            failure: *failure,
            message: message.clone(),
        },
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::Conflict(m) => Error::Conflict(m.clone()),
        Error::Fenced(m) => Error::Fenced(m.clone()),
        other => Error::Other(other.to_string()),
    }
}
