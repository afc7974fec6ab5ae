//! On-call control commands (issue 14 §1): `trafficshift abort|retry|pause|resume|promote|suspend|
//! unsuspend NAME` write an override into the split's state TXT while the controller runs. Every
//! controller and command talks to AWS through the layer in front of moto (`Moto::aws()`); the
//! results are read back from moto itself with boto3 and the AWS CLI, and what the controller
//! wrote is judged from the layer's write log.

use crate::support;
use crate::writelog;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::controller::{metric_sum, run_cli, wait_for, weights, Controller, Scenario};
use support::Moto;

const OWNER: &str = "oncall-test";

/// Steps of 25, 50, 100 % with an hour's hold: nothing advances past step 1 unless told to.
const ROLLOUT: &str = "  rollout:\n    steps: [25, 50, 100]\n    interval: 1h\n";

struct Setup {
    moto: Moto,
    sc: Scenario,
    dir: tempfile::TempDir,
}

/// A scenario at lambda 100 % with a document moving it to fargate, minTasks 20 so that ECS
/// capacity never holds a step (promote --full still has to scale first: the service starts at 2).
fn setup() -> Setup {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("api.yaml"),
        sc.document("api", 0, 100, ROLLOUT),
    )
    .unwrap();
    Setup { moto, sc, dir }
}

impl Setup {
    fn start(&self, resync: &str) -> Controller {
        let mut c = Controller::start(
            self.moto.aws(),
            &[self.dir.path()],
            OWNER,
            &["--resync", resync],
        );
        c.wait_ready(Duration::from_secs(60));
        c
    }

    /// `trafficshift <action> api --config DIR --owner-id OWNER <extra>` through the AWS layer.
    fn control(&self, action: &str, extra: &[&str]) -> (i32, String, String) {
        let config = self.dir.path().to_string_lossy().to_string();
        let mut args = vec![action, "api", "--config", &config, "--owner-id", OWNER];
        args.extend_from_slice(extra);
        run_cli(self.moto.aws(), &args)
    }

    fn control_ok(&self, action: &str, extra: &[&str]) -> String {
        let (code, out, err) = self.control(action, extra);
        assert_eq!(code, 0, "{action} failed: {out}\n{err}");
        out
    }

