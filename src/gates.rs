//! Health gates: the checks a rollout step must pass before the next one.
//!
//! A check never returns an error: a timeout, an AWS error or a bad response is a failing outcome
//! whose message says what went wrong, so the rollout's failure threshold treats them alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::aws::Aws;
use crate::sanitize;
use crate::spec::{
    BackendRef, CloudwatchAlarmGate, Gate, HttpGate, OnInsufficientData, OnNoData, PrometheusGate,
    TargetHealthGate, TrafficSplit,
};

/// Prometheus answers larger than this are refused: a gate query returns one sample.
const PROMETHEUS_BODY_CAP: usize = 1024 * 1024;
/// HTTP gate bodies are read (so the connection can be reused) up to this much, then dropped.
const HTTP_BODY_CAP: usize = 64 * 1024;

/// The result of one gate check.
#[derive(Debug, Clone, PartialEq)]
pub struct GateOutcome {
    pub passing: bool,
    /// Neither pass nor failure: the step waits and no failure is counted (e.g. an alarm with
    /// INSUFFICIENT_DATA under `onInsufficientData: wait`). `passing` is false.
    pub waiting: bool,
    /// The measured value, for gates that measure one (Prometheus sample, healthy target percent).
    pub value: Option<f64>,
    /// What was seen, in words; says why when failing.
    pub message: String,
}

impl GateOutcome {
    // Messages carry remote text (Prometheus errors, socket errors); they are bounded and cleaned
    // here, once, before they reach events, /status, logs and metrics.
    fn pass(message: impl Into<String>) -> Self {
        GateOutcome {
            passing: true,
            waiting: false,
            value: None,
            message: sanitize::message(&message.into()),
        }
    }

    fn fail(message: impl Into<String>) -> Self {
        GateOutcome {
            passing: false,
            waiting: false,
            value: None,
            message: sanitize::message(&message.into()),
        }
    }

    pub fn wait(message: impl Into<String>) -> Self {
        GateOutcome {
            passing: false,
            waiting: true,
            value: None,
            message: sanitize::message(&message.into()),
        }
    }

    fn with_value(mut self, value: f64) -> Self {
        self.value = Some(value);
        self
    }
}

/// What HTTP and Prometheus gates may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateOptions {
    /// Let gates connect to loopback addresses (`--allow-loopback-gates`): for tests and local
    /// demos. In a pod, loopback is the controller itself or a sidecar, never a health endpoint.
    pub allow_loopback: bool,
    /// Call HTTP and Prometheus gates at all. `plan` leaves them alone unless `--with-gates`: a
    /// plan in CI should not hit production endpoints as a side effect.
    pub remote: bool,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            allow_loopback: false,
            remote: true,
        }
    }
}

/// Checks gates against AWS, Prometheus and HTTP endpoints.
#[derive(Clone)]
pub struct GateChecker {
    http: reqwest::Client,
    aws: Aws,
    options: GateOptions,
}

impl GateChecker {
    /// A checker with the default options: loopback refused, remote gates called.
    pub fn new(aws: Aws) -> Self {
        Self::with_options(aws, GateOptions::default())
    }

    pub fn with_options(aws: Aws, options: GateOptions) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("trafficshift/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            // A redirect could point a checked URL at instance metadata or any internal address.
            .redirect(reqwest::redirect::Policy::none())
            // Through a proxy, the resolver below would vet the proxy, not the gate's host.
            .no_proxy()
            .dns_resolver(GuardedResolver {
                allow_loopback: options.allow_loopback,
            })
            .build()
            // Building only fails when the TLS backend cannot initialise; the default client would
            // fail the same way, so there is nothing better to fall back to.
            .unwrap_or_default();
        GateChecker { http, aws, options }
    }

    /// Whether `check` calls this gate. Gates it skips stay "not checked yet".
    pub fn will_check(&self, gate: &Gate) -> bool {
        self.options.remote || (gate.http.is_none() && gate.prometheus.is_none())
    }

    /// Why a request to `url` must not be made, for hosts written as IP literals (names are
    /// vetted by the resolver after lookup; literals never reach it).
    fn refused(&self, url: &reqwest::Url) -> Option<String> {
        let ip = literal_ip(url.host_str()?)?;
        refused_address(ip, self.options.allow_loopback)
            .map(|why| format!("refused: {ip} is {why}"))
    }

    /// Run one check of `gate` for `split`. Never fails: errors become failing outcomes.
    pub async fn check(&self, split: &TrafficSplit, gate: &Gate) -> GateOutcome {
        if let Some(g) = &gate.cloudwatch_alarm {
            self.cloudwatch_alarm(g).await
        } else if let Some(g) = &gate.ecs_stable {
            self.ecs_stable(split, g).await
        } else if let Some(g) = &gate.target_health {
            self.target_health(split, g).await
        } else if let Some(g) = &gate.prometheus {
            self.prometheus(g).await
        } else if let Some(g) = &gate.http {
            self.http(g).await
        } else {
            GateOutcome::fail("gate has no check (set one of cloudwatchAlarm, ecsStable, targetHealth, prometheus, http)")
        }
    }

