//! The per-split series (everything labelled `split`), kept as plain fields per split instead of
//! one `prometheus` metric object per series: at 10,000 splits the crate's ~50 series per split
//! cost ~40 KiB each and a scrape built and sorted half a million protobuf structs.
//!
//! What a scrape shows is unchanged: the same families, label names, values and series; a gauge
//! is absent while `None`; counters of a split exist (at 0) once `init`, and outlive `forget`.
//! Series are ordered by split name (the crate ordered them by label values), which Prometheus
//! does not care about.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use super::text::{header, sample};
use super::{RECONCILE_RESULTS, ROUTE53_ACTIONS, STATES};
use crate::error::Error;

/// Upper bounds of `trafficshift_reconcile_duration_seconds`.
pub const DURATION_BUCKETS: [f64; 11] =
    [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A scrape is written in pieces of about this size, each under the lock for a moment.
const CHUNK_BYTES: usize = 64 * 1024;

/// The series of one backend of a split.
#[derive(Debug, Default)]
pub struct Backend {
    name: Box<str>,
    pub target_weight: Option<f64>,
    pub step_weight: Option<f64>,
    pub observed_weight: Option<f64>,
    pub ecs_desired: Option<i64>,
    pub ecs_running: Option<i64>,
    /// From the traffic poller, which also removes them.
    pub traffic_share: Option<f64>,
    pub requests_per_second: Option<f64>,
}

/// The series of one gate of a split.
#[derive(Debug, Default)]
pub struct Gate {
    name: Box<str>,
    pub passing: Option<i64>,
    pub consecutive_failures: Option<i64>,
    pub value: Option<f64>,
    /// The counter `trafficshift_gate_failures_total`.
    failures_total: Option<u64>,
}

/// A histogram with the fixed buckets of `DURATION_BUCKETS`; absent until the first observation.
#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket, not cumulative.
    buckets: [u64; DURATION_BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Every series of one split.
#[derive(Debug, Default)]
pub struct Split {
    pub drift: Option<f64>,
    pub progress: Option<f64>,
    pub last_success: Option<f64>,
    pub step: Option<i64>,
    pub steps: Option<i64>,
    /// Index into `STATES`; all nine `split_state` series exist once set.
    state: Option<u8>,
    backends: Vec<Backend>,
    gates: Vec<Gate>,
    /// `trafficshift_split_info` labels: record, zone, owner, account.
    info: Option<Box<[Box<str>; 4]>>,
    /// The counters below exist (at 0) once set.
    counted: bool,
    reconciles: [u64; RECONCILE_RESULTS.len()],
    errors: [u64; Error::KINDS.len()],
    route53_changes: [u64; ROUTE53_ACTIONS.len()],
    drift_corrections: u64,
    rollbacks: u64,
    duration: Histogram,
}

impl Split {
    /// The series of a backend, created empty on first use.
    pub fn backend(&mut self, name: &str) -> &mut Backend {
        entry(
            &mut self.backends,
            name,
            |b| &b.name,
            |name| Backend {
                name,
                ..Backend::default()
            },
        )
    }

    /// The series of a gate, created empty on first use.
    pub fn gate(&mut self, name: &str) -> &mut Gate {
        entry(
            &mut self.gates,
            name,
            |g| &g.name,
            |name| Gate {
                name,
                ..Gate::default()
            },
        )
    }

    /// Set `split_state`: 1 for `state` (one of `STATES`), 0 for the others.
    pub fn set_state(&mut self, state: &str) {
        self.state = STATES.iter().position(|s| *s == state).map(|i| i as u8);
    }

    pub fn set_info(&mut self, record: &str, zone: &str, owner: &str, account: &str) {
        let same = self
            .info
            .as_ref()
            .is_some_and(|i| [&*i[0], &*i[1], &*i[2], &*i[3]] == [record, zone, owner, account]);
        if same {
            // Every reload sets it again; most of the time nothing changed.
            return;
        }
        self.info = Some(Box::new([
            record.into(),
            zone.into(),
            owner.into(),
            account.into(),
        ]));
    }

    /// Create every counter at 0 (idempotent).
    fn count(&mut self) -> &mut Self {
        self.counted = true;
        self
    }

    pub fn count_reconcile(&mut self, ok: bool) {
        self.count().reconciles[usize::from(!ok)] += 1;
    }

    /// Count a failed reconcile by `Error::kind()`.
    pub fn count_error(&mut self, kind: &str) {
        if let Some(i) = Error::KINDS.iter().position(|k| *k == kind) {
            self.count().errors[i] += 1;
        }
    }

    /// Count a Route53 change by action (create, delete, upsert).
    pub fn count_route53_change(&mut self, action: &str) {
        if let Some(i) = ROUTE53_ACTIONS.iter().position(|a| *a == action) {
            self.count().route53_changes[i] += 1;
        }
    }

    pub fn count_drift_correction(&mut self) {
        self.count().drift_corrections += 1;
    }

    pub fn count_rollback(&mut self) {
        self.count().rollbacks += 1;
    }

    pub fn count_gate_failure(&mut self, gate: &str) {
        *self.gate(gate).failures_total.get_or_insert(0) += 1;
    }

    pub fn observe_duration(&mut self, seconds: f64) {
        let h = &mut self.duration;
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            h.buckets[i] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Drop every gauge but the traffic poller's (it removes those itself); counters stay.
    fn forget_gauges(&mut self) {
        self.drift = None;
        self.progress = None;
        self.last_success = None;
        self.step = None;
        self.steps = None;
        self.state = None;
        self.info = None;
        for b in &mut self.backends {
            b.target_weight = None;
            b.step_weight = None;
            b.observed_weight = None;
            b.ecs_desired = None;
            b.ecs_running = None;
        }
        for g in &mut self.gates {
            g.passing = None;
            g.consecutive_failures = None;
            g.value = None;
        }
    }

    /// Whether a scrape would show nothing of this split.
    fn is_empty(&self) -> bool {
        let f = Family::ALL.iter();
        !self.counted && self.duration.count == 0 && f.clone().all(|f| !f.has(self))
    }
}

/// The item of `items` named `name`, appended if missing (a split has a few backends and gates).
fn entry<'a, T>(
    items: &'a mut Vec<T>,
    name: &str,
    key: fn(&T) -> &str,
    new: impl FnOnce(Box<str>) -> T,
) -> &'a mut T {
    let i = match items.iter().position(|x| key(x) == name) {
        Some(i) => i,
        None => {
            items.push(new(name.into()));
            items.len() - 1
        }
    };
    &mut items[i]
}

/// The per-split series of the process.
#[derive(Debug, Default)]
pub struct Splits {
    map: Mutex<BTreeMap<Box<str>, Split>>,
}

impl Splits {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Box<str>, Split>> {
        // A panic elsewhere while holding it leaves plain numbers, still worth serving.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the series of a split, creating it if new.
    pub fn update<R>(&self, split: &str, f: impl FnOnce(&mut Split) -> R) -> R {
        let mut map = self.lock();
        match map.get_mut(split) {
            Some(s) => f(s),
            None => f(map.entry(split.into()).or_default()),
        }
    }

    /// Change the series of a split only if it has any (removals).
    pub fn update_existing(&self, split: &str, f: impl FnOnce(&mut Split)) {
        if let Some(s) = self.lock().get_mut(split) {
            f(s);
        }
    }

    /// Create every counter of a split at 0, its gates' too.
    pub fn init(&self, split: &str, gates: &[String]) {
        self.update(split, |s| {
            s.count();
            for g in gates {
                s.gate(g).failures_total.get_or_insert(0);
            }
        });
    }

    /// Drop the gauges of a split no longer configured; its counters stay.
    pub fn forget(&self, split: &str) {
        let mut map = self.lock();
        if let Some(s) = map.get_mut(split) {
            s.forget_gauges();
            if s.is_empty() {
                map.remove(split);
            }
        }
    }

    /// The exposition of every per-split family, in pieces of about `CHUNK_BYTES`.
    pub fn chunks(&self) -> Chunks<'_> {
        Chunks {
            splits: self,
            family: 0,
            after: None,
            started: false,
        }
    }
}

/// Iterator over the pieces of the per-split exposition. Each piece is written under the lock;
/// between pieces the controller updates freely, and a split added or removed meanwhile is
/// simply seen or not, as with any scrape during a cycle.
pub struct Chunks<'a> {
    splits: &'a Splits,
    family: usize,
    /// The last split written of the current family, when a piece ended within it.
    after: Option<Box<str>>,
    /// The current family's HELP and TYPE are written.
    started: bool,
}

