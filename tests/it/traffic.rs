//! Traffic share from CloudWatch (issue #10 part 1) end to end: the real binary against moto
//! through the AWS layer, request counts put with the AWS CLI, the share read back by a real
//! scrape of /metrics and `trafficshift status`, the trafficShare gate's decisions read back from
//! Route53 with the AWS CLI.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::controller::{metric_sum, run_cli, wait_for, write_atomic, Controller, Scenario};
use support::Moto;

const DEADLINE: Duration = Duration::from_secs(90);
/// Polls CloudWatch every second instead of every minute, so a test takes seconds.
const FAST: &[&str] = &["--resync", "2s", "--traffic-poll-interval", "1s"];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The scenario plus what CloudWatch names its backends by.
struct World {
    sc: Scenario,
    api_name: String,
    lb_dim: String,
    tg_dim: String,
}

/// The issue's scenario, with a REST API deployed to stage `prod` and mapped to the API Gateway
/// custom domain (so its requests are `AWS/ApiGateway Count{ApiName, Stage}`).
fn world(moto: &Moto) -> World {
    let sc = Scenario::provision(moto, 2);
    let api_name = support::unique("orders");
    moto.py(
        r#"
gw = client("apigateway")
api = gw.create_rest_api(name=input["name"], endpointConfiguration={"types": ["REGIONAL"]})["id"]
root = [r for r in gw.get_resources(restApiId=api)["items"] if r["path"] == "/"][0]["id"]
gw.put_method(restApiId=api, resourceId=root, httpMethod="GET", authorizationType="NONE")
gw.put_integration(restApiId=api, resourceId=root, httpMethod="GET", type="MOCK")
gw.create_deployment(restApiId=api, stageName="prod")
gw.create_base_path_mapping(domainName=input["domain"], restApiId=api, stage="prod")
out = api
"#,
        json!({"name": api_name, "domain": sc.apigw_domain}),
    );
    let tg_arn = sc.info["target_group_arn"].as_str().unwrap().to_string();
    let tg = moto.cli(&[
        "elbv2",
        "describe-target-groups",
        "--target-group-arns",
        &tg_arn,
    ]);
    let lb_arn = tg["TargetGroups"][0]["LoadBalancerArns"][0]
        .as_str()
        .expect("the target group is attached to a load balancer")
        .to_string();
    // CloudWatch names an ALB and a target group by the resource part of their ARNs.
    let lb_dim = lb_arn.split_once(":loadbalancer/").unwrap().1.to_string();
    let tg_dim = format!(
        "targetgroup/{}",
        tg_arn.split_once(":targetgroup/").unwrap().1
    );
    World {
        sc,
        api_name,
        lb_dim,
        tg_dim,
    }
}

/// Put `per_minute` requests in every minute from 10 minutes ago to 10 minutes ahead, so any
/// window the test reads holds the same minutes for both backends.
fn put_requests(
    moto: &Moto,
    namespace: &str,
    metric: &str,
    dims: &[(&str, &str)],
    per_minute: f64,
) {
    let t0 = now();
    let data: Vec<Value> = (-10..=10)
        .map(|m| {
            json!({
                "MetricName": metric,
                // moto matches dimensions in order; the controller asks in name order.
                "Dimensions": dims.iter().map(|(k, v)| json!({"Name": k, "Value": v})).collect::<Vec<_>>(),
                "Timestamp": t0 + 60 * m - 30,
                "Value": per_minute,
                "Unit": "Count",
            })
        })
        .collect();
    moto.cli(&[
        "cloudwatch",
        "put-metric-data",
        "--namespace",
        namespace,
        "--metric-data",
        &Value::Array(data).to_string(),
    ]);
}

fn put_api(moto: &Moto, w: &World, per_minute: f64) {
    put_requests(
        moto,
        "AWS/ApiGateway",
        "Count",
        &[("ApiName", &w.api_name), ("Stage", "prod")],
        per_minute,
    );
}

fn put_alb(moto: &Moto, w: &World, per_minute: f64) {
    put_requests(
        moto,
        "AWS/ApplicationELB",
        "RequestCount",
        &[("LoadBalancer", &w.lb_dim), ("TargetGroup", &w.tg_dim)],
        per_minute,
    );
}