    async fn cloudwatch_alarm(&self, g: &CloudwatchAlarmGate) -> GateOutcome {
        if g.alarm_names.is_empty() {
            // Nothing checked must not read as healthy.
            return GateOutcome::fail("no alarm names configured");
        }
        let states = match self.aws.alarms.alarm_states(&g.alarm_names).await {
            Ok(s) => s,
            Err(e) => return GateOutcome::fail(format!("cannot read alarm states: {e}")),
        };
        let mut problems = Vec::new();
        let mut no_data = Vec::new();
        for name in &g.alarm_names {
            match states.iter().find(|(n, _)| n == name) {
                None => problems.push(format!("alarm {name} not found")),
                Some((_, state)) if state == "INSUFFICIENT_DATA" => match g.on_insufficient_data {
                    OnInsufficientData::Pass => {}
                    OnInsufficientData::Wait => no_data.push(name.as_str()),
                    OnInsufficientData::Fail => problems.push(format!(
                        "{name} is INSUFFICIENT_DATA (onInsufficientData: fail)"
                    )),
                },
                Some((_, state)) if state != "OK" => problems.push(format!("{name} is {state}")),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            GateOutcome::fail(problems.join("; "))
        } else if !no_data.is_empty() {
            GateOutcome::wait(format!(
                "{} INSUFFICIENT_DATA (onInsufficientData: wait)",
                no_data.join(", ")
            ))
        } else {
            match g.alarm_names.as_slice() {
                [one] => GateOutcome::pass(format!("{one} is OK")),
                many => GateOutcome::pass(format!("all {} alarms OK", many.len())),
            }
        }
    }

    /// The ECS service of backend `name`, or a failing outcome saying why there is none.
    async fn service_of(
        &self,
        split: &TrafficSplit,
        name: &str,
    ) -> Result<(String, crate::aws::EcsService), GateOutcome> {
        let backend = split
            .backend(name)
            .ok_or_else(|| GateOutcome::fail(format!("backend {name} is not in this split")))?;
        let ecs = backend
            .ecs
            .as_ref()
            .ok_or_else(|| GateOutcome::fail(format!("backend {name} is not an ecs backend")))?;
        let label = format!("{}/{}", ecs.cluster, ecs.service);
        let services = self
            .aws
            .ecs
            .describe(&ecs.cluster, std::slice::from_ref(&ecs.service))
            .await
            .map_err(|e| GateOutcome::fail(format!("cannot describe ECS service {label}: {e}")))?;
        match services.into_iter().next() {
            Some(s) => Ok((label, s)),
            None => Err(GateOutcome::fail(format!(
                "ECS service {label} not found (missing or INACTIVE)"
            ))),
        }
    }

    async fn ecs_stable(&self, split: &TrafficSplit, g: &BackendRef) -> GateOutcome {
        let (label, svc) = match self.service_of(split, &g.backend).await {
            Ok(x) => x,
            Err(outcome) => return outcome,
        };
        let deployments = plural(svc.deployments, "deployment");
        let counts = format!("{}/{} running, {deployments}", svc.running, svc.desired);
        if svc.is_stable() {
            GateOutcome::pass(format!("{label} stable: {counts}"))
        } else {
            let rollout = match svc.rollout_state.as_deref() {
                Some("FAILED") => ", deployment rollout FAILED",
                _ => "",
            };
            GateOutcome::fail(format!("{label} not stable: {counts}{rollout}"))
        }
    }

    async fn target_health(&self, split: &TrafficSplit, g: &TargetHealthGate) -> GateOutcome {
        let (label, svc) = match self.service_of(split, &g.backend).await {
            Ok(x) => x,
            Err(outcome) => return outcome,
        };
        let Some(tg) = svc.target_groups.first() else {
            return GateOutcome::fail(format!(
                "ECS service {label} has no target group (its loadBalancers list is empty)"
            ));
        };
        let (healthy, total) = match self.aws.targets.target_health(tg).await {
            Ok(x) => x,
            Err(e) => {
                return GateOutcome::fail(format!("cannot read target health of {label}: {e}"))
            }
        };
        if total == 0 {
            return GateOutcome::fail(format!("no targets registered for {label}")).with_value(0.0);
        }
        let percent = f64::from(healthy) * 100.0 / f64::from(total);
        let min = g.min_healthy_percent;
        // Integer comparison: 2 of 3 healthy must not pass a 67% minimum through rounding.
        let ok = u64::from(healthy) * 100 >= u64::from(min) * u64::from(total);
        let message =
            format!("{healthy}/{total} targets of {label} healthy ({percent:.0}%, min {min}%)");
        let outcome = if ok {
            GateOutcome::pass(message)
        } else {
            GateOutcome::fail(message)
        };
        outcome.with_value(percent)
    }

    async fn prometheus(&self, g: &PrometheusGate) -> GateOutcome {
        let timeout = g.timeout.0;
        let address = g.address.trim_end_matches('/');
        let base = redact(address);
        let mut url = match reqwest::Url::parse(&format!("{address}/api/v1/query")) {
            Ok(u) => u,
            Err(e) => {
                return GateOutcome::fail(format!("invalid prometheus address {base:?}: {e}"))
            }
        };
        url.query_pairs_mut().append_pair("query", &g.query);
        if let Some(why) = self.refused(&url) {
            return GateOutcome::fail(format!("prometheus at {base}: {why}"));
        }

        let exchange = async {
            let resp = self.http.get(url.clone()).timeout(timeout).send().await?;
            let status = resp.status();
            let body = read_capped(resp, PROMETHEUS_BODY_CAP).await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return GateOutcome::fail(format!("prometheus at {base}: {}", timed_out(timeout)))
            }
            Ok(Err(e)) => {
                return GateOutcome::fail(format!(
                    "prometheus at {base}: {}",
                    describe(&e, timeout)
                ))
            }
            Ok(Ok(x)) => x,
        };
        let Capped::Complete(body) = body else {
            return GateOutcome::fail(format!(
                "prometheus at {base}: response larger than 1 MiB; the query must return one sample"
            ));
        };
        evaluate_prometheus(g, status, &body)
    }