    fn wait_weights(&self, c: &Controller, want: &[(&str, i64)], deadline: Duration) {
        let want = weights(want);
        let t0 = Instant::now();
        loop {
            let now = self.sc.weights(&self.moto);
            if now == want {
                return;
            }
            assert!(
                t0.elapsed() < deadline,
                "Route53 (read with boto3) shows {now:?}, not {want:?}, after {deadline:?}; TXT {:?}\n{}",
                self.sc.state_txt(&self.moto),
                c.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Weights stay `want` for `d` (read every 200 ms).
    fn hold_weights(&self, want: &[(&str, i64)], d: Duration, why: &str) {
        let want = weights(want);
        let end = Instant::now() + d;
        while Instant::now() < end {
            assert_eq!(self.sc.weights(&self.moto), want, "{why}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn txt(&self) -> String {
        self.sc.state_txt(&self.moto).expect("state TXT exists")
    }

    /// The layer's write log.
    fn writes(&self) -> Vec<writelog::Entry> {
        writelog::read(&self.moto.layer().expect("layer started").log)
    }
}

/// Weighted records at the record, read with the AWS CLI: SetIdentifier -> Weight.
fn cli_weights(s: &Setup) -> std::collections::BTreeMap<String, i64> {
    let v = s.moto.cli(&[
        "route53",
        "list-resource-record-sets",
        "--hosted-zone-id",
        &s.sc.zone_id,
    ]);
    v["ResourceRecordSets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["Name"] == s.sc.record.as_str() && r.get("SetIdentifier").is_some())
        .map(|r| {
            (
                r["SetIdentifier"].as_str().unwrap().to_string(),
                r["Weight"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn state_gauge(c: &Controller, state: &str) -> Option<f64> {
    metric_sum(
        &c.metrics()?,
        "trafficshift_split_state",
        &[("split", "api"), ("state", state)],
    )
}

fn events(c: &Controller) -> Vec<String> {
    c.split("api")
        .map(|s| {
            s["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| format!("{} {}", e["reason"], e["message"]))
                .collect()
        })
        .unwrap_or_default()
}

fn config_arg(dir: &Path) -> String {
    dir.to_string_lossy().to_string()
}

#[test]
fn abort_returns_to_the_start_at_once_and_stays_until_retry() {
    let s = setup();
    // Before the controller ever wrote the split there is nothing to steer.
    let (code, _, err) = s.control("abort", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");

    // A 5 s resync: an aborted split rests, so it is looked at every resync; while the rollout
    // is active it is polled at least every 10 s anyway.
    let c = s.start("5s");
    s.wait_weights(
        &c,
        &[("lambda", 75), ("fargate", 25)],
        Duration::from_secs(60),
    );

    // Another controller's owner id does not own the split.
    let (code, _, err) = run_cli(
        s.moto.aws(),
        &[
            "abort",
            "api",
            "--config",
            &config_arg(s.dir.path()),
            "--owner-id",
            "someone-else",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("owned by trafficshift owner"), "{err}");
    // Resume makes no sense when nothing is paused.
    let (code, _, err) = s.control("resume", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not paused"), "{err}");

    let t0 = Instant::now();
    let out = s.control_ok("abort", &["--reason", "p99 over 2s, INC-7"]);
    assert!(out.contains("abort written"), "{out}");
    s.wait_weights(
        &c,
        &[("lambda", 100), ("fargate", 0)],
        Duration::from_secs(15),
    );
    let took = t0.elapsed();
    assert!(took <= Duration::from_secs(15), "abort took {took:?}");
    assert_eq!(
        cli_weights(&s),
        weights(&[("lambda", 100), ("fargate", 0)]),
        "the AWS CLI reads the start split back"
    );
    // Stays there across several resyncs (the hour's hold would not have moved it anyway; the
    // abort must not be undone by the controller's own drift correction or a restart of steps).
    s.hold_weights(
        &[("lambda", 100), ("fargate", 0)],
        Duration::from_secs(12),
        "an aborted split stays at its start",
    );
    let txt = s.txt();
    assert!(txt.contains("phase=rolledback"), "{txt}");
    assert!(txt.contains("ovr=abort"), "{txt}");
    assert!(txt.contains("ovrdone=1"), "acknowledged: {txt}");
    assert!(txt.contains("ovrwhy=p99 over 2s%2C INC-7"), "{txt}");

    // Shown: state, override (who, when, why), event and metric.
    let st = wait_for("/status to show Aborted", Duration::from_secs(15), || {
        c.split("api").filter(|v| v["state"] == "Aborted")
    });
    assert_eq!(st["override"]["action"], "abort");
    assert_eq!(st["override"]["reason"], "p99 over 2s, INC-7");
    assert!(
        st["override"]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("arn:aws:")),
        "{st}"
    );
    assert!(
        events(&c).iter().any(|e| e.contains("Aborted")),
        "{:?}",
        events(&c)
    );
    let (code, out, err) = run_cli(s.moto.aws(), &["status", "api", "--endpoint", &c.endpoint]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("Override"))
        .unwrap_or_else(|| panic!("`status api` shows no override:\n{out}"));
    assert!(
        line.contains("abort by arn:aws:") && line.contains("p99 over 2s, INC-7"),
        "{line}"
    );
    assert_eq!(state_gauge(&c, "Aborted"), Some(1.0));
    assert_eq!(state_gauge(&c, "Suspended"), Some(0.0), "exists at 0");
    let (code, _, err) = s.control("abort", &[]);
    assert_eq!(code, 1, "a second abort is refused");
    assert!(err.contains("aborted"), "{err}");

    // Retry restarts from the current split: the first step leaves at once.
    s.control_ok("retry", &["--reason", "fixed"]);
    s.wait_weights(
        &c,
        &[("lambda", 75), ("fargate", 25)],
        Duration::from_secs(30),
    );
    wait_for(
        "/status to show Progressing",
        Duration::from_secs(15),
        || c.split("api").filter(|v| v["state"] == "Progressing"),
    );
    assert!(s.txt().contains("ovr=retry"));
    assert!(events(&c).iter().any(|e| e.contains("Retried")));
}

#[test]
fn pause_holds_promote_skips_a_hold_and_promote_full_scales_first() {
    let s = setup();
    let c = s.start("2s");
    s.wait_weights(
        &c,
        &[("lambda", 75), ("fargate", 25)],
        Duration::from_secs(60),
    );

    s.control_ok("pause", &["--reason", "watching"]);
    wait_for("/status to show Paused", Duration::from_secs(15), || {
        c.split("api").filter(|v| v["state"] == "Paused")
    });
    let (code, _, err) = s.control("promote", &[]);
    assert_eq!(code, 1, "promote on a paused split is refused");
    assert!(err.contains("paused"), "{err}");
    s.hold_weights(
        &[("lambda", 75), ("fargate", 25)],
        Duration::from_secs(6),
        "a paused split does not advance",
    );
    assert_eq!(state_gauge(&c, "Paused"), Some(1.0));

    s.control_ok("resume", &[]);
    // Still inside its hour's hold: resuming alone takes no step.
    s.hold_weights(
        &[("lambda", 75), ("fargate", 25)],
        Duration::from_secs(4),
        "resume does not skip the hold",
    );
    let t0 = Instant::now();
    s.control_ok("promote", &["--reason", "looks good"]);
    s.wait_weights(
        &c,
        &[("lambda", 50), ("fargate", 50)],
        Duration::from_secs(15),
    );
    assert!(t0.elapsed() < Duration::from_secs(15));
    // Consumed once: the next hold is kept.
    s.hold_weights(
        &[("lambda", 50), ("fargate", 50)],
        Duration::from_secs(5),
        "a promote skips one hold only",
    );
    assert!(s.txt().contains("ovr=promote,"), "{}", s.txt());
    assert!(s.txt().contains("ovrdone=1"), "{}", s.txt());

    // The service is scaled for 50 % only (10 tasks): --full must scale to 20 before fargate
    // gets 100.
    let before = s.writes().len();
    s.control_ok("promote", &["--full"]);
    s.wait_weights(
        &c,
        &[("lambda", 0), ("fargate", 100)],
        // In the realistic layer ECS starts one task a second and targets must turn healthy.
        Duration::from_secs(60),
    );
    wait_for("/status to show Complete", Duration::from_secs(15), || {
        c.split("api").filter(|v| v["state"] == "Complete")
    });
    let entries = s.writes();
    let after = &entries[before..];
    let full = writelog::batches(after)
        .into_iter()
        .find(|b| {
            b.accepted
                && b.changes
                    .iter()
                    .any(|ch| ch.set_id.as_deref() == Some("fargate") && ch.weight == Some(100))
        })
        .expect("a batch set fargate to 100");
    let scaled = writelog::ecs_updates(after)
        .into_iter()
        .find(|u| u.accepted && u.service == s.sc.service && u.desired >= Some(20))
        .expect("an UpdateService to 20 tasks");
    assert!(
        scaled.seq < full.seq,
        "capacity before traffic: UpdateService (seq {}) must come before the batch (seq {})",
        scaled.seq,
        full.seq
    );
    let (desired, _) = s.sc.ecs_counts(&s.moto);
    assert!(desired >= 20, "desired {desired}");
}

#[test]
fn suspend_keeps_a_hand_edit_until_unsuspend() {
    let s = setup();
    let c = s.start("1s");
    s.wait_weights(
        &c,
        &[("lambda", 75), ("fargate", 25)],
        Duration::from_secs(60),
    );

    s.control_ok("suspend", &["--reason", "INC-9 hand fix"]);
    wait_for("/status to show Suspended", Duration::from_secs(15), || {
        c.split("api").filter(|v| v["state"] == "Suspended")
    });
    let txt_before = s.txt();
    let writes_before = s.writes().len();

    // On-call edits the weights by hand with the AWS CLI, straight to Route53.
    let records = s.moto.cli(&[
        "route53",
        "list-resource-record-sets",
        "--hosted-zone-id",
        &s.sc.zone_id,
    ]);
    let changes: Vec<Value> = records["ResourceRecordSets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["Name"] == s.sc.record.as_str() && r.get("SetIdentifier").is_some())
        .map(|r| {
            let mut r = r.clone();
            let w = if r["SetIdentifier"] == "lambda" {
                40
            } else {
                60
            };
            r["Weight"] = json!(w);
            json!({"Action": "UPSERT", "ResourceRecordSet": r})
        })
        .collect();
    s.moto.cli(&[
        "route53",
        "change-resource-record-sets",
        "--hosted-zone-id",
        &s.sc.zone_id,
        "--change-batch",
        &json!({ "Changes": changes }).to_string(),
    ]);
    // Several 1 s resyncs: the hand edit survives, and the controller writes nothing at all.
    let hand = weights(&[("lambda", 40), ("fargate", 60)]);
    assert_eq!(cli_weights(&s), hand);
    s.hold_weights(
        &[("lambda", 40), ("fargate", 60)],
        Duration::from_secs(8),
        "a suspended split keeps a hand edit",
    );
    assert_eq!(cli_weights(&s), hand, "read back with the AWS CLI");
    assert_eq!(s.txt(), txt_before, "the state TXT is not touched");
    let writes: Vec<String> = s.writes()[writes_before..]
        .iter()
        .filter(|e| e.body.is_some() && e.operation != "GetCallerIdentity")
        .map(|e| format!("{} {}", e.service, e.operation))
        .collect();
    assert!(
        writes
            .iter()
            .all(|w| !w.contains("ChangeResourceRecordSets") && !w.contains("UpdateService")),
        "nothing written while suspended: {writes:?}"
    );
    assert_eq!(state_gauge(&c, "Suspended"), Some(1.0));
    let st = c.split("api").unwrap();
    assert_eq!(st["override"]["action"], "suspend");
    assert_eq!(st["override"]["reason"], "INC-9 hand fix");
    assert!(events(&c).iter().any(|e| e.contains("Suspended")));
    // Only unsuspend is accepted while suspended.
    let (code, _, err) = s.control("abort", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("suspended"), "{err}");

    s.control_ok("unsuspend", &[]);
    s.wait_weights(
        &c,
        &[("lambda", 75), ("fargate", 25)],
        Duration::from_secs(15),
    );
    assert_eq!(cli_weights(&s), weights(&[("lambda", 75), ("fargate", 25)]));
    assert!(events(&c).iter().any(|e| e.contains("Unsuspended")));
}