/// Route53 weights by backend, read with the AWS CLI.
fn route53_weights(moto: &Moto, sc: &Scenario) -> Vec<(String, i64)> {
    let out = moto.cli(&[
        "route53",
        "list-resource-record-sets",
        "--hosted-zone-id",
        &sc.zone_id,
    ]);
    let mut w: Vec<(String, i64)> = out["ResourceRecordSets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["Name"] == sc.record.as_str() && r["Type"] == "A")
        .filter_map(|r| {
            Some((
                r["SetIdentifier"].as_str()?.to_string(),
                r["Weight"].as_i64()?,
            ))
        })
        .collect();
    w.sort();
    w
}

fn weights(lambda: i64, fargate: i64) -> Vec<(String, i64)> {
    vec![("fargate".into(), fargate), ("lambda".into(), lambda)]
}

fn write_doc(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("api.yaml");
    write_atomic(&p, text);
    p
}

/// The scenario's document: minTasks 20 so capacity never paces a step, a 2m window.
fn doc(w: &World, lambda: u32, fargate: u32, extra: &str) -> String {
    w.sc.document(
        "api",
        lambda,
        fargate,
        &format!("  observe:\n    window: 2m\n{extra}"),
    )
    .replace("minTasks: 2", "minTasks: 20")
}

/// A two-step rollout with a trafficShare gate checked every second. Gates decide whether the
/// next step may come, so the gate judges the start weights, then the first step's.
fn gated(tolerance: u32, on_failure: &str, on_no_data: &str) -> String {
    format!(
        "  rollout:\n    steps: [50, 100]\n    interval: 5s\n    gateInterval: 1s\n    failureThreshold: 1\n    onGateFailure: {on_failure}\n  gates:\n    - name: share\n      trafficShare:\n        tolerance: {tolerance}\n        onNoData: {on_no_data}\n        settle: 0s\n"
    )
}

fn wait_state(c: &Controller, want: &str) -> Value {
    wait_for(&format!("/status api state {want}"), DEADLINE, || {
        c.split("api").filter(|s| s["state"] == want)
    })
}

fn gate_of(split: &Value) -> Value {
    split["gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "share"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Start at 30/70 without a rollout (the adopted record starts at 100/0), with traffic put.
fn converged_at_30_70(moto: &Moto, w: &World, dir: &Path) -> Controller {
    write_doc(dir, &doc(w, 30, 70, ""));
    let mut c = Controller::start(moto.aws(), &[dir], "test", FAST);
    c.wait_ready(DEADLINE);
    wait_for("Route53 at 30/70", DEADLINE, || {
        (route53_weights(moto, &w.sc) == weights(30, 70)).then_some(())
    });
    wait_state(&c, "Complete");
    // The share (or its absence) is measured before the gated document arrives.
    wait_for("a traffic measurement of api", DEADLINE, || {
        c.metrics().filter(|t| {
            metric_sum(
                t,
                "trafficshift_backend_requests_per_second",
                &[("split", "api"), ("backend", "fargate")],
            )
            .is_some()
        })
    });
    c
}

#[test]
fn share_of_300_and_700_requests_per_minute_is_published_within_a_minute() {
    let moto = Moto::start();
    let w = world(&moto);
    put_api(&moto, &w, 300.0);
    put_alb(&moto, &w, 700.0);
    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), &doc(&w, 30, 70, ""));
    let started = Instant::now();
    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", FAST);
    c.wait_ready(DEADLINE);

    let share = |text: &str, b: &str| {
        metric_sum(
            text,
            "trafficshift_traffic_share_ratio",
            &[("split", "api"), ("backend", b)],
        )
    };
    let text = wait_for("the traffic share on /metrics", DEADLINE, || {
        c.metrics().filter(|t| share(t, "lambda").is_some())
    });
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "share published {:?} after start",
        started.elapsed()
    );
    let (api, alb) = (
        share(&text, "lambda").unwrap(),
        share(&text, "fargate").unwrap(),
    );
    assert!((api - 0.3).abs() < 1e-9, "lambda share {api}");
    assert!((alb - 0.7).abs() < 1e-9, "fargate share {alb}");
    let rate = |b: &str| {
        metric_sum(
            &text,
            "trafficshift_backend_requests_per_second",
            &[("split", "api"), ("backend", b)],
        )
        .unwrap_or_else(|| panic!("no requests/s for {b}:\n{text}"))
    };
    // Same minutes in the window for both: the rates keep the 300:700 ratio.
    assert!(rate("lambda") > 0.0);
    assert!((rate("lambda") * 700.0 - rate("fargate") * 300.0).abs() < 1e-6);
    let info = metric_sum(
        &text,
        "trafficshift_split_info",
        &[("split", "api"), ("owner", "test")],
    );
    assert_eq!(info, Some(1.0), "{text}");

    // `status` shows what the controller published at its last cycle: poll it.
    let out = wait_for("TRAFFIC lambda=30 fargate=70 in `status`", DEADLINE, || {
        let (code, out, err) = run_cli(moto.aws(), &["status", "--endpoint", &c.endpoint]);
        assert_eq!(code, 0, "{out}{err}");
        let header = out.lines().next().unwrap_or_default().to_string();
        let traffic_at = header.find("TRAFFIC")?;
        let row = out.lines().find(|l| l.starts_with("api "))?.to_string();
        (row.get(traffic_at..)?.split("   ").next().map(str::trim) == Some("lambda=30 fargate=70"))
            .then_some(out)
    });
    let header = out.lines().next().unwrap_or_default();
    let weights_at = header.find("WEIGHTS").expect("WEIGHTS column");
    let traffic_at = header.find("TRAFFIC").expect("TRAFFIC column");
    assert!(traffic_at > weights_at, "TRAFFIC next to WEIGHTS:\n{out}");
}

