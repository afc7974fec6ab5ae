//! One reconcile cycle over the splits that are due. Level-triggered: every cycle reads the live
//! state (one Route53 listing per zone, batched ECS describes), decides, plans, then applies in
//! the order that never makes traffic worse: ECS scale-ups, the Route53 batch (weights and state
//! together, atomically), Application Auto Scaling bounds, ECS scale-downs. `plan` and
//! `--dry-run` run the same code minus apply.
//!
//! A Route53 change is submitted, not waited for: its id is kept in the `Context` and GetChange
//! is asked once per later cycle of its split until INSYNC. Nothing else waits on it except that
//! split's scale-downs, which wait for INSYNC plus the drain delay.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::FutureExt;
use tracing::{info, warn};

use crate::aws::{AliasTarget, Aws, Change, EcsService, RecordSet, ScalableTarget, Zone};
use crate::gates::GateChecker;
use crate::plan::{self, Observed, PlannedChange, Target};
use crate::rollout::{self, Decision, EcsObs, GateSummary, Note, SplitState};
use crate::spec::{fqdn, SplitDoc, TrafficSplit, Weights};
use crate::state::Phase;
use crate::weights::{drift, show};
use crate::{Error, Result};

/// How long zone ids and resolved alias targets are reused before being read again.
const CACHE_TTL: Duration = Duration::from_secs(300);

/// Shared by every cycle.
pub struct Context {
    pub aws: Aws,
    pub gates: GateChecker,
    pub owner: String,
    pub dry_run: bool,
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
}

/// A submitted Route53 change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight {
    change_id: String,
    submitted: u64,
    /// Backends whose weight this change (or an earlier one it replaced, still PENDING then)
    /// lowered; Route53 applies changes in order, so this one's INSYNC covers them all.
    lowered: Vec<String>,
}

#[derive(Default)]
struct Cache {
    zones: HashMap<String, (Zone, Instant)>,
    targets: HashMap<String, (AliasTarget, Instant)>,
}

impl Context {
    pub fn new(aws: Aws, owner: impl Into<String>, dry_run: bool) -> Self {
        Context {
            gates: GateChecker::new(aws.clone()),
            aws,
            owner: owner.into(),
            dry_run,
            cache: Mutex::new(Cache::default()),
            inflight: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            bounds: Mutex::new(HashMap::new()),
        }
    }

