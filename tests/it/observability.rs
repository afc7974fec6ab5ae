//! Observability of the controller binary (issue #4): `/metrics` values through a rollout, drift
//! and a rollback; `promtool check metrics` on a live scrape; a real Prometheus scraping the
//! controller; the dashboard's and alert rules' metric names against a live scrape;
//! `trafficshift status` in every output format; `/healthz`, `/readyz` and SIGTERM.
//!
//! AWS state is read back with boto3 (the harness), never with trafficshift's own code.

use crate::support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::controller::{bin, free_port, set_alarm, wait_for, weights, Controller, Scenario};
use support::{python, repo, unique, Moto};

const DEADLINE: Duration = Duration::from_secs(90);
const STATES: [&str; 7] = [
    "Progressing",
    "Complete",
    "Paused",
    "Degraded",
    "RolledBack",
    "Conflict",
    "Invalid",
];

// ------------------------------------------------------------------------------------------------
// Prometheus text format, parsed independently of the `prometheus` crate.

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One `/metrics` scrape.
#[derive(Debug, Clone)]
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|e| panic!("bad sample value in {line:?}: {e}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// The samples of `name` whose labels include every pair of `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one series of `name` matching `labels`; None when there is none, a panic
    /// when the selector is ambiguous.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} series: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// `get`, panicking with the scrape when the series is missing.
    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "no series {name}{labels:?} in /metrics:\n{}",
                self.family_text(name)
            )
        })
    }

    /// The lines of one family, for failure messages.
    fn family_text(&self, name: &str) -> String {
        let lines: Vec<&str> = self
            .text
            .lines()
            .filter(|l| l.contains(name))
            .take(40)
            .collect();
        if lines.is_empty() {
            format!("(no line mentions {name})")
        } else {
            lines.join("\n")
        }
    }

    /// The split's state: the one STATES entry whose gauge is 1. Panics unless exactly one is 1
    /// and the others are 0.
    fn state(&self, split: &str) -> Option<&'static str> {
        let mut one = Vec::new();
        let mut seen = 0;
        for s in STATES {
            let Some(v) = self.get(
                "trafficshift_split_state",
                &[("split", split), ("state", s)],
            ) else {
                continue;
            };
            seen += 1;
            if v == 1.0 {
                one.push(s);
            } else {
                assert_eq!(
                    v, 0.0,
                    "trafficshift_split_state{{split={split},state={s}}}"
                );
            }
        }
        if seen == 0 {
            return None;
        }
        assert_eq!(
            seen,
            STATES.len(),
            "every state of split {split} has a series once one has:\n{}",
            self.family_text("trafficshift_split_state")
        );
        assert_eq!(
            one.len(),
            1,
            "exactly one state of split {split} is 1, found {one:?}"
        );
        Some(one[0])
    }
}

/// `a="x",b="y"` with `\"`, `\\` and `\n` escapes.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {key} without a quoted value"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => {}
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
}

// ------------------------------------------------------------------------------------------------
// Small helpers.

/// GET `<endpoint><path>` with curl: (status, body); None when nothing answers.
fn get(endpoint: &str, path: &str) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .arg(format!("{endpoint}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    match code.trim().parse() {
        Ok(0) | Err(_) => None,
        Ok(c) => Some((c, body.to_string())),
    }
}

