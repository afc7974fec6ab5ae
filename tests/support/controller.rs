//! Running the real `trafficshift` binary against moto, and the scenario it works on.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{python, repo, unique, Moto};

/// The binary under test.
/// The controller binary: this build's, or `TRAFFICSHIFT_BIN` when set (the benchmark's
/// `--baseline-bin` runs an earlier build's binary beside this one).
pub fn bin() -> PathBuf {
    std::env::var_os("TRAFFICSHIFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trafficshift")))
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

/// `scripts/provision.py ARGS` against `moto`, run by the suite's boto3 worker (the script's own
/// `main`, loaded once per worker: a new Python with boto3 per scenario cost ~0.4 s of CPU);
/// its printed JSON.
pub fn provision(moto: &Moto, args: &[&str]) -> Value {
    let argv: Vec<String> = ["--endpoint", &moto.endpoint]
        .iter()
        .chain(args)
        .map(|a| a.to_string())
        .collect();
    let out = moto.py(
        r#"
import contextlib, importlib.util, io
if "provision" not in sys.modules:
    spec = importlib.util.spec_from_file_location("provision", input["script"])
    sys.modules["provision"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["provision"])
stdout, stderr = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    rc = sys.modules["provision"].main(input["argv"])
out = {"rc": rc, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
"#,
        serde_json::json!({"script": repo().join("scripts/provision.py"), "argv": argv}),
    );
    assert_eq!(
        out["rc"],
        0,
        "provision.py {} failed: {}",
        args.join(" "),
        out["stderr"]
    );
    let printed = out["stdout"].as_str().unwrap_or_default().trim();
    if printed.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(printed)
        .unwrap_or_else(|e| panic!("provision.py printed no JSON ({e}): {printed}"))
}

impl Scenario {
    /// The weighted records at the scenario's name, SetIdentifier -> Weight, read with boto3 (an
    /// outside client, not the controller's SDK; the suite's long-lived boto3 worker, as a new
    /// `aws` process per poll cost half a second of CPU each).
    pub fn outside_weights(&self, moto: &Moto) -> BTreeMap<String, i64> {
        let v = moto.py(
            r#"
pages = client("route53").get_paginator("list_resource_record_sets").paginate(HostedZoneId=input["zone"])
out = [[r["SetIdentifier"], r["Weight"]] for p in pages for r in p["ResourceRecordSets"]
       if r["Name"] == input["name"] and "SetIdentifier" in r]
"#,
            serde_json::json!({"zone": self.zone_id, "name": self.record}),
        );
        v.as_array()
            .expect("[SetIdentifier, Weight] pairs")
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_i64().unwrap()))
            .collect()
    }

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
        let tasks = tasks.to_string();
        let info = provision(
            moto,
            &[
                "scenario",
                "--zone",
                zone,
                "--record",
                &record,
                "--cluster",
                &cluster,
                "--service",
                &service,
                "--apigw-domain",
                &apigw,
                "--unrelated",
                &unrelated,
                "--tasks",
                &tasks,
            ],
        );
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
            // Gate targets and fake Prometheus servers of the tests listen on 127.0.0.1.
            "--allow-loopback-gates",
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

/// Sum of the samples of metric `name` (Prometheus text format) whose labels include every
/// `(key, value)` of `labels`; None when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.trim().rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let found = parse_labels(label_text);
        let matches = labels
            .iter()
            .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v));
        if let (true, Ok(v)) = (matches, value.parse::<f64>()) {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

/// `a="x",b="y"` (with `\"` and `\\` escapes) as pairs.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
    }
}