    /// Ask GetChange once for each change of these splits still PENDING. A failed GetChange
    /// leaves the change pending (it is asked again next cycle) and never resubmits anything:
    /// the batch was accepted.
    async fn check_inflight(&self, splits: &[&str], now: u64) {
        let ids: std::collections::BTreeSet<String> = {
            let inflight = self.inflight.lock().expect("inflight lock");
            splits
                .iter()
                .filter_map(|s| inflight.get(*s).map(|f| f.change_id.clone()))
                .collect()
        };
        for id in ids {
            match self.aws.dns.insync(&id).await {
                Ok(true) => {
                    let mut inflight = self.inflight.lock().expect("inflight lock");
                    let mut settled = self.settled.lock().expect("settled lock");
                    inflight.retain(|split, f| {
                        if f.change_id != id {
                            return true;
                        }
                        for b in &f.lowered {
                            settled.insert((split.clone(), b.clone()), now);
                        }
                        false
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(change = %id, error = %e, "GetChange failed; the change stays pending and is asked again next cycle")
                }
            }
        }
    }

    /// Why a backend whose weight dropped must not scale down yet, if it must not: the change
    /// that lowered it is not INSYNC, or the drain delay since it was has not passed. Returns
    /// (reason, unix time it may). Backends whose weight did not drop are not held here.
    fn scale_down_hold(
        &self,
        split: &str,
        backend: &str,
        drain: Duration,
        now: u64,
    ) -> Option<(String, u64)> {
        if let Some(f) = self
            .inflight
            .lock()
            .expect("inflight lock")
            .get(split)
            .filter(|f| f.lowered.iter().any(|b| b == backend))
        {
            return Some((
                format!(
                    "Route53 change {} (submitted at {}) to be INSYNC before scaling {backend} down",
                    f.change_id, f.submitted
                ),
                now + 1,
            ));
        }
        let key = (split.to_string(), backend.to_string());
        let at = *self.settled.lock().expect("settled lock").get(&key)?;
        let until = at + drain.as_secs();
        (now < until).then(|| {
            (
                format!("DNS caches to drain until {until} (the change lowering {backend} was INSYNC at {at}) before scaling it down"),
                until,
            )
        })
    }

    async fn zone(&self, name_or_id: &str) -> Result<Zone> {
        let key = name_or_id.trim_end_matches('.').to_ascii_lowercase();
        if let Some((z, at)) = self.cache.lock().expect("cache lock").zones.get(&key) {
            if at.elapsed() < CACHE_TTL {
                return Ok(z.clone());
            }
        }
        let z = self.aws.dns.find_zone(name_or_id).await?;
        self.cache
            .lock()
            .expect("cache lock")
            .zones
            .insert(key, (z.clone(), Instant::now()));
        Ok(z)
    }

    /// Keep the cached record count true (it chooses between a full pass and targeted lists):
    /// set it from a full pass, or move it by what an applied batch created and deleted.
    fn update_zone_count(&self, zone_id: &str, f: impl Fn(i64) -> i64) {
        let mut cache = self.cache.lock().expect("cache lock");
        for (z, _) in cache.zones.values_mut().filter(|(z, _)| z.id == zone_id) {
            z.record_count = f(z.record_count).max(0);
        }
    }

    async fn cached_target<F, Fut>(&self, key: String, f: F) -> Result<AliasTarget>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<AliasTarget>>,
    {
        if let Some((t, at)) = self.cache.lock().expect("cache lock").targets.get(&key) {
            if at.elapsed() < CACHE_TTL {
                return Ok(t.clone());
            }
        }
        let t = f().await?;
        self.cache
            .lock()
            .expect("cache lock")
            .targets
            .insert(key, (t.clone(), Instant::now()));
        Ok(t)
    }
}

/// What a controller remembers of one gate between cycles (in memory only: after a restart every
/// gate must pass a fresh check before the next step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateRecord {
    pub passing: Option<bool>,
    /// The latest check said to wait (not a pass, not a failure); `passing` is then false.
    pub waiting: bool,
    pub consecutive_failures: u32,
    pub value: Option<f64>,
    pub message: String,
    pub last_check: Option<u64>,
    /// Unix time of the latest failed check (a failing gate stops the step's clock).
    pub last_failure: Option<u64>,
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

/// A change of an autoscaled ECS service's scalable-target bounds (its desired count belongs to
/// Application Auto Scaling, so trafficshift moves the minimum instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AasChange {
    pub backend: String,
    pub cluster: String,
    pub service: String,
    pub from: ScalableTarget,
    pub to: ScalableTarget,
}

impl AasChange {
    /// Back to (towards) the user's bounds: a scale-down, held like one.
    pub fn lowers(&self) -> bool {
        self.to.min < self.from.min || self.to.max < self.from.max
    }
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
    // 0. Changes still PENDING from earlier cycles: one GetChange each, never a wait.
    let due: Vec<&str> = work.iter().map(|w| w.doc.split.name()).collect();
    ctx.check_inflight(&due, now_ms / 1000).await;
    // 1. Zones and listings: one pass per zone, or targeted lists when cheaper.
    let mut by_zone: BTreeMap<String, Vec<Work>> = BTreeMap::new();
    for w in work {
        by_zone
            .entry(w.doc.split.spec.record.hosted_zone.clone())
            .or_default()
            .push(w);
    }
    let mut pending: Vec<Pending> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (zone_ref, group) in by_zone {
        let zone = match ctx.zone(&zone_ref).await {
            Ok(z) => z,
            Err(e) => {
                fail_all(group, &e, &mut outcomes);
                continue;
            }
        };
        let mut names: Vec<String> = group
            .iter()
            .map(|w| fqdn(&w.doc.split.spec.record.name))
            .collect();
        names.sort();
        names.dedup();
        let full_pass_cost = (zone.record_count.max(1) as usize).div_ceil(300);
        let listing: Result<HashMap<String, Vec<RecordSet>>> = if names.len() < full_pass_cost {
            let mut m = HashMap::new();
            let mut err = None;
            for n in &names {
                match ctx.aws.dns.list_from(&zone.id, n).await {
                    Ok(r) => {
                        m.insert(n.clone(), r);
                    }
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            match err {
                Some(e) => Err(e),
                None => Ok(m),
            }
        } else {
            ctx.aws.dns.list_all(&zone.id).await.map(|all| {
                ctx.update_zone_count(&zone.id, |_| all.len() as i64);
                let mut m: HashMap<String, Vec<RecordSet>> = HashMap::new();
                for n in &names {
                    let txt = crate::state::txt_name(n);
                    m.insert(
                        n.clone(),
                        all.iter()
                            .filter(|r| &r.name == n || r.name == txt)
                            .cloned()
                            .collect(),
                    );
                }
                m
            })
        };
        match listing {
            Ok(m) => {
                for w in group {
                    let n = fqdn(&w.doc.split.spec.record.name);
                    let records = m.get(&n).cloned().unwrap_or_default();
                    pending.push(Pending {
                        work: w,
                        zone: zone.clone(),
                        records,
                        report: None,
                        error: None,
                    });
                }
            }
            Err(e) => fail_all(group, &e, &mut outcomes),
        }
    }

    // 2. ECS: one batched describe per cluster.
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in &pending {
        for b in &p.work.doc.split.spec.backends {
            if let Some(e) = &b.ecs {
                wanted
                    .entry(e.cluster.clone())
                    .or_default()
                    .push(e.service.clone());
            }
        }
    }
    let mut services: HashMap<(String, String), EcsService> = HashMap::new();
    let mut cluster_errors: HashMap<String, Error> = HashMap::new();
    // 2b. Application Auto Scaling: one batched describe for every ECS service of the cycle.
    let pairs: Vec<(String, String)> = wanted
        .iter()
        .flat_map(|(c, svcs)| svcs.iter().map(move |s| (c.clone(), s.clone())))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let scalable: Result<HashMap<(String, String), ScalableTarget>> = if pairs.is_empty() {
        Ok(HashMap::new())
    } else {
        ctx.aws.autoscaling.ecs_targets(&pairs).await
    };
    for (cluster, mut svcs) in wanted {
        svcs.sort();
        svcs.dedup();
        match ctx.aws.ecs.describe(&cluster, &svcs).await {
            Ok(found) => {
                for s in found {
                    services.insert((cluster.clone(), s.service.clone()), s.clone());
                    // Also index by the name the document used (it may be an ARN).
                    services.insert((cluster.clone(), s.arn.clone()), s);
                }
            }
            Err(e) => {
                cluster_errors.insert(cluster, e);
            }
        }
    }

    // 3. Resolve each distinct alias target once (splits often share an ALB or a domain), so the
    // concurrent per-split planning below finds them cached instead of all asking at once.
    let mut domains = std::collections::BTreeSet::new();
    let mut tgs = std::collections::BTreeSet::new();
    for p in &pending {
        for b in &p.work.doc.split.spec.backends {
            if let Some(a) = &b.api_gateway {
                domains.insert(a.domain_name.clone());
            }
            if let Some(e) = &b.ecs {
                if let Some(tg) = services
                    .get(&(e.cluster.clone(), e.service.clone()))
                    .and_then(|s| s.target_groups.first())
                {
                    tgs.insert(tg.clone());
                }
            }
        }
    }
    // Failures are reported by the split that needs the target, below.
    for d in domains {
        let _ = ctx
            .cached_target(format!("apigw:{d}"), || {
                ctx.aws.targets.api_gateway_domain(&d)
            })
            .await;
    }
    for tg in tgs {
        let _ = ctx
            .cached_target(format!("tg:{tg}"), || ctx.aws.targets.target_group_lb(&tg))
            .await;
    }

    // 4. Per split: classification, gates, decision, plan.
    join_all(
        pending
            .iter_mut()
            .map(|p| plan_split(ctx, p, &services, &cluster_errors, &scalable, now_ms)),
    )
    .await;

    // 5. Apply.
    if apply && !ctx.dry_run {
        apply_all(ctx, &mut pending, now_ms / 1000).await;
    }

    for p in pending {
        let name = p.work.doc.split.name().to_string();
        let result = match (p.error, p.report) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => Ok(r),
            (None, None) => Err(Error::Other("internal: no report".into())),
        };
        outcomes.push(Outcome {
            name,
            result,
            gates: p.work.gates,
        });
    }
    outcomes
}

/// A failure shared by every split of a zone (its lookup or listing failed).
fn fail_all(group: Vec<Work>, e: &Error, outcomes: &mut Vec<Outcome>) {
    for w in group {
        outcomes.push(Outcome {
            name: w.doc.split.name().to_string(),
            result: Err(clone_err(e)),
            gates: w.gates,
        });
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

async fn resolve_targets(
    ctx: &Context,
    split: &TrafficSplit,
    services: &HashMap<(String, String), EcsService>,
    cluster_errors: &HashMap<String, Error>,
) -> Result<BTreeMap<String, Target>> {
    let cname = !split.spec.record.record_type.is_alias();
    let mut out = BTreeMap::new();
    for b in &split.spec.backends {
        let alias = if let Some(api) = &b.api_gateway {
            let d = api.domain_name.clone();
            ctx.cached_target(format!("apigw:{d}"), || {
                ctx.aws.targets.api_gateway_domain(&d)
            })
            .await?
        } else if let Some(e) = &b.ecs {
            if let Some(err) = cluster_errors.get(&e.cluster) {
                return Err(clone_err(err));
            }
            let svc = services.get(&(e.cluster.clone(), e.service.clone())).ok_or_else(|| {
                Error::NotFound(format!(
                    "ECS service {} not found (or INACTIVE) in cluster {}: check spec.backends[{}].ecs",
                    e.service, e.cluster, b.name
                ))
            })?;
            let tg = svc.target_groups.first().ok_or_else(|| {
                Error::NotFound(format!(
                    "ECS service {}/{} has no load balancer target group; trafficshift routes to its ALB",
                    e.cluster, e.service
                ))
            })?;
            let tg = tg.clone();
            ctx.cached_target(format!("tg:{tg}"), || ctx.aws.targets.target_group_lb(&tg))
                .await?
        } else if let Some(t) = &b.target {
            if let Some(a) = &t.alias {
                AliasTarget {
                    dns_name: fqdn(&a.dns_name),
                    hosted_zone_id: a.hosted_zone_id.clone(),
                    evaluate_target_health: a.evaluate_target_health,
                }
            } else if let Some(c) = &t.cname {
                out.insert(b.name.clone(), Target::Cname(fqdn(c)));
                continue;
            } else {
                return Err(Error::Other(format!(
                    "backend {} has an empty target",
                    b.name
                )));
            }
        } else {
            return Err(Error::Other(format!("backend {} has no kind", b.name)));
        };
        let t = if cname {
            // `dualstack.` is for A/AAAA aliases; a CNAME keeps the name it always had.
            let n = &alias.dns_name;
            Target::Cname(n.strip_prefix("dualstack.").unwrap_or(n).to_string())
        } else {
            Target::Alias(alias)
        };
        out.insert(b.name.clone(), t);
    }
    Ok(out)
}

/// Gates are checked while a rollout may move: not when Complete/RolledBack, not when paused.
fn gates_matter(split: &TrafficSplit, obs: &Observed) -> bool {
    if split.spec.gates.is_empty() || split.spec.rollout.as_ref().is_some_and(|r| r.paused) {
        return false;
    }
    match &obs.state {
        Some(s) if rollout::same_generation(&s.generation, split) => s.phase == Phase::Progressing,
        _ => true,
    }
}

/// Whether an ECS gate's failure is the controller's own doing: it is waiting for capacity it
/// asked for (the stored state of this rollout says since when) and `progressDeadline` has not
/// passed. A deployment whose rolloutState is FAILED is never waited for.
fn awaits_capacity(split: &TrafficSplit, obs: &Observed, now: u64) -> bool {
    let Some(s) = &obs.state else { return false };
    let Some(since) = s.capacity_since else {
        return false;
    };
    rollout::same_generation(&s.generation, split)
        && s.phase == Phase::Progressing
        && now < since.saturating_add(split.spec.progress_deadline().as_secs())
}

/// The gates whose next check is due at `now`.
fn due_gates<'a>(
    split: &'a TrafficSplit,
    records: &BTreeMap<String, GateRecord>,
    now: u64,
) -> Vec<&'a crate::spec::Gate> {
    let every = split.spec.gate_interval().as_secs();
    split
        .spec
        .gates
        .iter()
        .filter(|g| {
            records
                .get(&g.name)
                .and_then(|r| r.last_check)
                .is_none_or(|at| now >= at + every)
        })
        .collect()
}

/// Check the gates that are due: each runs every `rollout.gateInterval` (and at once when it has
/// never been checked by this process), so `failureThreshold` x `gateInterval` is a time.
async fn check_gates(
    ctx: &Context,
    split: &TrafficSplit,
    records: &mut BTreeMap<String, GateRecord>,
    capacity_wait: bool,
    services: &BTreeMap<String, EcsService>,
    now: u64,
) -> Vec<Note> {
    // Gates the checker leaves alone (plan without --with-gates) stay "not checked yet".
    let due: Vec<_> = due_gates(split, records, now)
        .into_iter()
        .filter(|g| ctx.gates.will_check(g))
        .collect();
    let results = join_all(due.iter().map(|g| ctx.gates.check(split, g))).await;
    let mut notes = Vec::new();
    for (g, mut r) in due.into_iter().zip(results) {
        // The controller's own scale-up makes ecsStable and targetHealth fail until the tasks
        // serve; that is a wait (bounded by progressDeadline), not a failure.
        let backend = g
            .ecs_stable
            .as_ref()
            .map(|e| &e.backend)
            .or(g.target_health.as_ref().map(|t| &t.backend));
        if let Some(b) = backend {
            let failed_rollout = services
                .get(b)
                .is_some_and(|s| s.rollout_state.as_deref() == Some("FAILED"));
            if capacity_wait && !r.passing && !failed_rollout {
                r = crate::gates::GateOutcome {
                    waiting: true,
                    message: format!(
                        "waiting for the capacity trafficshift asked for: {}",
                        r.message
                    ),
                    ..r
                };
            }
        }
        let rec = records.entry(g.name.clone()).or_default();
        if r.passing {
            rec.consecutive_failures = 0;
        } else if !r.waiting {
            rec.consecutive_failures += 1;
            rec.last_failure = Some(now);
            notes.push(Note {
                warning: true,
                reason: "GateFailed",
                message: format!(
                    "gate {} failed ({} in a row): {}",
                    g.name, rec.consecutive_failures, r.message
                ),
            });
        }
        rec.passing = Some(r.passing);
        rec.waiting = r.waiting;
        rec.value = r.value;
        rec.message = r.message;
        rec.last_check = Some(now);
    }
    notes
}

fn summarize(
    split: &TrafficSplit,
    records: &BTreeMap<String, GateRecord>,
    now: u64,
) -> GateSummary {
    let threshold = split
        .spec
        .rollout
        .as_ref()
        .map(|r| r.failure_threshold)
        .unwrap_or(3)
        .max(1);
    let mut s = GateSummary {
        all_passing: true,
        ..GateSummary::default()
    };
    for g in &split.spec.gates {
        match records.get(&g.name) {
            Some(r) if r.passing == Some(true) => {}
            Some(r) if r.waiting => {
                s.all_passing = false;
                s.waiting.push(format!("{}: {}", g.name, r.message));
            }
            Some(r) => {
                s.all_passing = false;
                s.failing.push(format!("{}: {}", g.name, r.message));
                if r.consecutive_failures >= threshold && s.tripped.is_none() {
                    s.tripped = Some((g.name.clone(), r.message.clone()));
                }
                if r.consecutive_failures == 1 && r.last_check == Some(now) {
                    s.new_failure = Some(now);
                }
            }
            None => {
                s.all_passing = false;
                s.failing.push(format!("{}: not checked yet", g.name));
            }
        }
        if let Some(t) = records.get(&g.name).and_then(|r| r.last_failure) {
            s.last_failure = Some(s.last_failure.map_or(t, |x: u64| x.max(t)));
        }
    }
    s
}

/// The short name of a target group ARN (`arn:...:targetgroup/api-tg/73e2d6bc24d8a067` ->
/// `api-tg`), for status messages.
fn tg_name(arn: &str) -> &str {
    arn.split_once(":targetgroup/")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or(arn)
}

/// The target group of `svc` with the fewest healthy targets: (name, healthy).
async fn least_healthy(ctx: &Context, svc: &EcsService) -> Result<(String, u32)> {
    let mut least: Option<(String, u32)> = None;
    for tg in &svc.target_groups {
        let (healthy, _total) = ctx.aws.targets.target_health(tg).await?;
        if least.as_ref().is_none_or(|(_, h)| healthy < *h) {
            least = Some((tg_name(tg).to_string(), healthy));
        }
    }
    Ok(least.unwrap_or_default())
}

async fn plan_split(
    ctx: &Context,
    p: &mut Pending,
    services: &HashMap<(String, String), EcsService>,
    cluster_errors: &HashMap<String, Error>,
    scalable: &Result<HashMap<(String, String), ScalableTarget>>,
    now_ms: u64,
) {
    // Planning is pure code over remote input, and property-tested not to panic. Should a bug
    // slip through anyway, it costs this split its cycle, never the other splits or the process:
    // nothing is written for it, and the panic is reported as its error.
    let planned = std::panic::AssertUnwindSafe(plan_split_inner(
        ctx,
        p,
        services,
        cluster_errors,
        scalable,
        now_ms,
    ))
    .catch_unwind()
    .await;
    match planned {
        Ok(Ok(r)) => p.report = Some(r),
        Ok(Err(e)) => p.error = Some(e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            p.error = Some(Error::Other(format!(
                "internal error while planning (nothing written; please report it): {what}"
            )));
        }
    }
}

async fn plan_split_inner(
    ctx: &Context,
    p: &mut Pending,
    services: &HashMap<(String, String), EcsService>,
    cluster_errors: &HashMap<String, Error>,
    scalable: &Result<HashMap<(String, String), ScalableTarget>>,
    now_ms: u64,
) -> Result<Report> {
    let now = now_ms / 1000;
    let split = p.work.doc.split.clone();
    let targets = resolve_targets(ctx, &split, services, cluster_errors).await?;
    let refs: Vec<&RecordSet> = p.records.iter().collect();
    let obs = plan::classify(&split, &ctx.owner, &refs, &targets)?;

    // A new rollout forgets the gate history of the previous one.
    if obs
        .state
        .as_ref()
        .is_none_or(|s| !rollout::same_generation(&s.generation, &split))
    {
        p.work.gates.retain(|_, r| r.consecutive_failures == 0);
    }
    let mut ecs_obs = BTreeMap::new();
    let mut ecs_live = BTreeMap::new();
    for b in &split.spec.backends {
        if let Some(e) = &b.ecs {
            if let Some(s) = services.get(&(e.cluster.clone(), e.service.clone())) {
                ecs_obs.insert(
                    b.name.clone(),
                    EcsObs {
                        desired: s.desired,
                        running: s.running,
                        stable: s.is_stable(),
                        deployments: s.deployments,
                        rollout_failed: s.rollout_state.as_deref() == Some("FAILED"),
                        load_balanced: !s.target_groups.is_empty(),
                        healthy: None,
                    },
                );
                ecs_live.insert(b.name.clone(), s.clone());
            }
        }
    }

    let mut notes = Vec::new();
    if let Some(why) = &obs.state_problem {
        notes.push(Note {
            warning: true,
            reason: "StateInvalid",
            message: format!(
                "the stored rollout state cannot be read ({why}); starting a new rollout from what Route53 shows"
            ),
        });
    }
    if gates_matter(&split, &obs) {
        let capacity_wait = awaits_capacity(&split, &obs, now);
        notes.extend(
            check_gates(
                ctx,
                &split,
                &mut p.work.gates,
                capacity_wait,
                &ecs_live,
                now,
            )
            .await,
        );
    }
    let summary = summarize(&split, &p.work.gates, now);

    let decide = |ecs: &BTreeMap<String, EcsObs>| {
        rollout::decide(&rollout::Inputs {
            split: &split,
            owner: &ctx.owner,
            stored: obs.state.as_ref(),
            observed: obs.weights.as_ref(),
            ecs,
            gates: &summary,
            now_ms,
        })
    };
    let mut d: Decision = decide(&ecs_obs);
    // Target health costs a call per target group: read it only for the backends whose weight
    // is about to rise (the decision says which), then decide again with it.
    if !d.needs_target_health.is_empty() {
        for b in &d.needs_target_health {
            if let (Some(o), Some(s)) = (ecs_obs.get_mut(b), ecs_live.get(b)) {
                o.healthy = Some(least_healthy(ctx, s).await?);
            }
        }
        d = decide(&ecs_obs);
    }
    notes.extend(d.notes.iter().cloned());

    // Autoscaled services first: their bounds go into the state the batch below writes.
    let has_ecs = split.spec.backends.iter().any(|b| b.ecs.is_some());
    let none = HashMap::new();
    let scalable = match scalable {
        Ok(s) => s,
        // Without knowing whether an autoscaler owns a desired count, writing it could fight it.
        Err(e) if has_ecs => return Err(clone_err(e)),
        Err(_) => &none,
    };
    let autoscaling = autoscaling_changes(ctx, &split, obs.state.as_ref(), &mut d, scalable);

    let intended = obs
        .state
        .as_ref()
        .map(|s| s.current.clone())
        .unwrap_or_default();
    let route53 = match &d.write {
        Some(w) => plan::route53_changes(&split, &obs, w, &d.state, &targets, &intended)?,
        None => vec![],
    };
    let drift_corrected = route53.iter().any(|c| c.drift);
    if drift_corrected {
        notes.push(Note {
            warning: true,
            reason: "DriftCorrected",
            message: format!(
                "Route53 showed {} where trafficshift applied {}; putting it back",
                show(&obs.raw_weights),
                show(&intended)
            ),
        });
    }

    let mut ecs_changes = Vec::new();
    for b in &split.spec.backends {
        let Some(e) = &b.ecs else { continue };
        if scalable.contains_key(&(e.cluster.clone(), e.service.clone())) {
            // Application Auto Scaling owns this desired count; see `autoscaling_changes`.
            continue;
        }
        let Some(&want) = d.ecs_desired.get(&b.name) else {
            continue;
        };
        if let Some(live) = ecs_live.get(&b.name) {
            if live.desired != want as i32 {
                ecs_changes.push(EcsChange {
                    backend: b.name.clone(),
                    cluster: e.cluster.clone(),
                    service: e.service.clone(),
                    from: live.desired,
                    to: want as i32,
                });
            }
        }
    }

    let step_weights = d.state.current.clone();
    let drift_ratio = drift(
        obs.weights.as_ref().unwrap_or(&Weights::new()),
        &step_weights,
    );
    let drain_until = d
        .state
        .drains
        .values()
        .filter(|x| x.until > now)
        .map(|x| x.until)
        .max();
    Ok(Report {
        state: d.status,
        step: d.state.step,
        steps: d.steps,
        progress: d.progress,
        waiting_for: d.waiting_for.clone(),
        next_step_at: d.next_step_at,
        target: split.spec.weights.clone(),
        step_weights,
        observed: obs.weights.clone(),
        drift: if obs.weights.is_none() {
            1.0
        } else {
            drift_ratio
        },
        ecs: ecs_live,
        route53,
        ecs_changes,
        autoscaling,
        notes,
        drift_corrected,
        rolled_back: d.rolled_back,
        applied: false,
        drain_until,
        pending_change: None,
    })
}

/// Bounds for the autoscaled ECS backends of a split. The decided task count becomes the
/// scalable target's minimum (the maximum grows to it if needed), so the autoscaler can scale
/// above it but not below; when the count falls back to the user's minimum, the user's bounds
/// return. The user's bounds are kept in the state TXT (`d.state.autoscaling`) from the first
/// raise until they are restored; until a batch has written them they live in the `Context`.
fn autoscaling_changes(
    ctx: &Context,
    split: &TrafficSplit,
    stored: Option<&crate::state::RolloutState>,
    d: &mut Decision,
    scalable: &HashMap<(String, String), ScalableTarget>,
) -> Vec<AasChange> {
    let mut out = Vec::new();
    let mut remembered = ctx.bounds.lock().expect("bounds lock");
    for b in &split.spec.backends {
        let Some(e) = &b.ecs else { continue };
        let key = (e.cluster.clone(), e.service.clone());
        let Some(&live) = scalable.get(&key) else {
            continue;
        };
        let Some(&want) = d.ecs_desired.get(&b.name) else {
            continue;
        };
        let want = i32::try_from(want).unwrap_or(i32::MAX);
        let user = stored
            .and_then(|s| s.autoscaling.get(&b.name).copied())
            .or_else(|| remembered.get(&key).copied())
            .unwrap_or(live);
        let to = if want > user.min {
            ScalableTarget {
                min: want,
                max: user.max.max(want),
            }
        } else {
            user
        };
        if to == user && live == user {
            // Restored (or never raised): forget the user's bounds.
            d.state.autoscaling.remove(&b.name);
            remembered.remove(&key);
        } else {
            d.state.autoscaling.insert(b.name.clone(), user);
            if stored.is_none_or(|s| !s.autoscaling.contains_key(&b.name)) {
                remembered.insert(key.clone(), user);
            }
        }
        if live != to {
            out.push(AasChange {
                backend: b.name.clone(),
                cluster: e.cluster.clone(),
                service: e.service.clone(),
                from: live,
                to,
            });
        }
    }
    out
}

async fn set_bounds(ctx: &Context, split: &str, c: &AasChange, why: &str) -> Result<()> {
    info!(split, cluster = %c.cluster, service = %c.service, from_min = c.from.min, from_max = c.from.max, to_min = c.to.min, to_max = c.to.max, reason = why, "scalable target bounds");
    ctx.aws
        .autoscaling
        .set_bounds(&c.cluster, &c.service, c.to)
        .await
}

async fn set_desired(ctx: &Context, split: &str, c: &EcsChange, why: &str) -> Result<()> {
    info!(split, cluster = %c.cluster, service = %c.service, from = c.from, to = c.to, reason = why, "ECS desiredCount");
    ctx.aws.ecs.set_desired(&c.cluster, &c.service, c.to).await
}

async fn apply_all(ctx: &Context, pending: &mut [Pending], now: u64) {
    // ECS scale-ups first: capacity before traffic.
    for p in pending.iter_mut() {
        let Some(r) = &p.report else { continue };
        let name = p.work.doc.split.name().to_string();
        let ups: Vec<EcsChange> = r
            .ecs_changes
            .iter()
            .filter(|c| c.to > c.from)
            .cloned()
            .collect();
        for c in ups {
            if let Err(e) = set_desired(ctx, &name, &c, "capacity before traffic").await {
                p.error = Some(e);
                break;
            }
        }
    }

    // Route53: one batch per zone where it fits, each split's changes kept together.
    let mut by_zone: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, p) in pending.iter().enumerate() {
        if p.error.is_none() && p.report.as_ref().is_some_and(|r| !r.route53.is_empty()) {
            by_zone.entry(p.zone.id.clone()).or_default().push(i);
        }
    }
    for (zone_id, idxs) in by_zone {
        for chunk in batches(pending, &idxs) {
            let changes = changes_of(pending, &chunk);
            for &i in &chunk {
                log_changes(&pending[i]);
            }
            let comment = comment_for(pending, &chunk);
            let res = submit(ctx, &zone_id, &comment, &changes).await;
            match res {
                Ok(id) => {
                    ctx.update_zone_count(&zone_id, |n| n + net_records(&changes));
                    mark_applied(ctx, pending, &chunk, &id, now)
                }
                Err(e) if chunk.len() > 1 && !e.is_retryable() => {
                    // One bad split must not block the zone (external-dns #421): retry alone.
                    warn!(zone = %zone_id, error = %e, "batch rejected; retrying split by split");
                    for &i in &chunk {
                        let changes = changes_of(pending, &[i]);
                        let comment = comment_for(pending, &[i]);
                        match submit(ctx, &zone_id, &comment, &changes).await {
                            Ok(id) => {
                                ctx.update_zone_count(&zone_id, |n| n + net_records(&changes));
                                mark_applied(ctx, pending, &[i], &id, now)
                            }
                            Err(e) => {
                                pending[i].error =
                                    Some(fence_lost(ctx, &zone_id, &pending[i], e).await)
                            }
                        }
                    }
                }
                Err(e) if chunk.len() == 1 => {
                    let i = chunk[0];
                    pending[i].error = Some(fence_lost(ctx, &zone_id, &pending[i], e).await);
                }
                Err(e) => {
                    for &i in &chunk {
                        pending[i].error = Some(clone_err(&e));
                    }
                }
            }
        }
    }