fn scrape(c: &Controller) -> Option<Scrape> {
    c.metrics().map(|t| Scrape::parse(&t))
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Write `text` as `<dir>/<name>.yaml`.
fn write_doc(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.yaml")), text).expect("write document");
}

/// Set the Route53 weights of the scenario's weighted records by hand, as an operator in the
/// console would (boto3 UPSERT of the full record sets).
fn hand_edit_weights(moto: &Moto, sc: &Scenario, new: &[(&str, i64)]) {
    let mut changes = Vec::new();
    for r in sc.records(moto) {
        if r["Name"] != sc.record.as_str() {
            continue;
        }
        let Some(id) = r["SetIdentifier"].as_str() else {
            continue;
        };
        if let Some((_, w)) = new.iter().find(|(n, _)| *n == id) {
            let mut r = r.clone();
            r["Weight"] = json!(w);
            changes.push(json!({"Action": "UPSERT", "ResourceRecordSet": r}));
        }
    }
    assert_eq!(
        changes.len(),
        new.len(),
        "every record to edit exists: {new:?}"
    );
    moto.boto3_json(
        "route53",
        "change_resource_record_sets",
        json!({"HostedZoneId": sc.zone_id, "ChangeBatch": {"Changes": changes}}),
    );
}

/// `trafficshift status <args> --endpoint <endpoint>`: (exit code, stdout, stderr).
fn status_cli(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("status")
        .args(args)
        .args(["--endpoint", endpoint])
        .env_remove("TRAFFICSHIFT_ENDPOINT")
        .output()
        .expect("run trafficshift status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `promtool check metrics` on a scrape. Fails (does not skip) when promtool is missing.
fn promtool_check_metrics(text: &str) {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found at /usr/bin/promtool: run scripts/bootstrap (it installs \
                 Debian's prometheus package)"
            )
        });
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------------------------------------
// 1. Metric values through a rollout, drift correction and drift in dry-run.

const ROLLOUT_WITH_ECS_GATE: &str = "  rollout:
    steps: [50, 100]
    interval: 3s
  gates:
    - name: fargate-stable
      ecsStable:
        backend: fargate
";

/// What one scrape says about split `api`.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    state: &'static str,
    step: f64,
    progress: f64,
    step_fargate: f64,
    step_lambda: f64,
    observed_fargate: Option<f64>,
    observed_lambda: Option<f64>,
}

fn dedup<T: PartialEq + Clone>(v: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in v {
        if out.last() != Some(&x) {
            out.push(x);
        }
    }
    out
}

#[test]
fn metrics_follow_a_rollout_step_by_step_then_drift() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let dir = tempfile::tempdir().unwrap();
    write_doc(
        dir.path(),
        "api",
        &sc.document("api", 0, 100, ROLLOUT_WITH_ECS_GATE),
    );
    let mut c = Controller::start(moto.aws(), &[dir.path()], "obs", &["--resync", "2s"]);

    // Sample from the start: the first published values (step 0) only last about a second.
    let started = Instant::now();
    let mut points: Vec<Point> = Vec::new();
    let mut scrapes: Vec<Scrape> = Vec::new();
    let last = loop {
        assert!(
            started.elapsed() < DEADLINE,
            "split api not Complete with fargate observed at 1 within {DEADLINE:?}; points so far: \
             {points:#?}\n{}",
            c.log_tail()
        );
        if let Some(code) = c.exit_code() {
            panic!("controller exited with {code:?}:\n{}", c.log_tail());
        }
        let Some(s) = scrape(&c) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Some(state) = s.state("api") else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let api = |b: &'static str| [("split", "api"), ("backend", b)];
        assert_eq!(
            s.must("trafficshift_target_weight_ratio", &api("fargate")),
            1.0
        );
        assert_eq!(
            s.must("trafficshift_target_weight_ratio", &api("lambda")),
            0.0
        );
        assert_eq!(
            s.must("trafficshift_rollout_steps", &[("split", "api")]),
            2.0
        );
        let p = Point {
            state,
            step: s.must("trafficshift_rollout_step", &[("split", "api")]),
            progress: s.must("trafficshift_rollout_progress_ratio", &[("split", "api")]),
            step_fargate: s.must("trafficshift_step_weight_ratio", &api("fargate")),
            step_lambda: s.must("trafficshift_step_weight_ratio", &api("lambda")),
            observed_fargate: s.get("trafficshift_observed_weight_ratio", &api("fargate")),
            observed_lambda: s.get("trafficshift_observed_weight_ratio", &api("lambda")),
        };
        let done = p.state == "Complete" && p.observed_fargate == Some(1.0);
        if points.last() != Some(&p) {
            points.push(p);
        }
        scrapes.push(s.clone());
        if done {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    // The rollout as the metrics told it.
    let states = dedup(points.iter().map(|p| p.state));
    assert_eq!(states, ["Progressing", "Complete"], "{points:#?}");
    let steps = dedup(points.iter().map(|p| p.step));
    assert_eq!(steps, [0.0, 1.0, 2.0], "step 0 -> 1 -> 2: {points:#?}");
    let progress = dedup(points.iter().map(|p| p.progress));
    assert_eq!(progress, [0.0, 0.5, 1.0], "progress: {points:#?}");
    let step_w = dedup(points.iter().map(|p| p.step_fargate));
    assert_eq!(
        step_w,
        [0.0, 0.5, 1.0],
        "step weight of fargate: {points:#?}"
    );
    let observed = dedup(points.iter().filter_map(|p| p.observed_fargate));
    assert_eq!(
        observed,
        [0.0, 0.5, 1.0],
        "observed weight of fargate: {points:#?}"
    );
    for p in &points {
        assert!(
            (p.step_fargate + p.step_lambda - 1.0).abs() < 1e-9,
            "step weights sum to 1: {p:?}"
        );
        // Each step is consistent across the families of one scrape.
        let expect = match p.step as u32 {
            0 => (0.0, 0.0),
            1 => (0.5, 0.5),
            _ => (1.0, 1.0),
        };
        assert_eq!((p.progress, p.step_fargate), expect, "{p:?}");
        assert_eq!(
            p.state == "Complete",
            p.step == 2.0,
            "Complete exactly at the last step: {p:?}"
        );
        if let (Some(f), Some(l)) = (p.observed_fargate, p.observed_lambda) {
            assert!((f + l - 1.0).abs() < 1e-9, "observed sums to 1: {p:?}");
        }
    }
    assert!(
        points
            .iter()
            .any(|p| p.step == 1.0 && p.state == "Progressing" && p.observed_fargate == Some(0.5)),
        "a scrape showed step 1 applied while Progressing: {points:#?}"
    );

    // Gates, ECS, counters and process metrics at the end.
    let g = [("split", "api"), ("gate", "fargate-stable")];
    assert_eq!(last.must("trafficshift_gate_passing", &g), 1.0);
    assert_eq!(last.must("trafficshift_gate_consecutive_failures", &g), 0.0);
    let fg = [("split", "api"), ("backend", "fargate")];
    assert_eq!(last.must("trafficshift_ecs_desired_tasks", &fg), 20.0);
    assert_eq!(last.must("trafficshift_ecs_running_tasks", &fg), 20.0);
    assert_eq!(
        sc.ecs_counts(&moto),
        (20, 20),
        "boto3 agrees with the ECS gauges"
    );
    assert_eq!(
        sc.weights(&moto),
        weights(&[("lambda", 0), ("fargate", 100)]),
        "boto3 agrees with the observed weights"
    );
    let ok = [("split", "api"), ("result", "success")];
    let first_ok = scrapes[0].must("trafficshift_reconciles_total", &ok);
    let last_ok = last.must("trafficshift_reconciles_total", &ok);
    assert!(
        first_ok >= 1.0 && last_ok >= first_ok + 2.0,
        "reconciles_total{{result=success}} increases over the rollout: {first_ok} -> {last_ok}"
    );
    let counts: Vec<f64> = scrapes
        .iter()
        .map(|s| s.must("trafficshift_reconciles_total", &ok))
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "a counter never goes down: {counts:?}"
    );
    assert!(
        last.must(
            "trafficshift_reconciles_total",
            &[("split", "api"), ("result", "error")]
        ) == 0.0,
        "no failed reconcile on the happy path"
    );
    let ts = last.must(
        "trafficshift_last_reconcile_success_timestamp_seconds",
        &[("split", "api")],
    );
    assert!(
        (now_secs() - ts).abs() < 30.0,
        "last success timestamp {ts} is recent (now {})",
        now_secs()
    );
    let crrs = [
        ("service", "route53"),
        ("operation", "ChangeResourceRecordSets"),
        ("outcome", "success"),
    ];
    assert!(
        last.must("trafficshift_aws_requests_total", &crrs) >= 2.0,
        "one Route53 batch per step at least"
    );
    assert!(
        last.must(
            "trafficshift_aws_requests_total",
            &[
                ("service", "ecs"),
                ("operation", "UpdateService"),
                ("outcome", "success")
            ]
        ) >= 2.0,
        "ECS scaled up before each step"
    );
    assert!(
        last.must(
            "trafficshift_route53_changes_total",
            &[("split", "api"), ("action", "upsert")]
        ) >= 2.0
    );
    assert_eq!(last.must("trafficshift_config_valid", &[]), 1.0);
    assert_eq!(
        last.must(
            "trafficshift_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(last.must("trafficshift_drift_ratio", &[("split", "api")]) == 0.0);
    assert!(last.must("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(
        last.matching(
            "trafficshift_reconcile_duration_seconds_count",
            &[("split", "api")]
        )
        .count()
            == 1,
        "reconcile duration histogram per split"
    );
    assert!(last
        .text
        .contains("# TYPE trafficshift_reconcile_duration_seconds histogram"));
    promtool_check_metrics(&last.text);

    // Drift: an operator moves 70% of the traffic back to lambda in the console.
    let corrections =
        |s: &Scrape| s.must("trafficshift_drift_corrections_total", &[("split", "api")]);
    assert_eq!(corrections(&last), 0.0, "no drift corrected yet");
    hand_edit_weights(&moto, &sc, &[("lambda", 70), ("fargate", 30)]);
    let mut saw_drift = false;
    wait_for(
        "the drift to be corrected (drift_corrections_total 1)",
        DEADLINE,
        || {
            let s = scrape(&c)?;
            saw_drift |= s.get("trafficshift_drift_ratio", &[("split", "api")])? > 0.0;
            (corrections(&s) >= 1.0).then_some(())
        },
    );
    let s = wait_for(
        "drift_ratio 0 and Route53 back at fargate=100",
        DEADLINE,
        || {
            let s = scrape(&c)?;
            (s.get("trafficshift_drift_ratio", &[("split", "api")])? == 0.0
                && sc.weights(&moto) == weights(&[("lambda", 0), ("fargate", 100)]))
            .then_some(s)
        },
    );
    assert_eq!(corrections(&s), 1.0, "one hand edit, one correction");
    assert_eq!(
        s.must("trafficshift_observed_weight_ratio", &fg),
        1.0,
        "observed back at 1"
    );
    assert_eq!(s.state("api"), Some("Complete"));
    eprintln!("drift_ratio > 0 seen before the correction: {saw_drift}");

    // SIGTERM drains and exits 0.
    assert_eq!(
        c.sigterm(Duration::from_secs(20)),
        Some(0),
        "SIGTERM exits 0"
    );

    // In dry-run nothing corrects the drift, so drift_ratio shows it: observed 30/70 against the
    // wanted 100/0 is half of |30-100| + |70-0| = 70%.
    let mut dry = Controller::start(
        &moto.endpoint,
        &[dir.path()],
        "obs",
        &["--resync", "2s", "--dry-run"],
    );
    dry.wait_ready(DEADLINE);
    hand_edit_weights(&moto, &sc, &[("lambda", 70), ("fargate", 30)]);
    let s = wait_for("drift_ratio 0.7 in dry-run", DEADLINE, || {
        let s = scrape(&dry)?;
        let d = s.get("trafficshift_drift_ratio", &[("split", "api")])?;
        ((d - 0.7).abs() < 1e-9).then_some(s)
    });
    assert_eq!(s.must("trafficshift_observed_weight_ratio", &fg), 0.3);
    assert_eq!(
        s.must(
            "trafficshift_observed_weight_ratio",
            &[("split", "api"), ("backend", "lambda")]
        ),
        0.7
    );
    assert_eq!(
        s.must("trafficshift_step_weight_ratio", &fg),
        1.0,
        "the step still wants fargate at 1"
    );
    assert_eq!(corrections(&s), 0.0, "dry-run corrects nothing");
    assert_eq!(
        sc.weights(&moto),
        weights(&[("lambda", 70), ("fargate", 30)]),
        "dry-run wrote nothing"
    );
    let split = dry.split("api").expect("status of api");
    assert!(
        (split["drift"].as_f64().unwrap() - 0.7).abs() < 1e-9,
        "/status drift matches the metric: {split}"
    );
}

// ------------------------------------------------------------------------------------------------
// 2 and 4. Every family has series (rollback, conflict, reconcile error, drift correction):
// promtool accepts the scrape, and the dashboard's and rules' metric names all exist in it.
// Also the rollback metrics and `status --exit-code` for RolledBack and Conflict.

fn alarm_rollout(alarm: &str) -> String {
    format!(
        "  rollout:
    steps: [50, 100]
    interval: 60s
    failureThreshold: 1
    gateInterval: 1s
  gates:
    - name: no-errors
      cloudwatchAlarm:
        alarmNames: [{alarm}]
"
    )
}

#[test]
fn rollback_conflict_and_errors_show_in_metrics_scripts_and_exit_codes() {
    let moto = Moto::start();
    // Every split in its own zone (moto's DELETE-by-SetIdentifier quirk).
    let api = Scenario::provision(&moto, 20);
    let rb = Scenario::provision(&moto, 2);
    let cf = Scenario::provision(&moto, 2);
    let alarm = unique("alarm");
    set_alarm(&moto, &alarm, "OK");
    // Another controller owns cf's record.
    moto.boto3_json(
        "route53",
        "change_resource_record_sets",
        json!({"HostedZoneId": cf.zone_id, "ChangeBatch": {"Changes": [{
            "Action": "CREATE",
            "ResourceRecordSet": {
                "Name": format!("_trafficshift.{}", cf.record),
                "Type": "TXT",
                "TTL": 60,
                "ResourceRecords": [{"Value": "\"heritage=trafficshift,owner=someone-else,split=cf,gen=0,phase=complete,step=1,since=0,start=lambda:100;fargate:0,cur=lambda:100;fargate:0\""}],
            },
        }]}}),
    );
    let cf_before = cf.records(&moto);

    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), "api", &api.document("api", 0, 100, ""));
    write_doc(
        dir.path(),
        "rb",
        &rb.document("rb", 0, 100, &alarm_rollout(&alarm)),
    );
    write_doc(dir.path(), "cf", &cf.document("cf", 0, 100, ""));
    // A split whose hosted zone does not exist: the reconcile error path.
    let missing = format!("{}.example", unique("missing"));
    let broken = api
        .document("broken", 0, 100, "")
        .replace(&api.zone, &missing)
        .replace(&api.cluster, "no-such-cluster");
    write_doc(dir.path(), "broken", &broken);

    let mut c = Controller::start(moto.aws(), &[dir.path()], "obs", &["--resync", "2s"]);
    c.wait_ready(DEADLINE);

    // rb takes its first step; then its alarm fires and it rolls back.
    wait_for("rb at step 1 with fargate observed 0.5", DEADLINE, || {
        let s = scrape(&c)?;
        let f = s.get(
            "trafficshift_observed_weight_ratio",
            &[("split", "rb"), ("backend", "fargate")],
        )?;
        (s.get("trafficshift_rollout_step", &[("split", "rb")])? == 1.0 && f == 0.5).then_some(())
    });
    let s = scrape(&c).expect("metrics");
    assert_eq!(s.state("rb"), Some("Progressing"));
    assert_eq!(
        s.must("trafficshift_rollbacks_total", &[("split", "rb")]),
        0.0
    );
    let gate = [("split", "rb"), ("gate", "no-errors")];
    assert_eq!(s.must("trafficshift_gate_passing", &gate), 1.0);
    assert_eq!(s.must("trafficshift_gate_failures_total", &gate), 0.0);
    set_alarm(&moto, &alarm, "ALARM");
    let s = wait_for("rb RolledBack", DEADLINE, || {
        let s = scrape(&c)?;
        (s.state("rb")? == "RolledBack").then_some(s)
    });
    assert_eq!(
        s.must("trafficshift_rollbacks_total", &[("split", "rb")]),
        1.0
    );
    assert_eq!(s.must("trafficshift_gate_passing", &gate), 0.0);
    assert!(s.must("trafficshift_gate_consecutive_failures", &gate) >= 1.0);
    // failureThreshold 1: the one failing check that tripped the rollback.
    assert_eq!(s.must("trafficshift_gate_failures_total", &gate), 1.0);
    assert_eq!(
        s.must(
            "trafficshift_observed_weight_ratio",
            &[("split", "rb"), ("backend", "fargate")]
        ),
        0.0,
        "traffic back at the start split"
    );
    assert_eq!(
        rb.weights(&moto),
        weights(&[("lambda", 100), ("fargate", 0)]),
        "boto3: rolled back"
    );
    // RolledBack is a resting state: later reconciles do not count the rollback again.
    let rb_ok = [("split", "rb"), ("result", "success")];
    let n = s.must("trafficshift_reconciles_total", &rb_ok);
    let later = wait_for("two more reconciles of rb", DEADLINE, || {
        let s = scrape(&c)?;
        (s.get("trafficshift_reconciles_total", &rb_ok)? >= n + 2.0).then_some(s)
    });
    assert_eq!(
        later.must("trafficshift_rollbacks_total", &[("split", "rb")]),
        1.0
    );
    assert_eq!(later.state("rb"), Some("RolledBack"));

    // cf: Conflict, nothing written.
    let s = wait_for("cf in Conflict", DEADLINE, || {
        let s = scrape(&c)?;
        (s.state("cf")? == "Conflict").then_some(s)
    });
    assert!(
        s.must(
            "trafficshift_reconcile_errors_total",
            &[("split", "cf"), ("kind", "conflict")]
        ) >= 1.0
    );
    assert_eq!(cf.records(&moto), cf_before, "Conflict writes nothing");

    // broken: reconcile errors are counted.
    let s = wait_for("reconcile errors of split broken", DEADLINE, || {
        let s = scrape(&c)?;
        (s.matching(
            "trafficshift_reconcile_errors_total",
            &[("split", "broken")],
        )
        .map(|x| x.value)
        .sum::<f64>()
            >= 1.0)
            .then_some(s)
    });
    assert!(
        s.must(
            "trafficshift_reconciles_total",
            &[("split", "broken"), ("result", "error")]
        ) >= 1.0
    );
    assert!(
        s.must(
            "trafficshift_reconciles_total",
            &[("split", "broken"), ("result", "success")]
        ) == 0.0
    );

    // api: Complete, then a drift correction for trafficshift_drift_corrections_total.
    wait_for("api Complete at fargate=100", DEADLINE, || {
        let s = scrape(&c)?;
        (s.state("api")? == "Complete"
            && api.weights(&moto) == weights(&[("lambda", 0), ("fargate", 100)]))
        .then_some(())
    });
    hand_edit_weights(&moto, &api, &[("lambda", 50), ("fargate", 50)]);
    let s = wait_for("a drift correction of api", DEADLINE, || {
        let s = scrape(&c)?;
        (s.get("trafficshift_drift_corrections_total", &[("split", "api")])? >= 1.0).then_some(s)
    });

    // Test 2: promtool on this scrape, which has every kind of family with series.
    promtool_check_metrics(&s.text);

    // Test 4: the dashboard's and the rules' metric names, against the live endpoint.
    let out = Command::new(repo().join("scripts/check-dashboard-metrics"))
        .arg(format!("{}/metrics", c.endpoint))
        .output()
        .expect("run scripts/check-dashboard-metrics");
    assert!(
        out.status.success(),
        "check-dashboard-metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("check-dashboard-metrics: OK") && !stdout.contains("MISSING"),
        "{stdout}"
    );
    // The script really looked at names (guards against it silently checking nothing).
    for name in [
        "trafficshift_rollbacks_total",
        "trafficshift_reconcile_errors_total",
        "trafficshift_drift_corrections_total",
        "trafficshift_reconcile_duration_seconds_bucket",
        "trafficshift_build_info",
    ] {
        assert!(
            stdout.contains(&format!("ok      {name}")),
            "{name} checked:\n{stdout}"
        );
    }

    // `status --exit-code`: 1 with a RolledBack or Conflict split, 0 for a Complete one.
    let (code, out, err) = status_cli(&c.endpoint, &["--exit-code"]);
    assert_eq!(code, 1, "RolledBack and Conflict splits fail:\n{out}{err}");
    for (name, state) in [
        ("rb", "RolledBack"),
        ("cf", "Conflict"),
        ("api", "Complete"),
    ] {
        assert!(
            out.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.first() == Some(&name) && cells.get(3) == Some(&state)
            }),
            "row {name} ... {state}:\n{out}"
        );
    }
    let (code, out, err) = status_cli(&c.endpoint, &["api", "--exit-code"]);
    assert_eq!(code, 0, "api is Complete:\n{out}{err}");
    let (code, out, err) = status_cli(&c.endpoint, &["rb", "--exit-code"]);
    assert_eq!(code, 1, "rb is RolledBack:\n{out}{err}");
    let (code, out, err) = status_cli(&c.endpoint, &["cf", "--exit-code"]);
    assert_eq!(code, 1, "cf is in Conflict:\n{out}{err}");
    let (code, out, err) = status_cli(&c.endpoint, &[]);
    assert_eq!(
        code, 0,
        "without --exit-code the state does not matter:\n{out}{err}"
    );
}

