//! Prometheus metrics. The names are a contract with the shipped dashboard and alert rules.

use std::sync::LazyLock;

pub mod splits;
pub mod text;

use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

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

/// Process-wide metrics in the `prometheus` registry (AWS requests, configuration, build, the
/// process collector, notifications), and the per-split series in a compact store of our own
/// (`splits`): ~50 series per split made the crate's per-series objects and its `gather()` the
/// cost of a controller with thousands of splits.
pub struct Metrics {
    pub registry: Registry,
    pub aws_requests: IntCounterVec,
    pub config_valid: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_last_reload: Gauge,
    pub build_info: IntGaugeVec,
    /// Every series labelled `split`.
    pub splits: splits::Splits,
}

/// `metric`, registered in `r` (names are fixed here: a clash is a programming error).
fn registered<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, metric: M) -> M {
    r.register(Box::new(metric.clone())).expect("unique metric");
    metric
}
fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector");
        let config_valid = registered(
            &r,
            IntGauge::new(
                "trafficshift_config_valid",
                "1 when every configured document parsed and validated on the last load, else 0.",
            )
            .expect("valid metric"),
        );
        let config_last_reload = registered(
            &r,
            Gauge::new(
                "trafficshift_config_last_reload_timestamp_seconds",
                "Unix time of the last configuration load attempt.",
            )
            .expect("valid metric"),
        );
        let m = Metrics {
            aws_requests: counter_vec(
                &r,
                "trafficshift_aws_requests_total",
                "AWS API requests by outcome (success, throttled, error).",
                &["service", "operation", "outcome", "account"],
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
            splits: splits::Splits::default(),
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
        self.splits.init(split, gates);
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        self.render_chunks().collect()
    }

    /// The exposition in pieces of at most ~64 KiB (the registry's families first), each
    /// written when asked for: a scrape of 10,000 splits never holds the whole text.
    pub fn render_chunks(&self) -> impl Iterator<Item = String> + '_ {
        let mut registry = String::new();
        TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut registry)
            .expect("text encoding cannot fail");
        std::iter::once(registry).chain(self.splits.chunks())
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
    /// Counters stay: they are cumulative and `rate()` handles their end. The traffic poller
    /// drops the traffic gauges itself.
    pub fn forget_split(&self, split: &str) {
        self.splits.forget(split);
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