impl Iterator for Chunks<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let mut out = String::new();
        while let Some(fam) = Family::ALL.get(self.family) {
            let map = self.splits.lock();
            let from = match &self.after {
                Some(k) => Bound::Excluded(&**k),
                None => Bound::Unbounded,
            };
            let mut full = false;
            for (name, s) in map.range::<str, _>((from, Bound::Unbounded)) {
                let mark = out.len();
                fam.write(&mut out, name, s);
                if !self.started && out.len() > mark {
                    // HELP and TYPE only for a family with series, as the crate does.
                    let mut h = String::new();
                    header(&mut h, fam.name(), fam.help(), fam.kind());
                    out.insert_str(mark, &h);
                    self.started = true;
                }
                if out.len() >= CHUNK_BYTES {
                    self.after = Some(name.clone());
                    full = true;
                    break;
                }
            }
            drop(map);
            if !full {
                self.family += 1;
                self.after = None;
                self.started = false;
            }
            if out.len() >= CHUNK_BYTES {
                return Some(out);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// The per-split families, in the order written (by name, as the crate orders families).
#[derive(Debug, Clone, Copy)]
enum Family {
    BackendRps,
    DriftCorrections,
    Drift,
    EcsDesired,
    EcsRunning,
    GateConsecutiveFailures,
    GateFailures,
    GatePassing,
    GateValue,
    LastSuccess,
    ObservedWeight,
    ReconcileDuration,
    ReconcileErrors,
    Reconciles,
    Rollbacks,
    Progress,
    Step,
    Steps,
    Route53Changes,
    SplitInfo,
    SplitState,
    StepWeight,
    TargetWeight,
    TrafficShare,
}

impl Family {
    const ALL: [Family; 24] = [
        Family::BackendRps,
        Family::DriftCorrections,
        Family::Drift,
        Family::EcsDesired,
        Family::EcsRunning,
        Family::GateConsecutiveFailures,
        Family::GateFailures,
        Family::GatePassing,
        Family::GateValue,
        Family::LastSuccess,
        Family::ObservedWeight,
        Family::ReconcileDuration,
        Family::ReconcileErrors,
        Family::Reconciles,
        Family::Rollbacks,
        Family::Progress,
        Family::Step,
        Family::Steps,
        Family::Route53Changes,
        Family::SplitInfo,
        Family::SplitState,
        Family::StepWeight,
        Family::TargetWeight,
        Family::TrafficShare,
    ];

    /// Name, HELP and TYPE: a contract with the dashboard and the alert rules.
    fn meta(self) -> (&'static str, &'static str, &'static str) {
        use Family::*;
        match self {
            BackendRps => ("trafficshift_backend_requests_per_second", "Requests per second this backend served over observe.window, from CloudWatch; absent while unknown.", "gauge"),
            DriftCorrections => ("trafficshift_drift_corrections_total", "Route53 writes that put back a weight or target changed outside trafficshift.", "counter"),
            Drift => ("trafficshift_drift_ratio", "Half the L1 distance between observed and step weights (0 = in sync).", "gauge"),
            EcsDesired => ("trafficshift_ecs_desired_tasks", "ECS desiredCount of the backend's service, as last read or set.", "gauge"),
            EcsRunning => ("trafficshift_ecs_running_tasks", "ECS runningCount of the backend's service, as last read.", "gauge"),
            GateConsecutiveFailures => ("trafficshift_gate_consecutive_failures", "Consecutive failing checks of the gate.", "gauge"),
            GateFailures => ("trafficshift_gate_failures_total", "Failing gate checks.", "counter"),
            GatePassing => ("trafficshift_gate_passing", "1 when the gate passed its most recent check.", "gauge"),
            GateValue => ("trafficshift_gate_value", "The value a gate's last check measured: a Prometheus result, the healthy target percent, an HTTP status, the share deviation in percentage points.", "gauge"),
            LastSuccess => ("trafficshift_last_reconcile_success_timestamp_seconds", "Unix time of the last successful reconcile.", "gauge"),
            ObservedWeight => ("trafficshift_observed_weight_ratio", "The weight read from Route53 on the last cycle (0-1).", "gauge"),
            ReconcileDuration => ("trafficshift_reconcile_duration_seconds", "Duration of one reconcile of a split, AWS calls included.", "histogram"),
            ReconcileErrors => ("trafficshift_reconcile_errors_total", "Failed reconciles by error kind.", "counter"),
            Reconciles => ("trafficshift_reconciles_total", "Reconciles by result (success, error).", "counter"),
            Rollbacks => ("trafficshift_rollbacks_total", "Rollouts rolled back after a gate failure.", "counter"),
            Progress => ("trafficshift_rollout_progress_ratio", "Fraction of the way from the rollout's start split to the target (0-1).", "gauge"),
            Step => ("trafficshift_rollout_step", "Current rollout step (0 = start split).", "gauge"),
            Steps => ("trafficshift_rollout_steps", "Number of steps of the rollout.", "gauge"),
            Route53Changes => ("trafficshift_route53_changes_total", "Route53 record changes submitted, by action.", "counter"),
            SplitInfo => ("trafficshift_split_info", "Always 1; the labels name the split's record, hosted zone, owner id and AWS account, to join on.", "gauge"),
            SplitState => ("trafficshift_split_state", "1 for the split's current state, 0 for the others.", "gauge"),
            StepWeight => ("trafficshift_step_weight_ratio", "The weight the current rollout step wants in Route53 (0-1).", "gauge"),
            TargetWeight => ("trafficshift_target_weight_ratio", "The document's final weight of each backend (0-1).", "gauge"),
            TrafficShare => ("trafficshift_traffic_share_ratio", "Share of the split's requests this backend served over observe.window, from CloudWatch (0-1); absent while unknown.", "gauge"),
        }
    }

    fn name(self) -> &'static str {
        self.meta().0
    }
    fn help(self) -> &'static str {
        self.meta().1
    }
    fn kind(self) -> &'static str {
        self.meta().2
    }

    /// The backend field of a `{backend, split}` gauge family.
    fn backend_value(self, b: &Backend) -> Option<f64> {
        use Family::*;
        match self {
            BackendRps => b.requests_per_second,
            EcsDesired => b.ecs_desired.map(|v| v as f64),
            EcsRunning => b.ecs_running.map(|v| v as f64),
            ObservedWeight => b.observed_weight,
            StepWeight => b.step_weight,
            TargetWeight => b.target_weight,
            TrafficShare => b.traffic_share,
            _ => None,
        }
    }

    /// The gate field of a `{gate, split}` family.
    fn gate_value(self, g: &Gate) -> Option<f64> {
        use Family::*;
        match self {
            GateConsecutiveFailures => g.consecutive_failures.map(|v| v as f64),
            GateFailures => g.failures_total.map(|v| v as f64),
            GatePassing => g.passing.map(|v| v as f64),
            GateValue => g.value,
            _ => None,
        }
    }

    /// The value of a `{split}` gauge or counter family.
    fn split_value(self, s: &Split) -> Option<f64> {
        use Family::*;
        let counter = |v: u64| s.counted.then_some(v as f64);
        match self {
            DriftCorrections => counter(s.drift_corrections),
            Drift => s.drift,
            LastSuccess => s.last_success,
            Rollbacks => counter(s.rollbacks),
            Progress => s.progress,
            Step => s.step.map(|v| v as f64),
            Steps => s.steps.map(|v| v as f64),
            _ => None,
        }
    }

    /// Whether the family has a series of this split.
    fn has(self, s: &Split) -> bool {
        let mut probe = String::new();
        self.write(&mut probe, "", s);
        !probe.is_empty()
    }

    /// Append this family's series of one split.
    fn write(self, out: &mut String, split: &str, s: &Split) {
        use Family::*;
        let name = self.name();
        match self {
            BackendRps | EcsDesired | EcsRunning | ObservedWeight | StepWeight | TargetWeight
            | TrafficShare => {
                for b in &s.backends {
                    if let Some(v) = self.backend_value(b) {
                        sample(out, name, &[("backend", &b.name), ("split", split)], v);
                    }
                }
            }
            GateConsecutiveFailures | GateFailures | GatePassing | GateValue => {
                for g in &s.gates {
                    if let Some(v) = self.gate_value(g) {
                        sample(out, name, &[("gate", &g.name), ("split", split)], v);
                    }
                }
            }
            DriftCorrections | Drift | LastSuccess | Rollbacks | Progress | Step | Steps => {
                if let Some(v) = self.split_value(s) {
                    sample(out, name, &[("split", split)], v);
                }
            }
            ReconcileErrors | Reconciles | Route53Changes if s.counted => {
                let (label, values, counts): (_, &[&str], &[u64]) = match self {
                    ReconcileErrors => ("kind", &Error::KINDS, &s.errors),
                    Reconciles => ("result", &RECONCILE_RESULTS, &s.reconciles),
                    _ => ("action", &ROUTE53_ACTIONS, &s.route53_changes),
                };
                for (v, n) in values.iter().zip(counts) {
                    sample(out, name, &[(label, v), ("split", split)], *n as f64);
                }
            }
            ReconcileErrors | Reconciles | Route53Changes => {}
            ReconcileDuration => write_histogram(out, name, split, &s.duration),
            SplitInfo => {
                if let Some(i) = &s.info {
                    let labels = [
                        ("account", &*i[3]),
                        ("owner", &*i[2]),
                        ("record", &*i[0]),
                        ("split", split),
                        ("zone", &*i[1]),
                    ];
                    sample(out, name, &labels, 1.0);
                }
            }
            SplitState => {
                if let Some(current) = s.state {
                    for (i, state) in STATES.iter().enumerate() {
                        let v = f64::from(u8::from(i == usize::from(current)));
                        sample(out, name, &[("split", split), ("state", state)], v);
                    }
                }
            }
        }
    }
}

/// The sample names of `trafficshift_reconcile_duration_seconds`.
const HISTOGRAM_SERIES: (&str, &str, &str) = (
    "trafficshift_reconcile_duration_seconds_bucket",
    "trafficshift_reconcile_duration_seconds_sum",
    "trafficshift_reconcile_duration_seconds_count",
);

fn write_histogram(out: &mut String, name: &str, split: &str, h: &Histogram) {
    if h.count == 0 {
        return;
    }
    let (bucket, sum, count) = HISTOGRAM_SERIES;
    debug_assert!(bucket.starts_with(name) && sum.starts_with(name) && count.starts_with(name));
    let mut cumulative = 0;
    let mut le = String::new();
    for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
        cumulative += n;
        le.clear();
        use std::fmt::Write as _;
        let _ = write!(le, "{bound}");
        sample(
            out,
            bucket,
            &[("split", split), ("le", &le)],
            cumulative as f64,
        );
    }
    sample(
        out,
        bucket,
        &[("split", split), ("le", "+Inf")],
        h.count as f64,
    );
    sample(out, sum, &[("split", split)], h.sum);
    sample(out, count, &[("split", split)], h.count as f64);
}

#[cfg(test)]
#[path = "splits_tests.rs"]
mod tests;
