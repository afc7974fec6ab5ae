//! Issue #6 part 3: while the controller runs (--resync 1s), its config file alternates every
//! 100 ms for 60 s between good documents (two weight sets A and B, alternating) and bad ones
//! (weights out of range, a syntax error, an unknown field, in turn), written in place so the
//! controller also sees half-written files. No Route53 write may derive from a bad document
//! (without a rollout every write goes straight to A or B), /healthz answers 200 throughout, and
//! with the good document left in place the split converges to it.

use crate::support;
use crate::writelog;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::controller::{
    foreign_records, list_zones, provision_splits, Controller, FaultProxy, FleetSplit,
};
use support::Moto;
use writelog::{show, Weights, Zones};

const ZONE: &str = "churn.example.";
const CHURN: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(100);

fn weights(split: &FleetSplit, a: i64) -> Weights {
    [
        (split.backends[0].clone(), a),
        (split.backends[1].clone(), 100 - a),
    ]
    .into()
}

fn zones_of(listing: &BTreeMap<String, Vec<serde_json::Value>>) -> Zones {
    let mut z = Zones::default();
    for (id, records) in listing {
        z.add_listing(id, records);
    }
    z
}

/// The bad documents, each carrying weights that differ from A and B (so a write derived from
/// one would show), and each broken before its weights (so no prefix of it is a valid document).
fn bad_documents(split: &FleetSplit) -> Vec<String> {
    let out_of_range = split.document("", &weights(split, 130), "");
    let syntax = split.document("", &weights(split, 50), "").replacen(
        "kind: TrafficSplit\n",
        "kind: [TrafficSplit\n",
        1,
    );
    let unknown = split.document("", &weights(split, 10), "").replacen(
        "    adoptExisting: true\n",
        "    adoptExisting: true\n    surprise: true\n",
        1,
    );
    assert_ne!(syntax, split.document("", &weights(split, 50), ""));
    assert_ne!(unknown, split.document("", &weights(split, 10), ""));
    vec![out_of_range, syntax, unknown]
}

/// Sum of the samples of `prefix`; a scrape without any fails the test (a missing counter must
/// not read as 0).
fn metric(text: &str, prefix: &str) -> f64 {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unreadable sample {l:?}"))
        })
        .collect();
    assert!(
        !values.is_empty(),
        "no {prefix} series in /metrics:\n{text}"
    );
    values.iter().sum()
}

