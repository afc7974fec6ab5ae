//! Progressive rollouts (issue #3) end to end: the real binary against moto (and a real
//! Prometheus), every Route53 weight set and ECS count recorded by a boto3 poller so that order,
//! hold times and capacity-before-traffic can be checked on the timeline.

use crate::support;

use crate::prometheus;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::controller::{
    change_records, metric_sum, set_alarm, wait_for, write_atomic, Controller, Scenario,
};
use support::{python, unique, Moto};

const DEADLINE: Duration = Duration::from_secs(90);
const RESYNC: &[&str] = &["--resync", "2s"];

// ---------------------------------------------------------------------------------------------
// The timeline: a boto3 poller in the background.

/// One look at Route53 (read first) and then ECS (read second). Because ECS is read after
/// Route53, a snapshot showing a weight with too few tasks proves the weight rose first.
#[derive(Debug, Clone)]
struct Snap {
    /// Unix time before the Route53 read.
    t0: f64,
    /// Unix time after the ECS read: any change a snapshot shows happened before this.
    t1: f64,
    /// Weighted records at the scenario's name: SetIdentifier -> Weight (empty before adoption).
    w: BTreeMap<String, i64>,
    /// The state TXT payload (quotes removed).
    txt: Option<String>,
    desired: i64,
    running: i64,
}

impl Snap {
    /// (lambda, fargate) once the weighted set exists.
    fn split(&self) -> Option<(i64, i64)> {
        if self.w.is_empty() {
            return None;
        }
        Some((
            self.w.get("lambda").copied().unwrap_or(-1),
            self.w.get("fargate").copied().unwrap_or(-1),
        ))
    }

    fn txt_field(&self, key: &str) -> Option<String> {
        txt_field(self.txt.as_deref()?, key)
    }
}

/// `key=value` of a state TXT payload.
fn txt_field(txt: &str, key: &str) -> Option<String> {
    txt.split(',')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// `fargate:40;lambda:60` as (lambda, fargate).
fn parse_split(s: &str) -> Option<(i64, i64)> {
    let mut m = BTreeMap::new();
    for kv in s.split(';') {
        let (k, v) = kv.split_once(':')?;
        m.insert(k.to_string(), v.parse::<i64>().ok()?);
    }
    Some((*m.get("lambda")?, *m.get("fargate")?))
}

/// A run of consecutive snapshots showing the same split.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    split: (i64, i64),
    /// t1 of the first snapshot showing it.
    first: f64,
    /// t1 of the first snapshot showing the next split (None for the last run).
    until: Option<f64>,
    /// t0 of the last snapshot showing it: the next split was written after this.
    last_t0: f64,
}

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

const POLLER: &str = r#"
import json, os, sys, time, boto3
endpoint, ecs_endpoint, zone, record, cluster, service, out = sys.argv[1:8]
parent = os.getppid()
def client(name, url):
    return boto3.client(name, endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
# Route53 as moto holds it; ECS as the AWS layer serves it (running tasks that really started).
r53, ecs = client("route53", endpoint), client("ecs", ecs_endpoint)
txt_name = "_trafficshift." + record
f = open(out, "a", buffering=1)
while os.getppid() == parent:
    t0 = time.time()
    try:
        recs = []
        for page in r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone):
            recs.extend(page["ResourceRecordSets"])
        w = {r["SetIdentifier"]: r["Weight"] for r in recs if r["Name"] == record and "SetIdentifier" in r}
        txt = None
        for r in recs:
            if r["Name"] == txt_name and r["Type"] == "TXT":
                txt = "".join(v["Value"].replace('" "', "").replace('"', "") for v in r["ResourceRecords"])
        s = ecs.describe_services(cluster=cluster, services=[service])["services"]
        desired = s[0]["desiredCount"] if s else -1
        running = s[0]["runningCount"] if s else -1
        f.write(json.dumps({"t0": t0, "t1": time.time(), "w": w, "txt": txt,
                            "desired": desired, "running": running}) + "\n")
    except Exception as e:
        f.write(json.dumps({"t0": t0, "error": repr(e)}) + "\n")
    time.sleep(0.2)
"#;

/// Records a `Snap` about every 200 ms into a file until dropped.
struct Timeline {
    child: Child,
    path: PathBuf,
    label: String,
}

