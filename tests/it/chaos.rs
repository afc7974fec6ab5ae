//! Issue #6 part 1: a multi-step rollout of 20 splits over 3 hosted zones through the fault proxy
//! (throttling, 500, 503, 0-3 s latency, dropped connections), at 20% and at 50% of requests.
//! Every split must reach its target, and the invariants are checked from the proxy's write log
//! alone: weights sum to 100 after every accepted batch, no step skipped or taken backwards, the
//! state TXT travels with the weights, only the splits' names are written, and ECS capacity serves
//! (running, stable, healthy targets, as the AWS layer served it at the write) before its weight
//! rises.

use crate::support;
use crate::writelog;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::controller::{
    ecs_desired, foreign_records, list_zones, provision_splits, Controller, FaultProxy, FleetSplit,
};
use support::Moto;
use writelog::{fqdn, show, EcsCheck, SplitCheck, Zones};

const CLUSTER: &str = "fleet";
const STEPS: [u32; 4] = [25, 50, 75, 100];
const ROLLOUT: &str = "    steps: [25, 50, 75, 100]\n    interval: 1s\n";

/// 20 splits over 3 zones: 5 with an ECS backend (each its own service), 12 with two fixed
/// alias targets and 3 with three, moving to assorted targets (some need rounding).
fn fleet() -> Vec<FleetSplit> {
    let zone = |i: usize| format!("chaos{}.example.", i % 3);
    let mut out = Vec::new();
    for i in 0..20 {
        let name = format!("s{i}");
        let svc = format!("svc-{i}");
        let s = if i < 5 {
            let b = [100, 70, 35, 50, 85][i];
            FleetSplit::new(&name, &zone(i), &[100, 0], &[100 - b, b], Some(&svc))
        } else if i % 5 == 0 {
            let a = [0, 20, 10][i / 5 - 1];
            let b = (100 - a) / 2;
            FleetSplit::new(&name, &zone(i), &[100, 0, 0], &[a, b, 100 - a - b], None)
        } else {
            let a = [0, 30, 50, 20, 65, 10, 45][i % 7];
            FleetSplit::new(&name, &zone(i), &[100, 0], &[a, 100 - a], None)
        };
        out.push(s);
    }
    out
}

fn checks(splits: &[FleetSplit], zone_ids: &BTreeMap<String, String>) -> Vec<SplitCheck> {
    splits
        .iter()
        .map(|s| SplitCheck {
            name: s.name.clone(),
            record: s.record.clone(),
            zone_id: zone_ids[&s.zone].clone(),
            start: s.start.clone(),
            target: s.target.clone(),
            steps: STEPS.to_vec(),
            ecs: s.ecs.as_ref().map(|(backend, service)| EcsCheck {
                backend: backend.clone(),
                cluster: CLUSTER.to_string(),
                service: service.clone(),
                tasks: writelog::FLEET_TASKS,
            }),
            // Delays of up to 3 s before forwarding blur the proxy's clock: not checked here.
            hold: None,
        })
        .collect()
}

fn zones_of(listing: &BTreeMap<String, Vec<serde_json::Value>>) -> Zones {
    let mut z = Zones::default();
    for (id, records) in listing {
        z.add_listing(id, records);
    }
    z
}

/// Splits not yet at their target with a complete state TXT, as read with boto3.
fn unfinished(splits: &[SplitCheck], now: &Zones) -> Vec<String> {
    splits
        .iter()
        .filter_map(|s| {
            let w = now.weights(&s.zone_id, &s.record);
            let phase = now.txt(&s.zone_id, &s.record).map(|t| t.phase);
            (w != s.target || phase.as_deref() != Some("complete")).then(|| {
                format!(
                    "{} at {} (phase {:?}, target {})",
                    s.name,
                    show(&w),
                    phase,
                    show(&s.target)
                )
            })
        })
        .collect()
}

