//! Judging the controller from outside: the fault proxy's control endpoints, its write log, and
//! scrapes that fail the test when a series is missing (never read as 0).
//!
//! Include with `#[path = "support/outside.rs"] mod outside;` beside `mod support;` and
//! `#[path = "support/writelog.rs"] mod writelog;`.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::controller::{metric_sum, wait_for, Controller, FaultProxy};
use crate::support::{python, Moto};

/// POST `body` to `<proxy>/__proxy/<path>`; panics unless the proxy answers 200.
pub fn proxy_post(proxy: &FaultProxy, path: &str, body: Value) -> Value {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(body.to_string())
        .arg(format!("{}/__proxy/{path}", proxy.endpoint))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (answer, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    assert_eq!(
        code.trim(),
        "200",
        "POST /__proxy/{path} {body} answered {text}"
    );
    serde_json::from_str(answer).unwrap_or(Value::Null)
}

/// One scrape of /metrics; a failed scrape fails the test.
pub fn scrape(c: &Controller) -> String {
    c.metrics()
        .unwrap_or_else(|| panic!("GET /metrics failed:\n{}", c.log_tail()))
}

/// The sum of `name{labels}` in a scrape; a missing series fails the test.
pub fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(text, name, labels)
        .unwrap_or_else(|| panic!("no series {name}{labels:?} in /metrics:\n{text}"))
}

/// Wait until `trafficshift_reconciles_total{split, result}` has grown by `more` over `from`
/// (so the controller has looked at AWS again that many times).
pub fn wait_reconciles(c: &Controller, split: &str, result: &str, from: f64, more: f64) -> f64 {
    wait_for(
        &format!("{more} more reconciles of {split} with result {result}"),
        Duration::from_secs(60),
        || {
            let n = must(
                &scrape(c),
                "trafficshift_reconciles_total",
                &[("split", split), ("result", result)],
            );
            (n >= from + more).then_some(n)
        },
    )
}

/// Every record of a zone, each as boto3 lists it, serialised: a snapshot to compare byte for byte.
pub fn zone_bytes(records: &[Value]) -> String {
    serde_json::to_string_pretty(records).expect("records as JSON")
}

/// A stand-in for Application Auto Scaling: every 200 ms, desiredCount = clamp(load, min, max)
/// of the scalable target. It talks to moto directly, so its writes are not in the proxy log.
pub struct Autoscaler(Child);

impl Autoscaler {
    pub fn start(moto: &Moto, cluster: &str, service: &str, load: i64) -> Autoscaler {
        const LOOP: &str = r#"
import sys, time, boto3
endpoint, cluster, service, load = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
kw = dict(endpoint_url=endpoint, region_name="us-east-1",
          aws_access_key_id="testing", aws_secret_access_key="testing")
aas, ecs = boto3.client("application-autoscaling", **kw), boto3.client("ecs", **kw)
rid = f"service/{cluster}/{service}"
while True:
    t = aas.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[rid])["ScalableTargets"][0]
    want = min(max(load, t["MinCapacity"]), t["MaxCapacity"])
    s = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
    if s["desiredCount"] != want:
        ecs.update_service(cluster=cluster, service=service, desiredCount=want)
    time.sleep(0.2)
"#;
        let child = Command::new(python())
            .args([
                "-c",
                LOOP,
                &moto.endpoint,
                cluster,
                service,
                &load.to_string(),
            ])
            .envs(moto.aws_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the stand-in autoscaler");
        Autoscaler(child)
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
