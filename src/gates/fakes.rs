//! Test fakes shared by the gate tests: the AWS edges with fixed answers, fixtures, and a local
//! HTTP server standing in for Prometheus and for HTTP gate targets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use super::{GateChecker, GateOptions};
use crate::aws::{
    Alarms, AliasTarget, Aws, Change, Dns, Ecs, EcsService, RecordSet, Targets, Zone,
};
use crate::spec::{
    BackendRef, Gate, HttpGate, HumanDuration, OnNoData, PrometheusGate, TrafficSplit,
};
use crate::{Error, Result};

// Fakes of the AWS edges: the gate logic is pure once the answers are fixed.

pub(super) struct NoDns;
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
pub(super) struct FakeEcs {
    pub(super) services: Vec<EcsService>,
    pub(super) fail: bool,
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
pub(super) struct FakeTargets {
    pub(super) health: HashMap<String, (u32, u32)>,
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
pub(super) struct FakeAlarms {
    pub(super) states: Vec<(String, String)>,
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

pub(super) fn checker(ecs: FakeEcs, targets: FakeTargets, alarms: FakeAlarms) -> GateChecker {
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

pub(super) fn checker_with(
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

pub(super) fn plain_checker() -> GateChecker {
    checker(
        FakeEcs::default(),
        FakeTargets::default(),
        FakeAlarms::default(),
    )
}

pub(super) fn split() -> TrafficSplit {
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

pub(super) fn service(running: i32, desired: i32, deployments: usize) -> EcsService {
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

pub(super) fn gate(name: &str) -> Gate {
    Gate {
        name: name.into(),
        cloudwatch_alarm: None,
        ecs_stable: None,
        target_health: None,
        prometheus: None,
        http: None,
        traffic_share: None,
    }
}

pub(super) fn ecs_gate() -> Gate {
    Gate {
        ecs_stable: Some(BackendRef {
            backend: "fargate".into(),
        }),
        ..gate("stable")
    }
}

// A local HTTP server standing in for Prometheus and for HTTP gate targets.

pub(super) const SPECIAL_QUERY: &str =
    r#"sum(rate(http_requests_total{code=~"5..",job="a b"}[5m])) / 2 & x"#;

pub(super) fn vector(values: &[&str]) -> String {
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

pub(super) async fn prom_query(
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
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

pub(super) fn bytes_of(n: usize) -> axum::body::Bytes {
    axum::body::Bytes::from(vec![b' '; n])
}

pub(super) async fn slow_body() -> axum::response::Response {
    // Headers at once, then a body that never finishes in time.
    let stream = futures::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (n < 20).then(|| (Ok::<_, std::convert::Infallible>(bytes_of(10)), n + 1))
    });
    axum::body::Body::from_stream(stream).into_response()
}

pub(super) async fn local_server() -> String {
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

pub(super) fn prom_gate(address: &str, query: &str) -> Gate {
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

pub(super) fn http_gate(url: &str, expect: u16) -> Gate {
    Gate {
        http: Some(HttpGate {
            url: url.into(),
            expect_status: expect,
            timeout: HumanDuration(Duration::from_millis(500)),
        }),
        ..gate("http")
    }
}
