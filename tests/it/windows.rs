//! Change windows (issue 14 part 4), end to end: the real binary against moto through the
//! realistic AWS layer, Route53 read back with the AWS CLI. A window that is closed now holds a
//! rollout at its start split over several resyncs; rewriting the document with a window open
//! now lets it finish.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::controller::{run_cli, wait_for, write_atomic, Controller, Scenario};
use support::Moto;

const DEADLINE: Duration = Duration::from_secs(90);

fn split(lambda: i64, fargate: i64) -> BTreeMap<String, i64> {
    [
        ("lambda".to_string(), lambda),
        ("fargate".to_string(), fargate),
    ]
    .into()
}

/// `HH:MM` UTC of now + `minutes` (wrapping at midnight).
fn utc_hhmm(minutes: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let m = ((now / 60 + minutes) % 1440 + 1440) % 1440;
    format!("{:02}:{:02}", m / 60, m % 60)
}

fn block(start: &str, end: &str) -> String {
    format!(
        "  rollout:\n    steps: [50, 100]\n    interval: 1s\n    windows:\n      - days: [mon, tue, wed, thu, fri, sat, sun]\n        start: \"{start}\"\n        end: \"{end}\"\n        timeZone: UTC\n"
    )
}

#[test]
fn a_closed_window_holds_a_rollout_and_an_open_one_lets_it_finish() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("api.yaml");
    // Opens in 2 h and closes in 3 h, every day: closed now whatever the time of day.
    let (start, end) = (utc_hhmm(120), utc_hhmm(180));
    write_atomic(&doc, &sc.document("api", 0, 100, &block(&start, &end)));
    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "1s"]);
    c.wait_ready(DEADLINE);

    // The weighted set is created at the start split (adoption is not a step) ...
    wait_for("the weighted set at lambda 100", DEADLINE, || {
        (sc.outside_weights(&moto) == split(100, 0)).then_some(())
    });
    // ... and stays there over several resyncs and many 1 s intervals.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(8) {
        let w = sc.outside_weights(&moto);
        assert_eq!(w, split(100, 0), "a step advanced outside the window");
        std::thread::sleep(Duration::from_millis(500));
    }
    let s = c.split("api").expect("/status of api");
    let waiting = s["waitingFor"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        waiting,
        format!("waiting for window (opens {} {start} UTC)", weekday_in(120)),
        "{s}"
    );
    assert!(
        s["nextStepAt"].as_str().is_some(),
        "next step time shown: {s}"
    );
    let progressing = s["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(progressing["reason"], "WaitingForWindow", "{s}");
    let (code, out, _) = run_cli(moto.aws(), &["status", "api", "--endpoint", &c.endpoint]);
    assert_eq!(code, 0);
    assert!(out.contains("waiting for window (opens"), "{out}");

    // A window open now: the rollout goes on to the target.
    write_atomic(
        &doc,
        &sc.document("api", 0, 100, &block(&utc_hhmm(-60), &utc_hhmm(60))),
    );
    wait_for("Route53 at fargate 100 (AWS CLI)", DEADLINE, || {
        (sc.outside_weights(&moto) == split(0, 100)).then_some(())
    });
}

/// `Mon` ... `Sun` of now + `minutes` in UTC; 1970-01-01 was a Thursday.
fn weekday_in(minutes: i64) -> &'static str {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days = (now + minutes * 60).div_euclid(86_400);
    ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize]
}

#[test]
fn validate_points_at_a_bad_time_zone_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let sc_doc = |extra: &str| {
        format!(
            "apiVersion: trafficshift.dev/v1alpha1\nkind: TrafficSplit\nmetadata:\n  name: api\nspec:\n  record:\n    hostedZone: example.com.\n    name: api.example.com\n    type: CNAME\n  backends:\n    - name: a\n      target:\n        cname: a.example.net\n    - name: b\n      target:\n        cname: b.example.net\n  weights:\n    a: 0\n    b: 100\n{extra}"
        )
    };
    let bad = dir.path().join("bad.yaml");
    let text = sc_doc("  rollout:\n    stepPercent: 50\n    windows:\n      - days: [mon]\n        start: \"9:00\"\n        end: \"17:00\"\n        timeZone: Asia/Tokio\n");
    std::fs::write(&bad, &text).unwrap();
    // Where each value is in the text (1-based line and column).
    let pos = |needle: &str| {
        text.lines()
            .enumerate()
            .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
            .unwrap()
    };
    let (code, out, err) = run_cli("http://127.0.0.1:9", &["validate", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let at = bad.display().to_string();
    let (l, c) = pos("\"9:00\"");
    assert!(
        text_has(&out, &err, &format!("{at}:{l}:{c}")),
        "start at {l}:{c}: {out}{err}"
    );
    assert!(
        text_has(&out, &err, "'9:00' is not a time HH:MM"),
        "{out}{err}"
    );
    let (l, c) = pos("Asia/Tokio");
    assert!(
        text_has(&out, &err, &format!("{at}:{l}:{c}")),
        "timeZone at {l}:{c}: {out}{err}"
    );
    assert!(
        text_has(&out, &err, "unknown time zone 'Asia/Tokio'"),
        "{out}{err}"
    );
}

fn text_has(out: &str, err: &str, needle: &str) -> bool {
    out.contains(needle) || err.contains(needle)
}