    // Scalable-target bounds after the batch that records the users' bounds in the TXT (a weight
    // only rose above if the live service already had the tasks), then ECS scale-downs, only for
    // splits whose writes went through and whose last change is INSYNC and drained.
    for p in pending.iter_mut() {
        if p.error.is_some() {
            continue;
        }
        let Some(r) = p.report.as_mut() else { continue };
        let name = p.work.doc.split.name().to_string();
        let drain = p.work.doc.split.spec.drain_delay();
        let mut held = Vec::new();
        let lowered: Vec<&String> = r
            .ecs_changes
            .iter()
            .filter(|c| c.to < c.from)
            .map(|c| &c.backend)
            .chain(
                r.autoscaling
                    .iter()
                    .filter(|c| c.lowers())
                    .map(|c| &c.backend),
            )
            .collect();
        for b in lowered {
            if let Some(h) = ctx.scale_down_hold(&name, b, drain, now) {
                held.push((b.clone(), h));
            }
        }
        for (_, (why, until)) in &held {
            // Postponed, not failed: the report shows only what this cycle does.
            r.waiting_for.get_or_insert_with(|| why.clone());
            r.drain_until = Some(r.drain_until.unwrap_or(0).max(*until));
        }
        let is_held = |b: &String| held.iter().any(|(h, _)| h == b);
        r.ecs_changes
            .retain(|c| c.to >= c.from || !is_held(&c.backend));
        r.autoscaling
            .retain(|c| !c.lowers() || !is_held(&c.backend));
        let bounds = r.autoscaling.clone();
        for c in bounds {
            let why = if c.lowers() {
                "weight lowered and drained: user's bounds back"
            } else {
                "capacity before traffic: minimum raised"
            };
            if let Err(e) = set_bounds(ctx, &name, &c, why).await {
                p.error = Some(e);
                break;
            }
        }
        if p.error.is_some() {
            continue;
        }
        let Some(r) = &p.report else { continue };
        let downs: Vec<EcsChange> = r
            .ecs_changes
            .iter()
            .filter(|c| c.to < c.from)
            .cloned()
            .collect();
        for c in downs {
            if let Err(e) = set_desired(ctx, &name, &c, "weight lowered and drained").await {
                p.error = Some(e);
                break;
            }
        }
        if p.error.is_none() {
            if let Some(r) = p.report.as_mut() {
                r.applied = true;
            }
        }
    }
}

/// A split's rejected batch, checked against its fence: when the state TXT is no longer what the
/// batch was decided on (another controller with this owner id, or a hand edit, came between
/// read and write), the rejection is the fence doing its job. Nothing was written; the split is
/// re-read and re-decided on the next, soon, cycle. Other rejections keep their error.
async fn fence_lost(ctx: &Context, zone_id: &str, p: &Pending, e: Error) -> Error {
    if !matches!(
        e,
        Error::Aws {
            failure: crate::error::AwsFailure::Permanent,
            ..
        }
    ) {
        return e;
    }
    let Some(r) = &p.report else { return e };
    let txt_name = crate::state::txt_name(&fqdn(&p.work.doc.split.spec.record.name));
    let txt_changes: Vec<&Change> = r
        .route53
        .iter()
        .map(|c| &c.change)
        .filter(|c| c.record.name == txt_name && c.record.rtype == "TXT")
        .collect();
    if txt_changes.is_empty() {
        return e;
    }
    // What the batch expected to find: the TXT it deletes, or none when it only creates one.
    let expected = txt_changes
        .iter()
        .find(|c| c.action == crate::aws::ChangeAction::Delete)
        .map(|c| &c.record);
    let Ok(now) = ctx
        .aws
        .dns
        .list_from(zone_id, &fqdn(&p.work.doc.split.spec.record.name))
        .await
    else {
        return e;
    };
    let found = now.iter().find(|r| r.name == txt_name && r.rtype == "TXT");
    if found == expected {
        return e;
    }
    Error::Fenced(format!(
        "{txt_name} changed between read and write (another controller with owner id {:?}, or a hand edit); nothing was written, the split is re-read and re-decided",
        ctx.owner
    ))
}

/// Records a batch adds to its zone (creates minus deletes).
fn net_records(changes: &[Change]) -> i64 {
    changes
        .iter()
        .map(|c| match c.action {
            crate::aws::ChangeAction::Create => 1,
            crate::aws::ChangeAction::Delete => -1,
            crate::aws::ChangeAction::Upsert => 0,
        })
        .sum()
}

/// The Route53 changes of the given splits, in order.
fn changes_of(pending: &[Pending], idxs: &[usize]) -> Vec<Change> {
    idxs.iter()
        .filter_map(|&i| pending[i].report.as_ref())
        .flat_map(|r| r.route53.iter().map(|c| c.change.clone()))
        .collect()
}

fn mark_applied(ctx: &Context, pending: &mut [Pending], idxs: &[usize], change_id: &str, now: u64) {
    let mut inflight = ctx.inflight.lock().expect("inflight lock");
    for &i in idxs {
        let name = pending[i].work.doc.split.name().to_string();
        let mut lowered: Vec<String> = match &pending[i].report {
            Some(Report {
                observed: Some(before),
                step_weights,
                ..
            }) => step_weights
                .iter()
                .filter(|(b, w)| before.get(*b).is_some_and(|old| old > *w))
                .map(|(b, _)| b.clone())
                .collect(),
            _ => Vec::new(),
        };
        if let Some(prev) = inflight.get(&name) {
            lowered.extend(prev.lowered.iter().cloned());
            lowered.sort();
            lowered.dedup();
        }
        inflight.insert(
            name,
            InFlight {
                change_id: change_id.to_string(),
                submitted: now,
                lowered,
            },
        );
        if let Some(r) = pending[i].report.as_mut() {
            r.applied = true;
            r.pending_change = Some(change_id.to_string());
            // The batch was atomic and accepted: Route53's API now shows exactly the step
            // weights (resolvers follow once the change is INSYNC).
            r.observed = Some(r.step_weights.clone());
            r.drift = 0.0;
        }
    }
}

fn comment_for(pending: &[Pending], idxs: &[usize]) -> String {
    let names: Vec<&str> = idxs
        .iter()
        .map(|&i| pending[i].work.doc.split.name())
        .collect();
    let mut c = format!("trafficshift: {}", names.join(","));
    c.truncate(256);
    c
}

fn log_changes(p: &Pending) {
    let Some(r) = &p.report else { return };
    for c in &r.route53 {
        info!(
            split = p.work.doc.split.name(),
            record = %c.change.record.name,
            rtype = %c.change.record.rtype,
            set_id = c.change.record.set_identifier.as_deref().unwrap_or("-"),
            action = ?c.change.action,
            from = %r.observed.as_ref().map(show).unwrap_or_else(|| "none".into()),
            to = %show(&r.step_weights),
            reason = %c.why,
            "Route53 change"
        );
        crate::metrics::METRICS
            .route53_changes
            .with_label_values(&[
                p.work.doc.split.name(),
                &format!("{:?}", c.change.action).to_ascii_lowercase(),
            ])
            .inc();
    }
}

/// Group splits' changes into batches within Route53's limits, never splitting one split.
fn batches(pending: &[Pending], idxs: &[usize]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let (mut n, mut elements, mut chars) = (0usize, 0usize, 0usize);
    for &i in idxs {
        let r = pending[i].report.as_ref().expect("has report");
        let cn = r.route53.len();
        let ce: usize = r
            .route53
            .iter()
            .map(|c| plan::change_elements(&c.change))
            .sum();
        let cc: usize = r
            .route53
            .iter()
            .map(|c| plan::change_chars(&c.change))
            .sum();
        if out.is_empty()
            || n + cn > plan::MAX_CHANGES_PER_BATCH
            || elements + ce > plan::MAX_RECORD_ELEMENTS_PER_BATCH
            || chars + cc > plan::MAX_VALUE_CHARS_PER_BATCH
        {
            out.push(Vec::new());
            (n, elements, chars) = (0, 0, 0);
        }
        out.last_mut().expect("pushed").push(i);
        n += cn;
        elements += ce;
        chars += cc;
    }
    out
}

/// Submit one batch and return its change id. INSYNC is not awaited here (see `check_inflight`):
/// an error from this function always means ChangeResourceRecordSets itself failed.
async fn submit(ctx: &Context, zone_id: &str, comment: &str, changes: &[Change]) -> Result<String> {
    plan::check_batch(changes)?;
    ctx.aws.dns.change(zone_id, comment, changes).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::aws::{Alarms, ChangeAction, Dns, Ecs, Targets};

    /// Route53 in memory. GetChange answers what `status` says (None: an error).
    #[derive(Default)]
    struct FakeDns {
        records: Mutex<Vec<RecordSet>>,
        changes: AtomicUsize,
        get_changes: AtomicUsize,
        status: Mutex<Option<bool>>,
    }

    #[async_trait]
    impl Dns for FakeDns {
        async fn find_zone(&self, _: &str) -> Result<Zone> {
            Ok(Zone {
                id: "Z1".into(),
                name: "example.com.".into(),
                record_count: 10,
                private: false,
            })
        }
        async fn list_all(&self, _: &str) -> Result<Vec<RecordSet>> {
            Ok(self.records.lock().unwrap().clone())
        }
        async fn list_from(&self, _: &str, name: &str) -> Result<Vec<RecordSet>> {
            let txt = crate::state::txt_name(name);
            Ok(self
                .records
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.name == name || r.name == txt)
                .cloned()
                .collect())
        }
        async fn change(&self, _: &str, _: &str, changes: &[Change]) -> Result<String> {
            let n = self.changes.fetch_add(1, Ordering::SeqCst);
            let mut records = self.records.lock().unwrap();
            for c in changes {
                let key =
                    |r: &RecordSet| (r.name.clone(), r.rtype.clone(), r.set_identifier.clone());
                records.retain(|r| key(r) != key(&c.record));
                if c.action != ChangeAction::Delete {
                    records.push(c.record.clone());
                }
            }
            Ok(format!("C{n}"))
        }
        async fn insync(&self, _: &str) -> Result<bool> {
            self.get_changes.fetch_add(1, Ordering::SeqCst);
            (*self.status.lock().unwrap())
                .ok_or_else(|| Error::Other("GetChange: connection reset".into()))
        }
    }

