//! Issue 12 part 3: a write that lands but whose answer is lost. Through the fault proxy, one
//! ChangeResourceRecordSets, one UpdateService or one RegisterScalableTarget is applied by moto and
//! its answer dropped or turned into a 500. The controller must still converge, forward and back,
//! with no step applied twice, no all-zero set and no scale-down before the drain delay: judged
//! from the proxy's write log and moto alone.

use crate::outside;
use crate::support;
use crate::writelog;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use outside::{proxy_post, Autoscaler};
use support::controller::{
    ecs_desired, list_zones, provision_splits, wait_for, write_atomic, Controller, FaultProxy,
    FleetSplit, FLEET_TASKS_AT_FULL,
};
use support::Moto;
use writelog::{EcsCheck, Entry, SplitCheck, Weights, Zones};

const CLUSTER: &str = "lost";
const SERVICE: &str = "svc";
const ECS_BACKEND: &str = "api-b";
const STEPS: [u32; 2] = [50, 100];
const DRAIN_SECONDS: f64 = 3.0;
const ROLLOUT: &str = "    steps: [50, 100]\n    interval: 1s\n    drainDelay: 3s\n";
const DEADLINE: Duration = Duration::from_secs(60);

/// Tasks the ECS backend needs at each share it takes here: tasksAtFullTraffic 8, minTasks 1,
/// written out.
fn tasks(share: i64) -> i64 {
    assert_eq!(
        FLEET_TASKS_AT_FULL, 8,
        "the table below is for 8 tasks at 100%"
    );
    match share {
        0 => 1,
        50 => 4,
        100 => 8,
        other => panic!("no expected task count for share {other}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Write {
    Route53,
    UpdateService,
    RegisterScalableTarget,
}

impl Write {
    fn operation(self) -> &'static str {
        match self {
            Write::Route53 => "route53.ChangeResourceRecordSets",
            Write::UpdateService => "ecs.UpdateService",
            Write::RegisterScalableTarget => "application-autoscaling.RegisterScalableTarget",
        }
    }
}

/// (time, tasks) of every accepted write that set the ECS backend's capacity: desiredCount of an
/// UpdateService, MinCapacity of a RegisterScalableTarget.
fn capacity_writes(entries: &[Entry]) -> Vec<(f64, i64)> {
    entries
        .iter()
        .filter(|e| e.accepted())
        .filter_map(|e| {
            let body: Value = serde_json::from_str(e.body.as_deref()?).ok()?;
            let n = match (e.service.as_str(), e.operation.as_str()) {
                ("ecs", "UpdateService") => body["desiredCount"].as_i64(),
                ("application-autoscaling", "RegisterScalableTarget") => {
                    body["MinCapacity"].as_i64()
                }
                _ => None,
            }?;
            Some((e.time, n))
        })
        .collect()
}

fn zones_now(moto: &Moto, zone_id: &str) -> Zones {
    let mut z = Zones::default();
    for (id, records) in list_zones(moto, &[zone_id.to_string()]) {
        z.add_listing(&id, &records);
    }
    z
}

fn lost_answer(write: Write, kind: &str) {
    let t0 = Instant::now();
    let moto = Moto::start();
    let zone = format!("{}.example.", support::unique("lost"));
    let split = FleetSplit::new("api", &zone, &[100, 0], &[0, 100], Some(SERVICE));
    let info = provision_splits(
        &moto,
        CLUSTER,
        std::slice::from_ref(&split),
        &BTreeMap::new(),
    );
    let zone_id = info["zones"][&zone].as_str().unwrap().to_string();
    let initial = zones_now(&moto, &zone_id);
    let _autoscaler = (write == Write::RegisterScalableTarget).then(|| {
        moto.boto3_json(
            "application-autoscaling",
            "register_scalable_target",
            json!({"ServiceNamespace": "ecs", "ScalableDimension": "ecs:service:DesiredCount",
                   "ResourceId": format!("service/{CLUSTER}/{SERVICE}"),
                   "MinCapacity": 1, "MaxCapacity": 2}),
        );
        Autoscaler::start(&moto, CLUSTER, SERVICE, 1)
    });

    let proxy = FaultProxy::start(&moto.endpoint, 1, 0.0, "500", writelog::LAYER_ECS);
    // The first write of this kind lands in moto and its answer is lost.
    proxy_post(
        &proxy,
        "config",
        json!({"only": [write.operation()], "post_write_kinds": [kind], "post_write_next": 1}),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api.yaml");
    write_atomic(&file, &split.document(CLUSTER, &split.target, ROLLOUT));
    let c = Controller::start(&proxy.endpoint, &[dir.path()], "lost", &["--resync", "1s"]);

    let desired = || ecs_desired(&moto, CLUSTER, &[SERVICE.to_string()])[SERVICE];
    let weights_now = || zones_now(&moto, &zone_id).weights(&zone_id, &split.record);
    wait_for("forward: the target weights and 8 tasks", DEADLINE, || {
        (weights_now() == split.target && desired() == tasks(100)).then_some(())
    });
    let forward_end = writelog::read(&proxy.log).len();

    // Back: the ECS backend's weight drops, and its tasks stay for the drain.
    write_atomic(&file, &split.document(CLUSTER, &split.start, ROLLOUT));
    wait_for("back: the start weights and 1 task", DEADLINE, || {
        (weights_now() == split.start && desired() == tasks(0)).then_some(())
    });
    let entries = writelog::read(&proxy.log);

    // The fault did happen, on a write moto applied.
    let lost: Vec<&Entry> = entries
        .iter()
        .filter(|e| {
            format!("{}.{}", e.service, e.operation) == write.operation()
                && e.fault.as_deref() == Some(&format!("post-write-{kind}"))
        })
        .collect();
    assert!(
        lost.len() == 1 && lost[0].accepted(),
        "expected one {} applied by moto with its answer lost ({kind}), saw {lost:#?}",
        write.operation()
    );

    // No step twice, never all zero, capacity before traffic: forward, then back.
    let check = |start: &Weights, target: &Weights| SplitCheck {
        name: split.name.clone(),
        record: split.record.clone(),
        zone_id: zone_id.clone(),
        start: start.clone(),
        target: target.clone(),
        steps: STEPS.to_vec(),
        // With a scalable target the controller moves MinCapacity, never desiredCount; capacity
        // is then checked below from the RegisterScalableTarget writes.
        ecs: (write != Write::RegisterScalableTarget).then(|| EcsCheck {
            backend: ECS_BACKEND.to_string(),
            cluster: CLUSTER.to_string(),
            service: SERVICE.to_string(),
            tasks: writelog::FLEET_TASKS,
        }),
        hold: None,
    };
    let forward = writelog::check(
        &entries[..forward_end],
        &initial,
        &[check(&split.start, &split.target)],
    );
    forward.assert_clean(&format!("{write:?} {kind} forward"));
    let back = writelog::check(
        &entries[forward_end..],
        &forward.state,
        &[check(&split.target, &split.start)],
    );
    back.assert_clean(&format!("{write:?} {kind} back"));

    // Capacity before traffic, from either kind of capacity write.
    let caps = capacity_writes(&entries);
    for a in &forward.applied[&split.name] {
        let w = a.weights[ECS_BACKEND];
        let before = caps
            .iter()
            .rev()
            .find(|(t, _)| *t <= a.time)
            .map_or(1, |c| c.1);
        assert!(
            before >= tasks(w),
            "{write:?} {kind}: {ECS_BACKEND} raised to {w} at {:.3} with capacity {before} set",
            a.time
        );
    }

    // No early scale-down: each capacity write lowering the count comes at least the drain delay
    // after the last weight that needed more tasks.
    // (time, share) of the ECS backend: 100% from before the way back, then each accepted write.
    let shares: Vec<(f64, i64)> = std::iter::once((f64::NEG_INFINITY, 100))
        .chain(
            back.applied[&split.name]
                .iter()
                .map(|a| (a.time, a.weights[ECS_BACKEND])),
        )
        .collect();
    let mut last = tasks(100);
    for (t, n) in capacity_writes(&entries[forward_end..]) {
        if n < last {
            // The share in effect at t - drain, and every share since, must fit in n tasks.
            let since = shares
                .iter()
                .rposition(|(at, _)| *at <= t - DRAIN_SECONDS)
                .unwrap_or(0);
            let needed_after = shares[since..]
                .iter()
                .map(|(_, w)| tasks(*w))
                .max()
                .unwrap_or(tasks(100));
            assert!(
                n >= needed_after,
                "{write:?} {kind}: capacity lowered to {n} at {t:.3} while a weight needing \
                 {needed_after} tasks held within the {DRAIN_SECONDS} s drain: {shares:?}"
            );
        }
        last = n;
    }
    drop(c);
    eprintln!("{write:?} {kind}: converged in {:?}", t0.elapsed());
}

#[test]
fn lost_route53_answer_dropped() {
    lost_answer(Write::Route53, "drop");
}

#[test]
fn lost_route53_answer_500() {
    lost_answer(Write::Route53, "500");
}

#[test]
fn lost_update_service_answer_dropped() {
    lost_answer(Write::UpdateService, "drop");
}

#[test]
fn lost_update_service_answer_500() {
    lost_answer(Write::UpdateService, "500");
}

#[test]
fn lost_register_scalable_target_answer_dropped() {
    lost_answer(Write::RegisterScalableTarget, "drop");
}

#[test]
fn lost_register_scalable_target_answer_500() {
    lost_answer(Write::RegisterScalableTarget, "500");
}
