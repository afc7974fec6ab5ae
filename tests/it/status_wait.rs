//! `trafficshift status NAME --wait` against a running controller (moto through the AWS layer):
//! 0 on completion, 1 at once on a rollback, 124 at the timeout, and an unreachable controller
//! retried until the timeout. Weights are read back with the AWS CLI.

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::controller::{bin, free_port, set_alarm, wait_for, Controller, Scenario};
use support::{unique, Moto};

const DEADLINE: Duration = Duration::from_secs(120);

/// `trafficshift status <args> --wait` started in the background.
fn spawn_wait(endpoint: &str, args: &[&str]) -> Child {
    Command::new(bin())
        .arg("status")
        .args(args)
        .args(["--wait", "--endpoint", endpoint])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trafficshift status --wait")
}

/// Wait for the child to end (at most `deadline`): exit code, stdout, stderr, time taken.
fn finish(mut child: Child, deadline: Duration) -> (i32, String, String) {
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into(),
                String::from_utf8_lossy(&out.stderr).into(),
            );
        }
        if t.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "status --wait still running after {deadline:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn steps(interval: &str, extra: &str) -> String {
    format!("  rollout:\n    steps: [50, 100]\n    interval: {interval}\n{extra}")
}

#[test]
fn wait_ends_0_on_completion_1_on_rollback_124_on_timeout() {
    let moto = Moto::start();
    let done = Scenario::provision(&moto, 20);
    let rb = Scenario::provision(&moto, 20);
    let slow = Scenario::provision(&moto, 20);
    let alarm = unique("alarm");
    set_alarm(&moto, &alarm, "OK");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        std::fs::write(dir.path().join(format!("{name}.yaml")), text).unwrap()
    };
    // Each adopts its plain record (lambda at 100) and moves to fargate in two steps.
    write("done", done.document("done", 0, 100, &steps("3s", "")));
    write(
        "rb",
        rb.document(
            "rb",
            0,
            100,
            &steps(
                "600s",
                &format!(
                    "    failureThreshold: 1\n    gateInterval: 1s\n  gates:\n    - name: no-errors\n      cloudwatchAlarm:\n        alarmNames: [{alarm}]\n"
                ),
            ),
        ),
    );
    write("slow", slow.document("slow", 0, 100, &steps("600s", "")));
    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "1s"]);
    c.wait_ready(DEADLINE);

    // 0 once `done` completes, with a line per change on the way.
    let waiting = spawn_wait(&c.endpoint, &["done", "--timeout", "100s"]);
    let (code, out, err) = finish(waiting, DEADLINE);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("split \"done\": Complete"), "{out}");
    assert!(out.trim_end().ends_with("split \"done\" complete"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let mut dedup = lines.clone();
    dedup.dedup();
    assert_eq!(lines, dedup, "one line per change, no repeats: {out}");
    assert_eq!(
        done.outside_weights(&moto),
        [("fargate".to_string(), 100), ("lambda".to_string(), 0)].into(),
        "Route53 really is at the target"
    );

    // 124 at the timeout while `slow` holds its first step for 600 s.
    wait_for("slow at its first step", DEADLINE, || {
        (slow.outside_weights(&moto).get("fargate") == Some(&50)).then_some(())
    });
    let t = Instant::now();
    let (code, out, err) = finish(
        spawn_wait(&c.endpoint, &["slow", "--timeout", "3s"]),
        DEADLINE,
    );
    assert_eq!(code, 124, "{out}{err}");
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        out.contains("split \"slow\": Progressing step 1/2"),
        "{out}"
    );
    assert!(err.contains("timed out after 3s"), "{err}");

    // 1 at once when `rb` rolls back; its wait was started while it was healthy.
    wait_for("rb at its first step", DEADLINE, || {
        (rb.outside_weights(&moto).get("fargate") == Some(&50)).then_some(())
    });
    let waiting = spawn_wait(&c.endpoint, &["rb", "--timeout", "100s"]);
    std::thread::sleep(Duration::from_secs(2));
    set_alarm(&moto, &alarm, "ALARM");
    let t = Instant::now();
    let (code, out, err) = finish(waiting, DEADLINE);
    assert_eq!(code, 1, "{out}{err}");
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    assert!(err.contains("RolledBack"), "{err}");
    assert_eq!(
        rb.outside_weights(&moto),
        [("fargate".to_string(), 0), ("lambda".to_string(), 100)].into(),
        "Route53 really rolled back"
    );
}

#[test]
fn an_unreachable_controller_is_retried_until_the_timeout() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let t = Instant::now();
    let (code, out, err) = finish(
        spawn_wait(&endpoint, &["--timeout", "3s"]),
        Duration::from_secs(30),
    );
    assert_eq!(code, 124, "{out}{err}");
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(
        out.matches("retrying until the timeout").count(),
        1,
        "said once per outage: {out}"
    );
}