    struct Unused;
    #[async_trait]
    impl Ecs for Unused {
        async fn describe(&self, _: &str, _: &[String]) -> Result<Vec<EcsService>> {
            Ok(vec![])
        }
        async fn set_desired(&self, _: &str, _: &str, _: i32) -> Result<()> {
            Err(Error::Other("unused".into()))
        }
    }
    #[async_trait]
    impl Targets for Unused {
        async fn api_gateway_domain(&self, _: &str) -> Result<AliasTarget> {
            Err(Error::Other("unused".into()))
        }
        async fn target_group_lb(&self, _: &str) -> Result<AliasTarget> {
            Err(Error::Other("unused".into()))
        }
        async fn target_health(&self, _: &str) -> Result<(u32, u32)> {
            Err(Error::Other("unused".into()))
        }
    }
    #[async_trait]
    impl Alarms for Unused {
        async fn alarm_states(&self, _: &[String]) -> Result<Vec<(String, String)>> {
            Ok(vec![])
        }
    }

    fn work(name: &str, blue: u32) -> Work {
        let split: TrafficSplit = serde_json::from_value(serde_json::json!({
            "apiVersion": "trafficshift.dev/v1alpha1",
            "kind": "TrafficSplit",
            "metadata": {"name": name},
            "spec": {
                "record": {"hostedZone": "example.com", "name": format!("{name}.example.com"), "type": "CNAME"},
                "backends": [
                    {"name": "blue", "target": {"cname": "blue.example.net"}},
                    {"name": "green", "target": {"cname": "green.example.net"}}
                ],
                "weights": {"blue": blue, "green": 100 - blue}
            }
        }))
        .expect("split");
        Work {
            doc: SplitDoc {
                split,
                file: "test.yaml".into(),
                line: 1,
                hash: "h".into(),
            },
            gates: BTreeMap::new(),
        }
    }

