//! The traffic poller: once a minute (at most), name every configured backend's request series,
//! read them in one GetMetricData call per account (500 queries per call), and publish the
//! shares. ECS target groups come from the reconciler's describes (through the `Store`), so the
//! poller adds no ECS call.
//!
//! A cross-account split's load balancers, APIs and metrics are in its role's account, so the
//! splits are grouped by `spec.aws` and each group is read with that role's clients (the
//! reconciler's credentials, from the same `Accounts` registry). A role that cannot be assumed
//! leaves its splits' shares unknown, never 0, and the other groups are read as usual.
//!
//! It runs beside the reconcile loop, not in it: a slow CloudWatch must not hold a rollout step,
//! and reconciles come much more often than CloudWatch has new minutes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    alb_query, api_query, override_query, requests_since, shares, ApiStage, MetricQuery,
    SplitTraffic, Store,
};
use crate::aws::accounts::scope;
use crate::aws::metric_data::{TrafficAccounts, TrafficSources};
use crate::metrics::METRICS;
use crate::spec::{AwsSpec, TrafficSplit};

/// Custom domain mappings and target group attachments change rarely; re-read them this often.
const RESOLVE_EVERY: u64 = 600;

/// The poller's memory between polls.
pub struct Poller {
    accounts: Arc<dyn TrafficAccounts>,
    store: Arc<Store>,
    /// By target group ARN (which names its account).
    load_balancers: HashMap<String, (String, u64)>,
    /// By (account, custom domain): the same domain name can exist in two accounts.
    stages: HashMap<(Arc<str>, String), (Vec<ApiStage>, u64)>,
    published: BTreeMap<String, Vec<String>>,
}

impl Poller {
    pub fn new(accounts: Arc<dyn TrafficAccounts>, store: Arc<Store>) -> Self {
        Poller {
            accounts,
            store,
            load_balancers: HashMap::new(),
            stages: HashMap::new(),
            published: BTreeMap::new(),
        }
    }

    async fn load_balancer(
        &mut self,
        sources: &dyn TrafficSources,
        tg: &str,
        now: u64,
    ) -> Result<String, String> {
        if let Some((lb, at)) = self.load_balancers.get(tg) {
            if now < at + RESOLVE_EVERY {
                return Ok(lb.clone());
            }
        }
        let lb = sources
            .target_group_load_balancer(tg)
            .await
            .map_err(|e| e.to_string())?;
        self.load_balancers
            .insert(tg.to_string(), (lb.clone(), now));
        Ok(lb)
    }

    async fn api_stages(
        &mut self,
        (sources, account): Group<'_>,
        domain: &str,
        now: u64,
    ) -> Result<Vec<ApiStage>, String> {
        let key = (account.clone(), domain.to_string());
        if let Some((s, at)) = self.stages.get(&key) {
            if now < at + RESOLVE_EVERY {
                return Ok(s.clone());
            }
        }
        let s = sources
            .api_stages(domain)
            .await
            .map_err(|e| e.to_string())?;
        self.stages.insert(key, (s.clone(), now));
        Ok(s)
    }

