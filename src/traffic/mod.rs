//! The traffic each backend really receives, from CloudWatch request counts.
//!
//! Route53 weights say what resolvers are told; resolvers cache answers for a TTL, some clients
//! pin one answer, so the requests a backend serves can differ from its weight. This module
//! turns per-backend request counts over a window into shares (pure), keeps the latest
//! measurement of every split (`Store`, read by `status`, metrics and the `trafficShare` gate),
//! and says which CloudWatch series count a backend's requests. `poll` does the IO, at most once
//! a minute for all splits together.

pub mod poll;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::spec::{Backend, TrafficSplit, Weights};

/// CloudWatch publishes request counts per minute; a window is whole periods.
pub const PERIOD_SECS: u64 = 60;
const MIN_WINDOW: Duration = Duration::from_secs(60);
const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// One CloudWatch series to read (summed per period).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricQuery {
    pub namespace: String,
    pub metric_name: String,
    /// (name, value), sorted by name.
    pub dimensions: Vec<(String, String)>,
    pub stat: String,
}

impl MetricQuery {
    pub fn sum(namespace: &str, metric_name: &str, dimensions: &[(&str, &str)]) -> Self {
        let mut dimensions: Vec<(String, String)> = dimensions
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        dimensions.sort();
        MetricQuery {
            namespace: namespace.into(),
            metric_name: metric_name.into(),
            dimensions,
            stat: "Sum".into(),
        }
    }
}

/// The series of a backend's `requestMetric`.
pub fn override_query(b: &Backend) -> Option<MetricQuery> {
    let m = b.request_metric.as_ref()?;
    Some(MetricQuery {
        namespace: m.namespace.clone(),
        metric_name: m.metric_name.clone(),
        dimensions: m
            .dimensions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        stat: m.stat.clone(),
    })
}

/// `AWS/ApplicationELB` `RequestCount` of a target group, from its ARN and its load balancer's
/// ARN: CloudWatch names them by the ARN's resource part (`targetgroup/<name>/<id>`,
/// `app/<name>/<id>`). None when an ARN does not have that shape.
pub fn alb_query(target_group_arn: &str, load_balancer_arn: &str) -> Option<MetricQuery> {
    let tg = target_group_arn
        .split_once(":targetgroup/")
        .map(|(_, rest)| format!("targetgroup/{rest}"))?;
    let lb = load_balancer_arn.split_once(":loadbalancer/")?.1;
    Some(MetricQuery::sum(
        "AWS/ApplicationELB",
        "RequestCount",
        &[("TargetGroup", &tg), ("LoadBalancer", lb)],
    ))
}

/// An API mapped to a custom domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ApiStage {
    /// REST API: CloudWatch names it by its name.
    Rest { api_name: String, stage: String },
    /// HTTP API: by its id.
    Http { api_id: String, stage: String },
}

/// `AWS/ApiGateway` `Count` of one mapped API stage.
pub fn api_query(s: &ApiStage) -> MetricQuery {
    match s {
        ApiStage::Rest { api_name, stage } => MetricQuery::sum(
            "AWS/ApiGateway",
            "Count",
            &[("ApiName", api_name), ("Stage", stage)],
        ),
        ApiStage::Http { api_id, stage } => MetricQuery::sum(
            "AWS/ApiGateway",
            "Count",
            &[("ApiId", api_id), ("Stage", stage)],
        ),
    }
}

/// One backend's measured traffic. `None` is unknown (no series, or no datapoint in the
/// window), never 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BackendTraffic {
    pub requests: Option<f64>,
    pub per_second: Option<f64>,
    /// 0-1.
    pub share: Option<f64>,
}

/// Sum of the datapoints of `series` (each a list of (unix time, value)) at or after `since`;
/// None when there are none: a series CloudWatch has no datapoint for is unknown, not 0 (an ALB
/// publishes no RequestCount for a minute without requests, but also none for a wrong dimension).
pub fn requests_since(series: &[&[(i64, f64)]], since: i64) -> Option<f64> {
    let mut points = series
        .iter()
        .flat_map(|s| s.iter())
        .filter(|(t, v)| *t >= since && v.is_finite())
        .peekable();
    points.peek()?;
    Some(points.map(|(_, v)| v).sum())
}