    async fn http(&self, g: &HttpGate) -> GateOutcome {
        let timeout = g.timeout.0;
        let shown = redact(&g.url);
        if let Some(why) = reqwest::Url::parse(&g.url)
            .ok()
            .and_then(|u| self.refused(&u))
        {
            return GateOutcome::fail(format!("GET {shown}: {why}"));
        }
        let exchange = async {
            let resp = self.http.get(&g.url).timeout(timeout).send().await?;
            let status = resp.status();
            // Drain a little so the connection can be reused; the content does not matter.
            read_capped(resp, HTTP_BODY_CAP).await?;
            Ok::<_, reqwest::Error>(status)
        };
        let status = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return GateOutcome::fail(format!("GET {shown}: {}", timed_out(timeout))),
            Ok(Err(e)) => {
                return GateOutcome::fail(format!("GET {shown}: {}", describe(&e, timeout)))
            }
            Ok(Ok(s)) => s,
        };
        let value = f64::from(status.as_u16());
        if status.as_u16() == g.expect_status {
            GateOutcome::pass(format!("GET {shown}: {status}")).with_value(value)
        } else {
            GateOutcome::fail(format!(
                "GET {shown}: {status}, expected {}",
                g.expect_status
            ))
            .with_value(value)
        }
    }
}

enum Capped {
    Complete(Vec<u8>),
    /// The body went past the cap; reading stopped there.
    Truncated,
}

/// Read a body chunk by chunk, stopping once it passes `cap` so a huge answer cannot exhaust memory.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> reqwest::Result<Capped> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(Capped::Truncated);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(Capped::Truncated);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Complete(body))
}

/// A URL for messages, without the userinfo and query that /status and logs must not show.
pub fn redact(url: &str) -> String {
    sanitize::redact_url(url)
}

/// The IP address of a URL host written as a literal (`10.0.0.1`, `[fe80::1]`).
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// AWS's IPv6 instance metadata address (Nitro instances, EKS IPv6 clusters).
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Whether `ip` is link-local: 169.254.0.0/16 (instance metadata, ECS task metadata), fe80::/10,
/// or fd00:ec2::254. IPv4 addresses written as IPv6 (`::ffff:169.254.169.254`, NAT64
/// `64:ff9b::169.254.169.254`) count as the IPv4 address they carry.
pub fn is_link_local(ip: IpAddr) -> bool {
    match unmap(ip) {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == METADATA_V6,
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            ip
        }
        v4 => v4,
    }
}

/// Why a gate must not connect to `ip`, if it must not.
pub fn refused_address(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    let ip = unmap(ip);
    if is_link_local(ip) {
        Some("link-local (instance metadata); gates never call it")
    } else if !allow_loopback && (ip.is_loopback() || ip.is_unspecified()) {
        Some("loopback; run with --allow-loopback-gates to allow it")
    } else {
        None
    }
}

