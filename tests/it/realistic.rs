//! Issue #9's proof on real AWS timing, through the realistic AWS layer (`scripts/faultproxy.py`
//! with real-AWS behaviours) in front of moto, whatever `TRAFFICSHIFT_TEST_AWS` says:
//!
//! - the README's example (ecsStable, targetHealth and a CloudWatch alarm gate) goes 0 -> 100
//!   without a rollback while Fargate tasks take 30 s each to start, new ALB targets stay
//!   `initial` for 20 s, Route53 changes stay PENDING and the new alarm reports
//!   INSUFFICIENT_DATA at first. Every Route53 raise of the fargate weight is judged against what
//!   the LAYER served at that moment (its log), never against the controller's own view;
//! - a service whose tasks never start ends Degraded at `progressDeadline`, then rolls back, and
//!   nothing fails (or scales down) earlier.

use crate::support;
use crate::writelog;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::controller::{set_alarm, wait_for, write_atomic, Controller, FaultProxy, Scenario};
use support::Moto;

/// Healthy targets the fargate service needs before its weight may rise to each share, for
/// `tasksAtFullTraffic: 3, minTasks: 1`: ceil(3 x share / 100), written out.
fn serving_needed(share: i64) -> i64 {
    match share {
        0 => 0,
        34 => 2,
        67 => 3,
        100 => 3,
        other => panic!("no expected task count written down for a {other}% share"),
    }
}

fn document(sc: &Scenario, rollout: &str, gates: &str) -> String {
    sc.document("api", 0, 100, &format!("{rollout}{gates}"))
        .replace("tasksAtFullTraffic: 20", "tasksAtFullTraffic: 3")
        .replace("minTasks: 2", "minTasks: 1")
        .replace("maxTasks: 40", "maxTasks: 6")
}

/// Healthy targets the layer served for `label` ("cluster/service") in its least healthy target
/// group, from a log entry's capacity snapshot.
fn served_healthy(capacity: &Value, label: &str) -> Option<i64> {
    capacity[label]["target_groups"]
        .as_object()?
        .values()
        .map(|tg| tg["healthy"].as_i64().unwrap_or(0))
        .min()
}

#[test]
fn the_readme_example_goes_0_to_100_on_real_timings_with_serving_capacity_before_every_raise() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 1);
    let alarm = format!("{}-5xx", sc.service);
    set_alarm(&moto, &alarm, "OK");
    let layer = FaultProxy::start(
        &moto.endpoint,
        9,
        0.0,
        "500",
        &[
            "--realistic",
            "--task-start",
            "30",
            "--health-check-seconds",
            "20",
            "--deregistration-delay",
            "5",
            "--change-pending",
            "10",
            "--alarm-insufficient-data",
            "20",
            "--route53-rps",
            "5",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let doc = document(
        &sc,
        "  rollout:\n    steps: [34, 67, 100]\n    interval: 5s\n    failureThreshold: 3\n    onGateFailure: rollback\n    gateInterval: 2s\n    progressDeadline: 5m\n",
        &format!(
            "  gates:\n    - name: no-5xx\n      cloudwatchAlarm: {{alarmNames: [{alarm}]}}\n    - name: fargate-stable\n      ecsStable: {{backend: fargate}}\n    - name: fargate-targets\n      targetHealth: {{backend: fargate, minHealthyPercent: 100}}\n"
        ),
    );
    write_atomic(&dir.path().join("api.yaml"), &doc);
    let mut c = Controller::start(&layer.endpoint, &[dir.path()], "real", &["--resync", "2s"]);
    let started = Instant::now();

    // 3 task starts of 30 s and 20 s of registration each, the alarm's first 20 s and three
    // holds: about 3 minutes. Judged from moto (what Route53 holds), not from the controller.
    wait_for(
        "lambda 0 / fargate 100 in Route53 (moto), phase complete",
        Duration::from_secs(420),
        || {
            if let Some(code) = c.exit_code() {
                panic!("the controller exited with {code:?}:\n{}", c.log_tail());
            }
            let w = sc.weights(&moto);
            let done = w.get("fargate") == Some(&100)
                && w.get("lambda").copied().unwrap_or(0) == 0
                && sc
                    .state_txt(&moto)
                    .is_some_and(|t| t.contains("phase=complete"));
            done.then_some(())
        },
    );
    let took = started.elapsed();
    // Real timing held the rollout back: the service starts at 1 task and needs 3, and the layer
    // starts one task every 30 s and keeps each new target `initial` for 20 s, so the last raise
    // cannot come before 2 x 30 s + 20 s.
    assert!(
        took >= Duration::from_secs(80),
        "0 -> 100 in {took:?}: faster than the layer lets tasks start and register"
    );

    let entries = writelog::read(&layer.log);
    let label = format!("{}/{}", sc.cluster, sc.service);
    let mut last_fargate = 0;
    let mut raises = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.operation == "ChangeResourceRecordSets" && e.accepted())
    {
        let changes = writelog::parse_changes(e.body.as_deref().unwrap_or_default());
        let Some(fargate) = changes
            .iter()
            .filter(|ch| ch.action != "DELETE")
            .find(|ch| ch.set_id.as_deref() == Some("fargate"))
            .and_then(|ch| ch.weight)
        else {
            continue;
        };
        if fargate > last_fargate {
            let cap = e
                .capacity
                .as_ref()
                .unwrap_or_else(|| panic!("layer log entry {} has no capacity snapshot", e.seq));
            let healthy = served_healthy(cap, &label)
                .unwrap_or_else(|| panic!("no target group for {label} in {cap}"));
            let need = serving_needed(fargate);
            assert!(
                healthy >= need,
                "fargate raised {last_fargate} -> {fargate}% while the layer served {healthy} healthy targets (need {need}): {cap}"
            );
            raises.push((fargate, healthy));
        }
        last_fargate = fargate;
    }
    assert_eq!(
        raises.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![34, 67, 100],
        "every step raised fargate once, in order: {raises:?}"
    );

    // No rollback: the split never showed RolledBack and no rollback was counted.
    let m = c.metrics().expect("a /metrics scrape");
    let rollbacks =
        support::controller::metric_sum(&m, "trafficshift_rollbacks_total", &[("split", "api")])
            .expect("trafficshift_rollbacks_total{split=\"api\"} is exported");
    assert_eq!(rollbacks, 0.0, "{}", c.log_tail());
}