// ------------------------------------------------------------------------------------------------
// 3. A real Prometheus server scrapes the controller.

/// A Prometheus server (Debian's package) scraping one target every second; killed on drop.
struct Prometheus {
    child: Child,
    address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn binary() -> PathBuf {
        let on_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("prometheus"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        std::iter::once(PathBuf::from("/usr/bin/prometheus"))
            .chain(on_path)
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "no prometheus binary in /usr/bin or PATH: run scripts/bootstrap (Debian's \
                     prometheus package)"
                )
            })
    }

    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: trafficshift\n    static_configs:\n      \
             - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let logf = std::fs::File::create(&log).expect("create log");
        let binary = Prometheus::binary();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("clone log"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Prometheus {
            child,
            address: format!("http://{listen}"),
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An instant query through the HTTP API; the `data.result` array, None on any failure.
    fn query(&mut self, promql: &str) -> Option<Vec<Value>> {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", self.log_tail());
        }
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-G", "--data-urlencode"])
            .arg(format!("query={promql}"))
            .arg(format!("{}/api/v1/query", self.address))
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "success")
            .then(|| v["data"]["result"].as_array().cloned())
            .flatten()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- prometheus log tail ---\n{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `{backend: value}` of a vector result.
fn by_backend(result: &[Value]) -> BTreeMap<String, f64> {
    result
        .iter()
        .filter_map(|r| {
            let b = r["metric"]["backend"].as_str()?.to_string();
            let v = r["value"][1].as_str()?.parse().ok()?;
            Some((b, v))
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_controller() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 20);
    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), "api", &sc.document("api", 0, 100, ""));
    let mut c = Controller::start(moto.aws(), &[dir.path()], "obs", &["--resync", "2s"]);
    let mut prom = Prometheus::start(&format!("127.0.0.1:{}", c.port));
    c.wait_ready(DEADLINE);
    wait_for("Route53 at lambda=0 fargate=100", DEADLINE, || {
        (sc.weights(&moto) == weights(&[("lambda", 0), ("fargate", 100)])).then_some(())
    });

    let up = wait_for(
        "Prometheus to scrape the controller (up == 1)",
        DEADLINE,
        || {
            let r = prom.query(r#"up{job="trafficshift"}"#)?;
            (r.len() == 1 && r[0]["value"][1] == "1").then_some(r)
        },
    );
    assert_eq!(up[0]["metric"]["instance"], format!("127.0.0.1:{}", c.port));
    let got = wait_for(
        "observed weights fargate=1 lambda=0 through Prometheus",
        DEADLINE,
        || {
            let r = prom.query(r#"trafficshift_observed_weight_ratio{split="api"}"#)?;
            let m = by_backend(&r);
            (m.get("fargate") == Some(&1.0) && m.get("lambda") == Some(&0.0)).then_some(m)
        },
    );
    assert_eq!(got.len(), 2, "exactly the two backends: {got:?}");
    // The same query the dashboard's state panel uses.
    let r = prom
        .query(r#"max by (state) (trafficshift_split_state{split="api"} == 1)"#)
        .expect("state query");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["metric"]["state"], "Complete");
    // Prometheus accepted the exposition without complaint about the target.
    let targets = Command::new("curl")
        .args(["-s", "-m", "5"])
        .arg(format!("{}/api/v1/targets", prom.address))
        .output()
        .expect("curl targets");
    let t: Value = serde_json::from_slice(&targets.stdout).expect("targets JSON");
    let active = &t["data"]["activeTargets"][0];
    assert_eq!(active["health"], "up", "{active}");
    assert_eq!(active["lastError"], "", "{active}");
}

// ------------------------------------------------------------------------------------------------
// 5. `trafficshift status` in every format.

/// `/status` without the fields that change on every request or reload.
fn stable_status(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("generatedAt");
    }
    if let Some(o) = v["config"].as_object_mut() {
        o.remove("lastLoad");
    }
    v
}

#[test]
fn status_cli_table_describe_json_yaml_and_exit_code() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 20);
    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), "api", &sc.document("api", 0, 100, ""));
    // A long resync: nothing moves between the CLI's fetch and the test's own.
    let mut c = Controller::start(moto.aws(), &[dir.path()], "obs", &["--resync", "60s"]);
    c.wait_ready(DEADLINE);
    wait_for("api Complete in /status", DEADLINE, || {
        let s = c.split("api")?;
        (s["state"] == "Complete").then_some(())
    });

    // Table.
    let (code, out, err) = status_cli(&c.endpoint, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "SPLIT", "RECORD", "STATE", "STEP", "WEIGHTS", "TRAFFIC", "TARGET", "GATES", "DRIFT",
            "NEXT", "AGE"
        ],
        "{out}"
    );
    let row: Vec<&str> = lines
        .find(|l| l.starts_with("api "))
        .unwrap_or_else(|| panic!("a row for api:\n{out}"))
        .split_whitespace()
        .collect();
    // RECORD is "<fqdn> A" (two words); WEIGHTS, TRAFFIC and TARGET two words each.
    assert_eq!(row[1], sc.record, "{out}");
    assert_eq!(row[2], "A", "{out}");
    assert_eq!(row[3], "Complete", "{out}");
    assert_eq!(row[4], "1/1", "{out}");
    assert_eq!(&row[5..7], ["lambda=0", "fargate=100"], "observed: {out}");
    // No request counts in CloudWatch here: the share is unknown, never 0.
    assert_eq!(&row[7..9], ["lambda=?", "fargate=?"], "traffic: {out}");
    assert_eq!(&row[9..11], ["lambda=0", "fargate=100"], "target: {out}");
    assert_eq!(row[11], "-", "no gates: {out}");
    assert_eq!(row[12], "0%", "no drift: {out}");

    // Describe.
    let (code, out, err) = status_cli(&c.endpoint, &["api"]);
    assert_eq!(code, 0, "{out}{err}");
    let api = c.split("api").expect("status of api");
    assert!(
        out.contains(&format!("Record:          {} A", sc.record)),
        "{out}"
    );
    assert!(out.contains("State:           Complete"), "{out}");
    let events = api["events"].as_array().expect("events");
    assert!(
        !events.is_empty(),
        "adopting and shifting made events: {api}"
    );
    let ev_at = out
        .find("\nEvents:\n")
        .unwrap_or_else(|| panic!("an Events section:\n{out}"));
    let ev_text = &out[ev_at..];
    assert!(
        ev_text.contains("TYPE") && ev_text.contains("REASON") && ev_text.contains("MESSAGE"),
        "{out}"
    );
    for e in events {
        assert!(
            ev_text.contains(e["reason"].as_str().unwrap()),
            "event {e} shown:\n{out}"
        );
    }
    let (code, _, err) = status_cli(&c.endpoint, &["nope"]);
    assert_eq!(code, 1, "an unknown split is an error");
    assert!(err.contains("not found"), "{err}");

    // JSON matches /status.
    let (code, out, err) = status_cli(&c.endpoint, &["-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let cli: Value = serde_json::from_str(&out).expect("-o json parses");
    let direct = c.status().expect("/status");
    assert_eq!(stable_status(cli.clone()), stable_status(direct.clone()));
    let (_, out, _) = status_cli(&c.endpoint, &["api", "-o", "json"]);
    let one: Value = serde_json::from_str(&out).expect("api -o json parses");
    assert_eq!(one, direct["splits"][0]);

    // YAML parses and says the same.
    let (code, out, err) = status_cli(&c.endpoint, &["-o", "yaml"]);
    assert_eq!(code, 0, "{out}{err}");
    let yaml: trafficshift::status::ControllerStatus =
        serde_saphyr::from_str(&out).unwrap_or_else(|e| panic!("-o yaml parses: {e}\n{out}"));
    let from_json: trafficshift::status::ControllerStatus =
        serde_json::from_value(cli).expect("JSON is a ControllerStatus");
    let strip = |mut s: trafficshift::status::ControllerStatus| {
        s.generated_at.clear();
        s.config.last_load = None;
        s
    };
    assert_eq!(strip(yaml), strip(from_json));
    let py = Command::new(python())
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin.take().unwrap().write_all(out.as_bytes())?;
            ch.wait_with_output()
        })
        .expect("run python yaml");
    assert!(
        py.status.success(),
        "PyYAML parses -o yaml: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let py: Value = serde_json::from_slice(&py.stdout).expect("python printed JSON");
    assert_eq!(py["splits"][0]["state"], "Complete");

    // --exit-code: 0 when every split is fine.
    let (code, out, err) = status_cli(&c.endpoint, &["--exit-code"]);
    assert_eq!(code, 0, "Complete is not a failure:\n{out}{err}");
    let (code, _, _) = status_cli(&c.endpoint, &["-o", "json", "--exit-code"]);
    assert_eq!(code, 0);
}