#[test]
fn bad_documents_every_100ms_never_reach_route53() {
    let t0 = Instant::now();
    let moto = Moto::start();
    let split = FleetSplit::new("api", ZONE, &[30, 70], &[30, 70], None);
    let a = weights(&split, 30);
    let b = weights(&split, 70);
    let extra = [(ZONE.to_string(), foreign_records(ZONE))].into();
    // Start at B so that the first good document (A) is a change.
    let mut start = split.clone();
    start.start = b.clone();
    let info = provision_splits(&moto, "churn", std::slice::from_ref(&start), &extra);
    let zone_id = info["zones"][ZONE].as_str().unwrap().to_string();
    let ids = vec![zone_id.clone()];
    let initial = zones_of(&list_zones(&moto, &ids));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api.yaml");
    let good = [split.document("", &a, ""), split.document("", &b, "")];
    let bad = bad_documents(&split);
    std::fs::write(&file, &good[0]).unwrap();
    let proxy = FaultProxy::start(&moto.endpoint, 3, 0.0, "500", &[]);
    let mut c = Controller::start(&proxy.endpoint, &[dir.path()], "churn", &["--resync", "1s"]);
    c.wait_ready(Duration::from_secs(60));

    // Churn, with /healthz polled every 500 ms alongside.
    let stop = AtomicBool::new(false);
    let health: Vec<(f64, Option<u16>)> = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut out = Vec::new();
            let begin = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                out.push((begin.elapsed().as_secs_f64(), c.healthz()));
                std::thread::sleep(Duration::from_millis(500));
            }
            out
        });
        let begin = Instant::now();
        let mut i = 0usize;
        while begin.elapsed() < CHURN {
            let doc = if i % 2 == 0 {
                &good[(i / 2) % 2]
            } else {
                &bad[(i / 2) % 3]
            };
            // In place (truncate, then write): the controller may read half a file.
            std::fs::write(&file, doc).unwrap();
            i += 1;
            std::thread::sleep(TICK);
        }
        // The good document A stays.
        std::fs::write(&file, &good[0]).unwrap();
        stop.store(true, Ordering::Relaxed);
        poller.join().unwrap()
    });
    let bad_polls: Vec<_> = health.iter().filter(|(_, s)| *s != Some(200)).collect();
    assert!(
        health.len() >= 100,
        "only {} /healthz polls in {CHURN:?}",
        health.len()
    );
    assert!(
        bad_polls.is_empty(),
        "/healthz not 200 during the churn (seconds into it, status): {bad_polls:?}"
    );
    assert_eq!(c.exit_code(), None, "the controller died during the churn");

    // Converges to the document left in place.
    let deadline = Duration::from_secs(60);
    let started = Instant::now();
    loop {
        let now = zones_of(&list_zones(&moto, &ids));
        let w = now.weights(&zone_id, &split.record);
        let txt = now.txt(&zone_id, &split.record);
        let state = c.split("api").map(|s| s["state"].clone());
        if w == a
            && txt
                .as_ref()
                .is_some_and(|t| t.phase == "complete" && t.cur == a)
            && state.as_ref().is_some_and(|s| s == "Complete")
        {
            break;
        }
        assert!(
            started.elapsed() < deadline,
            "not converged to A ({}) {deadline:?} after the churn: Route53 {}, TXT {txt:?}, state {state:?}",
            show(&a),
            show(&w)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(c.sigterm(Duration::from_secs(20)), Some(0));

    // Every write the controller attempted (accepted or not) shows A or B.
    let entries = writelog::read(&proxy.log);
    let mut state = initial.clone();
    let (mut to_a, mut to_b) = (0, 0);
    let allowed = [
        writelog::fqdn(&split.record),
        format!("_trafficshift.{}", writelog::fqdn(&split.record)),
    ];
    for batch in writelog::batches(&entries) {
        for ch in &batch.changes {
            assert!(
                allowed.contains(&ch.name),
                "#{} writes a foreign name {}",
                batch.seq,
                ch.name
            );
        }
        let mut after = state.clone();
        after.apply(&batch);
        let w = after.weights(&zone_id, &split.record);
        assert!(
            w == a || w == b,
            "#{} would set {}: not a good document's weights (A {}, B {})",
            batch.seq,
            show(&w),
            show(&a),
            show(&b)
        );
        if let Some(t) = after.txt(&zone_id, &split.record) {
            assert_eq!(t.cur, w, "#{} TXT and weights disagree", batch.seq);
        }
        if batch.accepted {
            if w == a {
                to_a += 1;
            } else {
                to_b += 1;
            }
            state = after;
        }
    }
    eprintln!(
        "{} /healthz polls all 200; {to_a} writes to A and {to_b} to B; total {:?}",
        health.len(),
        t0.elapsed()
    );
    assert!(
        to_a >= 2 && to_b >= 2,
        "good documents were not applied during the churn ({to_a} writes to A, {to_b} to B)"
    );
}

/// An unchanged config directory is re-read on the resync tick, not in a loop: the controller's
/// own reads of its files must not count as changes.
#[test]
fn an_idle_config_is_not_reloaded_in_a_loop() {
    let moto = Moto::start();
    let split = FleetSplit::new("idle", ZONE, &[30, 70], &[30, 70], None);
    let info = provision_splits(
        &moto,
        "idle",
        std::slice::from_ref(&split),
        &BTreeMap::new(),
    );
    assert!(info["zones"][ZONE].is_string());
    // The controller also watches the config directory's parent: keep that one quiet too (the
    // system temp dir is not: logs of every test go there).
    let quiet = tempfile::tempdir().unwrap();
    let dir = quiet.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("idle.yaml"), split.document("", &split.target, "")).unwrap();
    let mut c = Controller::start(
        &moto.endpoint,
        &[dir.as_path()],
        "idle",
        &["--resync", "2s"],
    );
    c.wait_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    let reloads = || {
        metric(
            &c.metrics().expect("GET /metrics answers"),
            "trafficshift_config_reloads_total",
        )
    };
    let before = reloads();
    std::thread::sleep(Duration::from_secs(6));
    let delta = reloads() - before;
    // 6 s at --resync 2s: 3 resync reloads, 2 to spare.
    assert!(
        delta <= 5.0,
        "{delta} config reloads in 6 s with nothing changing (--resync 2s):\n{}",
        c.log_tail()
    );
}
