//! Running the real `trafficshift` binary against moto, and the scenario it works on.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{python, repo, unique, Moto};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trafficshift"))
}

/// A free 127.0.0.1 port (released before use; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The issue's scenario in moto: a zone with a plain alias record to an API Gateway regional
/// domain, an ECS Fargate service behind an ALB, and an unrelated record.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub zone: String,
    pub zone_id: String,
    pub record: String,
    pub cluster: String,
    pub service: String,
    pub apigw_domain: String,
    pub unrelated: String,
    pub info: Value,
}

impl Scenario {
    /// Provision with unique names (tests run in parallel against their own moto anyway).
    pub fn provision(moto: &Moto, tasks: u32) -> Scenario {
        let zone = format!("{}.example", unique("z"));
        Scenario::provision_in(moto, &zone, "api", tasks)
    }

    /// Provision a record `<label>.<zone>` with its own cluster/service/API domain in `zone`
    /// (several scenarios may share one zone).
    pub fn provision_in(moto: &Moto, zone: &str, label: &str, tasks: u32) -> Scenario {
        let record = format!("{label}.{zone}");
        let cluster = unique("c");
        let service = format!("{label}-svc");
        let apigw = format!("{label}-gw.{zone}");
        let unrelated = format!("www-{label}.{zone}");
        let out = Command::new(python())
            .arg(repo().join("scripts/provision.py"))
            .args(["--endpoint", &moto.endpoint, "scenario"])
            .args([
                "--zone",
                zone,
                "--record",
                &record,
                "--cluster",
                &cluster,
                "--service",
                &service,
            ])
            .args([
                "--apigw-domain",
                &apigw,
                "--unrelated",
                &unrelated,
                "--tasks",
                &tasks.to_string(),
            ])
            .envs(moto.aws_env())
            .output()
            .expect("run provision.py");
        assert!(
            out.status.success(),
            "provision.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: Value = serde_json::from_slice(&out.stdout).expect("provision.py prints JSON");
        Scenario {
            zone: zone.to_string(),
            zone_id: info["zone_id"].as_str().unwrap().to_string(),
            record: format!("{record}."),
            cluster,
            service,
            apigw_domain: apigw,
            unrelated: format!("{unrelated}."),
            info,
        }
    }

    /// The issue's example document for this scenario; `extra` is appended under `spec:`
    /// (indent it by two spaces), e.g. a rollout block.
    pub fn document(&self, name: &str, lambda: u32, fargate: u32, extra: &str) -> String {
        format!(
            r#"apiVersion: trafficshift.dev/v1alpha1
kind: TrafficSplit
metadata:
  name: {name}
spec:
  record:
    hostedZone: {zone}.
    name: {record}
    type: A
    ttl: 60
    adoptExisting: true
  backends:
    - name: lambda
      apiGateway:
        domainName: {apigw}
    - name: fargate
      ecs:
        cluster: {cluster}
        service: {service}
        tasksAtFullTraffic: 20
        minTasks: 2
        maxTasks: 40
  weights:
    lambda: {lambda}
    fargate: {fargate}
{extra}"#,
            zone = self.zone,
            record = self.record,
            apigw = self.apigw_domain,
            cluster = self.cluster,
            service = self.service,
        )
    }

    /// All record sets of the zone, read with boto3.
    pub fn records(&self, moto: &Moto) -> Vec<Value> {
        let v = moto.py(
            r#"
c = client("route53")
out = []
for page in c.get_paginator("list_resource_record_sets").paginate(HostedZoneId=input["zone"]):
    out.extend(page["ResourceRecordSets"])
"#,
            json!({"zone": self.zone_id}),
        );
        v.as_array().cloned().unwrap_or_default()
    }

    /// Weighted records at the scenario's name: SetIdentifier -> Weight (boto3).
    pub fn weights(&self, moto: &Moto) -> BTreeMap<String, i64> {
        self.records(moto)
            .iter()
            .filter(|r| r["Name"] == self.record.as_str() && r.get("SetIdentifier").is_some())
            .map(|r| {
                (
                    r["SetIdentifier"].as_str().unwrap().to_string(),
                    r["Weight"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    /// The ownership/state TXT payload (quotes removed), if any.
    pub fn state_txt(&self, moto: &Moto) -> Option<String> {
        let name = format!("_trafficshift.{}", self.record);
        self.records(moto)
            .iter()
            .find(|r| r["Name"] == name.as_str() && r["Type"] == "TXT")
            .map(|r| {
                r["ResourceRecords"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| {
                        v["Value"]
                            .as_str()
                            .unwrap()
                            .replace("\" \"", "")
                            .replace('"', "")
                    })
                    .collect::<Vec<_>>()
                    .join("")
            })
    }

    /// ECS (desiredCount, runningCount) read with boto3.
    pub fn ecs_counts(&self, moto: &Moto) -> (i64, i64) {
        let v = moto.boto3_json(
            "ecs",
            "describe_services",
            json!({"cluster": self.cluster, "services": [self.service]}),
        );
        let s = &v["services"][0];
        (
            s["desiredCount"].as_i64().unwrap(),
            s["runningCount"].as_i64().unwrap(),
        )
    }
}

/// `weights(&[("lambda", 0), ("fargate", 100)])`
pub fn weights(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A running controller process, killed on drop. Logs go to a file printed on failure.
pub struct Controller {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    pub endpoint: String,
}

impl Controller {
    /// `trafficshift run --config <each> --listen 127.0.0.1:PORT --owner-id <owner> <extra args>`
    /// against `aws_endpoint` (moto, or the fault proxy in front of it).
    pub fn start(aws_endpoint: &str, configs: &[&Path], owner: &str, extra: &[&str]) -> Controller {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique("trafficshift")));
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run");
        for c in configs {
            cmd.arg("--config").arg(c);
        }
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--owner-id",
            owner,
        ])
        .args(extra)
        .env("AWS_ENDPOINT_URL", aws_endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("TRAFFICSHIFT_LOG", "info,trafficshift=debug")
        .stdout(Stdio::null())
        .stderr(logf);
        let child = cmd.spawn().expect("spawn trafficshift");
        Controller {
            child: Some(child),
            port,
            log,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let t = self.log_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("{}{path}", self.endpoint);
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-w", "\n%{http_code}", &url])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }

    /// GET /status as JSON (None while not up).
    pub fn status(&self) -> Option<Value> {
        let (code, body) = self.get("/status")?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// One split's status.
    pub fn split(&self, name: &str) -> Option<Value> {
        self.status()?["splits"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    /// GET /metrics text.
    pub fn metrics(&self) -> Option<String> {
        let (code, body) = self.get("/metrics")?;
        (code == 200).then_some(body)
    }

    pub fn ready(&self) -> bool {
        self.get("/readyz").is_some_and(|(c, _)| c == 200)
    }

    /// Wait until /readyz answers 200 (first reconcile done).
    pub fn wait_ready(&mut self, deadline: Duration) {
        let t = Instant::now();
        while t.elapsed() < deadline {
            if self.ready() {
                return;
            }
            if let Some(code) = self.exit_code() {
                panic!(
                    "controller exited with {code:?} before ready:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "controller not ready within {deadline:?}:\n{}",
            self.log_tail()
        );
    }

    /// Some(exit code) once the process has exited (None code = killed by a signal).
    pub fn exit_code(&mut self) -> Option<Option<i32>> {
        self.child.as_mut()?.try_wait().ok()?.map(|s| s.code())
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (deadline) for the exit code.
    pub fn sigterm(&mut self, deadline: Duration) -> Option<i32> {
        let c = self.child.as_mut().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "controller did not exit within {deadline:?} after SIGTERM:\n{}",
            self.log_tail()
        );
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- controller log tail ({}) ---\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        self.kill9();
    }
}

/// Poll `f` until it returns Some, or panic naming `what` after `deadline` (blocking version).
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Run `trafficshift <args>` to completion: (exit code, stdout, stderr).
pub fn run_cli(moto_endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("AWS_ENDPOINT_URL", moto_endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run trafficshift");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