impl Timeline {
    fn start(moto: &Moto, sc: &Scenario) -> Timeline {
        let path = std::env::temp_dir().join(format!("{}.jsonl", unique("timeline")));
        std::fs::write(&path, "").unwrap();
        let child = Command::new(python())
            .args([
                "-c",
                POLLER,
                &moto.endpoint,
                moto.aws(),
                &sc.zone_id,
                &sc.record,
            ])
            .args([&sc.cluster, &sc.service])
            .arg(&path)
            .envs(moto.aws_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the boto3 poller");
        let tl = Timeline {
            child,
            path,
            label: sc.record.clone(),
        };
        // The first snapshot proves the poller works before anything is measured with it.
        tl.wait(
            "the poller's first snapshot",
            Duration::from_secs(60),
            |_| true,
        );
        tl
    }

    fn snaps(&self) -> Vec<Snap> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("error").is_none())
            .map(|v| Snap {
                t0: v["t0"].as_f64().unwrap(),
                t1: v["t1"].as_f64().unwrap(),
                w: serde_json::from_value(v["w"].clone()).unwrap(),
                txt: v["txt"].as_str().map(str::to_string),
                desired: v["desired"].as_i64().unwrap(),
                running: v["running"].as_i64().unwrap(),
            })
            .collect()
    }

    /// Wait for a snapshot taken after this call that satisfies `pred`.
    fn wait(&self, what: &str, deadline: Duration, pred: impl Fn(&Snap) -> bool) -> Snap {
        let since = now_f64();
        let t = Instant::now();
        loop {
            if let Some(s) = self.snaps().into_iter().rev().find(|s| s.t0 >= since) {
                if pred(&s) {
                    return s;
                }
            }
            if t.elapsed() > deadline {
                panic!(
                    "timed out after {deadline:?} waiting for {what} ({}):\n{}",
                    self.label,
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until Route53 shows `split` (lambda, fargate).
    fn wait_split(&self, split: (i64, i64), deadline: Duration) -> Snap {
        self.wait(
            &format!("lambda/fargate {}/{}", split.0, split.1),
            deadline,
            |s| s.split() == Some(split),
        )
    }

    /// Consecutive snapshots grouped by the split they show (snapshots before adoption skipped).
    fn runs(&self) -> Vec<Run> {
        runs_of(&self.snaps())
    }

    fn describe(&self) -> String {
        let snaps = self.snaps();
        let base = snaps.first().map(|s| s.t1).unwrap_or(0.0);
        let mut out = String::new();
        for r in runs_of(&snaps) {
            let _ = writeln!(
                out,
                "  lambda/fargate {:>3}/{:<3} from {:>6.2}s to {}",
                r.split.0,
                r.split.1,
                r.first - base,
                r.until
                    .map(|u| format!("{:.2}s", u - base))
                    .unwrap_or_else(|| "end".into())
            );
        }
        if let Some(last) = snaps.last() {
            let _ = writeln!(
                out,
                "  last: desired {} running {} txt {:?}",
                last.desired, last.running, last.txt
            );
        }
        out
    }
}

fn runs_of(snaps: &[Snap]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for s in snaps {
        let Some(split) = s.split() else { continue };
        match runs.last_mut() {
            Some(r) if r.split == split => r.last_t0 = s.t0,
            Some(r) => {
                r.until = Some(s.t1);
                runs.push(Run {
                    split,
                    first: s.t1,
                    until: None,
                    last_t0: s.t0,
                });
            }
            None => runs.push(Run {
                split,
                first: s.t1,
                until: None,
                last_t0: s.t0,
            }),
        }
    }
    runs
}

impl Drop for Timeline {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- timeline of {} ---\n{}", self.label, self.describe());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Every snapshot of the weighted set sums to 100 (changes are atomic batches).
fn assert_sums_to_100(tl: &Timeline) {
    for s in tl.snaps() {
        if !s.w.is_empty() {
            let sum: i64 = s.w.values().sum();
            assert_eq!(
                sum,
                100,
                "a weight set in Route53 does not sum to 100: {:?}\n{}",
                s.w,
                tl.describe()
            );
        }
    }
}

/// The splits the timeline showed, in order.
fn shown(tl: &Timeline) -> Vec<(i64, i64)> {
    tl.runs().iter().map(|r| r.split).collect()
}

/// `lambda` falls by `by` per step from 100 to 0: [(100-by, by), ..., (0, 100)].
fn straight_steps(by: i64) -> Vec<(i64, i64)> {
    (1..=100 / by).map(|i| (100 - i * by, i * by)).collect()
}

fn write_doc(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    write_atomic(&p, text);
    p
}

fn rollout_block(steps: &str, interval: &str, more: &str) -> String {
    format!("  rollout:\n    steps: {steps}\n    interval: {interval}\n{more}")
}

fn alarm_gate(alarm: &str) -> String {
    format!("  gates:\n    - name: errors\n      cloudwatchAlarm:\n        alarmNames: [{alarm}]\n")
}

fn state_of(c: &Controller, split: &str) -> Option<String> {
    c.split(split)?["state"].as_str().map(str::to_string)
}

fn wait_state(c: &Controller, split: &str, want: &str) -> Value {
    wait_for(&format!("/status {split} state {want}"), DEADLINE, || {
        c.split(split).filter(|s| s["state"] == want)
    })
}

/// Assert Route53 keeps showing `split` for `hold`, failing at the first other snapshot.
fn assert_holds(tl: &Timeline, split: (i64, i64), hold: Duration, why: &str) {
    let from = now_f64();
    let t = Instant::now();
    while t.elapsed() < hold {
        std::thread::sleep(Duration::from_millis(200));
        for s in tl.snaps().iter().filter(|s| s.t0 >= from) {
            assert_eq!(
                s.split(),
                Some(split),
                "{why}: Route53 moved {:.1}s into a {hold:?} hold\n{}",
                s.t1 - from,
                tl.describe()
            );
        }
    }
}

/// Every step but the last was held for `interval` seconds, by the test's own clock (never the
/// controller's `since=`): a step was written before the first snapshot showing it returned (its
/// `first`), and the next one after the last snapshot still showing it began (`last_t0`), so
/// `last_t0 - first` is a lower bound of the hold. The poller reads every ~200 ms and a write can
/// lag its decision under load, hence the second of slack.
fn assert_each_step_held(tl: &Timeline, interval: f64) {
    let snaps = tl.snaps();
    let runs = runs_of(&snaps);
    let mut held = 0;
    for r in runs.iter().filter(|r| r.split != (100, 0)) {
        if r.until.is_none() {
            continue;
        }
        held += 1;
        assert!(
            r.last_t0 - r.first >= interval - 1.0,
            "{:?} held at least {:.2}s by the test's clock (shown from {:.2}s to {:.2}s): less than \
             the {interval}s interval\n{}",
            r.split,
            r.last_t0 - r.first,
            r.first,
            r.last_t0,
            tl.describe()
        );
    }
    assert!(
        held > 0,
        "no step followed by another was seen:\n{}",
        tl.describe()
    );
}

/// ECS tasks the scenario document needs by fargate share: the table written out by hand in
/// `writelog::SCENARIO_TASKS`.
fn need(share: i64) -> i64 {
    crate::writelog::tasks_in(crate::writelog::SCENARIO_TASKS, share)
}

/// Replace the ECS service by a new one with `desired` tasks and (moto started with
/// MOTO_ECS_SERVICE_RUNNING=0) none running: unstable until someone calls UpdateService.
fn make_unstable(moto: &Moto, sc: &Scenario, desired: i64) {
    make_unstable_via(moto, sc, desired, &moto.endpoint)
}

/// `make_unstable` with the service re-created through `via` (the AWS layer, so it knows the
/// service's tasks are new rather than long running).
fn make_unstable_via(moto: &Moto, sc: &Scenario, desired: i64, via: &str) {
    let v = moto.py(
        r#"
s = client("ecs").describe_services(cluster=input["cluster"], services=[input["service"]])["services"][0]
endpoint = input["via"]
ecs = client("ecs")
ecs.create_service(cluster=input["cluster"], serviceName=input["service"],
                   taskDefinition=s["taskDefinition"], desiredCount=input["desired"],
                   launchType="FARGATE", loadBalancers=s["loadBalancers"],
                   networkConfiguration=s["networkConfiguration"])
s = ecs.describe_services(cluster=input["cluster"], services=[input["service"]])["services"][0]
out = [s["desiredCount"], s["runningCount"], len(s["deployments"])]
"#,
        json!({"cluster": sc.cluster, "service": sc.service, "desired": desired, "via": via}),
    );
    assert_eq!(
        v,
        json!([desired, 0, 1]),
        "the re-created service is unstable (moto, or the layer with its tasks failing)"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Every step, in order, each held for the interval.

#[test]
fn a_full_rollout_shows_every_step_in_order_each_held_for_the_interval() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let tl = Timeline::start(&moto, &sc);
    let dir = tempfile::tempdir().unwrap();
    let block = rollout_block("[20, 40, 60, 80, 100]", "2s", "");
    // minTasks 20: the capacity for every step is there from the first cycle, so nothing but
    // the hold interval paces the steps.
    let doc = sc
        .document("api", 0, 100, &block)
        .replace("minTasks: 2", "minTasks: 20");
    write_doc(dir.path(), "api", &doc);

    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", RESYNC);
    c.wait_ready(DEADLINE);
    tl.wait_split((0, 100), DEADLINE);
    let txt = tl
        .wait("phase=complete in the TXT", DEADLINE, |s| {
            s.txt_field("phase").as_deref() == Some("complete")
        })
        .txt
        .unwrap();
    assert_eq!(txt_field(&txt, "step").as_deref(), Some("5"), "{txt}");

    let runs = tl.runs();
    let mut seen: Vec<(i64, i64)> = runs.iter().map(|r| r.split).collect();
    // Adoption may show the start split briefly before the first step.
    if seen.first() == Some(&(100, 0)) {
        seen.remove(0);
    }
    assert_eq!(
        seen,
        straight_steps(20),
        "every step, none skipped, in order:\n{}",
        tl.describe()
    );
    assert_each_step_held(&tl, 2.0);
    assert_sums_to_100(&tl);
    assert_eq!(sc.ecs_counts(&moto).0, 20);
    assert_eq!(state_of(&c, "api").as_deref(), Some("Complete"));
}

// ---------------------------------------------------------------------------------------------
// 2. A CloudWatch alarm trips the gate after failureThreshold checks: rollback, and it sticks.

#[test]
fn an_alarm_rolls_back_after_three_failing_checks_and_stays_rolled_back() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let alarm = unique("alarm");
    set_alarm(&moto, &alarm, "OK");
    let tl = Timeline::start(&moto, &sc);
    let dir = tempfile::tempdir().unwrap();
    let block = rollout_block(
        "[25, 50, 75, 100]",
        "3s",
        "    failureThreshold: 3\n    onGateFailure: rollback\n    gateInterval: 1s\n",
    ) + &alarm_gate(&alarm);
    let doc = write_doc(dir.path(), "api", &sc.document("api", 0, 100, &block));

    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", RESYNC);
    c.wait_ready(DEADLINE);
    tl.wait_split((75, 25), DEADLINE);
    let alarm_at = now_f64();
    set_alarm(&moto, &alarm, "ALARM");

    // Watch /status until the rollback, recording what the gate reported before it.
    let mut before: Vec<(String, u64)> = Vec::new();
    let rolled = wait_for("/status state RolledBack", DEADLINE, || {
        let s = c.split("api")?;
        let failures = s["gates"][0]["consecutiveFailures"].as_u64()?;
        let state = s["state"].as_str()?.to_string();
        if state == "RolledBack" {
            return Some((s, failures));
        }
        before.push((state, failures));
        None
    });
    assert!(
        rolled.1 >= 3,
        "rolled back with consecutiveFailures {} < failureThreshold 3: {}",
        rolled.1,
        rolled.0
    );
    assert!(
        before.iter().all(|(_, f)| *f < 3),
        "not rolled back although /status showed 3 failures: {before:?}"
    );
    assert_eq!(rolled.0["gates"][0]["passing"], false, "{}", rolled.0);
    // The events tell the order: 1, 2, 3 failures in a row, then the rollback.
    let events: Vec<(String, String)> = rolled.0["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let rb = events
        .iter()
        .position(|(r, _)| r == "RolledBack")
        .unwrap_or_else(|| panic!("a RolledBack event: {events:#?}"));
    let mut in_a_row = Vec::new();
    for (r, m) in &events[..rb] {
        if r == "GateFailed" {
            in_a_row.push(m.clone());
        }
    }
    for n in 1..=3 {
        assert!(
            in_a_row
                .iter()
                .any(|m| m.contains(&format!("({n} in a row)"))),
            "GateFailed ({n} in a row) before the rollback: {events:#?}"
        );
    }

    tl.wait_split((100, 0), DEADLINE);
    // By the test's clock: three failing checks 1 s (gateInterval) apart, the first no sooner than
    // the alarm turned, so the first move back was written 2 s or more after it (the write came
    // after the last snapshot that still showed the split moving forward began). 0.5 s of slack
    // for the clock of the poller against this thread's.
    let runs = tl.runs();
    let back = runs
        .iter()
        .position(|r| r.first > alarm_at && r.split.1 < 25)
        .unwrap_or_else(|| panic!("no move back after the alarm:\n{}", tl.describe()));
    let written_after = runs[back - 1].last_t0;
    assert!(
        written_after - alarm_at >= 2.0 - 0.5,
        "rolled back {:.2}s after the alarm turned: fewer than failureThreshold 3 checks 1s apart\n{}",
        written_after - alarm_at,
        tl.describe()
    );
    let txt = sc.state_txt(&moto).expect("state TXT");
    assert_eq!(
        txt_field(&txt, "phase").as_deref(),
        Some("rolledback"),
        "{txt}"
    );
    let old_gen = txt_field(&txt, "gen").unwrap();
    let rollbacks = |c: &Controller| {
        c.metrics()
            .and_then(|m| metric_sum(&m, "trafficshift_rollbacks_total", &[("split", "api")]))
    };
    assert_eq!(rollbacks(&c), Some(1.0));
    // Before the rollback the split only ever moved toward the target.
    let seen = shown(&tl);
    let back = seen.iter().rposition(|s| *s == (100, 0)).unwrap();
    assert!(back > 0, "{seen:?}");
    assert!(
        seen[..back]
            .iter()
            .all(|s| [(100, 0), (75, 25), (50, 50)].contains(s)),
        "before the rollback only steps 1-2 were shown: {seen:?}"
    );

    // The alarm recovers: the split stays rolled back over several resyncs.
    set_alarm(&moto, &alarm, "OK");
    assert_holds(
        &tl,
        (100, 0),
        Duration::from_secs(7),
        "a rolled-back split stays rolled back",
    );
    assert_eq!(state_of(&c, "api").as_deref(), Some("RolledBack"));
    assert_eq!(rollbacks(&c), Some(1.0), "one rollback only");
    let txt = sc.state_txt(&moto).unwrap();
    assert_eq!(
        txt_field(&txt, "phase").as_deref(),
        Some("rolledback"),
        "{txt}"
    );

    // A new document (changed weights) starts a new rollout from the rolled-back split.
    write_atomic(&doc, &sc.document("api", 50, 50, &block));
    let s = tl.wait("a new rollout moving off 100/0", DEADLINE, |s| {
        s.txt_field("gen").is_some_and(|g| g != old_gen) && s.split().is_some_and(|x| x.1 > 0)
    });
    assert_eq!(
        s.txt_field("start").and_then(|x| parse_split(&x)),
        Some((100, 0)),
        "{:?}",
        s.txt
    );
    tl.wait_split((50, 50), DEADLINE);
    wait_state(&c, "api", "Complete");
    assert_eq!(rollbacks(&c), Some(1.0));
    assert_sums_to_100(&tl);
}

// ---------------------------------------------------------------------------------------------
// 3. onGateFailure: hold.

#[test]
fn a_failing_gate_with_hold_degrades_in_place_and_resumes() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let alarm = unique("alarm");
    set_alarm(&moto, &alarm, "OK");
    let tl = Timeline::start(&moto, &sc);
    let dir = tempfile::tempdir().unwrap();
    let block = rollout_block(
        "[25, 50, 75, 100]",
        "3s",
        "    failureThreshold: 2\n    onGateFailure: hold\n    gateInterval: 1s\n",
    ) + &alarm_gate(&alarm);
    write_doc(dir.path(), "api", &sc.document("api", 0, 100, &block));

    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", RESYNC);
    c.wait_ready(DEADLINE);
    tl.wait_split((75, 25), DEADLINE);
    set_alarm(&moto, &alarm, "ALARM");
    let st = wait_state(&c, "api", "Degraded");
    let held = tl.snaps().last().unwrap().split().unwrap();
    assert!(
        [(75, 25), (50, 50)].contains(&held),
        "held at step 1 or 2, not {held:?}"
    );
    assert!(
        st["waitingFor"]
            .as_str()
            .is_some_and(|w| w.contains("errors")),
        "{st}"
    );
    assert_holds(
        &tl,
        held,
        Duration::from_secs(7),
        "a held rollout stays at its step",
    );
    assert_eq!(state_of(&c, "api").as_deref(), Some("Degraded"));

    set_alarm(&moto, &alarm, "OK");
    tl.wait_split((0, 100), DEADLINE);
    wait_state(&c, "api", "Complete");
    let mut seen = shown(&tl);
    if seen.first() == Some(&(100, 0)) {
        seen.remove(0);
    }
    assert_eq!(
        seen,
        vec![(75, 25), (50, 50), (25, 75), (0, 100)],
        "resumed step by step, never rolled back:\n{}",
        tl.describe()
    );
    let m = c.metrics().unwrap();
    assert_eq!(
        metric_sum(&m, "trafficshift_rollbacks_total", &[("split", "api")]).unwrap_or(0.0),
        0.0
    );
    assert_sums_to_100(&tl);
}

// ---------------------------------------------------------------------------------------------
// 4. paused: true holds the step but still corrects drift.

#[test]
fn paused_holds_the_step_corrects_drift_and_resumes() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let tl = Timeline::start(&moto, &sc);
    let dir = tempfile::tempdir().unwrap();
    let steps = "[20, 40, 60, 80, 100]";
    let doc = write_doc(
        dir.path(),
        "api",
        &sc.document("api", 0, 100, &rollout_block(steps, "2s", "")),
    );

    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", RESYNC);
    c.wait_ready(DEADLINE);
    tl.wait_split((80, 20), DEADLINE);
    write_atomic(
        &doc,
        &sc.document(
            "api",
            0,
            100,
            &rollout_block(steps, "2s", "    paused: true\n"),
        ),
    );
    wait_state(&c, "api", "Paused");
    let held = tl.snaps().last().unwrap().split().unwrap();
    assert!(
        [(80, 20), (60, 40)].contains(&held),
        "paused at step 1 or 2, not {held:?}"
    );
    assert_holds(&tl, held, Duration::from_secs(7), "a paused rollout holds");

    // A hand edit is still put back while paused.
    let fargate = sc
        .records(&moto)
        .into_iter()
        .find(|r| r["Name"] == sc.record.as_str() && r["SetIdentifier"] == "fargate")
        .expect("the fargate record");
    let mut edited = fargate.clone();
    edited["Weight"] = json!(77);
    change_records(
        &moto,
        &sc.zone_id,
        json!([{"Action": "UPSERT", "ResourceRecordSet": edited}]),
    );
    tl.wait_split(held, DEADLINE);
    wait_for("a counted drift correction", DEADLINE, || {
        let m = c.metrics()?;
        metric_sum(
            &m,
            "trafficshift_drift_corrections_total",
            &[("split", "api")],
        )
        .filter(|v| *v >= 1.0)
    });
    assert_eq!(state_of(&c, "api").as_deref(), Some("Paused"));
    let edit = (held.0, 77);
    let seen = shown(&tl);
    assert!(
        seen.iter().all(|s| s.1 <= held.1 || *s == edit),
        "no progress while paused: {seen:?}"
    );

    write_atomic(
        &doc,
        &sc.document("api", 0, 100, &rollout_block(steps, "2s", "")),
    );
    tl.wait_split((0, 100), DEADLINE);
    wait_state(&c, "api", "Complete");
    // The timeline without the hand edit (and its correction) is the plain step sequence.
    let steps_seen: Vec<(i64, i64)> = shown(&tl)
        .into_iter()
        .filter(|s| *s != edit && *s != (100, 0))
        .fold(Vec::new(), |mut v, s| {
            if v.last() != Some(&s) {
                v.push(s);
            }
            v
        });
    assert_eq!(
        steps_seen,
        straight_steps(20),
        "resumed in order:\n{}",
        tl.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. A new document mid-rollout re-plans from the split Route53 shows.

#[test]
fn a_document_change_mid_rollout_replans_from_the_current_split() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let tl = Timeline::start(&moto, &sc);
    let dir = tempfile::tempdir().unwrap();
    let block = rollout_block("[20, 40, 60, 80, 100]", "3s", "");
    let doc = write_doc(dir.path(), "api", &sc.document("api", 0, 100, &block));

    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", RESYNC);
    c.wait_ready(DEADLINE);
    let at = tl.wait_split((60, 40), DEADLINE);
    let old_gen = at.txt_field("gen").expect("gen in the TXT");
    write_atomic(&doc, &sc.document("api", 90, 10, &block));
    let changed_at = now_f64();

    let first_new = tl.wait("the TXT of a new rollout", DEADLINE, |s| {
        s.txt_field("gen").is_some_and(|g| g != old_gen)
    });
    let snaps = tl.snaps();
    // What Route53 showed when the controller re-planned: the last snapshot with the old TXT.
    let before = snaps
        .iter()
        .rev()
        .find(|s| s.txt_field("gen").as_deref() == Some(old_gen.as_str()))
        .and_then(Snap::split)
        .unwrap();
    let start = first_new
        .txt_field("start")
        .and_then(|s| parse_split(&s))
        .expect("start= in the TXT");
    assert_eq!(
        start, before,
        "the new rollout starts where Route53 was: {:?}",
        first_new.txt
    );
    assert!(
        [(60, 40), (40, 60)].contains(&start),
        "start is the split of the running rollout, not {start:?}"
    );

    tl.wait_split((90, 10), DEADLINE);
    wait_state(&c, "api", "Complete");
    let seen = shown(&tl);
    assert!(
        !seen.contains(&(0, 100)),
        "the old target was never shown: {seen:?}"
    );
    // After the change the fargate share only falls, from the start toward 10.
    let after: Vec<i64> = tl
        .snaps()
        .iter()
        .filter(|s| s.t1 > changed_at)
        .filter_map(|s| s.split().map(|x| x.1))
        .collect();
    assert!(
        after.windows(2).all(|w| w[1] <= w[0]) && after.iter().all(|f| (10..=start.1).contains(f)),
        "fargate went straight from {} to 10: {after:?}",
        start.1
    );
    let steps_after = runs_of(&tl.snaps())
        .iter()
        .filter(|r| r.first > changed_at)
        .count();
    assert!(
        steps_after >= 2,
        "the new rollout moved in steps:\n{}",
        tl.describe()
    );
    assert_sums_to_100(&tl);
}

// ---------------------------------------------------------------------------------------------
// 6. kill -9 mid-rollout: the restart resumes at the same step and holds the rest of its
// interval.

#[test]
fn a_restart_after_kill_9_resumes_at_the_same_step_without_skipping_the_hold() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let tl = Timeline::start(&moto, &sc);
    let dir = tempfile::tempdir().unwrap();
    let block = rollout_block("[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]", "4s", "");
    write_doc(dir.path(), "api", &sc.document("api", 0, 100, &block));

    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", RESYNC);
    c.wait_ready(DEADLINE);
    let s3 = tl.wait_split((70, 30), DEADLINE);
    c.kill9();
    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", RESYNC);
    let restarted = now_f64();
    assert_eq!(s3.txt_field("step").as_deref(), Some("3"), "{:?}", s3.txt);
    c.wait_ready(DEADLINE);
    let st = c.split("api").expect("status");
    assert!(
        st["step"] == 3 || st["step"] == 4,
        "the restarted controller is at step 3 (or 4 once due): {st}"
    );

    // The first move after the restart is to step 4, and not before step 3's interval ended.
    let s4 = tl.wait_split((60, 40), DEADLINE);
    let first4 = tl
        .snaps()
        .into_iter()
        .find(|s| s.split() == Some((60, 40)))
        .unwrap();
    // By the test's clock: step 3 was written before its first snapshot returned, step 4 after
    // the last snapshot still showing step 3 began; a second of slack for polling and the write
    // lagging its decision, as in `assert_each_step_held`.
    let run3 = tl
        .runs()
        .into_iter()
        .find(|r| r.split == (70, 30))
        .expect("step 3 shown");
    assert!(
        run3.last_t0 - run3.first >= 4.0 - 1.0,
        "step 3 held at least {:.2}s by the test's clock, less than its 4s hold (step 4 first \
         shown {:.2}s after the restart)\n{}",
        run3.last_t0 - run3.first,
        first4.t1 - restarted,
        tl.describe()
    );
    assert!(
        tl.snaps()
            .iter()
            .filter(|s| s.t0 >= restarted && s.t1 < first4.t0)
            .all(|s| s.split() == Some((70, 30))),
        "nothing but step 3 between the restart and step 4:\n{}",
        tl.describe()
    );
    assert_eq!(s4.txt_field("step").as_deref(), Some("4"), "{:?}", s4.txt);

    tl.wait_split((0, 100), DEADLINE);
    wait_state(&c, "api", "Complete");
    let mut seen = shown(&tl);
    if seen.first() == Some(&(100, 0)) {
        seen.remove(0);
    }
    assert_eq!(
        seen,
        straight_steps(10),
        "every step once, in order:\n{}",
        tl.describe()
    );
    assert_each_step_held(&tl, 4.0);
    assert_sums_to_100(&tl);
}

// ---------------------------------------------------------------------------------------------
// 7. Capacity before traffic on every step, and no step onto an unstable service.

/// For each share the fargate weight took, the snapshot before it first appeared already had
/// the tasks (desired and running) that share needs.
fn assert_capacity_first(tl: &Timeline) {
    let snaps = tl.snaps();
    let mut last = 0;
    for (i, s) in snaps.iter().enumerate() {
        let Some((_, f)) = s.split() else { continue };
        assert!(
            s.desired >= need(f),
            "Route53 showed fargate {f}% while desiredCount was {} < {} (read after Route53)\n{}",
            s.desired,
            need(f),
            tl.describe()
        );
        if f > last {
            let prev = &snaps[i.saturating_sub(1)];
            assert!(
                i > 0 && prev.desired >= need(f) && prev.running >= need(f),
                "fargate rose to {f}% without {} tasks in place {:.2}s before (desired {}, \
                 running {})\n{}",
                need(f),
                s.t1 - prev.t1,
                prev.desired,
                prev.running,
                tl.describe()
            );
        }
        last = f;
    }
}

#[test]
fn capacity_comes_before_every_step_and_an_unstable_service_holds_the_step() {
    let moto = Moto::start_with_env(&[("MOTO_ECS_SERVICE_RUNNING", "0")]);
    // `a`: starts with 1 task, none running; the controller's first UpdateService steadies it.
    let a = Scenario::provision(&moto, 1);
    make_unstable(&moto, &a, 1);
    // `b`: already at the 2 tasks its first step needs, none running: nothing for the controller
    // to scale, so it must wait until the service is stable.
    let b = Scenario::provision(&moto, 2);
    if support::realistic() {
        // The layer serves ECS task counts itself: b is re-created through it with its tasks
        // failing to start (until the deployment "finishes" below).
        let via = moto.aws().to_string();
        let layer = moto.layer().expect("the layer is started");
        layer.set_ecs_mode(&b.cluster, &b.service, "failing");
        make_unstable_via(&moto, &b, 2, &via);
    } else {
        make_unstable(&moto, &b, 2);
    }
    let tla = Timeline::start(&moto, &a);
    let tlb = Timeline::start(&moto, &b);
    let dir = tempfile::tempdir().unwrap();
    write_doc(
        dir.path(),
        "a",
        &a.document(
            "a",
            0,
            100,
            &rollout_block("[20, 40, 60, 80, 100]", "2s", ""),
        ),
    );
    write_doc(
        dir.path(),
        "b",
        &b.document("b", 0, 100, &rollout_block("[10, 100]", "2s", "")),
    );

    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", RESYNC);
    c.wait_ready(DEADLINE);

    // b: adopted at the start split, then held while its service is unstable.
    let first = tlb.wait("b's weighted set", DEADLINE, |s| s.split().is_some());
    assert_eq!(
        first.split(),
        Some((100, 0)),
        "b adopted at the start split, no step onto its unstable service:\n{}",
        tlb.describe()
    );
    let st = wait_for("b waiting for running tasks", DEADLINE, || {
        c.split("b").filter(|s| {
            s["waitingFor"]
                .as_str()
                .is_some_and(|w| w.starts_with("capacity: fargate 0/2 tasks running"))
        })
    });
    assert_eq!(st["step"], 0, "{st}");
    assert_holds(
        &tlb,
        (100, 0),
        Duration::from_secs(6),
        "no step onto an unstable service",
    );
    assert_eq!(b.ecs_counts(&moto), (2, 0), "nobody touched b's service");
    // The deployment finishes (moto: any UpdateService makes running == desired; the layer:
    // tasks start again, one a second).
    moto.boto3_json(
        "ecs",
        "update_service",
        json!({"cluster": b.cluster, "service": b.service, "desiredCount": 2}),
    );
    if let Some(layer) = moto.layer().filter(|_| support::realistic()) {
        layer.set_ecs_mode(&b.cluster, &b.service, "normal");
    }
    tlb.wait_split((0, 100), DEADLINE);
    assert_eq!(shown(&tlb), vec![(100, 0), (90, 10), (0, 100)]);
    assert_capacity_first(&tlb);

    // a: every step, each after its capacity.
    tla.wait_split((0, 100), DEADLINE);
    wait_state(&c, "a", "Complete");
    let mut seen = shown(&tla);
    if seen.first() == Some(&(100, 0)) {
        seen.remove(0);
    }
    assert_eq!(seen, straight_steps(20), "{}", tla.describe());
    assert_capacity_first(&tla);
    assert_eq!(a.ecs_counts(&moto), (20, 20));
    wait_state(&c, "b", "Complete");
}

// ---------------------------------------------------------------------------------------------
// 8. A Prometheus gate with onNoData: fail against a real Prometheus.

fn prometheus_gate(address: &str, query: &str, max: f64) -> String {
    format!(
        "  gates:\n    - name: prom\n      prometheus:\n        address: {address}\n        \
         query: '{query}'\n        max: {max}\n        onNoData: fail\n"
    )
}

#[test]
fn a_prometheus_gate_without_data_never_moves_and_rolls_back() {
    let mut prom = prometheus::Prometheus::start();
    let moto = Moto::start();
    let nodata = Scenario::provision(&moto, 2);
    let passing = Scenario::provision(&moto, 2);
    prom.ready_blocking();
    let tln = Timeline::start(&moto, &nodata);
    let tlp = Timeline::start(&moto, &passing);
    let dir = tempfile::tempdir().unwrap();
    let block = |query: &str, max: f64| {
        rollout_block(
            "[50, 100]",
            "2s",
            "    failureThreshold: 2\n    onGateFailure: rollback\n    gateInterval: 1s\n",
        ) + &prometheus_gate(&prom.address, query, max)
    };
    write_doc(
        dir.path(),
        "nodata",
        &nodata.document("nodata", 0, 100, &block("absent_metric_xyz", 1.0)),
    );
    write_doc(
        dir.path(),
        "passing",
        &passing.document("passing", 0, 100, &block("max(up)", 1.5)),
    );

    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", RESYNC);
    c.wait_ready(DEADLINE);
    let failing = wait_for("the nodata gate failing with no data", DEADLINE, || {
        c.split("nodata").filter(|s| {
            s["gates"][0]["passing"] == false
                && s["gates"][0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("no data"))
        })
    });
    assert_eq!(failing["step"], 0, "{failing}");
    let rolled = wait_state(&c, "nodata", "RolledBack");
    assert!(
        rolled["gates"][0]["consecutiveFailures"].as_u64() >= Some(2),
        "{rolled}"
    );
    let s = tln.wait("phase=rolledback in the TXT", DEADLINE, |s| {
        s.txt_field("phase").as_deref() == Some("rolledback")
    });
    assert_eq!(s.split(), Some((100, 0)));
    assert_eq!(
        s.txt_field("start").and_then(|x| parse_split(&x)),
        Some((100, 0))
    );

    tlp.wait_split((0, 100), DEADLINE);
    let done = wait_state(&c, "passing", "Complete");
    assert_eq!(done["gates"][0]["passing"], true, "{done}");
    assert_eq!(done["gates"][0]["value"], 1.0, "{done}");

    // The no-data split never left the start split (before or after the rollback).
    assert_holds(
        &tln,
        (100, 0),
        Duration::from_secs(3),
        "a rolled-back split stays",
    );
    assert!(
        tln.snaps()
            .iter()
            .all(|s| s.split().is_none() || s.split() == Some((100, 0))),
        "the no-data rollout never moved:\n{}",
        tln.describe()
    );
    assert_eq!(state_of(&c, "nodata").as_deref(), Some("RolledBack"));
    let m = c.metrics().unwrap();
    assert_eq!(
        metric_sum(&m, "trafficshift_rollbacks_total", &[("split", "nodata")]),
        Some(1.0)
    );
    assert_eq!(
        metric_sum(&m, "trafficshift_rollbacks_total", &[("split", "passing")]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(shown(&tlp).last(), Some(&(0, 100)));
    assert_sums_to_100(&tlp);
}

// ---------------------------------------------------------------------------------------------
// 9. Capacity that never serves (no healthy target): the scale-up made ahead of the step stays,
// the controller's own wait is no gate failure, and the step fails at progressDeadline, not before.

#[test]
fn targets_that_never_turn_healthy_fail_the_step_at_the_progress_deadline() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    // Take away the healthy targets provision.py registered: nothing will ever serve.
    let left = moto.py(
        r#"
elb = client("elbv2")
tg = input["tg"]
ts = [{"Id": d["Target"]["Id"], "Port": d["Target"]["Port"]}
      for d in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]]
if ts:
    elb.deregister_targets(TargetGroupArn=tg, Targets=ts)
out = len(elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"])
"#,
        json!({"tg": sc.info["target_group_arn"]}),
    );
    assert_eq!(left, json!(0), "no target left in the target group");
    let tl = Timeline::start(&moto, &sc);
    let dir = tempfile::tempdir().unwrap();
    let block = rollout_block(
        "[25, 50, 100]",
        "2s",
        "    progressDeadline: 8s\n    gateInterval: 1s\n    failureThreshold: 3\n    onGateFailure: rollback\n",
    ) + "  gates:\n    - name: fargate-stable\n      ecsStable:\n        backend: fargate\n";
    write_doc(dir.path(), "api", &sc.document("api", 0, 100, &block));

    let mut c = Controller::start(&moto.endpoint, &[dir.path()], "test", RESYNC);
    c.wait_ready(DEADLINE);
    let st = wait_for("status waiting for healthy targets", DEADLINE, || {
        c.split("api").filter(|s| {
            s["waitingFor"].as_str().is_some_and(|w| {
                w.starts_with("capacity: fargate 0/5 healthy targets in tg ")
                    && w.contains("for 25% (waiting ")
                    && w.ends_with(" of 8s)")
            })
        })
    });
    assert_eq!(st["state"], "Progressing", "{st}");
    let rolled = wait_state(&c, "api", "RolledBack");
    tl.wait("the rolled-back TXT", DEADLINE, |s| {
        s.txt_field("phase").as_deref() == Some("rolledback")
    });

    let snaps = tl.snaps();
    assert!(
        snaps.iter().all(|s| s.split().is_none_or(|(_, f)| f == 0)),
        "fargate never got a weight without healthy targets:\n{}",
        tl.describe()
    );
    let up = snaps
        .iter()
        .position(|s| s.desired == 5)
        .unwrap_or_else(|| panic!("desiredCount raised to 5 for 25%:\n{}", tl.describe()));
    let back = snaps
        .iter()
        .position(|s| s.txt_field("phase").as_deref() == Some("rolledback"))
        .expect("rolled-back snapshot");
    assert!(up < back, "{}", tl.describe());
    // The scale-up happened before snaps[up].t1; the rollback after snaps[back - 1].t0.
    let waited = snaps[back - 1].t0 - snaps[up].t1;
    assert!(
        waited >= 7.0,
        "rolled back {waited:.2}s after the scale-up, before progressDeadline 8s:\n{}",
        tl.describe()
    );
    // The rollback writes the TXT and then lowers the count within milliseconds; the last
    // snapshot before `back` may have read Route53 before that write and ECS after it, so it
    // proves nothing either way and is left out.
    let waiting = &snaps[up..(back - 1).max(up)];
    assert!(
        waiting.iter().all(|s| s.desired == 5),
        "the count raised ahead of the step stayed while it waited:\n{}",
        tl.describe()
    );
    let events: Vec<&str> = rolled["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        events.contains(&"ProgressDeadlineExceeded") && !events.contains(&"GateFailed"),
        "{events:?}"
    );
    assert_eq!(rolled["gates"][0]["consecutiveFailures"], 0, "{rolled}");
}