/// Shares and rates from request counts over a window of `window_secs`. A share is known only
/// when every backend's count is known and the total is positive: with one backend unknown, no
/// other backend's share can be told.
pub fn shares(
    counts: &BTreeMap<String, Option<f64>>,
    window_secs: u64,
) -> BTreeMap<String, BackendTraffic> {
    let total: Option<f64> = counts.values().copied().sum();
    let window = window_secs.max(1) as f64;
    counts
        .iter()
        .map(|(name, c)| {
            let share = match (c, total) {
                (Some(c), Some(t)) if t > 0.0 => Some(c / t),
                _ => None,
            };
            (
                name.clone(),
                BackendTraffic {
                    requests: *c,
                    per_second: c.map(|c| c / window),
                    share,
                },
            )
        })
        .collect()
}

/// The largest difference, in percentage points, between a backend's share and its weight, with
/// that backend's name. None when a share is unknown or `weights` misses a backend.
pub fn deviation(
    traffic: &BTreeMap<String, BackendTraffic>,
    weights: &Weights,
) -> Option<(f64, String)> {
    let mut worst: Option<(f64, String)> = None;
    for (name, t) in traffic {
        let share = t.share? * 100.0;
        let weight = f64::from(*weights.get(name)?);
        let d = (share - weight).abs();
        if worst.as_ref().is_none_or(|(w, _)| d > *w) {
            worst = Some((d, name.clone()));
        }
    }
    worst
}

/// The latest measurement of one split.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitTraffic {
    pub backends: BTreeMap<String, BackendTraffic>,
    /// Unix time of the measurement (the window's end).
    pub measured_at: u64,
    pub window_secs: u64,
    /// Why some backend is unknown, in words (a resolution or CloudWatch error).
    pub problem: Option<String>,
}

/// Weights as the controller last read them from Route53, and since when (None: already so
/// when this process first looked).
#[derive(Debug, Clone, PartialEq)]
struct SeenWeights {
    weights: Weights,
    since: Option<u64>,
}

/// The latest measurements and Route53 weights by split, shared by the poller, the gates,
/// `status` and metrics.
#[derive(Debug, Default)]
pub struct Store {
    traffic: RwLock<HashMap<String, SplitTraffic>>,
    weights: RwLock<HashMap<String, SeenWeights>>,
    /// Target group ARNs of each split's ECS backends, as the last reconcile described them (the
    /// poller reuses them instead of describing the services again).
    target_groups: RwLock<HashMap<String, BTreeMap<String, Vec<String>>>>,
    /// The documents of the controller's last load, for the poller: it reads the documents the
    /// controller already holds instead of parsing every file again each minute (a second copy
    /// of every document, and its CPU).
    splits: RwLock<Option<Arc<[Arc<TrafficSplit>]>>>,
    /// Woken on every [`Store::set_splits`]; a permit waits for the poller if it was not waiting.
    loaded: tokio::sync::Notify,
}

impl Store {
    /// The documents that loaded (a rejected one is left out until it loads again).
    pub fn set_splits(&self, splits: Arc<[Arc<TrafficSplit>]>) {
        if let Ok(mut s) = self.splits.write() {
            *s = Some(splits);
        }
        self.loaded.notify_one();
    }

    /// The documents of the last load, waiting for the first one.
    pub async fn splits(&self) -> Arc<[Arc<TrafficSplit>]> {
        loop {
            if let Some(s) = self.splits.read().ok().and_then(|s| s.clone()) {
                return s;
            }
            self.loaded.notified().await;
        }
    }

    pub fn get(&self, split: &str) -> Option<SplitTraffic> {
        self.traffic.read().ok()?.get(split).cloned()
    }

    /// When the split's traffic was last measured (what a cached status of it depends on).
    pub fn measured_at(&self, split: &str) -> Option<u64> {
        self.traffic.read().ok()?.get(split).map(|t| t.measured_at)
    }

    pub fn set(&self, split: &str, t: SplitTraffic) {
        if let Ok(mut m) = self.traffic.write() {
            m.insert(split.to_string(), t);
        }
    }