#[test]
fn unknown_share_is_absent_and_shown_as_question_marks() {
    let moto = Moto::start();
    let w = world(&moto);
    // Only the ALB has data: the API backend is unknown, so no share is known.
    put_alb(&moto, &w, 700.0);
    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), &doc(&w, 30, 70, ""));
    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", FAST);
    c.wait_ready(DEADLINE);
    let text = wait_for("the ALB's requests/s on /metrics", DEADLINE, || {
        c.metrics().filter(|t| {
            metric_sum(
                t,
                "trafficshift_backend_requests_per_second",
                &[("split", "api"), ("backend", "fargate")],
            )
            .is_some()
        })
    });
    for b in ["lambda", "fargate"] {
        assert_eq!(
            metric_sum(
                &text,
                "trafficshift_traffic_share_ratio",
                &[("split", "api"), ("backend", b)]
            ),
            None,
            "unknown must be absent, never 0:\n{text}"
        );
    }
    assert_eq!(
        metric_sum(
            &text,
            "trafficshift_backend_requests_per_second",
            &[("split", "api"), ("backend", "lambda")]
        ),
        None
    );
    let (code, out, err) = run_cli(moto.aws(), &["status", "--endpoint", &c.endpoint]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("lambda=? fargate=?"), "{out}");
}

#[test]
fn traffic_share_gate_passes_within_tolerance_and_the_rollout_completes() {
    let moto = Moto::start();
    let w = world(&moto);
    put_api(&moto, &w, 300.0);
    put_alb(&moto, &w, 700.0);
    let dir = tempfile::tempdir().unwrap();
    let c = converged_at_30_70(&moto, &w, dir.path());
    // 30/70 measured; the first step, 25/75, is 5 points off: within 10, so the second comes.
    write_doc(dir.path(), &doc(&w, 20, 80, &gated(10, "rollback", "fail")));
    // The new document's completion, not the first one's.
    let s = wait_for("/status api Complete at target 20/80", DEADLINE, || {
        c.split("api")
            .filter(|s| s["state"] == "Complete" && s["backends"][0]["targetWeight"] == 20)
    });
    let g = gate_of(&s);
    assert_eq!(g["passing"], true, "{s}");
    let v = g["value"].as_f64().expect("the gate's measured deviation");
    assert!((v - 5.0).abs() < 1e-6, "last judged against 25/75: {g}");
    assert_eq!(route53_weights(&moto, &w.sc), weights(20, 80));
    let text = c.metrics().unwrap();
    let gv = metric_sum(
        &text,
        "trafficshift_gate_value",
        &[("split", "api"), ("gate", "share")],
    );
    assert!(gv.is_some_and(|v| (v - 5.0).abs() < 1e-6), "{gv:?}");
}