    /// The series of every backend of `split`: (backend, queries), or why there are none.
    async fn queries(
        &mut self,
        group: Group<'_>,
        split: &TrafficSplit,
        now: u64,
    ) -> Vec<(String, Result<Vec<MetricQuery>, String>)> {
        let mut out = Vec::new();
        for b in &split.spec.backends {
            let q = if let Some(q) = override_query(b) {
                Ok(vec![q])
            } else if let Some(e) = &b.ecs {
                match self.store.target_groups(split.name(), &b.name) {
                    None => Err(format!(
                        "ECS service {}/{} not described yet (or not found)",
                        e.cluster, e.service
                    )),
                    Some(tgs) if tgs.is_empty() => Err(format!(
                        "ECS service {}/{} has no target group",
                        e.cluster, e.service
                    )),
                    Some(tgs) => {
                        let mut qs = Vec::new();
                        let mut err = None;
                        for tg in &tgs {
                            match self.load_balancer(group.0, tg, now).await {
                                Ok(lb) => match alb_query(tg, &lb) {
                                    Some(q) => qs.push(q),
                                    None => {
                                        err = Some(format!("cannot name the ALB series of {tg}"))
                                    }
                                },
                                Err(e) => err = Some(e),
                            }
                        }
                        match err {
                            Some(e) => Err(e),
                            None => Ok(qs),
                        }
                    }
                }
            } else if let Some(a) = &b.api_gateway {
                match self.api_stages(group, &a.domain_name, now).await {
                    Ok(s) if s.is_empty() => {
                        Err(format!("custom domain {} maps no API stage", a.domain_name))
                    }
                    Ok(s) => Ok(s.iter().map(api_query).collect()),
                    Err(e) => Err(e),
                }
            } else {
                Err(format!(
                    "backend {} has no requestMetric to count its requests",
                    b.name
                ))
            };
            out.push((b.name.clone(), q));
        }
        out
    }

    /// One measurement of every split, at `now` (unix seconds): one GetMetricData call (per 500
    /// queries) for each account's splits.
    pub async fn poll(&mut self, splits: &[Arc<TrafficSplit>], now: u64) {
        let mut groups: BTreeMap<Option<&AwsSpec>, Vec<&TrafficSplit>> = BTreeMap::new();
        for s in splits {
            groups.entry(s.spec.aws.as_ref()).or_default().push(s);
        }
        // One account after the other: each is bounded by the clients' operation timeout, and
        // the poller's caches stay plain fields.
        for (aws, group) in groups {
            match self.accounts.traffic_sources(aws).await {
                Ok((account, sources)) => {
                    let g = (sources.as_ref(), &account);
                    scope(account.clone(), self.poll_group(g, &group, now)).await
                }
                Err(e) => {
                    let problem = e.to_string();
                    warn!("cannot read request counts from CloudWatch: {problem}");
                    for s in group {
                        let window = s.spec.observe_window().as_secs();
                        let counts = s
                            .spec
                            .backends
                            .iter()
                            .map(|b| (b.name.clone(), None))
                            .collect();
                        let t = SplitTraffic {
                            backends: shares(&counts, window),
                            measured_at: now,
                            window_secs: window,
                            problem: Some(problem.clone()),
                        };
                        self.record(s, t);
                    }
                }
            }
        }
        // Splits gone from the config lose their series.
        let names: Vec<&str> = splits.iter().map(|s| s.name()).collect();
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|k| !names.contains(&k.as_str()))
            .cloned()
            .collect();
        for split in gone {
            let backends = self.published.remove(&split).unwrap_or_default();
            METRICS.splits.update_existing(&split, |s| {
                for b in backends {
                    let series = s.backend(&b);
                    series.traffic_share = None;
                    series.requests_per_second = None;
                }
            });
        }
        self.store.retain(&|k| names.contains(&k));
    }

    /// Publish and store one split's measurement.
    fn record(&mut self, s: &TrafficSplit, t: SplitTraffic) {
        debug!(split = s.name(), traffic = ?t, "traffic measured");
        publish(s.name(), &t);
        self.published
            .insert(s.name().to_string(), t.backends.keys().cloned().collect());
        self.store.set(s.name(), t);
    }

    /// The splits of one account, read in one GetMetricData call (per 500 queries).
    async fn poll_group(&mut self, group: Group<'_>, splits: &[&TrafficSplit], now: u64) {
        let mut plans = Vec::new();
        let mut all: Vec<MetricQuery> = Vec::new();
        let mut index: HashMap<MetricQuery, usize> = HashMap::new();
        for s in splits.iter().copied() {
            let qs = self.queries(group, s, now).await;
            for (_, q) in &qs {
                for q in q.iter().flatten() {
                    index.entry(q.clone()).or_insert_with(|| {
                        all.push(q.clone());
                        all.len() - 1
                    });
                }
            }
            plans.push((s, qs));
        }
        let longest = splits
            .iter()
            .map(|s| s.spec.observe_window().as_secs())
            .max()
            .unwrap_or(0);
        let end = now as i64;
        let data = if all.is_empty() {
            Ok(Vec::new())
        } else {
            group.0.metric_data(&all, end - longest as i64, end).await
        };
        let data_problem = data.as_ref().err().map(|e| e.to_string());
        if let Some(p) = &data_problem {
            warn!(
                queries = all.len(),
                "cannot read request counts from CloudWatch: {p}"
            );
        }
        let data = data.unwrap_or_default();

        for (s, qs) in plans {
            let window = s.spec.observe_window().as_secs();
            let since = end - window as i64;
            let mut counts = BTreeMap::new();
            let mut problems = Vec::new();
            for (backend, q) in qs {
                let count = match q {
                    Ok(q) if data_problem.is_none() => {
                        let series: Vec<&[(i64, f64)]> = q
                            .iter()
                            .filter_map(|q| index.get(q).and_then(|i| data.get(*i)))
                            .map(Vec::as_slice)
                            .collect();
                        let c = requests_since(&series, since);
                        if c.is_none() {
                            problems
                                .push(format!("{backend}: no CloudWatch datapoint in the window"));
                        }
                        c
                    }
                    Ok(_) => None,
                    Err(e) => {
                        problems.push(format!("{backend}: {e}"));
                        None
                    }
                };
                counts.insert(backend, count);
            }
            if let Some(p) = &data_problem {
                problems.push(p.clone());
            }
            let t = SplitTraffic {
                backends: shares(&counts, window),
                measured_at: now,
                window_secs: window,
                problem: (!problems.is_empty()).then(|| problems.join("; ")),
            };
            self.record(s, t);
        }
    }
}