    fn ctx(dns: Arc<FakeDns>) -> Context {
        let u = Arc::new(Unused);
        Context::new(
            Aws {
                dns,
                ecs: u.clone(),
                targets: u.clone(),
                alarms: u,
                autoscaling: Arc::new(crate::aws::autoscaling::NoAutoscaling),
            },
            "test",
            false,
        )
    }

    fn weight(dns: &FakeDns, name: &str, backend: &str) -> Option<i64> {
        dns.records
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.name == name && r.set_identifier.as_deref() == Some(backend))
            .and_then(|r| r.weight)
    }

    #[tokio::test]
    async fn a_pending_change_holds_nothing_and_a_failed_get_change_resubmits_nothing() {
        let dns = Arc::new(FakeDns::default());
        *dns.status.lock().unwrap() = Some(false);
        let ctx = ctx(dns.clone());

        // One batch for both splits; the cycle returns without waiting for INSYNC.
        let out = cycle(&ctx, vec![work("a", 100), work("b", 100)], 1_000_000, true).await;
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        assert_eq!(dns.changes.load(Ordering::SeqCst), 1);
        assert_eq!(dns.get_changes.load(Ordering::SeqCst), 0, "not awaited");
        let pending: Vec<Option<String>> = out
            .iter()
            .map(|o| o.result.as_ref().unwrap().pending_change.clone())
            .collect();
        assert_eq!(pending, vec![Some("C0".into()), Some("C0".into())]);

        // Still PENDING: split b moves on regardless, and the change is asked once.
        let out = cycle(&ctx, vec![work("a", 100), work("b", 40)], 1_002_000, true).await;
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        assert_eq!(dns.get_changes.load(Ordering::SeqCst), 1);
        assert_eq!(dns.changes.load(Ordering::SeqCst), 2);
        assert_eq!(weight(&dns, "b.example.com.", "blue"), Some(40));
        let drain = Duration::from_secs(60);
        assert!(
            ctx.scale_down_hold("b", "blue", drain, 1_003).is_some(),
            "blue dropped in a PENDING change"
        );
        assert_eq!(ctx.scale_down_hold("b", "green", drain, 1_003), None);
        assert_eq!(ctx.scale_down_hold("a", "blue", drain, 1_003), None);

        // GetChange fails: the split does not fail and nothing is submitted again.
        *dns.status.lock().unwrap() = None;
        let out = cycle(&ctx, vec![work("a", 100), work("b", 40)], 1_004_000, true).await;
        assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
        assert_eq!(dns.changes.load(Ordering::SeqCst), 2, "no resubmission");
        assert!(dns.get_changes.load(Ordering::SeqCst) >= 2);

        // INSYNC: forgotten, never asked again.
        *dns.status.lock().unwrap() = Some(true);
        cycle(&ctx, vec![work("a", 100), work("b", 40)], 1_006_000, true).await;
        let asked = dns.get_changes.load(Ordering::SeqCst);
        cycle(&ctx, vec![work("a", 100), work("b", 40)], 1_008_000, true).await;
        assert_eq!(dns.get_changes.load(Ordering::SeqCst), asked);
        assert!(ctx.inflight.lock().unwrap().is_empty());
        assert_eq!(
            ctx.scale_down_hold("b", "blue", drain, 1_009).map(|h| h.1),
            Some(1_006 + 60),
            "the drain clock starts when the change was seen INSYNC"
        );
        assert_eq!(ctx.scale_down_hold("b", "blue", drain, 1_066), None);
        assert_eq!(ctx.scale_down_hold("b", "green", drain, 1_009), None);
    }
}

