//! Webhook notifications (issue 14 part 2), end to end: the real binary reconciles against moto
//! through the realistic AWS layer and posts to an HTTP server of this test, which records every
//! request. The test judges the payloads and verifies the signature itself.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::controller::{
    metric_sum, run_cli, set_alarm, wait_for, write_atomic, Controller, Scenario,
};
use support::{unique, Moto};

const DEADLINE: Duration = Duration::from_secs(120);
const KEY: &str = "correct horse battery staple";
/// Stands for the credential a real webhook URL carries in its path.
const TOKEN: &str = "T0KEN-never-in-logs";

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Post {
    content_type: String,
    signature: Option<String>,
    body: Vec<u8>,
}

impl Post {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A tiny HTTP/1.1 server: answers 200 to every request and keeps it.
struct Receiver {
    url: String,
    posts: Arc<Mutex<Vec<Post>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook/{TOKEN}", l.local_addr().unwrap());
        let posts = Arc::new(Mutex::new(Vec::new()));
        let keep = posts.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    headers.push(line.trim_end().to_string());
                }
                let header = |name: &str| {
                    headers.iter().find_map(|h| {
                        let (k, v) = h.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                };
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                keep.lock().unwrap().push(Post {
                    content_type: header("content-type").unwrap_or_default(),
                    signature: header("x-trafficshift-signature"),
                    body,
                });
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Receiver { url, posts }
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The first CloudEvent of `type_` with `pred` true of it.
    fn wait_event(&self, type_: &str, pred: impl Fn(&Value) -> bool) -> (Post, Value) {
        wait_for(&format!("a {type_} notification"), DEADLINE, || {
            self.posts()
                .into_iter()
                .map(|p| {
                    let v = p.json();
                    (p, v)
                })
                .find(|(_, v)| v["type"] == type_ && pred(v))
        })
    }
}

/// `sha256=<hex>` computed here, from the key and the bytes received.
fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// `data` of every CloudEvent, as docs/operations.md "Notifications" shows it (sorted).
const DATA_KEYS: [&str; 11] = [
    "actor",
    "from",
    "gate",
    "hostedZone",
    "message",
    "record",
    "split",
    "state",
    "step",
    "steps",
    "to",
];

fn check_envelope(p: &Post, v: &Value, record: &str) {
    assert_eq!(p.content_type, "application/cloudevents+json", "{v}");
    assert_eq!(
        p.signature.as_deref(),
        Some(expected_signature(&p.body).as_str()),
        "signature of {v}"
    );
    assert_eq!(v["specversion"], "1.0", "{v}");
    assert_eq!(v["subject"], "api", "{v}");
    assert_eq!(v["source"], "/trafficshift/test", "{v}");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert!(v["time"].as_str().is_some_and(|s| s.ends_with('Z')), "{v}");
    let mut keys: Vec<&str> = v["data"]
        .as_object()
        .unwrap_or_else(|| panic!("data is an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, DATA_KEYS, "the documented data fields: {v}");
    assert_eq!(v["data"]["split"], "api", "{v}");
    assert_eq!(v["data"]["record"], format!("{record} A"), "{v}");
}

fn start(moto: &Moto, dir: &Path, rx: &Receiver) -> Controller {
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{KEY}\n")).unwrap();
    let docs = dir.join("docs");
    let mut c = Controller::start(
        moto.aws(),
        &[&docs],
        "test",
        &[
            "--resync",
            "1s",
            "--notify",
            &rx.url,
            "--notify-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    c.wait_ready(DEADLINE);
    c
}

fn weights(v: &Value, lambda: i64, fargate: i64) -> bool {
    v["lambda"] == lambda && v["fargate"] == fargate
}

/// What on-call does once the first step is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnCall {
    /// Nothing: the rollout runs to its end.
    Nothing,
    /// `trafficshift pause api`, then `abort api`, while the rollout holds at step 1.
    PauseAndAbort,
}

/// A step as announced: (lambda, fargate) before and after.
type Step = ((i64, i64), (i64, i64));

const REASON: &str = "p99 over 2s, INC-7";

/// A rollout lambda 100 -> fargate 100 in steps of 50 and 100 %, with the controller posting to
/// this test's receiver; `on_call` steps in after step 1. Every post must carry the documented
/// envelope, fields and signature, and the webhook URL must show nowhere.
fn a_rollout_notifies(on_call: OnCall) {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    let rx = Receiver::start();
    // To be aborted, the rollout must still be in progress when the command lands: an hour's hold.
    let interval = match on_call {
        OnCall::Nothing => "2s",
        OnCall::PauseAndAbort => "1h",
    };
    write_atomic(
        &dir.path().join("docs/api.yaml"),
        &sc.document(
            "api",
            0,
            100,
            &format!("  rollout:\n    steps: [50, 100]\n    interval: {interval}\n"),
        ),
    );
    let c = start(&moto, dir.path(), &rx);

    // Each StepAdvanced this run must announce.
    let want_steps: &[Step] = match on_call {
        OnCall::Nothing => {
            let (p, v) = rx.wait_event("dev.trafficshift.RolloutComplete", |_| true);
            check_envelope(&p, &v, &sc.record);
            let d = &v["data"];
            assert_eq!(
                (d["step"].as_u64(), d["steps"].as_u64()),
                (Some(2), Some(2)),
                "{v}"
            );
            assert!(weights(&d["to"], 0, 100), "{v}");
            assert!(weights(&d["from"], 50, 50), "{v}");
            // What AWS holds agrees with what was announced.
            assert_eq!(
                sc.weights(&moto),
                support::controller::weights(&[("lambda", 0), ("fargate", 100)])
            );
            &[((100, 0), (50, 50)), ((50, 50), (0, 100))]
        }
        OnCall::PauseAndAbort => {
            rx.wait_event("dev.trafficshift.StepAdvanced", |v| v["data"]["step"] == 1);
            let docs = dir.path().join("docs");
            let control = |action: &str| {
                let (code, out, err) = run_cli(
                    moto.aws(),
                    &[
                        action,
                        "api",
                        "--config",
                        docs.to_str().unwrap(),
                        "--owner-id",
                        "test",
                        "--reason",
                        REASON,
                    ],
                );
                assert_eq!(code, 0, "{action} failed: {out}\n{err}");
            };
            // Who the caller is, asked of moto here rather than taken from the controller.
            let caller = moto.boto3_json("sts", "get_caller_identity", json!({}))["Arn"]
                .as_str()
                .expect("an ARN")
                .to_string();
            let said_by_caller = |v: &Value| {
                let d = &v["data"];
                assert_eq!(d["actor"], caller.as_str(), "who asked: {v}");
                assert!(
                    d["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&format!("by {caller}")) && m.contains(REASON)),
                    "{v}"
                );
            };
            // A pause is announced by the state change it makes, an abort by the step back.
            control("pause");
            let (p, v) = rx.wait_event("dev.trafficshift.Paused", |_| true);
            check_envelope(&p, &v, &sc.record);
            said_by_caller(&v);
            assert_eq!(v["data"]["state"], "Paused", "{v}");
            control("abort");
            let (p, v) = rx.wait_event("dev.trafficshift.Aborted", |_| true);
            check_envelope(&p, &v, &sc.record);
            let d = &v["data"];
            said_by_caller(&v);
            assert_eq!(d["state"], "Aborted", "{v}");
            assert_eq!(d["steps"], 2, "{v}");
            assert!(d["step"].is_u64(), "{v}");
            assert_eq!(d["gate"], Value::Null, "{v}");
            assert!(weights(&d["from"], 50, 50), "{v}");
            assert!(weights(&d["to"], 100, 0), "back to the start split: {v}");
            assert!(
                d["message"].as_str().is_some_and(
                    |m| m.contains(&format!("abort by {caller}")) && m.contains(REASON)
                ),
                "{v}"
            );
            // AWS shows the abort.
            wait_for("Route53 back at lambda 100", DEADLINE, || {
                (sc.weights(&moto)
                    == support::controller::weights(&[("lambda", 100), ("fargate", 0)]))
                .then_some(())
            });
            &[((100, 0), (50, 50))]
        }
    };

    let all = rx.posts();
    let steps: Vec<Value> = all
        .iter()
        .map(Post::json)
        .filter(|v| v["type"] == "dev.trafficshift.StepAdvanced")
        .collect();
    assert_eq!(
        steps.len(),
        want_steps.len(),
        "one StepAdvanced per step taken: {steps:#?}"
    );
    for (i, (from, to)) in want_steps.iter().enumerate() {
        let d = &steps[i]["data"];
        assert_eq!(d["step"], i as u64 + 1, "{d}");
        assert_eq!(d["steps"], 2, "{d}");
        assert_eq!(d["actor"], Value::Null, "no override made this step: {d}");
        assert!(weights(&d["from"], from.0, from.1), "step {}: {d}", i + 1);
        assert!(weights(&d["to"], to.0, to.1), "step {}: {d}", i + 1);
        assert!(
            d["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("step {}/2", i + 1))),
            "{d}"
        );
    }
    for p in &all {
        check_envelope(p, &p.json(), &sc.record);
    }

    let m = c.metrics().expect("a scrape");
    let sent = metric_sum(
        &m,
        "trafficshift_notifications_total",
        &[("outcome", "sent")],
    );
    // The steps and the final event (RolloutComplete, or Aborted after Paused).
    let at_least = (want_steps.len() + 1) as f64;
    assert!(sent.is_some_and(|n| n >= at_least), "sent = {sent:?}");
    for outcome in ["failed", "dropped"] {
        assert_eq!(
            metric_sum(
                &m,
                "trafficshift_notifications_total",
                &[("outcome", outcome)]
            ),
            Some(0.0),
            "{outcome}"
        );
    }
    let log = c.log_text();
    assert!(!log.contains(TOKEN), "the webhook URL was logged:\n{log}");
    let status = c.status().expect("/status").to_string();
    assert!(!status.contains(TOKEN), "the webhook URL is in /status");
}

#[test]
fn a_rollout_posts_signed_step_and_complete_events() {
    a_rollout_notifies(OnCall::Nothing);
}

#[test]
fn pause_and_abort_post_signed_events_naming_the_caller() {
    a_rollout_notifies(OnCall::PauseAndAbort);
}

#[test]
fn a_failing_gate_posts_rolled_back_naming_the_gate() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let alarm = unique("alarm");
    set_alarm(&moto, &alarm, "OK");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    let rx = Receiver::start();
    let block = format!(
        "  rollout:\n    steps: [25, 50, 75, 100]\n    interval: 30s\n    failureThreshold: 2\n    gateInterval: 1s\n\
         \x20 gates:\n    - name: errors\n      cloudwatchAlarm:\n        alarmNames: [{alarm}]\n"
    );
    write_atomic(
        &dir.path().join("docs/api.yaml"),
        &sc.document("api", 0, 100, &block),
    );
    let _c = start(&moto, dir.path(), &rx);

    rx.wait_event("dev.trafficshift.StepAdvanced", |v| v["data"]["step"] == 1);
    set_alarm(&moto, &alarm, "ALARM");
    let (p, v) = rx.wait_event("dev.trafficshift.RolledBack", |_| true);
    check_envelope(&p, &v, &sc.record);
    let d = &v["data"];
    assert_eq!(d["gate"], "errors", "{v}");
    assert!(weights(&d["from"], 75, 25), "{v}");
    assert!(weights(&d["to"], 100, 0), "{v}");
    assert!(
        d["message"]
            .as_str()
            .is_some_and(|m| m.contains("gate errors failed")),
        "{v}"
    );
    // AWS shows the rollback.
    wait_for("Route53 back at lambda 100", DEADLINE, || {
        (sc.weights(&moto) == support::controller::weights(&[("lambda", 100), ("fargate", 0)]))
            .then_some(())
    });
}
