//! The Prometheus gate against a real Prometheus server (Debian's `prometheus` package).

use crate::prometheus;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus::{free_port, prometheus_binary, Prometheus};
use trafficshift::aws::{
    Alarms, AliasTarget, Aws, Change, Dns, Ecs, EcsService, RecordSet, Targets, Zone,
};
use trafficshift::gates::{GateChecker, GateOptions, GateOutcome};
use trafficshift::spec::{Gate, HumanDuration, OnNoData, PrometheusGate, TrafficSplit};
use trafficshift::{Error, Result};

// The Prometheus gate never touches AWS; these edges only complete the bundle.
struct Unused;

fn unused<T>() -> Result<T> {
    Err(Error::Other("not used by the prometheus gate".into()))
}

#[async_trait]
impl Dns for Unused {
    async fn find_zone(&self, _: &str) -> Result<Zone> {
        unused()
    }
    async fn list_all(&self, _: &str) -> Result<Vec<RecordSet>> {
        unused()
    }
    async fn list_from(&self, _: &str, _: &str) -> Result<Vec<RecordSet>> {
        unused()
    }
    async fn change(&self, _: &str, _: &str, _: &[Change]) -> Result<String> {
        unused()
    }
    async fn insync(&self, _: &str) -> Result<bool> {
        unused()
    }
}

#[async_trait]
impl Ecs for Unused {
    async fn describe(&self, _: &str, _: &[String]) -> Result<Vec<EcsService>> {
        unused()
    }
    async fn set_desired(&self, _: &str, _: &str, _: i32) -> Result<()> {
        unused()
    }
}

#[async_trait]
impl Targets for Unused {
    async fn api_gateway_domain(&self, _: &str) -> Result<AliasTarget> {
        unused()
    }
    async fn target_group_lb(&self, _: &str) -> Result<AliasTarget> {
        unused()
    }
    async fn target_health(&self, _: &str) -> Result<(u32, u32)> {
        unused()
    }
}

#[async_trait]
impl Alarms for Unused {
    async fn alarm_states(&self, _: &[String]) -> Result<Vec<(String, String)>> {
        unused()
    }
}

fn checker() -> GateChecker {
    let u = Arc::new(Unused);
    // The fake Prometheus listens on 127.0.0.1, which gates refuse by default.
    GateChecker::with_options(
        Aws {
            dns: u.clone(),
            ecs: u.clone(),
            targets: u.clone(),
            alarms: u,
            autoscaling: Arc::new(trafficshift::aws::autoscaling::NoAutoscaling),
        },
        GateOptions {
            allow_loopback: true,
            remote: true,
        },
    )
}

fn split() -> TrafficSplit {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "trafficshift.dev/v1alpha1",
        "kind": "TrafficSplit",
        "metadata": {"name": "api"},
        "spec": {
            "record": {"hostedZone": "example.com", "name": "api.example.com", "type": "A"},
            "backends": [{"name": "a", "target": {"cname": "a.example.com"}}],
            "weights": {"a": 100}
        }
    }))
    .expect("fixture split")
}

fn gate(address: &str, query: &str, max: Option<f64>, on_no_data: OnNoData) -> Gate {
    Gate {
        name: "prom".into(),
        cloudwatch_alarm: None,
        ecs_stable: None,
        target_health: None,
        prometheus: Some(PrometheusGate {
            address: address.into(),
            query: query.into(),
            max,
            min: None,
            on_no_data,
            timeout: HumanDuration(Duration::from_secs(5)),
        }),
        http: None,
        traffic_share: None,
    }
}

async fn check(address: &str, query: &str, max: Option<f64>, on_no_data: OnNoData) -> GateOutcome {
    checker()
        .check(&split(), &gate(address, query, max, on_no_data))
        .await
}

#[tokio::test]
async fn prometheus_gate_against_real_prometheus() {
    let mut prom = Prometheus::start();
    prom.ready().await;
    let addr = prom.address.clone();

    let o = check(&addr, "max(up)", Some(1.5), OnNoData::Fail).await;
    assert!(o.passing, "max(up) <= 1.5 should pass: {o:?}");
    assert_eq!(o.value, Some(1.0));

    let o = check(&addr, "sum(up)", Some(1.5), OnNoData::Fail).await;
    assert!(!o.passing, "sum(up) = 2 is above 1.5: {o:?}");
    assert_eq!(o.value, Some(2.0));
    assert!(
        o.message.contains("value 2 is above max 1.5"),
        "{}",
        o.message
    );

    // A scalar result works like a one-sample vector.
    let o = check(&addr, "scalar(sum(up))", Some(3.0), OnNoData::Fail).await;
    assert!(o.passing, "{o:?}");
    assert_eq!(o.value, Some(2.0));

    let o = check(&addr, "absent_metric_xyz", Some(1.0), OnNoData::Fail).await;
    assert!(!o.passing, "{o:?}");
    assert!(o.message.contains("no data"), "{}", o.message);

    let o = check(&addr, "absent_metric_xyz", Some(1.0), OnNoData::Pass).await;
    assert!(o.passing, "{o:?}");
    assert!(o.message.contains("no data"), "{}", o.message);

    let o = check(&addr, "up", Some(1.5), OnNoData::Fail).await;
    assert!(!o.passing, "{o:?}");
    assert!(
        o.message
            .contains("query returned 2 series; aggregate it to one"),
        "{}",
        o.message
    );

    // A PromQL syntax error is Prometheus' 400 answer, reported with its message.
    let o = check(&addr, "sum(up", Some(1.0), OnNoData::Fail).await;
    assert!(!o.passing, "{o:?}");
    assert!(o.message.contains("bad_data"), "{}", o.message);

    // The same query with a label matcher needing URL encoding.
    let o = check(
        &addr,
        r#"sum(up{job=~"self.*"}) / 2"#,
        Some(1.0),
        OnNoData::Fail,
    )
    .await;
    assert!(o.passing, "{o:?}");
    assert_eq!(o.value, Some(1.0));
}

#[tokio::test]
async fn prometheus_gate_unreachable_address_fails() {
    // Nothing listens on a port that was just free.
    let addr = format!("http://127.0.0.1:{}", free_port());
    let o = check(&addr, "max(up)", Some(1.5), OnNoData::Pass).await;
    assert!(!o.passing, "{o:?}");
    assert!(o.message.contains("connection failed"), "{}", o.message);
    assert!(
        o.message.to_lowercase().contains("connection refused"),
        "{}",
        o.message
    );
}

#[test]
fn prometheus_binary_is_installed() {
    // Fails rather than skips: a missing binary must not make the gate untested in CI.
    let _ = prometheus_binary();
}