#[test]
fn tasks_that_never_start_end_degraded_at_the_progress_deadline_then_roll_back() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 1);
    let failing = format!("{}/{}", sc.cluster, sc.service);
    let layer = FaultProxy::start(
        &moto.endpoint,
        11,
        0.0,
        "500",
        &[
            "--realistic",
            "--task-start",
            "1",
            "--health-check-seconds",
            "2",
            "--change-pending",
            "1",
            "--route53-rps",
            "10",
            "--failing-service",
            &failing,
            // The circuit breaker would fail the step at once; here the deadline must do it.
            "--circuit-breaker",
            "3600",
        ],
    );
    let deadline = 25u64;
    let dir = tempfile::tempdir().unwrap();
    let doc = document(
        &sc,
        &format!("  rollout:\n    steps: [34, 67, 100]\n    interval: 2s\n    failureThreshold: 2\n    onGateFailure: rollback\n    gateInterval: 1s\n    progressDeadline: {deadline}s\n"),
        "  gates:\n    - name: fargate-stable\n      ecsStable: {backend: fargate}\n",
    );
    write_atomic(&dir.path().join("api.yaml"), &doc);
    let mut c = Controller::start(
        &layer.endpoint,
        &[dir.path()],
        "deadline",
        &["--resync", "1s"],
    );
    let started = Instant::now();

    // Before the deadline: the split waits (Progressing), never Degraded or RolledBack, though
    // its ecsStable gate fails every second (failureThreshold 2).
    let early = Duration::from_secs(deadline - 5);
    while started.elapsed() < early {
        if let Some(code) = c.exit_code() {
            panic!("the controller exited with {code:?}:\n{}", c.log_tail());
        }
        if let Some(s) = c.split("api") {
            let state = s["state"].as_str().unwrap_or_default().to_string();
            assert!(
                state == "Progressing" || state.is_empty(),
                "{state} after {:?}, before progressDeadline {deadline}s: {s}",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let rolled = wait_for(
        "the split RolledBack after progressDeadline",
        Duration::from_secs(60),
        || {
            let s = c.split("api")?;
            (s["state"] == "RolledBack").then_some(s)
        },
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(deadline),
        "rolled back after {took:?}, before the {deadline}s deadline: {rolled}"
    );
    let reasons: Vec<String> = rolled["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    assert!(
        reasons.iter().any(|r| r == "ProgressDeadlineExceeded"),
        "no ProgressDeadlineExceeded event: {reasons:?}"
    );

    // From outside: fargate's weight never rose (moto), and the layer's log shows the scale-up
    // kept until the deadline: no UpdateService lowered the count earlier.
    let w = sc.weights(&moto);
    assert_eq!(w.get("fargate").copied().unwrap_or(0), 0, "{w:?}");
    let entries = writelog::read(&layer.log);
    let first = entries.first().map(|e| e.time).unwrap_or(0.0);
    let mut peak = 0;
    for u in writelog::ecs_updates(&entries)
        .iter()
        .filter(|u| u.accepted)
    {
        let desired = u.desired.unwrap_or(0);
        if desired < peak {
            assert!(
                u.time - first >= deadline as f64 - 1.0,
                "desiredCount lowered {peak} -> {desired} {:.1}s in, before the deadline",
                u.time - first
            );
        }
        peak = peak.max(desired);
    }
    assert!(
        peak >= 2,
        "the controller never asked for capacity (peak {peak})"
    );
}