// ------------------------------------------------------------------------------------------------
// 6. /healthz, /readyz and SIGTERM.

/// A TCP forwarder to `upstream` that holds every connection until released: the controller's
/// first AWS call (and so its first reconcile) waits for the test.
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Gate {
    fn start(upstream: u16) -> Gate {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, s) = (open.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((down, _)) => {
                        let (o, s) = (o.clone(), s.clone());
                        std::thread::spawn(move || forward(down, upstream, &o, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Gate { port, open, stop }
    }

    fn release(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn forward(down: TcpStream, upstream: u16, open: &AtomicBool, stop: &AtomicBool) {
    while !open.load(Ordering::SeqCst) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = down.set_nonblocking(false);
    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut d2), Ok(mut u2)) = (down.try_clone(), up.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = pipe(&mut d2, &mut u2);
    });
    let (mut up, mut down) = (up, down);
    let _ = pipe(&mut up, &mut down);
}

fn pipe(from: &mut TcpStream, to: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 16384];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            let _ = to.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

#[test]
fn readyz_waits_for_the_first_reconcile_and_sigterm_exits_0() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 20);
    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), "api", &sc.document("api", 0, 100, ""));
    let moto_port: u16 = moto
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("moto port");
    let gate = Gate::start(moto_port);
    let mut c = Controller::start(
        &format!("http://127.0.0.1:{}", gate.port),
        &[dir.path()],
        "obs",
        &["--resync", "2s"],
    );

    // The server is up (healthz) while the first reconcile is stuck on AWS: not ready.
    wait_for("/healthz 200", DEADLINE, || {
        (get(&c.endpoint, "/healthz")?.0 == 200).then_some(())
    });
    let held = Instant::now();
    while held.elapsed() < Duration::from_millis(1500) {
        let (code, body) = get(&c.endpoint, "/readyz").expect("/readyz answers");
        assert_eq!(code, 503, "not ready before the first reconcile: {body}");
        assert_eq!(get(&c.endpoint, "/healthz").map(|x| x.0), Some(200));
        let s = scrape(&c).expect("/metrics answers before the first reconcile");
        assert_eq!(
            s.state("api"),
            None,
            "no split state published before the first reconcile"
        );
        assert!(s
            .get(
                "trafficshift_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            )
            .is_some());
        std::thread::sleep(Duration::from_millis(100));
    }
    gate.release();
    c.wait_ready(DEADLINE);
    let s = scrape(&c).expect("metrics");
    assert!(
        s.must(
            "trafficshift_reconciles_total",
            &[("split", "api"), ("result", "success")]
        ) >= 1.0,
        "ready means a reconcile finished"
    );
    assert!(c
        .status()
        .is_some_and(|v| v["splits"][0]["lastReconcile"].is_string()));

    // SIGTERM: draining makes /readyz 503 (best effort: the window is short), then exit 0.
    let endpoint = c.endpoint.clone();
    let watching = Arc::new(AtomicBool::new(true));
    let w = watching.clone();
    let watcher = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while w.load(Ordering::SeqCst) {
            let code = get(&endpoint, "/readyz").map(|x| x.0);
            if seen.last() != Some(&code) {
                seen.push(code);
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(200));
    let code = c.sigterm(Duration::from_secs(20));
    watching.store(false, Ordering::SeqCst);
    let seen = watcher.join().expect("watcher thread");
    assert_eq!(code, Some(0), "SIGTERM exits 0");
    eprintln!("/readyz during shutdown: {seen:?}");
    assert_eq!(
        seen.first(),
        Some(&Some(200)),
        "ready before SIGTERM: {seen:?}"
    );
    // After a 503 or a refused connection, never ready again.
    if let Some(i) = seen.iter().position(|x| *x != Some(200)) {
        assert!(
            !seen[i..].contains(&Some(200)),
            "ready again while draining: {seen:?}"
        );
    }
    assert_eq!(get(&c.endpoint, "/healthz"), None, "the server is gone");
}

#[test]
fn counters_exist_at_zero_from_the_first_ready_scrape() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 20);
    let dir = tempfile::tempdir().unwrap();
    // Paused: nothing moves, so every counter must still be 0, and present.
    let extra = "  rollout:
    steps: [50, 100]
    interval: 60s
    paused: true
  gates:
    - name: no-errors
      cloudwatchAlarm:
        alarmNames: [api-5xx]