/// Resolves gate hosts like the system resolver, then refuses the whole answer if any address is
/// one a gate must not reach: a name that resolves (or is rebound) to instance metadata fails.
struct GuardedResolver {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            vet(&host, &addrs, allow_loopback)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Refuse the answer for `host` if any of its addresses is one a gate must not reach.
fn vet(host: &str, addrs: &[SocketAddr], allow_loopback: bool) -> Result<(), String> {
    match addrs
        .iter()
        .find_map(|a| refused_address(a.ip(), allow_loopback).map(|why| (a.ip(), why)))
    {
        Some((ip, why)) => Err(format!("refused: {host} resolves to {ip}, which is {why}")),
        None => Ok(()),
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}", humantime::format_duration(timeout))
}

/// A reqwest error in words: timeout, connection failure (with its root cause), or other.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return timed_out(timeout);
    }
    let cause = root_cause(e);
    if e.is_connect() {
        format!("connection failed: {cause}")
    } else if e.is_builder() {
        format!("invalid request: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}

/// The innermost error of a chain: "Connection refused (os error 111)" rather than reqwest's
/// "error sending request for url (...)".
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromResponse {
    status: String,
    data: Option<PromData>,
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromData {
    result_type: String,
    result: serde_json::Value,
}

/// Judge a Prometheus `/api/v1/query` answer against the gate's bounds.
fn evaluate_prometheus(
    g: &PrometheusGate,
    status: reqwest::StatusCode,
    body: &[u8],
) -> GateOutcome {
    let resp: PromResponse = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) if status.is_success() => {
            return GateOutcome::fail(format!("prometheus answered malformed JSON: {e}"))
        }
        Err(_) => return GateOutcome::fail(format!("prometheus answered {status}")),
    };
    if resp.status != "success" {
        let kind = resp.error_type.as_deref().unwrap_or("error");
        let msg = resp.error.as_deref().unwrap_or("no error message");
        return GateOutcome::fail(format!("prometheus query failed ({kind}): {msg}"));
    }
    let Some(data) = resp.data else {
        return GateOutcome::fail("prometheus answered success without data");
    };
    let sample = match data.result_type.as_str() {
        "scalar" => Some(&data.result),
        "vector" => {
            let Some(series) = data.result.as_array() else {
                return GateOutcome::fail("prometheus vector result is not a list");
            };
            match series.as_slice() {
                [] => None,
                [one] => match one.get("value") {
                    Some(v) => Some(v),
                    None => {
                        return GateOutcome::fail(
                            "query returned a histogram sample; the gate needs a float value",
                        )
                    }
                },
                many => {
                    return GateOutcome::fail(format!(
                        "query returned {} series; aggregate it to one (e.g. sum(...) or max(...))",
                        many.len()
                    ))
                }
            }
        }
        other => {
            return GateOutcome::fail(format!(
                "query returned a {other}; the gate needs an instant vector or a scalar"
            ))
        }
    };
    let value = match sample.map(sample_value) {
        None => None,
        Some(Ok(v)) if v.is_nan() => None,
        Some(Ok(v)) => Some(v),
        Some(Err(msg)) => return GateOutcome::fail(msg),
    };
    let Some(v) = value else {
        return match g.on_no_data {
            OnNoData::Fail => GateOutcome::fail("no data (onNoData: fail)"),
            OnNoData::Pass => GateOutcome::pass("no data (onNoData: pass)"),
        };
    };
    let outcome = match (g.min, g.max) {
        (_, Some(max)) if v > max => GateOutcome::fail(format!("value {v} is above max {max}")),
        (Some(min), _) if v < min => GateOutcome::fail(format!("value {v} is below min {min}")),
        (Some(min), Some(max)) => GateOutcome::pass(format!("value {v} within [{min}, {max}]")),
        (None, Some(max)) => GateOutcome::pass(format!("value {v} <= max {max}")),
        (Some(min), None) => GateOutcome::pass(format!("value {v} >= min {min}")),
        (None, None) => GateOutcome::pass(format!("value {v}")),
    };
    outcome.with_value(v)
}

/// A Prometheus sample `[<unix time>, "<value>"]` -> the value. Prometheus writes NaN and
/// infinities as "NaN", "+Inf" and "-Inf".
fn sample_value(sample: &serde_json::Value) -> Result<f64, String> {
    let text = sample
        .as_array()
        .and_then(|pair| pair.get(1))
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("malformed prometheus sample {sample}"))?;
    text.parse::<f64>()
        .map_err(|_| format!("prometheus sample value {text:?} is not a number"))
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use async_trait::async_trait;
    use axum::extract::Query;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;

    use super::*;
    use crate::aws::{Alarms, AliasTarget, Change, Dns, Ecs, EcsService, RecordSet, Targets, Zone};
    use crate::spec::HumanDuration;
    use crate::{Error, Result};

    // Fakes of the AWS edges: the gate logic is pure once the answers are fixed.

    struct NoDns;
    #[async_trait]
    impl Dns for NoDns {
        async fn find_zone(&self, _: &str) -> Result<Zone> {
            Err(Error::Other("unused".into()))
        }
        async fn list_all(&self, _: &str) -> Result<Vec<RecordSet>> {
            Err(Error::Other("unused".into()))
        }
        async fn list_from(&self, _: &str, _: &str) -> Result<Vec<RecordSet>> {
            Err(Error::Other("unused".into()))
        }
        async fn change(&self, _: &str, _: &str, _: &[Change]) -> Result<String> {
            Err(Error::Other("unused".into()))
        }
        async fn insync(&self, _: &str) -> Result<bool> {
            Err(Error::Other("unused".into()))
        }
    }

    #[derive(Default)]
    struct FakeEcs {
        services: Vec<EcsService>,
        fail: bool,
    }
    #[async_trait]
    impl Ecs for FakeEcs {
        async fn describe(&self, cluster: &str, services: &[String]) -> Result<Vec<EcsService>> {
            if self.fail {
                return Err(Error::Aws {
                    service: "ecs",
                    operation: "DescribeServices",
                    failure: crate::error::AwsFailure::Permanent,
                    message: "AccessDenied".into(),
                });
            }
            Ok(self
                .services
                .iter()
                .filter(|s| s.cluster == cluster && services.contains(&s.service))
                .cloned()
                .collect())
        }
        async fn set_desired(&self, _: &str, _: &str, _: i32) -> Result<()> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct FakeTargets {
        health: HashMap<String, (u32, u32)>,
    }
    #[async_trait]
    impl Targets for FakeTargets {
        async fn api_gateway_domain(&self, _: &str) -> Result<AliasTarget> {
            Err(Error::Other("unused".into()))
        }
        async fn target_group_lb(&self, _: &str) -> Result<AliasTarget> {
            Err(Error::Other("unused".into()))
        }
        async fn target_health(&self, arn: &str) -> Result<(u32, u32)> {
            self.health
                .get(arn)
                .copied()
                .ok_or_else(|| Error::NotFound(format!("target group {arn} not found")))
        }
    }

    #[derive(Default)]
    struct FakeAlarms {
        states: Vec<(String, String)>,
    }
    #[async_trait]
    impl Alarms for FakeAlarms {
        async fn alarm_states(&self, names: &[String]) -> Result<Vec<(String, String)>> {
            Ok(self
                .states
                .iter()
                .filter(|(n, _)| names.contains(n))
                .cloned()
                .collect())
        }
    }

    fn checker(ecs: FakeEcs, targets: FakeTargets, alarms: FakeAlarms) -> GateChecker {
        checker_with(
            ecs,
            targets,
            alarms,
            GateOptions {
                allow_loopback: true,
                remote: true,
            },
        )
    }

    fn checker_with(
        ecs: FakeEcs,
        targets: FakeTargets,
        alarms: FakeAlarms,
        options: GateOptions,
    ) -> GateChecker {
        GateChecker::with_options(
            Aws {
                dns: Arc::new(NoDns),
                ecs: Arc::new(ecs),
                targets: Arc::new(targets),
                alarms: Arc::new(alarms),
                autoscaling: Arc::new(crate::aws::autoscaling::NoAutoscaling),
            },
            options,
        )
    }

    fn plain_checker() -> GateChecker {
        checker(
            FakeEcs::default(),
            FakeTargets::default(),
            FakeAlarms::default(),
        )
    }

    fn split() -> TrafficSplit {
        let yaml = r#"
apiVersion: trafficshift.dev/v1alpha1
kind: TrafficSplit
metadata: {name: api}
spec:
  record: {hostedZone: example.com, name: api.example.com, type: A}
  backends:
    - name: lambda
      apiGateway: {domainName: api.example.com}
    - name: fargate
      ecs: {cluster: prod, service: api, tasksAtFullTraffic: 20}
  weights: {lambda: 0, fargate: 100}
"#;
        serde_saphyr::from_str(yaml).expect("fixture parses")
    }

    fn service(running: i32, desired: i32, deployments: usize) -> EcsService {
        EcsService {
            cluster: "prod".into(),
            service: "api".into(),
            arn: "arn:aws:ecs:us-east-1:123456789012:service/prod/api".into(),
            status: "ACTIVE".into(),
            desired,
            running,
            pending: 0,
            deployments,
            rollout_state: Some("COMPLETED".into()),
            target_groups: vec!["arn:tg/api".into()],
        }
    }

    fn gate(name: &str) -> Gate {
        Gate {
            name: name.into(),
            cloudwatch_alarm: None,
            ecs_stable: None,
            target_health: None,
            prometheus: None,
            http: None,
        }
    }

    fn alarm_gate(names: &[&str]) -> Gate {
        Gate {
            cloudwatch_alarm: Some(CloudwatchAlarmGate {
                alarm_names: names.iter().map(|s| s.to_string()).collect(),
                on_insufficient_data: OnInsufficientData::Wait,
            }),
            ..gate("alarms")
        }
    }

    fn alarms(states: &[(&str, &str)]) -> FakeAlarms {
        FakeAlarms {
            states: states
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn alarms_all_ok_pass() {
        let c = checker(
            FakeEcs::default(),
            FakeTargets::default(),
            alarms(&[("a", "OK"), ("b", "OK")]),
        );
        let o = c.check(&split(), &alarm_gate(&["a", "b"])).await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.message, "all 2 alarms OK");
    }

    fn with_no_data(mut g: Gate, on: OnInsufficientData) -> Gate {
        g.cloudwatch_alarm
            .as_mut()
            .expect("alarm gate")
            .on_insufficient_data = on;
        g
    }

    #[tokio::test]
    async fn alarms_in_alarm_or_missing_fail_whatever_insufficient_data_means() {
        let c = checker(
            FakeEcs::default(),
            FakeTargets::default(),
            alarms(&[
                ("api-fargate-5xx", "ALARM"),
                ("ok", "OK"),
                ("new", "INSUFFICIENT_DATA"),
            ]),
        );
        let g = alarm_gate(&["api-fargate-5xx", "ok", "x", "new"]);
        let o = c.check(&split(), &g).await;
        assert!(
            !o.passing && !o.waiting,
            "a real failure is not a wait: {o:?}"
        );
        assert_eq!(o.message, "api-fargate-5xx is ALARM; alarm x not found");
        let o = c
            .check(&split(), &with_no_data(g, OnInsufficientData::Fail))
            .await;
        assert!(!o.passing && !o.waiting);
        assert_eq!(
            o.message,
            "api-fargate-5xx is ALARM; alarm x not found; new is INSUFFICIENT_DATA (onInsufficientData: fail)"
        );
        let o = c.check(&split(), &alarm_gate(&[])).await;
        assert!(!o.passing, "an empty alarm list must not pass");
    }

    #[tokio::test]
    async fn insufficient_data_waits_passes_or_fails_as_configured() {
        let c = checker(
            FakeEcs::default(),
            FakeTargets::default(),
            alarms(&[("ok", "OK"), ("new", "INSUFFICIENT_DATA")]),
        );
        let g = alarm_gate(&["ok", "new"]);
        // (setting, passing, waiting, message)
        let table = [
            (
                OnInsufficientData::Wait,
                false,
                true,
                "new INSUFFICIENT_DATA (onInsufficientData: wait)",
            ),
            (OnInsufficientData::Pass, true, false, "all 2 alarms OK"),
            (
                OnInsufficientData::Fail,
                false,
                false,
                "new is INSUFFICIENT_DATA (onInsufficientData: fail)",
            ),
        ];
        for (on, passing, waiting, message) in table {
            let o = c.check(&split(), &with_no_data(g.clone(), on)).await;
            assert_eq!(
                (o.passing, o.waiting, o.message.as_str()),
                (passing, waiting, message),
                "{on:?}"
            );
        }
        // The default is wait.
        let parsed: CloudwatchAlarmGate =
            serde_json::from_str(r#"{"alarmNames": ["new"]}"#).expect("parses");
        assert_eq!(parsed.on_insufficient_data, OnInsufficientData::Wait);
    }

    fn ecs_gate() -> Gate {
        Gate {
            ecs_stable: Some(BackendRef {
                backend: "fargate".into(),
            }),
            ..gate("stable")
        }
    }

    #[tokio::test]
    async fn ecs_stable_passes_and_explains() {
        let ecs = FakeEcs {
            services: vec![service(20, 20, 1)],
            fail: false,
        };
        let c = checker(ecs, FakeTargets::default(), FakeAlarms::default());
        let o = c.check(&split(), &ecs_gate()).await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.message, "prod/api stable: 20/20 running, 1 deployment");
    }

    #[tokio::test]
    async fn ecs_unstable_missing_or_error_fail() {
        let ecs = FakeEcs {
            services: vec![service(18, 20, 2)],
            fail: false,
        };
        let c = checker(ecs, FakeTargets::default(), FakeAlarms::default());
        let o = c.check(&split(), &ecs_gate()).await;
        assert!(!o.passing);
        assert_eq!(
            o.message,
            "prod/api not stable: 18/20 running, 2 deployments"
        );

        let mut failed = service(20, 20, 1);
        failed.rollout_state = Some("FAILED".into());
        let c = checker(
            FakeEcs {
                services: vec![failed],
                fail: false,
            },
            FakeTargets::default(),
            FakeAlarms::default(),
        );
        let o = c.check(&split(), &ecs_gate()).await;
        assert!(!o.passing);
        assert!(o.message.contains("rollout FAILED"), "{}", o.message);

        let o = plain_checker().check(&split(), &ecs_gate()).await;
        assert!(!o.passing);
        assert!(o.message.contains("prod/api not found"), "{}", o.message);

        let c = checker(
            FakeEcs {
                services: vec![],
                fail: true,
            },
            FakeTargets::default(),
            FakeAlarms::default(),
        );
        let o = c.check(&split(), &ecs_gate()).await;
        assert!(!o.passing);
        assert!(o.message.contains("AccessDenied"), "{}", o.message);

        let o = plain_checker()
            .check(
                &split(),
                &Gate {
                    ecs_stable: Some(BackendRef {
                        backend: "lambda".into(),
                    }),
                    ..gate("s")
                },
            )
            .await;
        assert!(!o.passing);
        assert_eq!(o.message, "backend lambda is not an ecs backend");
    }

    fn health_gate(min: u32) -> Gate {
        Gate {
            target_health: Some(TargetHealthGate {
                backend: "fargate".into(),
                min_healthy_percent: min,
            }),
            ..gate("health")
        }
    }

    fn health_checker(healthy: u32, total: u32) -> GateChecker {
        let ecs = FakeEcs {
            services: vec![service(20, 20, 1)],
            fail: false,
        };
        let targets = FakeTargets {
            health: HashMap::from([("arn:tg/api".to_string(), (healthy, total))]),
        };
        checker(ecs, targets, FakeAlarms::default())
    }

    #[tokio::test]
    async fn target_health_thresholds() {
        let o = health_checker(9, 10)
            .check(&split(), &health_gate(90))
            .await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.value, Some(90.0));
        assert_eq!(o.message, "9/10 targets of prod/api healthy (90%, min 90%)");

        let o = health_checker(9, 10)
            .check(&split(), &health_gate(100))
            .await;
        assert!(!o.passing);

        // 2/3 is 66.67%: passes 66, fails 67 (no rounding up).
        assert!(
            health_checker(2, 3)
                .check(&split(), &health_gate(66))
                .await
                .passing
        );
        assert!(
            !health_checker(2, 3)
                .check(&split(), &health_gate(67))
                .await
                .passing
        );

        let o = health_checker(0, 0).check(&split(), &health_gate(0)).await;
        assert!(!o.passing, "no registered targets must fail even at 0%");
        assert!(o.message.contains("no targets registered"), "{}", o.message);
    }

    #[tokio::test]
    async fn target_health_without_target_group_fails() {
        let mut svc = service(20, 20, 1);
        svc.target_groups.clear();
        let c = checker(
            FakeEcs {
                services: vec![svc],
                fail: false,
            },
            FakeTargets::default(),
            FakeAlarms::default(),
        );
        let o = c.check(&split(), &health_gate(100)).await;
        assert!(!o.passing);
        assert!(o.message.contains("no target group"), "{}", o.message);
    }

    #[tokio::test]
    async fn gate_without_kind_fails() {
        assert!(
            !plain_checker()
                .check(&split(), &gate("empty"))
                .await
                .passing
        );
    }

    // A local HTTP server standing in for Prometheus and for HTTP gate targets.

    const SPECIAL_QUERY: &str =
        r#"sum(rate(http_requests_total{code=~"5..",job="a b"}[5m])) / 2 & x"#;

    fn vector(values: &[&str]) -> String {
        let series: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!(r#"{{"metric":{{"i":"{i}"}},"value":[1700000000.123,"{v}"]}}"#))
            .collect();
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            series.join(",")
        )
    }

    async fn prom_query(Query(q): Query<HashMap<String, String>>) -> axum::response::Response {
        let query = q.get("query").cloned().unwrap_or_default();
        let json = |s: String| ([("content-type", "application/json")], s).into_response();
        match query.as_str() {
            "one" => json(vector(&["0.5"])),
            "scalar" => json(
                r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"7"]}}"#
                    .into(),
            ),
            "many" => json(vector(&["1", "2", "3"])),
            "empty" => json(vector(&[])),
            "nan" => json(vector(&["NaN"])),
            "inf" => json(vector(&["+Inf"])),
            "matrix" => {
                json(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#.into())
            }
            "malformed" => json(r#"{"status":"success","data":{"#.into()),
            "bad" => (
                StatusCode::BAD_REQUEST,
                r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#,
            )
                .into_response(),
            "big" => {
                // Streamed without a Content-Length, so the cap must hold while reading.
                let chunk = bytes_of(64 * 1024);
                let stream = futures::stream::iter(
                    (0..32).map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone())),
                );
                axum::body::Body::from_stream(stream).into_response()
            }
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                json(vector(&["1"]))
            }
            "noisy" => {
                // Just under the 1 MiB cap: escape sequences and newlines in a long error.
                let noise = format!("\x1b[2J{}", "x\n".repeat(300_000));
                (
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"status": "error", "errorType": "bad_data", "error": noise})
                        .to_string(),
                )
                    .into_response()
            }
            q if q == SPECIAL_QUERY => json(vector(&["42"])),
            _ => (StatusCode::BAD_REQUEST, "unexpected query").into_response(),
        }
    }

    fn bytes_of(n: usize) -> axum::body::Bytes {
        axum::body::Bytes::from(vec![b' '; n])
    }

    async fn slow_body() -> axum::response::Response {
        // Headers at once, then a body that never finishes in time.
        let stream = futures::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            (n < 20).then(|| (Ok::<_, std::convert::Infallible>(bytes_of(10)), n + 1))
        });
        axum::body::Body::from_stream(stream).into_response()
    }

    async fn local_server() -> String {
        let app = axum::Router::new()
            .route("/api/v1/query", get(prom_query))
            .route("/prefix/api/v1/query", get(prom_query))
            .route(
                "/code/{code}",
                get(
                    |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    },
                ),
            )
            .route("/huge", get(|| async { bytes_of(8 * 1024 * 1024) }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/slow-body", get(slow_body))
            .route(
                "/redirect",
                get(|| async { axum::response::Redirect::temporary("/code/200") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn prom_gate(address: &str, query: &str) -> Gate {
        Gate {
            prometheus: Some(PrometheusGate {
                address: address.into(),
                query: query.into(),
                max: Some(1.0),
                min: None,
                on_no_data: OnNoData::Fail,
                timeout: HumanDuration(Duration::from_millis(500)),
            }),
            ..gate("prom")
        }
    }

    fn with_prom(mut g: Gate, f: impl FnOnce(&mut PrometheusGate)) -> Gate {
        f(g.prometheus.as_mut().expect("prometheus gate"));
        g
    }

    #[tokio::test]
    async fn prometheus_single_sample_within_bounds() {
        let base = local_server().await;
        let c = plain_checker();
        let o = c.check(&split(), &prom_gate(&base, "one")).await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.value, Some(0.5));
        assert_eq!(o.message, "value 0.5 <= max 1");

        // A trailing slash and a path prefix in the address both work.
        let o = c
            .check(&split(), &prom_gate(&format!("{base}/prefix/"), "one"))
            .await;
        assert!(o.passing, "{o:?}");

        let o = c
            .check(
                &split(),
                &with_prom(prom_gate(&base, "one"), |p| p.min = Some(0.6)),
            )
            .await;
        assert!(!o.passing);
        assert_eq!(o.message, "value 0.5 is below min 0.6");
        assert_eq!(o.value, Some(0.5));

        let o = c.check(&split(), &prom_gate(&base, "scalar")).await;
        assert!(!o.passing);
        assert_eq!(o.message, "value 7 is above max 1");
        assert_eq!(o.value, Some(7.0));

        let o = c.check(&split(), &prom_gate(&base, "inf")).await;
        assert!(!o.passing, "+Inf is above any max: {o:?}");

        // The query is URL-encoded: braces, quotes, spaces, & and / arrive intact.
        let o = c
            .check(
                &split(),
                &with_prom(prom_gate(&base, SPECIAL_QUERY), |p| p.max = Some(100.0)),
            )
            .await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.value, Some(42.0));
    }

    #[tokio::test]
    async fn prometheus_no_data_follows_on_no_data() {
        let base = local_server().await;
        let c = plain_checker();
        for q in ["empty", "nan"] {
            let o = c.check(&split(), &prom_gate(&base, q)).await;
            assert!(!o.passing, "{q}: {o:?}");
            assert_eq!(o.message, "no data (onNoData: fail)");
            let o = c
                .check(
                    &split(),
                    &with_prom(prom_gate(&base, q), |p| p.on_no_data = OnNoData::Pass),
                )
                .await;
            assert!(o.passing, "{q}: {o:?}");
            assert_eq!(o.message, "no data (onNoData: pass)");
        }
    }

    #[tokio::test]
    async fn prometheus_bad_answers_fail() {
        let base = local_server().await;
        let c = plain_checker();
        let cases = [
            ("many", "query returned 3 series; aggregate it to one"),
            ("matrix", "query returned a matrix"),
            ("malformed", "malformed JSON"),
            (
                "bad",
                "prometheus query failed (bad_data): parse error at char 3",
            ),
            ("big", "response larger than 1 MiB"),
            ("slow", "timed out after 500ms"),
        ];
        for (q, want) in cases {
            let o = c.check(&split(), &prom_gate(&base, q)).await;
            assert!(!o.passing, "{q}: {o:?}");
            assert!(
                o.message.contains(want),
                "{q}: {:?} lacks {want:?}",
                o.message
            );
        }
        let o = c.check(&split(), &prom_gate("not a url", "one")).await;
        assert!(!o.passing);
        assert!(
            o.message.contains("invalid prometheus address"),
            "{}",
            o.message
        );
    }

    fn http_gate(url: &str, expect: u16) -> Gate {
        Gate {
            http: Some(HttpGate {
                url: url.into(),
                expect_status: expect,
                timeout: HumanDuration(Duration::from_millis(500)),
            }),
            ..gate("http")
        }
    }

    #[tokio::test]
    async fn http_gate_checks_status() {
        let base = local_server().await;
        let c = plain_checker();
        let o = c
            .check(&split(), &http_gate(&format!("{base}/code/200"), 200))
            .await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.message, format!("GET {base}/code/200: 200 OK"));

        let o = c
            .check(&split(), &http_gate(&format!("{base}/code/503"), 200))
            .await;
        assert!(!o.passing);
        assert_eq!(
            o.message,
            format!("GET {base}/code/503: 503 Service Unavailable, expected 200")
        );
        assert_eq!(o.value, Some(503.0));

        let o = c
            .check(&split(), &http_gate(&format!("{base}/code/204"), 204))
            .await;
        assert!(o.passing, "{o:?}");

        // A password and a query in the URL are sent but never shown.
        let with_password = base.replace("http://", "http://probe:s3cret@");
        let o = c
            .check(
                &split(),
                &http_gate(&format!("{with_password}/code/200?key=k3y"), 200),
            )
            .await;
        assert!(o.passing, "{o:?}");
        assert!(!o.message.contains("s3cret"), "{}", o.message);
        assert!(!o.message.contains("probe"), "{}", o.message);
        assert!(!o.message.contains("k3y"), "{}", o.message);
        assert!(o.message.contains("//redacted@"), "{}", o.message);

        // A large body is not a problem: it is read up to the cap and dropped.
        let o = c
            .check(&split(), &http_gate(&format!("{base}/huge"), 200))
            .await;
        assert!(o.passing, "{o:?}");
    }

    #[tokio::test]
    async fn http_gate_timeouts_and_connection_errors() {
        let base = local_server().await;
        let c = plain_checker();
        for path in ["slow", "slow-body"] {
            let started = std::time::Instant::now();
            let o = c
                .check(&split(), &http_gate(&format!("{base}/{path}"), 200))
                .await;
            assert!(!o.passing, "{path}");
            assert!(
                o.message.contains("timed out after 500ms"),
                "{path}: {}",
                o.message
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{path}: the timeout did not cut the request"
            );
        }

        // A port that was just free: nothing listens there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let o = c
            .check(
                &split(),
                &http_gate(&format!("http://127.0.0.1:{port}/"), 200),
            )
            .await;
        assert!(!o.passing);
        assert!(o.message.contains("connection failed"), "{}", o.message);
        assert!(
            o.message.to_lowercase().contains("refused"),
            "{}",
            o.message
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let base = local_server().await;
        let o = plain_checker()
            .check(&split(), &http_gate(&format!("{base}/redirect"), 200))
            .await;
        assert!(!o.passing, "{o:?}");
        assert_eq!(o.value, Some(307.0), "{o:?}");
    }

    #[tokio::test]
    async fn remote_messages_are_bounded_and_clean() {
        let base = local_server().await;
        let o = plain_checker()
            .check(&split(), &prom_gate(&base, "noisy"))
            .await;
        assert!(!o.passing);
        assert!(o.message.len() <= 512, "{} bytes", o.message.len());
        assert!(!o.message.chars().any(char::is_control), "{:?}", o.message);
        assert!(
            o.message.starts_with("prometheus query failed (bad_data)"),
            "{}",
            o.message
        );
    }

    fn strict() -> GateChecker {
        checker_with(
            FakeEcs::default(),
            FakeTargets::default(),
            FakeAlarms::default(),
            GateOptions::default(),
        )
    }

    #[tokio::test]
    async fn link_local_and_loopback_are_refused() {
        // Nothing listens on these: a refusal must come before any connection attempt, so the
        // message says "refused: ... is link-local", not a connection error.
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://[fe80::1]:8080/",
            "http://[::ffff:169.254.169.254]/",
            "http://0xa9fea9fe/",
        ] {
            for c in [plain_checker(), strict()] {
                let o = c.check(&split(), &http_gate(url, 200)).await;
                assert!(!o.passing, "{url}");
                assert!(o.message.contains("is link-local"), "{url}: {}", o.message);
            }
        }
        let o = strict()
            .check(&split(), &prom_gate("http://169.254.169.254:9090", "one"))
            .await;
        assert!(o.message.contains("is link-local"), "{}", o.message);

        let base = local_server().await;
        let port = base.rsplit(':').next().expect("port");
        for url in [
            format!("{base}/code/200"),
            format!("http://[::1]:{port}/code/200"),
            // A name: refused by the resolver, after lookup.
            format!("http://localhost:{port}/code/200"),
        ] {
            let o = strict().check(&split(), &http_gate(&url, 200)).await;
            assert!(!o.passing, "{url}: {o:?}");
            assert!(o.message.contains("loopback"), "{url}: {}", o.message);
            assert!(
                o.message.contains("--allow-loopback-gates"),
                "{url}: {}",
                o.message
            );
        }
        let o = strict().check(&split(), &prom_gate(&base, "one")).await;
        assert!(o.message.contains("loopback"), "{}", o.message);
        // The same name passes once loopback is allowed.
        let o = plain_checker()
            .check(
                &split(),
                &http_gate(&format!("http://localhost:{port}/code/200"), 200),
            )
            .await;
        assert!(o.passing, "{o:?}");
    }

    #[test]
    fn address_classes() {
        let ll = |s: &str| is_link_local(s.parse().expect("ip"));
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.1.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(ll(ip), "{ip}");
        }
        for ip in [
            "169.255.0.1",
            "10.0.0.1",
            "fec0::1",
            "fd00:ec2::253",
            "127.0.0.1",
        ] {
            assert!(!ll(ip), "{ip}");
        }
        let refused = |s: &str, allow| refused_address(s.parse().expect("ip"), allow).is_some();
        assert!(refused("127.0.0.1", false));
        assert!(refused("::1", false));
        assert!(refused("0.0.0.0", false));
        assert!(!refused("127.0.0.1", true));
        assert!(
            refused("169.254.169.254", true),
            "loopback flag does not open metadata"
        );
        assert!(!refused("10.1.2.3", false));
    }

    #[test]
    fn a_name_resolving_to_metadata_is_refused() {
        let addr = |s: &str| SocketAddr::new(s.parse().expect("ip"), 0);
        let e = vet(
            "metadata.attacker.example",
            &[addr("10.0.0.1"), addr("169.254.169.254")],
            true,
        )
        .expect_err("one link-local address refuses the name");
        assert_eq!(
            e,
            "refused: metadata.attacker.example resolves to 169.254.169.254, which is link-local \
             (instance metadata); gates never call it"
        );
        assert!(vet("v6.example", &[addr("fd00:ec2::254")], true).is_err());
        assert!(vet("local.example", &[addr("127.0.0.1")], false).is_err());
        assert!(vet("local.example", &[addr("127.0.0.1")], true).is_ok());
        assert!(vet(
            "ok.example",
            &[addr("10.0.0.1"), addr("2001:db8::1")],
            false
        )
        .is_ok());
    }

    #[tokio::test]
    async fn plan_mode_skips_remote_gates_only() {
        let c = checker_with(
            FakeEcs::default(),
            FakeTargets::default(),
            FakeAlarms::default(),
            GateOptions {
                allow_loopback: false,
                remote: false,
            },
        );
        assert!(!c.will_check(&http_gate("http://x/", 200)));
        assert!(!c.will_check(&prom_gate("http://x/", "q")));
        assert!(c.will_check(&ecs_gate()));
        assert!(plain_checker().will_check(&http_gate("http://x/", 200)));
    }
}