    /// Forget splits no longer configured.
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        if let Ok(mut m) = self.traffic.write() {
            m.retain(|k, _| keep(k));
        }
        if let Ok(mut m) = self.weights.write() {
            m.retain(|k, _| keep(k));
        }
        if let Ok(mut m) = self.target_groups.write() {
            m.retain(|k, _| keep(k));
        }
    }

    /// Record the target groups of a split's ECS backends (by backend name).
    pub fn observe_target_groups(&self, split: &str, by_backend: BTreeMap<String, Vec<String>>) {
        if let Ok(mut m) = self.target_groups.write() {
            m.insert(split.to_string(), by_backend);
        }
    }

    /// The target groups of an ECS backend, as last described; None before a reconcile saw it.
    pub fn target_groups(&self, split: &str, backend: &str) -> Option<Vec<String>> {
        self.target_groups
            .read()
            .ok()?
            .get(split)?
            .get(backend)
            .cloned()
    }

    /// Record the weights a reconcile read from Route53 at `now`; a change restarts the clock the
    /// `trafficShare` gate's settle time counts from.
    pub fn observe_weights(&self, split: &str, weights: Option<&Weights>, now: u64) {
        let Ok(mut m) = self.weights.write() else {
            return;
        };
        let Some(w) = weights else {
            m.remove(split);
            return;
        };
        match m.get_mut(split) {
            Some(seen) if &seen.weights == w => {}
            Some(seen) => {
                seen.weights = w.clone();
                seen.since = Some(now);
            }
            None => {
                m.insert(
                    split.to_string(),
                    SeenWeights {
                        weights: w.clone(),
                        since: None,
                    },
                );
            }
        }
    }

    /// The weights last read from Route53 and since when they hold (None: since before this
    /// process started).
    pub fn weights(&self, split: &str) -> Option<(Weights, Option<u64>)> {
        let m = self.weights.read().ok()?;
        m.get(split).map(|s| (s.weights.clone(), s.since))
    }
}

/// Set `trafficshift_split_info{split,record,zone,owner,account} 1` for a loaded document.
/// `account` is where the zone lives: the role's account for a cross-account split, else the
/// controller's own (empty when STS did not say at start). `Metrics::forget_split` drops it.
pub fn split_info(split: &TrafficSplit, owner: &str, account: &str) {
    let record = crate::spec::fqdn(&split.spec.record.name);
    crate::metrics::METRICS.splits.update(split.name(), |s| {
        s.set_info(&record, &split.spec.record.hosted_zone, owner, account)
    });
}