/// One HTTP GET of `<endpoint><path>`: (status code, body); None when nothing answers.
pub fn http_get(endpoint: &str, path: &str) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .arg(format!("{endpoint}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// One Route53 change batch made with boto3 (by hand, as an operator would).
pub fn change_records(moto: &Moto, zone_id: &str, changes: Value) {
    moto.boto3_json(
        "route53",
        "change_resource_record_sets",
        json!({"HostedZoneId": zone_id, "ChangeBatch": {"Changes": changes}}),
    );
}

/// Replace `path` atomically (hidden temp file + rename in the same directory), as editors do.
pub fn write_atomic(path: &Path, text: &str) {
    let name = path.file_name().unwrap().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The controller's log lines parsed as JSON (start it with `--log-format json`).
pub fn json_log(c: &Controller) -> Vec<Value> {
    c.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Chaos, crash and config-churn helpers (tests/it/chaos.rs, tests/it/crash.rs, tests/it/config_churn.rs).

/// Create a CloudWatch alarm (if needed) and set its state.
pub fn set_alarm(moto: &Moto, name: &str, state: &str) {
    provision(moto, &["alarm", "--name", name, "--state", state]);
}

/// `scripts/faultproxy.py` in front of moto, killed on drop; `log` is its JSONL request log.
pub struct FaultProxy {
    child: Child,
    /// Keeps the proxy's stdout pipe open for its lifetime.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
    /// `http://127.0.0.1:PORT`: give it to the controller as its AWS endpoint.
    pub endpoint: String,
    pub log: PathBuf,
    /// Refusals a test provokes on purpose (see `allow_refusals`).
    allowed: std::sync::Mutex<Vec<String>>,
}

impl FaultProxy {
    /// `faultproxy.py --upstream <upstream> --seed <seed> --fault-rate <rate> --faults <faults>
    /// --log <tmp> <extra>`.
    pub fn start(upstream: &str, seed: u64, rate: f64, faults: &str, extra: &[&str]) -> FaultProxy {
        use std::io::BufRead;
        let log = std::env::temp_dir().join(format!("{}.jsonl", unique("faultproxy")));
        let mut child = Command::new(python())
            .arg(repo().join("scripts/faultproxy.py"))
            .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
            .args([
                "--seed",
                &seed.to_string(),
                "--fault-rate",
                &rate.to_string(),
            ])
            .args(["--faults", faults, "--log"])
            .arg(&log)
            // Real Route53 refuses what moto accepts; every test must make only valid changes.
            .args(["--route53-validate", "true"])
            .args(if super::realistic() {
                super::REALISTIC_FLAGS
            } else {
                &[]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run faultproxy.py");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        out.read_line(&mut line)
            .expect("read the proxy's port line");
        let port = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| panic!("faultproxy.py printed {line:?}, not {{\"port\": N}}"));
        FaultProxy {
            child,
            _stdout: out,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            allowed: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Changes the layer refused because real Route53 would (GET /__proxy/refusals).
    pub fn refusals(&self) -> Vec<Value> {
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                &format!("{}/__proxy/refusals", self.endpoint),
            ])
            .output()
            .expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "GET /__proxy/refusals answered {:?}: {e}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        v["refusals"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("GET /__proxy/refusals: no refusals list in {v}"))
    }

    /// Refusals whose reason contains `needle` are expected (e.g. a fence another writer tripped)
    /// and do not fail the test on drop.
    pub fn allow_refusals(&self, needle: &str) {
        self.allowed.lock().unwrap().push(needle.to_string());
    }

    /// Make the layer's ECS start a service's tasks normally or never (POST /__proxy/ecs with
    /// mode `normal`, `failing`, `unhealthy` or `healthy`).
    pub fn set_ecs_mode(&self, cluster: &str, service: &str, mode: &str) {
        let body = json!({"cluster": cluster, "service": service, "mode": mode}).to_string();
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .args([
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                &body,
            ])
            .arg(format!("{}/__proxy/ecs", self.endpoint))
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(code, "200", "POST /__proxy/ecs {body} answered {code}");
    }

    /// What the layer serves for ECS right now (GET /__proxy/ecs).
    pub fn ecs_view(&self) -> Value {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", &format!("{}/__proxy/ecs", self.endpoint)])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// GET /__proxy/stats.
    pub fn stats(&self) -> Value {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", &format!("{}/__proxy/stats", self.endpoint)])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // A change real Route53 would refuse fails the test that made it.
        let refused: Vec<Value> = if std::thread::panicking() {
            vec![]
        } else {
            let allowed = self.allowed.lock().unwrap().clone();
            self.refusals()
                .into_iter()
                .filter(|r| {
                    let why = r["reason"].as_str().unwrap_or_default();
                    !allowed.iter().any(|a| why.contains(a.as_str()))
                })
                .collect()
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() && refused.is_empty() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("--- fault proxy log kept at {} ---", self.log.display());
        }
        assert!(
            refused.is_empty(),
            "the AWS layer refused {} change(s) that real Route53 would refuse: {refused:#?}",
            refused.len()
        );
    }
}

impl Controller {
    /// GET /healthz: the HTTP status, None when nothing answered.
    pub fn healthz(&self) -> Option<u16> {
        self.get("/healthz").map(|(c, _)| c)
    }
}

/// Provision a fleet in one Python run (fast): a VPC, ONE ALB with a target group per ECS
/// service, `services` in `cluster` (desiredCount `initial_tasks`, settled so running ==
/// desired), and per zone its records. Input:
/// `{"cluster": C, "services": [..], "initial_tasks": N, "zones": [{"name": Z, "records": [
///   {"name", "type", "set_id"?, "weight"?, "alias": "alb" | DNS, "alias_zone"?, "values"?}]}]}`.
/// Returns `{"zones": {name: bare id}, "alb_dns", "alb_zone_id"}`.
pub fn provision_fleet(moto: &Moto, input: Value) -> Value {
    const SCRIPT: &str = r#"
r53, ec2, elb, ecs = client("route53"), client("ec2"), client("elbv2"), client("ecs")
vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
           for i, az in enumerate(("us-east-1a", "us-east-1b"), start=1)]
sg = ec2.create_security_group(GroupName="fleet", Description="fleet", VpcId=vpc)["GroupId"]
lb = elb.create_load_balancer(Name="fleet-alb", Subnets=subnets, SecurityGroups=[sg],
                              Scheme="internet-facing", Type="application")["LoadBalancers"][0]
tg = elb.create_target_group(Name="fleet-tg", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="ip")["TargetGroups"][0]
listener = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                               DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])["Listeners"][0]
# One target group per service behind the ALB (a path rule each): the AWS layer then reports each
# service's own tasks as its targets. moto never registers ECS tasks as targets; trafficshift
# raises an ECS weight only onto healthy targets, so without the layer a pool of 40 per group
# (moto reports registered IPs healthy) stands in for the tasks.
tgs = {}
for i, s in enumerate(input["services"]):
    tgs[s] = elb.create_target_group(Name=f"fleet-tg-{i}", Protocol="HTTP", Port=80, VpcId=vpc,
                                     TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    elb.create_rule(ListenerArn=listener["ListenerArn"], Priority=i + 1,
                    Conditions=[{"Field": "path-pattern", "Values": [f"/{s}/*"]}],
                    Actions=[{"Type": "forward", "TargetGroupArn": tgs[s]}])
    elb.register_targets(TargetGroupArn=tgs[s], Targets=[{"Id": f"10.0.9.{i}", "Port": 80} for i in range(1, 41)])
if input["services"]:
    ecs.create_cluster(clusterName=input["cluster"])
    td = ecs.register_task_definition(
        family="fleet", requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "image": "nginx", "portMappings": [{"containerPort": 80}]}],
    )["taskDefinition"]["taskDefinitionArn"]
for s in input["services"]:
    ecs.create_service(
        cluster=input["cluster"], serviceName=s, taskDefinition=td, desiredCount=input["initial_tasks"],
        launchType="FARGATE",
        loadBalancers=[{"targetGroupArn": tgs[s], "containerName": "app", "containerPort": 80}],
        networkConfiguration={"awsvpcConfiguration": {"subnets": subnets, "securityGroups": [sg],
                                                      "assignPublicIp": "DISABLED"}},
    )
    # moto leaves runningCount at 0 after CreateService; an update makes running == desired.
    ecs.update_service(cluster=input["cluster"], service=s, desiredCount=input["initial_tasks"])
zones = {}
for z in input["zones"]:
    zid = r53.create_hosted_zone(Name=z["name"], CallerReference=z["name"])["HostedZone"]["Id"].rsplit("/", 1)[-1]
    zones[z["name"]] = zid
    changes = []
    for r in z["records"]:
        rr = {"Name": r["name"], "Type": r["type"]}
        if "set_id" in r:
            rr["SetIdentifier"] = r["set_id"]
            rr["Weight"] = r["weight"]
        if r.get("alias") == "alb":
            rr["AliasTarget"] = {"DNSName": lb["DNSName"], "HostedZoneId": lb["CanonicalHostedZoneId"],
                                 "EvaluateTargetHealth": False}
        elif "alias" in r:
            rr["AliasTarget"] = {"DNSName": r["alias"], "HostedZoneId": r["alias_zone"], "EvaluateTargetHealth": False}
        else:
            rr["TTL"] = 300
            rr["ResourceRecords"] = [{"Value": v} for v in r["values"]]
        changes.append({"Action": "CREATE", "ResourceRecordSet": rr})
    if changes:
        r53.change_resource_record_sets(HostedZoneId=zid, ChangeBatch={"Changes": changes})
out = {"zones": zones, "alb_dns": lb["DNSName"], "alb_zone_id": lb["CanonicalHostedZoneId"]}
"#;
    moto.py(SCRIPT, input)
}

/// Every record of the given zones (bare ids), read with boto3: zone id -> records.
pub fn list_zones(moto: &Moto, zone_ids: &[String]) -> BTreeMap<String, Vec<Value>> {
    let v = moto.py(
        r#"
c = client("route53")
out = {}
for z in input["zones"]:
    out[z] = []
    for page in c.get_paginator("list_resource_record_sets").paginate(HostedZoneId=z):
        out[z].extend(page["ResourceRecordSets"])
"#,
        json!({ "zones": zone_ids }),
    );
    serde_json::from_value(v).expect("zone id -> records")
}

/// ECS desiredCount of each service of a cluster, read with boto3.
pub fn ecs_desired(moto: &Moto, cluster: &str, services: &[String]) -> BTreeMap<String, i64> {
    let v = moto.py(
        r#"
c = client("ecs")
out = {}
names = input["services"]
for i in range(0, len(names), 10):
    for s in c.describe_services(cluster=input["cluster"], services=names[i:i + 10])["services"]:
        out[s["serviceName"]] = s["desiredCount"]
"#,
        json!({ "cluster": cluster, "services": services }),
    );
    serde_json::from_value(v).expect("service -> desired")
}

/// A split of a provisioned fleet: backends `<name>-a`, `<name>-b`, ... (distinct per split, for
/// moto's DELETE-by-SetIdentifier quirk), at most one of them ECS.
#[derive(Debug, Clone)]
pub struct FleetSplit {
    pub name: String,
    /// Zone name with a trailing dot.
    pub zone: String,
    /// Record name with a trailing dot.
    pub record: String,
    pub backends: Vec<String>,
    /// (backend, service) of the ECS backend, if any; the others are fixed alias targets.
    pub ecs: Option<(String, String)>,
    pub start: BTreeMap<String, i64>,
    pub target: BTreeMap<String, i64>,
}

/// Tasks an ECS backend needs at 100% in fleet documents.
pub const FLEET_TASKS_AT_FULL: i64 = 8;

impl FleetSplit {
    /// `label.<zone>` with backends `<label>-a..` holding `start`, moving to `target` (same order).
    pub fn new(
        label: &str,
        zone: &str,
        start: &[i64],
        target: &[i64],
        ecs_service: Option<&str>,
    ) -> Self {
        assert_eq!(start.len(), target.len());
        let backends: Vec<String> = (0..start.len())
            .map(|i| format!("{label}-{}", (b'a' + i as u8) as char))
            .collect();
        FleetSplit {
            name: label.to_string(),
            zone: zone.to_string(),
            record: format!("{label}.{zone}"),
            ecs: ecs_service.map(|s| (backends[1].clone(), s.to_string())),
            start: backends
                .iter()
                .cloned()
                .zip(start.iter().copied())
                .collect(),
            target: backends
                .iter()
                .cloned()
                .zip(target.iter().copied())
                .collect(),
            backends,
        }
    }

    fn fixed_dns(backend: &str) -> String {
        format!("fixed-{backend}.example.")
    }

    /// The weighted records at `start`, for `provision_fleet`.
    pub fn records(&self) -> Vec<Value> {
        self.backends
            .iter()
            .map(|b| {
                let alias = if self.ecs.as_ref().is_some_and(|(e, _)| e == b) {
                    json!({"alias": "alb"})
                } else {
                    json!({"alias": FleetSplit::fixed_dns(b), "alias_zone": "Z35SXDOTRQ7X7K"})
                };
                let mut r =
                    json!({"name": self.record, "type": "A", "set_id": b, "weight": self.start[b]});
                r.as_object_mut()
                    .unwrap()
                    .extend(alias.as_object().unwrap().clone());
                r
            })
            .collect()
    }

    /// The document moving to `weights`; `rollout` is the YAML under `rollout:` (indented by 4),
    /// empty for none.
    pub fn document(
        &self,
        cluster: &str,
        weights: &BTreeMap<String, i64>,
        rollout: &str,
    ) -> String {
        let mut doc = format!(
            "apiVersion: trafficshift.dev/v1alpha1\nkind: TrafficSplit\nmetadata:\n  name: {}\nspec:\n  record:\n    hostedZone: {}\n    name: {}\n    type: A\n    adoptExisting: true\n  backends:\n",
            self.name, self.zone, self.record
        );
        for b in &self.backends {
            match &self.ecs {
                Some((e, svc)) if e == b => doc.push_str(&format!(
                    "    - name: {b}\n      ecs:\n        cluster: {cluster}\n        service: {svc}\n        tasksAtFullTraffic: {FLEET_TASKS_AT_FULL}\n        minTasks: 1\n"
                )),
                _ => doc.push_str(&format!(
                    "    - name: {b}\n      target:\n        alias:\n          dnsName: {}\n          hostedZoneId: Z35SXDOTRQ7X7K\n          evaluateTargetHealth: false\n",
                    FleetSplit::fixed_dns(b)
                )),
            }
        }
        if !rollout.is_empty() {
            doc.push_str(&format!("  rollout:\n{rollout}"));
        }
        // Weights last: a half-written file is then never a different valid document.
        doc.push_str("  weights:\n");
        for (b, w) in weights {
            doc.push_str(&format!("    {b}: {w}\n"));
        }
        doc
    }
}

/// Provision `splits` (with `extra` foreign records per zone name) and services in `cluster`.
pub fn provision_splits(
    moto: &Moto,
    cluster: &str,
    splits: &[FleetSplit],
    extra: &BTreeMap<String, Vec<Value>>,
) -> Value {
    let mut zones: BTreeMap<String, Vec<Value>> = extra.clone();
    for s in splits {
        zones.entry(s.zone.clone()).or_default().extend(s.records());
    }
    let services: Vec<&String> = splits
        .iter()
        .filter_map(|s| s.ecs.as_ref().map(|e| &e.1))
        .collect();
    let zones: Vec<Value> = zones
        .into_iter()
        .map(|(name, records)| json!({"name": name, "records": records}))
        .collect();
    provision_fleet(
        moto,
        json!({"cluster": cluster, "services": services, "initial_tasks": 1, "zones": zones}),
    )
}

/// A few records in `zone` that trafficshift must never touch.
pub fn foreign_records(zone: &str) -> Vec<Value> {
    vec![
        json!({"name": format!("www.{zone}"), "type": "CNAME", "values": [format!("static.{zone}")]}),
        json!({"name": format!("mail.{zone}"), "type": "A", "values": ["192.0.2.25"]}),
        json!({"name": format!("_foreign.{zone}"), "type": "TXT", "values": ["\"v=spf1 -all\""]}),
        json!({"name": format!("other.{zone}"), "type": "A", "set_id": "other-x", "weight": 1,
               "alias": "other-x.example.", "alias_zone": "Z35SXDOTRQ7X7K"}),
        json!({"name": format!("other.{zone}"), "type": "A", "set_id": "other-y", "weight": 3,
               "alias": "other-y.example.", "alias_zone": "Z35SXDOTRQ7X7K"}),
    ]
}