";
    write_doc(dir.path(), "api", &sc.document("api", 50, 50, extra));
    let mut c = Controller::start(&moto.endpoint, &[dir.path()], "obs", &[]);
    c.wait_ready(DEADLINE);
    let s = scrape(&c).expect("metrics");
    let api = ("split", "api");
    let zero: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("trafficshift_drift_corrections_total", vec![api]),
        ("trafficshift_rollbacks_total", vec![api]),
        (
            "trafficshift_reconciles_total",
            vec![api, ("result", "error")],
        ),
        (
            "trafficshift_reconcile_errors_total",
            vec![api, ("kind", "aws_throttled")],
        ),
        (
            "trafficshift_reconcile_errors_total",
            vec![api, ("kind", "aws_transient")],
        ),
        (
            "trafficshift_reconcile_errors_total",
            vec![api, ("kind", "aws_permanent")],
        ),
        (
            "trafficshift_reconcile_errors_total",
            vec![api, ("kind", "conflict")],
        ),
        (
            "trafficshift_gate_failures_total",
            vec![api, ("gate", "no-errors")],
        ),
        (
            "trafficshift_aws_requests_total",
            vec![
                ("service", "route53"),
                ("operation", "ChangeResourceRecordSets"),
                ("outcome", "throttled"),
            ],
        ),
        (
            "trafficshift_aws_requests_total",
            vec![
                ("service", "ecs"),
                ("operation", "UpdateService"),
                ("outcome", "error"),
            ],
        ),
        (
            "trafficshift_aws_requests_total",
            vec![
                ("service", "elbv2"),
                ("operation", "DescribeTargetHealth"),
                ("outcome", "throttled"),
            ],
        ),
    ];
    for (name, labels) in &zero {
        assert_eq!(s.must(name, labels), 0.0, "{name}{labels:?}");
    }
    promtool_check_metrics(&s.text);
}

