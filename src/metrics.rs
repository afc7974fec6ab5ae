//! Prometheus metrics. The names are a contract with the shipped dashboard and alert rules.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every split state, in the order shown to users.
pub const STATES: [&str; 9] = [
    "Progressing",
    "Complete",
    "Paused",
    "Degraded",
    "RolledBack",
    "Aborted",
    "Suspended",
    "Conflict",
    "Invalid",
];

/// Every AWS operation trafficshift calls, as (service, operation) labels of
/// `trafficshift_aws_requests_total`. Each outcome of each is exported from the first scrape, so
/// `increase()` sees the first throttle.
pub const AWS_OPERATIONS: [(&str, &str); 13] = [
    ("route53", "GetHostedZone"),
    ("route53", "ListHostedZonesByName"),
    ("route53", "ListResourceRecordSets"),
    ("route53", "ChangeResourceRecordSets"),
    ("route53", "GetChange"),
    ("ecs", "DescribeServices"),
    ("ecs", "UpdateService"),
    ("apigateway", "GetDomainName"),
    ("apigatewayv2", "GetDomainName"),
    ("elbv2", "DescribeTargetGroups"),
    ("elbv2", "DescribeLoadBalancers"),
    ("elbv2", "DescribeTargetHealth"),
    ("sts", "AssumeRole"),
];
/// The `outcome` label values of `trafficshift_aws_requests_total`.
pub const AWS_OUTCOMES: [&str; 3] = ["success", "throttled", "error"];
/// The `result` label values of `trafficshift_reconciles_total`.
pub const RECONCILE_RESULTS: [&str; 2] = ["success", "error"];
/// The `action` label values of `trafficshift_route53_changes_total`.
pub const ROUTE53_ACTIONS: [&str; 3] = ["create", "delete", "upsert"];

pub struct Metrics {
    pub registry: Registry,
    pub target_weight: GaugeVec,
    pub step_weight: GaugeVec,
    pub observed_weight: GaugeVec,
    pub drift: GaugeVec,
    pub progress: GaugeVec,
    pub step: IntGaugeVec,
    pub steps: IntGaugeVec,
    pub split_state: IntGaugeVec,
    pub gate_passing: IntGaugeVec,
    pub gate_failures: IntGaugeVec,
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub last_success: GaugeVec,
    pub drift_corrections: IntCounterVec,
    pub rollbacks: IntCounterVec,
    pub gate_check_failures: IntCounterVec,
    pub ecs_desired: IntGaugeVec,
    pub ecs_running: IntGaugeVec,
    pub aws_requests: IntCounterVec,
    pub route53_changes: IntCounterVec,
    pub config_valid: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_last_reload: Gauge,
    pub build_info: IntGaugeVec,
    pub traffic_share: GaugeVec,
    pub backend_rps: GaugeVec,
    pub split_info: IntGaugeVec,
    pub gate_value: GaugeVec,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}
fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector");
        let sb = &["split", "backend"];
        let s = &["split"];
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "trafficshift_reconcile_duration_seconds",
                "Duration of one reconcile of a split, AWS calls included.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            s,
        )
        .expect("valid metric");
        r.register(Box::new(reconcile_duration.clone()))
            .expect("unique metric");
        let config_valid = IntGauge::new(
            "trafficshift_config_valid",
            "1 when every configured document parsed and validated on the last load, else 0.",
        )
        .expect("valid metric");
        r.register(Box::new(config_valid.clone()))
            .expect("unique metric");
        let config_last_reload = Gauge::new(
            "trafficshift_config_last_reload_timestamp_seconds",
            "Unix time of the last configuration load attempt.",
        )
        .expect("valid metric");
        r.register(Box::new(config_last_reload.clone()))
            .expect("unique metric");
        let m = Metrics {
            target_weight: gauge_vec(
                &r,
                "trafficshift_target_weight_ratio",
                "The document's final weight of each backend (0-1).",
                sb,
            ),
            step_weight: gauge_vec(
                &r,
                "trafficshift_step_weight_ratio",
                "The weight the current rollout step wants in Route53 (0-1).",
                sb,
            ),
            observed_weight: gauge_vec(
                &r,
                "trafficshift_observed_weight_ratio",
                "The weight read from Route53 on the last cycle (0-1).",
                sb,
            ),
            drift: gauge_vec(
                &r,
                "trafficshift_drift_ratio",
                "Half the L1 distance between observed and step weights (0 = in sync).",
                s,
            ),
            progress: gauge_vec(
                &r,
                "trafficshift_rollout_progress_ratio",
                "Fraction of the way from the rollout's start split to the target (0-1).",
                s,
            ),
            step: int_gauge_vec(
                &r,
                "trafficshift_rollout_step",
                "Current rollout step (0 = start split).",
                s,
            ),
            steps: int_gauge_vec(
                &r,
                "trafficshift_rollout_steps",
                "Number of steps of the rollout.",
                s,
            ),
            split_state: int_gauge_vec(
                &r,
                "trafficshift_split_state",
                "1 for the split's current state, 0 for the others.",
                &["split", "state"],
            ),
            gate_passing: int_gauge_vec(
                &r,
                "trafficshift_gate_passing",
                "1 when the gate passed its most recent check.",
                &["split", "gate"],
            ),
            gate_failures: int_gauge_vec(
                &r,
                "trafficshift_gate_consecutive_failures",
                "Consecutive failing checks of the gate.",
                &["split", "gate"],
            ),
            reconciles: counter_vec(
                &r,
                "trafficshift_reconciles_total",
                "Reconciles by result (success, error).",
                &["split", "result"],
            ),
            reconcile_errors: counter_vec(
                &r,
                "trafficshift_reconcile_errors_total",
                "Failed reconciles by error kind.",
                &["split", "kind"],
            ),
            reconcile_duration,
            last_success: gauge_vec(
                &r,
                "trafficshift_last_reconcile_success_timestamp_seconds",
                "Unix time of the last successful reconcile.",
                s,
            ),
            drift_corrections: counter_vec(
                &r,
                "trafficshift_drift_corrections_total",
                "Route53 writes that put back a weight or target changed outside trafficshift.",
                s,
            ),
            rollbacks: counter_vec(
                &r,
                "trafficshift_rollbacks_total",
                "Rollouts rolled back after a gate failure.",
                s,
            ),
            gate_check_failures: counter_vec(
                &r,
                "trafficshift_gate_failures_total",
                "Failing gate checks.",
                &["split", "gate"],
            ),
            ecs_desired: int_gauge_vec(
                &r,
                "trafficshift_ecs_desired_tasks",
                "ECS desiredCount of the backend's service, as last read or set.",
                sb,
            ),
            ecs_running: int_gauge_vec(
                &r,
                "trafficshift_ecs_running_tasks",
                "ECS runningCount of the backend's service, as last read.",
                sb,
            ),
            aws_requests: counter_vec(
                &r,
                "trafficshift_aws_requests_total",
                "AWS API requests by outcome (success, throttled, error).",
                &["service", "operation", "outcome", "account"],
            ),
            route53_changes: counter_vec(
                &r,
                "trafficshift_route53_changes_total",
                "Route53 record changes submitted, by action.",
                &["split", "action"],
            ),
            config_valid,
            config_reloads: counter_vec(
                &r,
                "trafficshift_config_reloads_total",
                "Configuration loads by result (success, error).",
                &["result"],
            ),
            config_last_reload,
            build_info: int_gauge_vec(
                &r,
                "trafficshift_build_info",
                "Always 1; the labels name the build (crate version, git revision).",
                &["version", "revision"],
            ),
            // Absent while unknown (no CloudWatch data): a 0 would read as "no traffic".
            traffic_share: gauge_vec(
                &r,
                "trafficshift_traffic_share_ratio",
                "Share of the split's requests this backend served over observe.window, from CloudWatch (0-1); absent while unknown.",
                sb,
            ),
            backend_rps: gauge_vec(
                &r,
                "trafficshift_backend_requests_per_second",
                "Requests per second this backend served over observe.window, from CloudWatch; absent while unknown.",
                sb,
            ),
            split_info: int_gauge_vec(
                &r,
                "trafficshift_split_info",
                "Always 1; the labels name the split's record, hosted zone, owner id and AWS account, to join on.",
                &["split", "record", "zone", "owner", "account"],
            ),
            gate_value: gauge_vec(
                &r,
                "trafficshift_gate_value",
                "The value a gate's last check measured: a Prometheus result, the healthy target percent, an HTTP status, the share deviation in percentage points.",
                &["split", "gate"],
            ),
            registry: r,
        };
        // Set by build.rs; a build without it (sources copied without build.rs) still compiles.
        m.build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("TRAFFICSHIFT_GIT_REVISION").unwrap_or("unknown"),
            ])
            .set(1);
        m
    }

    /// Create every `trafficshift_aws_requests_total` series of an account at 0 (the base
    /// credentials' account at start, an assumed role's on first use), so `increase()` sees the
    /// first throttle. Idempotent.
    pub fn init_account(&self, account: &str) {
        for (service, operation) in AWS_OPERATIONS {
            for outcome in AWS_OUTCOMES {
                self.aws_requests
                    .with_label_values(&[service, operation, outcome, account]);
            }
        }
    }

    /// Create every counter of a split at 0, so the first rollback, drift correction or error is an
    /// increase from 0 rather than a series appearing (which `increase()` and `rate()` miss).
    /// Idempotent; called whenever a split's document is loaded.
    pub fn init_split(&self, split: &str, gates: &[String]) {
        for result in RECONCILE_RESULTS {
            self.reconciles.with_label_values(&[split, result]);
        }
        for kind in crate::error::Error::KINDS {
            self.reconcile_errors.with_label_values(&[split, kind]);
        }
        self.drift_corrections.with_label_values(&[split]);
        self.rollbacks.with_label_values(&[split]);
        for action in ROUTE53_ACTIONS {
            self.route53_changes.with_label_values(&[split, action]);
        }
        for gate in gates {
            self.gate_check_failures.with_label_values(&[split, gate]);
        }
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("utf-8")
    }

    /// Count one AWS request. `outcome` is success, throttled or error; the account is the one
    /// the current task's calls go to (`aws::accounts::current`).
    pub fn aws_request(&self, service: &str, operation: &str, outcome: &str) {
        let account = crate::aws::accounts::current();
        self.aws_requests
            .with_label_values(&[service, operation, outcome, &account])
            .inc();
    }

    /// Drop the gauges of a split that is no longer configured, so dashboards do not show ghosts.
    /// Counters stay: they are cumulative and `rate()` handles their end.
    pub fn forget_split(&self, split: &str, backends: &[String], gates: &[String]) {
        for v in [&self.drift, &self.progress, &self.last_success] {
            let _ = v.remove_label_values(&[split]);
        }
        for v in [&self.step, &self.steps] {
            let _ = v.remove_label_values(&[split]);
        }
        for b in backends {
            for v in [
                &self.target_weight,
                &self.step_weight,
                &self.observed_weight,
            ] {
                let _ = v.remove_label_values(&[split, b]);
            }
            for v in [&self.ecs_desired, &self.ecs_running] {
                let _ = v.remove_label_values(&[split, b]);
            }
        }
        for g in gates {
            for v in [&self.gate_passing, &self.gate_failures] {
                let _ = v.remove_label_values(&[split, g]);
            }
        }
        for state in STATES {
            let _ = self.split_state.remove_label_values(&[split, state]);
        }
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[cfg(test)]
mod tests {
    use super::*;

    /// A series line of the exposition for `name{labels}`, e.g. `("x_total", "split=\"a\"")`.
    fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(series, _)| {
                series.starts_with(&format!("{name}{{"))
                    && labels
                        .iter()
                        .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|(_, v)| v.parse().ok())
    }

    #[test]
    fn split_counters_exist_at_zero_once_loaded() {
        METRICS.init_split("zero-init", &["smoke".to_string()]);
        METRICS.init_account("123456789012");
        let text = METRICS.render();
        let s = ("split", "zero-init");
        for (name, extra) in [
            ("trafficshift_drift_corrections_total", None),
            ("trafficshift_rollbacks_total", None),
            (
                "trafficshift_reconcile_errors_total",
                Some(("kind", "aws_throttled")),
            ),
            (
                "trafficshift_reconcile_errors_total",
                Some(("kind", "conflict")),
            ),
            ("trafficshift_reconciles_total", Some(("result", "error"))),
            (
                "trafficshift_route53_changes_total",
                Some(("action", "upsert")),
            ),
            ("trafficshift_gate_failures_total", Some(("gate", "smoke"))),
        ] {
            let labels: Vec<(&str, &str)> = std::iter::once(s).chain(extra).collect();
            assert_eq!(value(&text, name, &labels), Some(0.0), "{name} {labels:?}");
        }
        assert_eq!(
            value(
                &text,
                "trafficshift_aws_requests_total",
                &[
                    ("service", "route53"),
                    ("operation", "ChangeResourceRecordSets"),
                    ("outcome", "throttled"),
                    ("account", "123456789012")
                ]
            ),
            Some(0.0)
        );
    }
}