#[test]
fn traffic_share_gate_outside_tolerance_rolls_back() {
    let moto = Moto::start();
    let w = world(&moto);
    put_api(&moto, &w, 300.0);
    put_alb(&moto, &w, 700.0);
    let dir = tempfile::tempdir().unwrap();
    let c = converged_at_30_70(&moto, &w, dir.path());
    // The first step, 60/40, is 30 points off the measured 30/70: its first check trips the gate.
    // (60/40 lasts about one gate interval; the gate's value below shows it was judged.)
    write_doc(dir.path(), &doc(&w, 90, 10, &gated(10, "rollback", "fail")));
    let s = wait_state(&c, "RolledBack");
    let g = gate_of(&s);
    assert_eq!(g["passing"], false, "{s}");
    let v = g["value"].as_f64().expect("the gate's measured deviation");
    assert!((v - 30.0).abs() < 1e-6, "judged against 60/40: {g}");
    wait_for("Route53 back at 30/70", DEADLINE, || {
        (route53_weights(&moto, &w.sc) == weights(30, 70)).then_some(())
    });
}

#[test]
fn traffic_share_gate_without_data_waits_or_fails_as_configured() {
    let moto = Moto::start();
    let w = world(&moto);
    // No API requests: the share is unknown.
    put_alb(&moto, &w, 700.0);
    let dir = tempfile::tempdir().unwrap();
    let c = converged_at_30_70(&moto, &w, dir.path());

    // onNoData: wait holds the rollout at its start: several checks, no failure, no step.
    write_doc(dir.path(), &doc(&w, 25, 75, &gated(10, "rollback", "wait")));
    let first = wait_for("the gate to wait on missing data", DEADLINE, || {
        c.split("api").map(|s| gate_of(&s)).filter(|g| {
            g["message"]
                .as_str()
                .is_some_and(|m| m.contains("traffic share unknown"))
        })
    });
    let held_from = route53_weights(&moto, &w.sc);
    // Longer than the 5s interval plus several 1s gate checks.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let s = c.split("api").unwrap();
        assert_eq!(s["state"], "Progressing", "onNoData wait must hold: {s}");
        assert_eq!(gate_of(&s)["consecutiveFailures"], 0, "{s}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let later = gate_of(&c.split("api").unwrap());
    assert_ne!(
        later["lastCheck"], first["lastCheck"],
        "the gate kept being checked"
    );
    assert_eq!(held_from, weights(30, 70), "no step while the gate waits");
    assert_eq!(route53_weights(&moto, &w.sc), held_from, "Route53 held");

    // onNoData: fail trips the gate (failureThreshold 1): rolled back to 30/70.
    write_doc(dir.path(), &doc(&w, 20, 80, &gated(10, "rollback", "fail")));
    let s = wait_state(&c, "RolledBack");
    assert_eq!(gate_of(&s)["passing"], false, "{s}");
    wait_for("Route53 back at the rollout's start", DEADLINE, || {
        let now = route53_weights(&moto, &w.sc);
        (now == held_from).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn more_than_500_queries_are_batched_and_each_series_comes_back_in_its_place() {
    use trafficshift::aws::metric_data::{AwsTrafficSources, TrafficSources};
    use trafficshift::traffic::MetricQuery;

    let moto = Moto::start();
    let api = support::unique("batch");
    // Series i has the value i; 1,001 queries need three calls (the layer refuses more than 500).
    let t0 = now();
    for chunk in (0..1001).collect::<Vec<i64>>().chunks(500) {
        let data: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"MetricName": "Count", "Timestamp": t0 - 30, "Value": *i as f64, "Unit": "Count",
                       "Dimensions": [{"Name": "ApiName", "Value": format!("{api}-{i}")}, {"Name": "Stage", "Value": "prod"}]})
            })
            .collect();
        moto.py(
            r#"client("cloudwatch").put_metric_data(Namespace="AWS/ApiGateway", MetricData=input)
out = None"#,
            Value::Array(data),
        );
    }
    let config = moto.loader().endpoint_url(moto.aws()).load().await;
    let sources = AwsTrafficSources::from_config(&config);
    let queries: Vec<MetricQuery> = (0..1001)
        .map(|i| {
            MetricQuery::sum(
                "AWS/ApiGateway",
                "Count",
                &[("ApiName", &format!("{api}-{i}")), ("Stage", "prod")],
            )
        })
        .collect();
    let got = sources
        .metric_data(&queries, t0 - 120, t0 + 60)
        .await
        .expect("GetMetricData through the layer");
    assert_eq!(got.len(), 1001);
    for (i, series) in got.iter().enumerate() {
        let values: Vec<f64> = series.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, vec![i as f64], "series {i}");
    }
    let calls = moto.layer().unwrap().stats()["by_operation"]["cloudwatch.GetMetricData"]
        ["requests"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(calls, 3, "ceil(1001 / 500) calls");
}