/// An HTTP endpoint on 127.0.0.1 that answers 200 and counts the requests it gets.
fn counting_endpoint() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/healthz", listener.local_addr().expect("addr"));
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            if stream.read(&mut buf).is_ok_and(|n| n > 0) {
                h.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    });
    (url, hits)
}

/// `plan` in CI must not hit production endpoints: HTTP gates are called only with
/// `--with-gates`, and loopback ones only with `--allow-loopback-gates` too. Judged by the
/// endpoint's own request count.
#[test]
fn plan_calls_http_gates_only_when_asked() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 20);
    let (url, hits) = counting_endpoint();
    let extra = format!(
        "  rollout:\n    steps: [50, 100]\n    interval: 60s\n  gates:\n    - name: smoke\n      \
         http:\n        url: {url}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), "api", &sc.document("api", 0, 100, &extra));
    let d = dir.path().to_str().unwrap();
    let plan = |more: &[&str]| {
        let mut args = vec!["plan", "--owner-id", "obs", d];
        args.extend_from_slice(more);
        let (code, out, err) = support::controller::run_cli(&moto.endpoint, &args);
        assert!(
            code == 0 || code == 2,
            "plan {more:?} exit {code}:\n{out}\n{err}"
        );
        out
    };
    plan(&[]);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "plan called an HTTP gate unasked"
    );
    plan(&["--with-gates"]);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a loopback gate was called without --allow-loopback-gates"
    );
    plan(&["--with-gates", "--allow-loopback-gates"]);
    assert!(
        hits.load(Ordering::SeqCst) >= 1,
        "plan --with-gates did not call the gate"
    );
}