fn run_chaos(rate: f64, seed: u64, deadline: Duration) {
    let t0 = Instant::now();
    let moto = Moto::start();
    let splits = fleet();
    let zone_names: BTreeSet<String> = splits.iter().map(|s| s.zone.clone()).collect();
    let extra = zone_names
        .iter()
        .map(|z| (z.clone(), foreign_records(z)))
        .collect();
    let info = provision_splits(&moto, CLUSTER, &splits, &extra);
    let zone_ids: BTreeMap<String, String> =
        serde_json::from_value(info["zones"].clone()).expect("zone name -> id");
    let ids: Vec<String> = zone_ids.values().cloned().collect();
    let initial = zones_of(&list_zones(&moto, &ids));
    let checks = checks(&splits, &zone_ids);
    assert!(
        !unfinished(&checks, &initial).is_empty(),
        "the fleet starts away from its targets"
    );

    let dir = tempfile::tempdir().unwrap();
    for s in &splits {
        std::fs::write(
            dir.path().join(format!("{}.yaml", s.name)),
            s.document(CLUSTER, &s.target, ROLLOUT),
        )
        .unwrap();
    }
    let proxy = FaultProxy::start(
        &moto.endpoint,
        seed,
        rate,
        "throttle,500,503,delay,drop",
        &[&["--max-delay", "3"], writelog::LAYER_ECS].concat(),
    );
    eprintln!("provisioned in {:?}", t0.elapsed());
    let mut c = Controller::start(
        &proxy.endpoint,
        &[dir.path()],
        "chaos",
        &["--resync", "2s", "--route53-rps", "50"],
    );

    let started = Instant::now();
    loop {
        let now = zones_of(&list_zones(&moto, &ids));
        let left = unfinished(&checks, &now);
        if left.is_empty() {
            break;
        }
        if let Some(code) = c.exit_code() {
            panic!("controller exited with {code:?} mid-rollout; unfinished: {left:#?}");
        }
        if started.elapsed() > deadline {
            let states: Vec<String> = c
                .status()
                .and_then(|s| s["splits"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    format!(
                        "{} {} waiting for {}",
                        s["name"], s["state"], s["waitingFor"]
                    )
                })
                .collect();
            panic!(
                "after {deadline:?} at fault rate {rate}, {} split(s) not at target:\n{}\nstatus:\n{}\nproxy stats: {}",
                left.len(),
                left.join("\n"),
                states.join("\n"),
                proxy.stats()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let converged = started.elapsed();
    let stats = proxy.stats();
    assert_eq!(
        c.sigterm(Duration::from_secs(30)),
        Some(0),
        "SIGTERM exits 0"
    );

    // The faults really happened. At 50% (hundreds of requests, each kind 10%) every kind is
    // drawn; at 20% a quick convergence may make only ~120 requests, where one kind (4% each)
    // can miss with a fair chance, so require most kinds and many faults there.
    let kinds = ["throttle", "500", "503", "delay", "drop"];
    let seen: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| stats["by_fault"][*k].as_u64().unwrap_or(0) > 0)
        .collect();
    let total: u64 = kinds
        .iter()
        .map(|k| stats["by_fault"][*k].as_u64().unwrap_or(0))
        .sum();
    if rate >= 0.5 {
        assert_eq!(seen, kinds, "every fault kind injected: {stats}");
    } else {
        assert!(
            seen.len() >= 3 && total >= 10,
            "too few faults injected: {stats}"
        );
    }

    let entries = writelog::read(&proxy.log);
    let outcome = writelog::check(&entries, &initial, &checks);
    eprintln!(
        "fault rate {rate}: converged in {converged:?}; {} accepted and {} failed change batches, {} UpdateService; step sequences: {}",
        outcome.accepted_batches,
        outcome.failed_batches,
        outcome.ecs_updates,
        outcome.summary()
    );
    outcome.assert_clean(&format!("fault rate {rate}"));
    assert!(
        outcome.failed_batches > 0,
        "no change batch was faulted: the test did not exercise write failures"
    );

    // The replayed log ends where boto3 sees the zones: the log missed no write.
    let end = zones_of(&list_zones(&moto, &ids));
    for s in &checks {
        assert_eq!(
            outcome.state.weights(&s.zone_id, &s.record),
            end.weights(&s.zone_id, &s.record),
            "{}: replayed weights differ from Route53's",
            s.name
        );
        assert_eq!(
            outcome.state.txt(&s.zone_id, &s.record),
            end.txt(&s.zone_id, &s.record),
            "{}: replayed TXT differs from Route53's",
            s.name
        );
        let last = outcome.applied[&s.name].last().expect("written");
        assert_eq!(last.index, STEPS.len(), "{} ends at the last step", s.name);
    }
    // Foreign records are exactly as provisioned.
    let ours: BTreeSet<String> = checks
        .iter()
        .flat_map(|s| {
            [
                fqdn(&s.record),
                format!("_trafficshift.{}", fqdn(&s.record)),
            ]
        })
        .collect();
    let foreign = |z: &Zones| {
        let mut z = z.clone();
        for recs in z.0.values_mut() {
            recs.retain(|k, _| !ours.contains(&k.0));
        }
        z
    };
    assert_eq!(foreign(&initial), foreign(&end), "foreign records changed");
    // ECS ends with capacity for its target share.
    let services: Vec<String> = splits
        .iter()
        .filter_map(|s| s.ecs.as_ref().map(|e| e.1.clone()))
        .collect();
    let desired = ecs_desired(&moto, CLUSTER, &services);
    for s in splits.iter().filter(|s| s.ecs.is_some()) {
        let (backend, svc) = s.ecs.as_ref().unwrap();
        let need = writelog::tasks_in(writelog::FLEET_TASKS, s.target[backend]);
        assert!(
            desired[svc] >= need,
            "{svc}: desiredCount {} < {need}",
            desired[svc]
        );
    }
    eprintln!("fault rate {rate}: total {:?}", t0.elapsed());
}

#[test]
fn fleet_rollout_converges_at_20_percent_faults() {
    run_chaos(0.2, 20, Duration::from_secs(150));
}

#[test]
fn fleet_rollout_converges_at_50_percent_faults() {
    run_chaos(0.5, 50, Duration::from_secs(240));
}