#[cfg(test)]
mod gate_clock_tests {
    use super::*;
    use crate::spec::Gate;

    fn split() -> TrafficSplit {
        TrafficSplit::test()
            .with_steps(&[50, 100], 60)
            .with_gate(Gate::ecs_stable("a", "fargate"))
            .with_gate(Gate::ecs_stable("b", "fargate"))
    }

    fn checked(at: u64, passing: bool, failures: u32) -> GateRecord {
        GateRecord {
            passing: Some(passing),
            consecutive_failures: failures,
            last_check: Some(at),
            last_failure: (!passing).then_some(at),
            message: if passing { "ok" } else { "bad" }.into(),
            ..GateRecord::default()
        }
    }

    #[test]
    fn gates_run_on_their_own_clock() {
        // gateInterval 30s (default). (records of a and b, now, gates due)
        let never = BTreeMap::new();
        let a_at_100: BTreeMap<String, GateRecord> =
            [("a".to_string(), checked(100, true, 0))].into();
        let both_at_100: BTreeMap<String, GateRecord> = [
            ("a".to_string(), checked(100, true, 0)),
            ("b".to_string(), checked(110, false, 1)),
        ]
        .into();
        let table: [(&BTreeMap<String, GateRecord>, u64, Vec<&str>); 6] = [
            (&never, 0, vec!["a", "b"]),
            (&a_at_100, 101, vec!["b"]),
            (&a_at_100, 129, vec!["b"]),
            (&a_at_100, 130, vec!["a", "b"]),
            (&both_at_100, 135, vec!["a"]),
            (&both_at_100, 140, vec!["a", "b"]),
        ];
        let s = split();
        for (records, now, want) in table {
            let due: Vec<&str> = due_gates(&s, records, now)
                .iter()
                .map(|g| g.name.as_str())
                .collect();
            assert_eq!(due, want, "t={now}");
        }
        let mut s = split();
        s.spec.rollout.as_mut().unwrap().gate_interval =
            crate::spec::HumanDuration(Duration::from_secs(5));
        let due: Vec<&str> = due_gates(&s, &a_at_100, 105)
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(due, vec!["a", "b"], "gateInterval 5s");
    }

