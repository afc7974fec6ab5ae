//! Issue #6 part 2: kill -9 the controller 30 times at random (seeded) moments during a 10-step
//! rollout of 4 splits, restarting it each time with the same flags. It must resume from the
//! state kept in Route53: never skip a step, never shorten the hold interval, never apply a step
//! twice, and end at the target. Checked from the proxy's write log (it sees every write, even one
//! whose answer the killed process never read) and from boto3 snapshots taken between restarts.

use crate::support;
use crate::writelog;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use support::controller::{
    ecs_desired, foreign_records, list_zones, provision_splits, Controller, FaultProxy, FleetSplit,
};
use support::Moto;
use writelog::{show, EcsCheck, SplitCheck, Zones};

const CLUSTER: &str = "crash";
const ZONE: &str = "crash.example.";
const KILLS: usize = 30;
const SEED: u64 = 6;
/// Hold interval between steps, seconds.
const INTERVAL: f64 = 4.0;
/// Allowed shortfall of the hold by the proxy's clock: request latency jitter only.
const TOLERANCE: f64 = 0.25;
const ROLLOUT: &str = "    steps: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]\n    interval: 4s\n";
const FLAGS: [&str; 4] = ["--resync", "2s", "--route53-rps", "50"];

fn steps() -> Vec<u32> {
    (1..=10).map(|i| i * 10).collect()
}

fn fleet() -> Vec<FleetSplit> {
    vec![
        FleetSplit::new("c0", ZONE, &[100, 0], &[0, 100], Some("svc-0")),
        FleetSplit::new("c1", ZONE, &[100, 0], &[0, 100], None),
        FleetSplit::new("c2", ZONE, &[100, 0], &[35, 65], None),
        FleetSplit::new("c3", ZONE, &[100, 0, 0], &[0, 50, 50], None),
    ]
}

fn zones_of(listing: &BTreeMap<String, Vec<serde_json::Value>>) -> Zones {
    let mut z = Zones::default();
    for (id, records) in listing {
        z.add_listing(id, records);
    }
    z
}