/// Problems of the traffic settings of a document, as (path, message).
pub fn problems(split: &TrafficSplit) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(o) = &split.spec.observe {
        let w = o.window.get();
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&w) || w.as_secs() % PERIOD_SECS != 0 {
            out.push((
                "spec.observe.window".to_string(),
                format!(
                    "window {} must be whole minutes from 1m to 1h (CloudWatch periods are 60 s)",
                    o.window
                ),
            ));
        }
    }
    for (i, b) in split.spec.backends.iter().enumerate() {
        let Some(m) = &b.request_metric else { continue };
        let at = format!("spec.backends[{i}].requestMetric");
        if m.namespace.trim().is_empty() {
            out.push((format!("{at}.namespace"), "namespace is empty".into()));
        }
        if m.metric_name.trim().is_empty() {
            out.push((format!("{at}.metricName"), "metricName is empty".into()));
        }
        if !matches!(m.stat.as_str(), "Sum" | "SampleCount") {
            out.push((
                format!("{at}.stat"),
                format!(
                    "stat '{}' does not count requests: use Sum or SampleCount",
                    crate::sanitize::echo(&m.stat)
                ),
            ));
        }
        if m.dimensions.len() > 30 {
            out.push((
                format!("{at}.dimensions"),
                "CloudWatch allows at most 30 dimensions".into(),
            ));
        }
    }
    for (i, g) in split.spec.gates.iter().enumerate() {
        let Some(t) = &g.traffic_share else { continue };
        if t.tolerance > 100 {
            out.push((
                format!("spec.gates[{i}].trafficShare.tolerance"),
                format!(
                    "tolerance {} is out of range 0-100 (percentage points)",
                    t.tolerance
                ),
            ));
        }
        if t.settle
            .is_some_and(|s| s.get() > Duration::from_secs(24 * 3600))
        {
            out.push((
                format!("spec.gates[{i}].trafficShare.settle"),
                "settle is out of range 0s-24h".into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, Option<f64>)]) -> BTreeMap<String, Option<f64>> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn shares_of_300_and_700_per_minute_over_five_minutes() {
        // 5 minutes of 300/min and 700/min: 1500 and 3500 requests.
        let s = shares(
            &counts(&[("api", Some(1500.0)), ("alb", Some(3500.0))]),
            300,
        );
        assert_eq!(s["api"].share, Some(0.3));
        assert_eq!(s["alb"].share, Some(0.7));
        assert_eq!(s["api"].per_second, Some(5.0));
        assert_eq!(s["alb"].per_second, Some(3500.0 / 300.0));
        assert_eq!(s["api"].requests, Some(1500.0));
    }

    #[test]
    fn unknown_is_never_zero() {
        let s = shares(&counts(&[("api", Some(100.0)), ("alb", None)]), 60);
        assert_eq!(s["alb"].requests, None);
        assert_eq!(s["alb"].per_second, None);
        assert_eq!(s["alb"].share, None);
        // The known backend's count stays, but its share cannot be told without the other's.
        assert_eq!(s["api"].requests, Some(100.0));
        assert_eq!(s["api"].share, None);
        // Zero requests everywhere: rates are 0, shares unknown (0/0).
        let s = shares(&counts(&[("api", Some(0.0)), ("alb", Some(0.0))]), 60);
        assert_eq!(s["api"].per_second, Some(0.0));
        assert_eq!(s["api"].share, None);
        // A real zero next to traffic is a share of 0.
        let s = shares(&counts(&[("api", Some(0.0)), ("alb", Some(60.0))]), 60);
        assert_eq!(s["api"].share, Some(0.0));
        assert_eq!(s["alb"].share, Some(1.0));
    }

    #[test]
    fn requests_since_sums_the_window_only() {
        let a: &[(i64, f64)] = &[(0, 10.0), (60, 20.0), (120, 30.0)];
        let b: &[(i64, f64)] = &[(120, 5.0)];
        assert_eq!(requests_since(&[a, b], 60), Some(55.0));
        assert_eq!(requests_since(&[a], 121), None);
        assert_eq!(requests_since(&[], 0), None);
        assert_eq!(requests_since(&[&[(0, f64::NAN)]], 0), None);
    }

    #[test]
    fn deviation_in_percentage_points() {
        let t = shares(&counts(&[("api", Some(300.0)), ("alb", Some(700.0))]), 60);
        let w: Weights = [("api".into(), 50), ("alb".into(), 50)].into();
        let (d, who) = deviation(&t, &w).unwrap();
        assert!((d - 20.0).abs() < 1e-9, "{d}");
        assert_eq!(who, "alb", "first of equal deviations in name order");
        let w: Weights = [("api".into(), 30), ("alb".into(), 70)].into();
        assert!(deviation(&t, &w).unwrap().0 < 1e-9);
        let unknown = shares(&counts(&[("api", None), ("alb", Some(1.0))]), 60);
        assert_eq!(deviation(&unknown, &w), None);
    }

    #[test]
    fn alb_dimensions_come_from_the_arns() {
        let q = alb_query(
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/api-tg/73e2d6bc24d8a067",
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/api-lb/50dc6c495c0c9188",
        )
        .unwrap();
        assert_eq!(q.namespace, "AWS/ApplicationELB");
        assert_eq!(q.metric_name, "RequestCount");
        assert_eq!(
            q.dimensions,
            vec![
                (
                    "LoadBalancer".to_string(),
                    "app/api-lb/50dc6c495c0c9188".to_string()
                ),
                (
                    "TargetGroup".to_string(),
                    "targetgroup/api-tg/73e2d6bc24d8a067".to_string()
                ),
            ]
        );
        assert_eq!(q.stat, "Sum");
        assert_eq!(alb_query("not-an-arn", "x"), None);
    }

    #[test]
    fn api_dimensions() {
        let rest = api_query(&ApiStage::Rest {
            api_name: "orders".into(),
            stage: "prod".into(),
        });
        assert_eq!(rest.metric_name, "Count");
        assert_eq!(
            rest.dimensions,
            vec![
                ("ApiName".to_string(), "orders".to_string()),
                ("Stage".to_string(), "prod".to_string())
            ]
        );
        let http = api_query(&ApiStage::Http {
            api_id: "a1b2c3".into(),
            stage: "$default".into(),
        });
        assert_eq!(http.dimensions[0], ("ApiId".into(), "a1b2c3".into()));
    }

    #[test]
    fn weights_clock_starts_at_a_change_only() {
        let s = Store::default();
        let a: Weights = [("x".into(), 50)].into();
        let b: Weights = [("x".into(), 60)].into();
        s.observe_weights("s", Some(&a), 100);
        assert_eq!(s.weights("s"), Some((a.clone(), None)));
        s.observe_weights("s", Some(&a), 200);
        assert_eq!(s.weights("s"), Some((a.clone(), None)));
        s.observe_weights("s", Some(&b), 300);
        assert_eq!(s.weights("s"), Some((b.clone(), Some(300))));
        s.observe_weights("s", None, 400);
        assert_eq!(s.weights("s"), None);
    }
}