/// One account's sources and its name (the key of its caches).
type Group<'a> = (&'a dyn TrafficSources, &'a Arc<str>);

/// The share and rate gauges of a split: set when known, removed when unknown (a 0 would read
/// as a backend without traffic).
fn publish(split: &str, t: &SplitTraffic) {
    METRICS.splits.update(split, |s| {
        for (b, bt) in &t.backends {
            let series = s.backend(b);
            series.traffic_share = bt.share;
            series.requests_per_second = bt.per_second;
        }
    });
}

/// Poll every `every` until `shutdown`, over the documents of the controller's last load (see
/// [`super::Store::set_splits`]; the first poll waits for the first load).
pub async fn run(mut poller: Poller, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        let splits = tokio::select! {
            _ = shutdown.changed() => return,
            s = poller.store.splits() => s,
        };
        poller.poll(&splits, crate::status::now_unix()).await;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::spec::{ApiGatewayBackend, Backend, EcsBackend};
    use crate::{Error, Result};

    /// The default account's sources, and role accounts: `Some` sources, or `None` for a role
    /// that cannot be assumed.
    struct FakeAccounts {
        default: Arc<FakeSources>,
        roles: HashMap<String, Option<Arc<FakeSources>>>,
    }

    #[async_trait]
    impl TrafficAccounts for FakeAccounts {
        async fn traffic_sources(
            &self,
            aws: Option<&AwsSpec>,
        ) -> Result<(Arc<str>, Arc<dyn TrafficSources>)> {
            let Some(spec) = aws else {
                return Ok(("111111111111".into(), self.default.clone()));
            };
            match &self.roles[&spec.role_arn] {
                Some(s) => Ok((spec.account_id().unwrap().into(), s.clone())),
                None => Err(Error::Other(format!("cannot assume {}", spec.role_arn))),
            }
        }
    }

    fn one_account(sources: Arc<FakeSources>) -> Arc<FakeAccounts> {
        Arc::new(FakeAccounts {
            default: sources,
            roles: HashMap::new(),
        })
    }

    fn with_role(mut s: TrafficSplit, role_arn: &str) -> TrafficSplit {
        s.spec.aws = Some(AwsSpec {
            role_arn: role_arn.into(),
            external_id: None,
            region: None,
            session_name: None,
        });
        s
    }

    #[derive(Default)]
    struct FakeSources {
        data: HashMap<MetricQuery, Vec<(i64, f64)>>,
        calls: Mutex<Vec<(usize, i64, i64)>>,
    }

    #[async_trait]
    impl TrafficSources for FakeSources {
        async fn metric_data(
            &self,
            queries: &[MetricQuery],
            start: i64,
            end: i64,
        ) -> Result<Vec<Vec<(i64, f64)>>> {
            self.calls.lock().unwrap().push((queries.len(), start, end));
            Ok(queries
                .iter()
                .map(|q| self.data.get(q).cloned().unwrap_or_default())
                .collect())
        }
        async fn target_group_load_balancer(&self, _tg: &str) -> Result<String> {
            Ok("arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/lb/1".into())
        }
        async fn api_stages(&self, domain: &str) -> Result<Vec<ApiStage>> {
            Ok(if domain == "gw.example" {
                vec![ApiStage::Rest {
                    api_name: "orders".into(),
                    stage: "prod".into(),
                }]
            } else {
                vec![]
            })
        }
    }

    fn split(name: &str, domain: &str) -> TrafficSplit {
        let mut s = TrafficSplit::test();
        s.metadata.name = name.into();
        s.spec.backends = vec![
            Backend {
                name: "lambda".into(),
                api_gateway: Some(ApiGatewayBackend {
                    domain_name: domain.into(),
                }),
                ecs: None,
                target: None,
                request_metric: None,
            },
            Backend {
                name: "fargate".into(),
                api_gateway: None,
                ecs: Some(EcsBackend {
                    cluster: "prod".into(),
                    service: "api".into(),
                    tasks_at_full_traffic: 10,
                    min_tasks: 1,
                    max_tasks: None,
                }),
                target: None,
                request_metric: None,
            },
        ];
        s
    }

    #[tokio::test]
    async fn one_call_for_all_splits_and_shares_from_the_window() {
        let now = 10_000;
        let api = MetricQuery::sum(
            "AWS/ApiGateway",
            "Count",
            &[("ApiName", "orders"), ("Stage", "prod")],
        );
        let alb = MetricQuery::sum(
            "AWS/ApplicationELB",
            "RequestCount",
            &[
                ("TargetGroup", "targetgroup/tg/2"),
                ("LoadBalancer", "app/lb/1"),
            ],
        );
        // 300 vs 700 a minute for the last 5 minutes; an older minute outside the window.
        let minutes =
            |v: f64| -> Vec<(i64, f64)> { (0..6).map(|i| (now as i64 - 60 * i - 30, v)).collect() };
        let sources = Arc::new(FakeSources {
            data: HashMap::from([(api, minutes(300.0)), (alb, minutes(700.0))]),
            ..FakeSources::default()
        });
        let store = Arc::new(Store::default());
        // As the reconciler's describe of prod/api left them.
        for name in ["a", "b"] {
            store.observe_target_groups(
                name,
                [(
                    "fargate".to_string(),
                    vec!["arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/tg/2".to_string()],
                )]
                .into(),
            );
        }
        let mut p = Poller::new(one_account(sources.clone()), store.clone());
        p.poll(
            &[
                split("a", "gw.example").into(),
                split("b", "none.example").into(),
            ],
            now,
        )
        .await;
        // Both splits share the ALB series: 2 distinct queries, one call, 5m window.
        assert_eq!(
            *sources.calls.lock().unwrap(),
            vec![(2, now as i64 - 300, now as i64)]
        );
        let a = store.get("a").unwrap();
        assert_eq!(a.backends["lambda"].share, Some(0.3));
        assert_eq!(a.backends["fargate"].share, Some(0.7));
        assert_eq!(a.backends["lambda"].requests, Some(1500.0));
        assert_eq!(a.backends["lambda"].per_second, Some(5.0));
        assert_eq!(a.problem, None);
        // A domain mapping no API: unknown, with the reason, and no share for anyone.
        let b = store.get("b").unwrap();
        assert_eq!(b.backends["lambda"].requests, None);
        assert_eq!(b.backends["fargate"].share, None);
        assert!(
            b.problem.as_deref().unwrap().contains("maps no API stage"),
            "{b:?}"
        );
    }

    /// Minutes of `v` requests each, covering any window up to 5m before `now`.
    fn minutes(now: u64, v: f64) -> Vec<(i64, f64)> {
        (0..6).map(|i| (now as i64 - 60 * i - 30, v)).collect()
    }

    #[tokio::test]
    async fn one_call_per_account_with_its_own_sources_and_a_failed_role_is_unknown() {
        let now = 10_000;
        let api = MetricQuery::sum(
            "AWS/ApiGateway",
            "Count",
            &[("ApiName", "orders"), ("Stage", "prod")],
        );
        let alb = MetricQuery::sum(
            "AWS/ApplicationELB",
            "RequestCount",
            &[
                ("TargetGroup", "targetgroup/tg/2"),
                ("LoadBalancer", "app/lb/1"),
            ],
        );
        // The same series names in both accounts, different counts: a split read in the wrong
        // account shows the other account's share.
        let default = Arc::new(FakeSources {
            data: HashMap::from([
                (api.clone(), minutes(now, 500.0)),
                (alb.clone(), minutes(now, 500.0)),
            ]),
            ..FakeSources::default()
        });
        let other = Arc::new(FakeSources {
            data: HashMap::from([(api, minutes(now, 300.0)), (alb, minutes(now, 700.0))]),
            ..FakeSources::default()
        });
        let accounts = Arc::new(FakeAccounts {
            default: default.clone(),
            roles: HashMap::from([
                (
                    "arn:aws:iam::222222222222:role/a".to_string(),
                    Some(other.clone()),
                ),
                ("arn:aws:iam::333333333333:role/denied".to_string(), None),
            ]),
        });
        let store = Arc::new(Store::default());
        for name in ["home", "remote", "remote2", "denied"] {
            store.observe_target_groups(
                name,
                [(
                    "fargate".to_string(),
                    vec!["arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/tg/2".to_string()],
                )]
                .into(),
            );
        }
        let mut p = Poller::new(accounts, store.clone());
        p.poll(
            &[
                split("home", "gw.example"),
                with_role(
                    split("remote", "gw.example"),
                    "arn:aws:iam::222222222222:role/a",
                ),
                with_role(
                    split("denied", "gw.example"),
                    "arn:aws:iam::333333333333:role/denied",
                ),
                with_role(
                    split("remote2", "gw.example"),
                    "arn:aws:iam::222222222222:role/a",
                ),
            ]
            .map(Arc::new),
            now,
        )
        .await;
        // One call in each reachable account, for all of its splits.
        assert_eq!(default.calls.lock().unwrap().len(), 1);
        assert_eq!(
            *other.calls.lock().unwrap(),
            vec![(2, now as i64 - 300, now as i64)]
        );
        let home = store.get("home").unwrap();
        assert_eq!(home.backends["lambda"].share, Some(0.5));
        for name in ["remote", "remote2"] {
            let t = store.get(name).unwrap();
            assert_eq!(t.backends["lambda"].share, Some(0.3), "{name}: {t:?}");
            assert_eq!(t.backends["fargate"].share, Some(0.7), "{name}: {t:?}");
        }
        // Unknown, never 0, with the reason.
        let denied = store.get("denied").unwrap();
        assert_eq!(denied.backends["lambda"].share, None);
        assert_eq!(denied.backends["fargate"].requests, None);
        assert!(
            denied
                .problem
                .as_deref()
                .unwrap()
                .contains("cannot assume arn:aws:iam::333333333333:role/denied"),
            "{denied:?}"
        );
    }
}