#[test]
fn kill_9_thirty_times_mid_rollout_resumes_from_route53() {
    let t0 = Instant::now();
    let moto = Moto::start();
    let splits = fleet();
    let extra = [(ZONE.to_string(), foreign_records(ZONE))].into();
    let info = provision_splits(&moto, CLUSTER, &splits, &extra);
    let zone_id = info["zones"][ZONE].as_str().unwrap().to_string();
    let ids = vec![zone_id.clone()];
    let initial = zones_of(&list_zones(&moto, &ids));
    let checks: Vec<SplitCheck> = splits
        .iter()
        .map(|s| SplitCheck {
            name: s.name.clone(),
            record: s.record.clone(),
            zone_id: zone_id.clone(),
            start: s.start.clone(),
            target: s.target.clone(),
            steps: steps(),
            ecs: s.ecs.as_ref().map(|(backend, service)| EcsCheck {
                backend: backend.clone(),
                cluster: CLUSTER.into(),
                service: service.clone(),
                tasks: writelog::FLEET_TASKS,
            }),
            hold: Some((INTERVAL, TOLERANCE)),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for s in &splits {
        std::fs::write(
            dir.path().join(format!("{}.yaml", s.name)),
            s.document(CLUSTER, &s.target, ROLLOUT),
        )
        .unwrap();
    }
    // The proxy injects nothing: it is there to log every write.
    // ECS capacity is judged from what the AWS layer served at each write.
    let proxy = FaultProxy::start(&moto.endpoint, SEED, 0.0, "500", writelog::LAYER_ECS);

    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    // Per split: the step index of each boto3 snapshot between restarts.
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut mid_rollout_kills = 0;
    let mut lives = Vec::new();
    for k in 0..KILLS {
        let mut c = Controller::start(&proxy.endpoint, &[dir.path()], "crash", &FLAGS);
        let life = Duration::from_millis(rng.random_range(100..2000));
        std::thread::sleep(life);
        if let Some(code) = c.exit_code() {
            panic!(
                "controller {k} exited on its own with {code:?}:\n{}",
                c.log_tail()
            );
        }
        c.kill9();
        lives.push(life.as_millis());
        // A consistent snapshot: nobody writes while the controller is down.
        let snap = zones_of(&list_zones(&moto, &ids));
        let mut progressing = false;
        for s in &checks {
            let w = snap.weights(&zone_id, &s.record);
            let Some(t) = snap.txt(&zone_id, &s.record) else {
                assert_eq!(
                    w, s.start,
                    "kill {k}: {} changed without a state TXT",
                    s.name
                );
                progressing = true;
                continue;
            };
            assert_eq!(
                t.cur, w,
                "kill {k}: {} TXT and weights disagree after kill -9",
                s.name
            );
            progressing |= t.phase != "complete";
            let pct = if t.step == 0 { 0 } else { steps()[t.step - 1] };
            assert!(
                writelog::is_step(&w, &s.start, &s.target, pct),
                "kill {k}: {} at {} is not step {}",
                s.name,
                show(&w),
                t.step
            );
            let hist = seen.entry(s.name.clone()).or_default();
            if let Some(&prev) = hist.last() {
                assert!(
                    t.step >= prev,
                    "kill {k}: {} went back from step {prev} to {}",
                    s.name,
                    t.step
                );
            }
            hist.push(t.step);
        }
        if progressing {
            mid_rollout_kills += 1;
        }
    }
    eprintln!(
        "{KILLS} kills after {lives:?} ms; {mid_rollout_kills} mid-rollout; steps seen between restarts: {seen:?}; {:?} so far",
        t0.elapsed()
    );
    assert!(
        mid_rollout_kills >= KILLS / 2,
        "only {mid_rollout_kills} of {KILLS} kills hit a rollout in progress: the test lost its point"
    );

    // A last controller finishes the rollout.
    let mut c = Controller::start(&proxy.endpoint, &[dir.path()], "crash", &FLAGS);
    let deadline = Duration::from_secs(120);
    let started = Instant::now();
    loop {
        let now = zones_of(&list_zones(&moto, &ids));
        let left: Vec<String> = checks
            .iter()
            .filter(|s| {
                now.weights(&zone_id, &s.record) != s.target
                    || now.txt(&zone_id, &s.record).map(|t| t.phase).as_deref() != Some("complete")
            })
            .map(|s| format!("{} at {}", s.name, show(&now.weights(&zone_id, &s.record))))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < deadline,
            "not at target {deadline:?} after the last restart: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(c.sigterm(Duration::from_secs(20)), Some(0));

    let entries = writelog::read(&proxy.log);
    let outcome = writelog::check(&entries, &initial, &checks);
    eprintln!(
        "{} accepted change batches, {} UpdateService; step sequences: {}",
        outcome.accepted_batches,
        outcome.ecs_updates,
        outcome.summary()
    );
    outcome.assert_clean("kill -9 x30");
    let end = zones_of(&list_zones(&moto, &ids));
    for s in &checks {
        assert_eq!(
            outcome.state.weights(&zone_id, &s.record),
            end.weights(&zone_id, &s.record),
            "{}: the replayed log disagrees with Route53",
            s.name
        );
        let applied = &outcome.applied[&s.name];
        let idx: BTreeSet<usize> = applied.iter().map(|a| a.index).collect();
        assert_eq!(
            idx,
            (0..=10).filter(|&i| i > 0 || idx.contains(&0)).collect(),
            "{}: every step written once in order",
            s.name
        );
    }
    let desired = ecs_desired(&moto, CLUSTER, &["svc-0".to_string()]);
    assert!(
        desired["svc-0"] >= writelog::tasks_in(writelog::FLEET_TASKS, 100),
        "{desired:?}"
    );
    eprintln!("total {:?}", t0.elapsed());
}
