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
        let i = match self.backends.iter().position(|b| &*b.name == name) {
            Some(i) => i,
            None => {
                self.backends.push(Backend {
                    name: name.into(),
                    ..Backend::default()
                });
                self.backends.len() - 1
            }
        };
        &mut self.backends[i]
    }

    /// The series of a gate, created empty on first use.
    pub fn gate(&mut self, name: &str) -> &mut Gate {
        let i = match self.gates.iter().position(|g| &*g.name == name) {
            Some(i) => i,
            None => {
                self.gates.push(Gate {
                    name: name.into(),
                    ..Gate::default()
                });
                self.gates.len() - 1
            }
        };
        &mut self.gates[i]
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
mod tests {
    use super::*;
    use prometheus::{
        Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
    };
    use std::collections::{BTreeMap, BTreeSet};

    /// The per-split families as the `prometheus` crate kept them before this store: the oracle.
    #[derive(Default)]
    struct Crate {
        r: Registry,
        gauges: std::cell::RefCell<BTreeMap<String, GaugeVec>>,
        counters: std::cell::RefCell<BTreeMap<String, IntCounterVec>>,
    }

    impl Crate {
        fn help(name: &str) -> &'static str {
            Family::ALL
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.help())
                .expect("a per-split family")
        }
        fn gauge(&self, name: &str, labels: &[&str]) -> GaugeVec {
            let mut all = self.gauges.borrow_mut();
            all.entry(name.to_string())
                .or_insert_with(|| {
                    let g =
                        GaugeVec::new(Opts::new(name, Self::help(name)), labels).expect("valid");
                    self.r.register(Box::new(g.clone())).expect("unique");
                    g
                })
                .clone()
        }
        fn counter(&self, name: &str, labels: &[&str]) -> IntCounterVec {
            let mut all = self.counters.borrow_mut();
            all.entry(name.to_string())
                .or_insert_with(|| {
                    let c = IntCounterVec::new(Opts::new(name, Self::help(name)), labels)
                        .expect("valid");
                    self.r.register(Box::new(c.clone())).expect("unique");
                    c
                })
                .clone()
        }
        fn text(&self) -> String {
            let mut buf = Vec::new();
            TextEncoder::new()
                .encode(&self.r.gather(), &mut buf)
                .expect("encode");
            String::from_utf8(buf).expect("utf-8")
        }
    }

    /// Family name -> (HELP and TYPE lines, sample lines as a set); also checks that a family's
    /// lines are contiguous and come after its HELP and TYPE.
    fn families(text: &str) -> BTreeMap<String, (Vec<String>, BTreeSet<String>)> {
        let mut out: BTreeMap<String, (Vec<String>, BTreeSet<String>)> = BTreeMap::new();
        let mut current = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                current = rest.split(' ').next().unwrap_or_default().to_string();
                assert!(!out.contains_key(&current), "{current} twice");
            }
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            if !l.starts_with('#') {
                assert!(
                    name.starts_with(&current),
                    "{l} outside its family {current}"
                );
            }
            let e = out.entry(current.clone()).or_default();
            if l.starts_with('#') {
                e.0.push(l.to_string());
            } else {
                assert!(e.1.insert(l.to_string()), "duplicate series {l}");
            }
        }
        out
    }

    #[test]
    fn same_exposition_as_the_prometheus_crate() {
        let c = Crate::default();
        let store = Splits::default();
        let sb = &["split", "backend"];
        let sg = &["split", "gate"];
        let s = &["split"];
        let split = "we\"ird\\name\n";
        let gates = ["smoke".to_string(), "p99".to_string()];

        // A loaded split: counters at 0, then a cycle's worth of everything.
        store.init(split, &gates);
        for r in RECONCILE_RESULTS {
            c.counter("trafficshift_reconciles_total", &["split", "result"])
                .with_label_values(&[split, r]);
        }
        for k in Error::KINDS {
            c.counter("trafficshift_reconcile_errors_total", &["split", "kind"])
                .with_label_values(&[split, k]);
        }
        for a in ROUTE53_ACTIONS {
            c.counter("trafficshift_route53_changes_total", &["split", "action"])
                .with_label_values(&[split, a]);
        }
        c.counter("trafficshift_drift_corrections_total", s)
            .with_label_values(&[split]);
        c.counter("trafficshift_rollbacks_total", s)
            .with_label_values(&[split]);
        for g in &gates {
            c.counter("trafficshift_gate_failures_total", sg)
                .with_label_values(&[split, g]);
        }
        let h = HistogramVec::new(
            HistogramOpts::new(
                "trafficshift_reconcile_duration_seconds",
                Crate::help("trafficshift_reconcile_duration_seconds"),
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            s,
        )
        .expect("valid");
        c.r.register(Box::new(h.clone())).expect("unique");
        for d in [0.003, 0.01, 0.2, 7.5, 100.0] {
            h.with_label_values(&[split]).observe(d);
            store.update(split, |x| x.observe_duration(d));
        }
        c.counter("trafficshift_reconciles_total", &["split", "result"])
            .with_label_values(&[split, "error"])
            .inc_by(2);
        c.counter("trafficshift_reconcile_errors_total", &["split", "kind"])
            .with_label_values(&[split, "conflict"])
            .inc_by(2);
        c.counter("trafficshift_route53_changes_total", &["split", "action"])
            .with_label_values(&[split, "upsert"])
            .inc();
        c.counter("trafficshift_rollbacks_total", s)
            .with_label_values(&[split])
            .inc();
        c.counter("trafficshift_gate_failures_total", sg)
            .with_label_values(&[split, "p99"])
            .inc();
        store.update(split, |x| {
            x.count_reconcile(false);
            x.count_reconcile(false);
            x.count_error("conflict");
            x.count_error("conflict");
            x.count_route53_change("upsert");
            x.count_rollback();
            x.count_gate_failure("p99");
        });
        for (b, w, obs, ecs, share) in [
            ("blue", 0.8, Some(0.9), None, Some(1.0 / 3.0)),
            ("gr\"een", 0.2, None, Some((3, 2)), None),
        ] {
            c.gauge("trafficshift_target_weight_ratio", sb)
                .with_label_values(&[split, b])
                .set(w);
            c.gauge("trafficshift_step_weight_ratio", sb)
                .with_label_values(&[split, b])
                .set(w / 2.0);
            if let Some(o) = obs {
                c.gauge("trafficshift_observed_weight_ratio", sb)
                    .with_label_values(&[split, b])
                    .set(o);
            }
            if let Some((d, r)) = ecs {
                c.gauge("trafficshift_ecs_desired_tasks", sb)
                    .with_label_values(&[split, b])
                    .set(d as f64);
                c.gauge("trafficshift_ecs_running_tasks", sb)
                    .with_label_values(&[split, b])
                    .set(r as f64);
            }
            if let Some(v) = share {
                c.gauge("trafficshift_traffic_share_ratio", sb)
                    .with_label_values(&[split, b])
                    .set(v);
                c.gauge("trafficshift_backend_requests_per_second", sb)
                    .with_label_values(&[split, b])
                    .set(12.5);
            }
            store.update(split, |x| {
                let s = x.backend(b);
                s.target_weight = Some(w);
                s.step_weight = Some(w / 2.0);
                s.observed_weight = obs;
                s.ecs_desired = ecs.map(|e| e.0);
                s.ecs_running = ecs.map(|e| e.1);
                s.traffic_share = share;
                s.requests_per_second = share.map(|_| 12.5);
            });
        }
        for (g, passing, fails, value) in [("smoke", 1, 0, None), ("p99", 0, 1, Some(0.25))] {
            c.gauge("trafficshift_gate_passing", sg)
                .with_label_values(&[split, g])
                .set(passing as f64);
            c.gauge("trafficshift_gate_consecutive_failures", sg)
                .with_label_values(&[split, g])
                .set(fails as f64);
            if let Some(v) = value {
                c.gauge("trafficshift_gate_value", sg)
                    .with_label_values(&[split, g])
                    .set(v);
            }
            store.update(split, |x| {
                let s = x.gate(g);
                s.passing = Some(passing);
                s.consecutive_failures = Some(fails);
                s.value = value;
            });
        }
        for state in STATES {
            c.gauge("trafficshift_split_state", &["split", "state"])
                .with_label_values(&[split, state])
                .set(f64::from(u8::from(state == "Degraded")));
        }
        for (name, v) in [
            ("trafficshift_drift_ratio", 0.1),
            ("trafficshift_rollout_progress_ratio", 0.5),
            (
                "trafficshift_last_reconcile_success_timestamp_seconds",
                1.7e9,
            ),
            ("trafficshift_rollout_step", 2.0),
            ("trafficshift_rollout_steps", 4.0),
        ] {
            c.gauge(name, s).with_label_values(&[split]).set(v);
        }
        c.gauge(
            "trafficshift_split_info",
            &["split", "record", "zone", "owner", "account"],
        )
        .with_label_values(&[split, "api.example.", "example.", "me", "1234"])
        .set(1.0);
        store.update(split, |x| {
            x.set_state("Degraded");
            x.drift = Some(0.1);
            x.progress = Some(0.5);
            x.last_success = Some(1.7e9);
            x.step = Some(2);
            x.steps = Some(4);
            x.set_info("api.example.", "example.", "me", "1234");
        });

        // A removed split: its gauges go (the crate: remove_label_values), its counters stay.
        store.init("gone", &[]);
        store.update("gone", |x| {
            x.set_state("Complete");
            x.drift = Some(0.0);
            x.backend("b").target_weight = Some(1.0);
        });
        store.forget("gone");
        for r in RECONCILE_RESULTS {
            c.counter("trafficshift_reconciles_total", &["split", "result"])
                .with_label_values(&["gone", r]);
        }
        for k in Error::KINDS {
            c.counter("trafficshift_reconcile_errors_total", &["split", "kind"])
                .with_label_values(&["gone", k]);
        }
        for a in ROUTE53_ACTIONS {
            c.counter("trafficshift_route53_changes_total", &["split", "action"])
                .with_label_values(&["gone", a]);
        }
        c.counter("trafficshift_drift_corrections_total", s)
            .with_label_values(&["gone"]);
        c.counter("trafficshift_rollbacks_total", s)
            .with_label_values(&["gone"]);
        // Gauges only, then forgotten: nothing of it remains.
        store.update("ghost", |x| x.drift = Some(1.0));
        store.forget("ghost");
        assert!(!store.lock().contains_key("ghost"));

        let ours: String = store.chunks().collect();
        let want = c.text();
        assert_eq!(
            families(&ours),
            families(&want),
            "ours:\n{ours}\ncrate:\n{want}"
        );
        // Every per-split family was exercised.
        assert_eq!(families(&ours).len(), Family::ALL.len());
    }

    #[test]
    fn pieces_are_bounded_and_add_up_to_the_whole() {
        let store = Splits::default();
        for i in 0..2000 {
            let name = format!("split-{i:05}");
            store.init(&name, &["g".to_string()]);
            store.update(&name, |x| {
                x.set_state("Complete");
                x.observe_duration(0.2);
            });
        }
        let pieces: Vec<String> = store.chunks().collect();
        assert!(pieces.len() > 10, "{} pieces", pieces.len());
        // A piece stops after the split that crossed the bound.
        assert!(pieces.iter().all(|p| p.len() < CHUNK_BYTES + 4096));
        let whole = pieces.concat();
        let f = families(&whole);
        let state = &f["trafficshift_split_state"];
        assert_eq!(state.1.len(), 2000 * STATES.len());
        assert_eq!(state.0.len(), 2, "HELP and TYPE once");
    }
}