    #[test]
    fn summary_separates_waits_from_failures() {
        let s = split();
        let waiting = GateRecord {
            waiting: true,
            ..checked(100, false, 0)
        };
        let records: BTreeMap<String, GateRecord> = [
            ("a".to_string(), waiting),
            ("b".to_string(), checked(100, true, 0)),
        ]
        .into();
        let sum = summarize(&s, &records, 100);
        assert!(!sum.all_passing);
        assert_eq!(sum.waiting, vec!["a: bad".to_string()]);
        assert!(sum.failing.is_empty());
        assert_eq!((sum.tripped, sum.new_failure), (None, None));

        // b fails for the first time at 130 (a new run), then a third time in a row.
        let records: BTreeMap<String, GateRecord> = [
            ("a".to_string(), checked(100, true, 0)),
            ("b".to_string(), checked(130, false, 1)),
        ]
        .into();
        let sum = summarize(&s, &records, 130);
        assert_eq!(sum.new_failure, Some(130));
        assert_eq!(sum.last_failure, Some(130));
        assert_eq!(sum.tripped, None);
        let sum = summarize(&s, &records, 131);
        assert_eq!(sum.new_failure, None, "only the cycle that checked it");
        let records: BTreeMap<String, GateRecord> =
            [("b".to_string(), checked(190, false, 3))].into();
        let sum = summarize(&s, &records, 190);
        assert_eq!(sum.tripped, Some(("b".to_string(), "bad".to_string())));
        assert_eq!(sum.failing, vec!["a: not checked yet", "b: bad"]);
    }

    #[test]
    fn target_group_names_for_messages() {
        let table = [
            (
                "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/api-tg/73e2d6bc24d8a067",
                "api-tg",
            ),
            ("api-tg", "api-tg"),
        ];
        for (arn, name) in table {
            assert_eq!(tg_name(arn), name);
        }
    }
}

#[cfg(test)]
mod fencing_tests {
    use super::*;
    use crate::aws::{Alarms, ChangeAction, Dns, Ecs, Targets};
    use crate::error::AwsFailure;
    use async_trait::async_trait;
    use std::sync::Arc;

    type Hook = Box<dyn FnOnce(&mut Vec<RecordSet>) + Send>;

    /// One hosted zone with Route53's batch rules (all or nothing; DELETE must match exactly;
    /// CREATE must find nothing) and a hook that edits the zone just before the next batch: a
    /// hand edit between the controller's read and its write.
    #[derive(Default)]
    struct Zone53 {
        records: Mutex<Vec<RecordSet>>,
        before_next_change: Mutex<Option<Hook>>,
    }