// ------------------------------------------------------------------------------------------------
// Config reloads are counted per real load: the resync tick and file changes, not a loop.

#[test]
fn config_reloads_follow_resync_not_a_loop() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 20);
    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), "api", &sc.document("api", 0, 100, ""));
    let mut c = Controller::start(moto.aws(), &[dir.path()], "obs", &["--resync", "2s"]);
    c.wait_ready(DEADLINE);
    // The counter exists from the first scrape; missing, it fails rather than reading as 0.
    let reloads = |s: &Scrape| {
        s.must(
            "trafficshift_config_reloads_total",
            &[("result", "success")],
        )
    };
    let before = reloads(&scrape(&c).expect("metrics"));
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let s = scrape(&c).expect("metrics");
    let after = reloads(&s);
    let secs = t.elapsed().as_secs_f64();
    // Resync every 2 s: about 3 loads in 6 s; no file changed, so nothing else.
    assert!(
        after - before <= secs / 2.0 + 2.0,
        "trafficshift_config_reloads_total rose by {} in {secs:.1} s with --resync 2s and no file \
         change (a self-triggered reload loop?)",
        after - before
    );
    let last = s.must("trafficshift_config_last_reload_timestamp_seconds", &[]);
    assert!(
        (now_secs() - last).abs() < 10.0,
        "last reload {last} is recent"
    );
}