    #[async_trait]
    impl Dns for Zone53 {
        async fn find_zone(&self, _: &str) -> Result<Zone> {
            Ok(Zone {
                id: "Z1".into(),
                name: "abceed.example.".into(),
                record_count: self.records.lock().unwrap().len() as i64,
                private: false,
            })
        }
        async fn list_all(&self, _: &str) -> Result<Vec<RecordSet>> {
            Ok(self.records.lock().unwrap().clone())
        }
        async fn list_from(&self, _: &str, name: &str) -> Result<Vec<RecordSet>> {
            let under = format!(".{name}");
            Ok(self
                .records
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.name == name || r.name.ends_with(&under))
                .cloned()
                .collect())
        }
        async fn change(&self, _: &str, _: &str, changes: &[Change]) -> Result<String> {
            if let Some(hook) = self.before_next_change.lock().unwrap().take() {
                hook(&mut self.records.lock().unwrap());
            }
            let mut zone = self.records.lock().unwrap();
            let mut next = zone.clone();
            let key = |r: &RecordSet| (r.name.clone(), r.rtype.clone(), r.set_identifier.clone());
            for c in changes {
                let at = next.iter().position(|r| key(r) == key(&c.record));
                let problem = match (c.action, at) {
                    (ChangeAction::Delete, Some(i)) if next[i] == c.record => {
                        next.remove(i);
                        None
                    }
                    (ChangeAction::Delete, _) => Some("values do not match"),
                    (ChangeAction::Create, Some(_)) => Some("it already exists"),
                    (ChangeAction::Create, None) | (ChangeAction::Upsert, None) => {
                        next.push(c.record.clone());
                        None
                    }
                    (ChangeAction::Upsert, Some(i)) => {
                        next[i] = c.record.clone();
                        None
                    }
                };
                if let Some(p) = problem {
                    return Err(Error::Aws {
                        service: "route53",
                        operation: "ChangeResourceRecordSets",
                        failure: AwsFailure::Permanent,
                        message: format!("InvalidChangeBatch: {} {p}", c.record.name),
                    });
                }
            }
            *zone = next;
            Ok("C1".into())
        }
        async fn insync(&self, _: &str) -> Result<bool> {
            Ok(true)
        }
    }

    /// ECS services at 20 running tasks behind target group "tg".
    struct Services;

    #[async_trait]
    impl Ecs for Services {
        async fn describe(&self, cluster: &str, services: &[String]) -> Result<Vec<EcsService>> {
            Ok(services
                .iter()
                .map(|s| EcsService {
                    cluster: cluster.into(),
                    service: s.clone(),
                    arn: format!("arn:{s}"),
                    status: "ACTIVE".into(),
                    desired: 20,
                    running: 20,
                    pending: 0,
                    deployments: 1,
                    rollout_state: Some("COMPLETED".into()),
                    target_groups: vec!["tg".into()],
                })
                .collect())
        }
        async fn set_desired(&self, _: &str, _: &str, _: i32) -> Result<()> {
            Ok(())
        }
    }

    /// Alias targets; the domain `boom.example` fails its first lookup and panics on the next
    /// (a bug reached while planning one split).
    #[derive(Default)]
    struct Aliases {
        boom_calls: Mutex<u32>,
    }

    #[async_trait]
    impl Targets for Aliases {
        async fn api_gateway_domain(&self, domain: &str) -> Result<AliasTarget> {
            if domain == "boom.example" {
                let mut n = self.boom_calls.lock().unwrap();
                *n += 1;
                if *n > 1 {
                    panic!("a bug in one split's planning");
                }
                return Err(Error::NotFound("not yet".into()));
            }
            Ok(AliasTarget {
                dns_name: format!("d-{domain}."),
                hosted_zone_id: "ZAPI".into(),
                evaluate_target_health: false,
            })
        }
        async fn target_group_lb(&self, _: &str) -> Result<AliasTarget> {
            Ok(AliasTarget {
                dns_name: "alb.example.".into(),
                hosted_zone_id: "ZALB".into(),
                evaluate_target_health: false,
            })
        }
        async fn target_health(&self, _: &str) -> Result<(u32, u32)> {
            // Every one of the 20 tasks is a healthy target: capacity serves.
            Ok((20, 20))
        }
    }

    struct NoAlarms;

    #[async_trait]
    impl Alarms for NoAlarms {
        async fn alarm_states(&self, _: &[String]) -> Result<Vec<(String, String)>> {
            Ok(vec![])
        }
    }

    fn context(dns: Arc<Zone53>) -> Context {
        let aws = Aws {
            dns,
            ecs: Arc::new(Services),
            targets: Arc::new(Aliases::default()),
            alarms: Arc::new(NoAlarms),
            autoscaling: Arc::new(crate::aws::autoscaling::NoAutoscaling),
        };
        Context::new(aws, "test", false)
    }

    fn work(name: &str) -> Work {
        let mut split = TrafficSplit::test().with_steps(&[50, 100], 0);
        split.metadata.name = name.into();
        split.spec.record.name = format!("{name}.abceed.example.");
        Work {
            doc: SplitDoc {
                split,
                file: format!("{name}.yaml").into(),
                line: 1,
                hash: "h".into(),
            },
            gates: BTreeMap::new(),
        }
    }

    fn weights_at(dns: &Zone53, name: &str) -> Weights {
        dns.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.name == format!("{name}.abceed.example.") && r.weight.is_some())
            .map(|r| (r.set_identifier.clone().unwrap(), r.weight.unwrap() as u32))
            .collect()
    }

    fn by_name(outcomes: Vec<Outcome>) -> BTreeMap<String, Result<Report>> {
        outcomes.into_iter().map(|o| (o.name, o.result)).collect()
    }

    fn w(pairs: &[(&str, u32)]) -> Weights {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// Weighted records of `name` at lambda 100 / fargate 0, no state TXT yet.
    fn adoptable(dns: &Zone53, name: &str) {
        for (b, weight, target) in [
            ("lambda", 100, "d-api.abceed.example."),
            ("fargate", 0, "alb.example."),
        ] {
            dns.records.lock().unwrap().push(RecordSet {
                name: format!("{name}.abceed.example."),
                rtype: "A".into(),
                set_identifier: Some(b.into()),
                weight: Some(weight),
                ttl: None,
                alias: Some(AliasTarget {
                    dns_name: target.into(),
                    hosted_zone_id: if b == "lambda" { "ZAPI" } else { "ZALB" }.into(),
                    evaluate_target_health: false,
                }),
                values: vec![],
                health_check_id: None,
                other_routing: false,
            });
        }
    }

    #[tokio::test]
    async fn a_fenced_split_is_retried_soon_and_blocks_no_other() {
        let dns = Arc::new(Zone53::default());
        adoptable(&dns, "api");
        adoptable(&dns, "web");
        let ctx = context(dns.clone());
        let now = 1_764_000_000_000;
        let first = by_name(cycle(&ctx, vec![work("api"), work("web")], now, true).await);
        assert!(first.values().all(|r| r.is_ok()), "{first:?}");
        assert_eq!(
            weights_at(&dns, "api"),
            w(&[("lambda", 50), ("fargate", 50)])
        );

        // Someone edits api's state TXT (its TTL) after the next cycle's read, before its write.
        let api_txt = crate::state::txt_name("api.abceed.example.");
        let edit = api_txt.clone();
        *dns.before_next_change.lock().unwrap() = Some(Box::new(move |zone| {
            for r in zone.iter_mut().filter(|r| r.name == edit) {
                r.ttl = Some(299);
            }
        }));
        let second = by_name(cycle(&ctx, vec![work("api"), work("web")], now + 1000, true).await);
        let api_err = second["api"].as_ref().unwrap_err();
        assert!(matches!(api_err, Error::Fenced(_)), "{api_err}");
        assert!(api_err.is_retryable(), "re-read soon, not at resync");
        assert!(
            second["web"].as_ref().unwrap().applied,
            "web is not blocked"
        );
        assert_eq!(
            weights_at(&dns, "web"),
            w(&[("lambda", 0), ("fargate", 100)])
        );
        assert_eq!(
            weights_at(&dns, "api"),
            w(&[("lambda", 50), ("fargate", 50)]),
            "nothing of the fenced batch applied"
        );
        let edited = dns
            .records
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.name == api_txt)
            .cloned()
            .unwrap();
        assert_eq!(edited.ttl, Some(299), "the hand edit survives");

        // The next cycle re-reads, re-decides and takes the step, once.
        let third = by_name(cycle(&ctx, vec![work("api")], now + 2000, true).await);
        assert!(third["api"].as_ref().unwrap().applied, "{third:?}");
        assert_eq!(
            weights_at(&dns, "api"),
            w(&[("lambda", 0), ("fargate", 100)])
        );
        let txt = dns
            .records
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.name == api_txt)
            .cloned()
            .unwrap();
        let state = crate::state::RolloutState::decode(&crate::state::from_txt_values(&txt.values))
            .unwrap();
        assert_eq!(
            (state.step, state.rev),
            (2, 2),
            "step 2, second write of the TXT"
        );
    }

    #[tokio::test]
    async fn a_panic_while_planning_one_split_costs_only_that_split() {
        let dns = Arc::new(Zone53::default());
        let ctx = context(dns.clone());
        let mut boom = work("boom");
        boom.doc.split.spec.backends[0]
            .api_gateway
            .as_mut()
            .unwrap()
            .domain_name = "boom.example".into();
        let out = by_name(cycle(&ctx, vec![boom, work("web")], 1_764_000_000_000, true).await);
        let err = out["boom"].as_ref().unwrap_err().to_string();
        assert!(err.contains("a bug in one split's planning"), "{err}");
        assert!(out["web"].as_ref().unwrap().applied);
        assert_eq!(
            weights_at(&dns, "web"),
            w(&[("lambda", 0), ("fargate", 100)])
        );
        assert!(
            weights_at(&dns, "boom").is_empty(),
            "nothing written for boom"
        );
    }
}
