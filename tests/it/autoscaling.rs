//! Issue #9 3f: an ECS service whose desired count Application Auto Scaling owns. Through the
//! fault proxy (which logs every write) against moto, with a stand-in autoscaler that keeps the
//! service's desiredCount inside the scalable target's bounds, as the real service does:
//! trafficshift never calls UpdateService, raises MinCapacity ahead of each step (MaxCapacity to
//! at least it), keeps the user's bounds in the state TXT and puts them back afterwards.

use crate::outside;
use crate::support;
use crate::writelog;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::controller::{wait_for, write_atomic, Controller, FaultProxy, Scenario};
use support::Moto;

/// The user's own bounds, and the load the stand-in autoscaler follows (above the minimum).
const USER_MIN: i64 = 2;
const USER_MAX: i64 = 8;
const LOAD: i64 = 3;

/// Tasks per fargate share for the scenario's `tasksAtFullTraffic: 20, minTasks: 2`, written out.
fn tasks(share: i64) -> i64 {
    match share {
        0 => 2,
        25 => 5,
        50 => 10,
        75 => 15,
        100 => 20,
        other => panic!("no expected task count for share {other}"),
    }
}

fn bounds(moto: &Moto, s: &Scenario) -> (i64, i64) {
    let out = moto.boto3_json(
        "application-autoscaling",
        "describe_scalable_targets",
        json!({"ServiceNamespace": "ecs",
               "ResourceIds": [format!("service/{}/{}", s.cluster, s.service)]}),
    );
    let t = &out["ScalableTargets"][0];
    (
        t["MinCapacity"].as_i64().expect("MinCapacity"),
        t["MaxCapacity"].as_i64().expect("MaxCapacity"),
    )
}

fn write_doc(dir: &Path, s: &Scenario, lambda: u32, fargate: u32) {
    let rollout = "  rollout:\n    steps: [25, 50, 100]\n    interval: 1s\n    drainDelay: 1s\n";
    write_atomic(
        &dir.join("api.yaml"),
        &s.document("api", lambda, fargate, rollout),
    );
}

#[test]
fn min_capacity_follows_the_share_and_desired_count_is_never_written() {
    let moto = Moto::start();
    let s = Scenario::provision(&moto, USER_MIN as u32);
    moto.boto3_json(
        "application-autoscaling",
        "register_scalable_target",
        json!({"ServiceNamespace": "ecs", "ScalableDimension": "ecs:service:DesiredCount",
               "ResourceId": format!("service/{}/{}", s.cluster, s.service),
               "MinCapacity": USER_MIN, "MaxCapacity": USER_MAX}),
    );
    let _autoscaler = outside::Autoscaler::start(&moto, &s.cluster, &s.service, LOAD);
    let proxy = FaultProxy::start(&moto.endpoint, 1, 0.0, "500", &[]);
    let dir = tempfile::tempdir().unwrap();

    // Forward: lambda 100 -> fargate 100 in three steps.
    write_doc(dir.path(), &s, 0, 100);
    let c = Controller::start(&proxy.endpoint, &[dir.path()], "aas", &["--resync", "2s"]);
    wait_for(
        "fargate at 100% in Route53",
        Duration::from_secs(90),
        || {
            (s.weights(&moto) == support::controller::weights(&[("lambda", 0), ("fargate", 100)]))
                .then_some(())
        },
    );
    assert_eq!(bounds(&moto, &s), (tasks(100), tasks(100)));
    let txt = s.state_txt(&moto).expect("state TXT");
    assert!(
        txt.contains(&format!("aas=fargate:{USER_MIN}:{USER_MAX}")),
        "the user's bounds are kept in the state TXT: {txt}"
    );
    let forward = writelog::read(&proxy.log).len();

    // Back: fargate 100 -> 0; once drained, the user's bounds return and the TXT forgets them.
    write_doc(dir.path(), &s, 100, 0);
    wait_for(
        "the user's bounds back and the TXT without them",
        Duration::from_secs(90),
        || {
            let txt = s.state_txt(&moto)?;
            (s.weights(&moto) == support::controller::weights(&[("lambda", 100), ("fargate", 0)])
                && bounds(&moto, &s) == (USER_MIN, USER_MAX)
                && !txt.contains("aas="))
            .then_some(())
        },
    );
    // The autoscaler stayed free above the minimum.
    wait_for("desiredCount at the load", Duration::from_secs(10), || {
        (s.ecs_counts(&moto).0 == LOAD).then_some(())
    });
    drop(c);

    let entries = writelog::read(&proxy.log);
    let updates = writelog::ecs_updates(&entries);
    assert!(updates.is_empty(), "UpdateService was called: {updates:?}");

    // Every bounds write, in order, and the fargate weight each Route53 batch set.
    let mut last_min = USER_MIN;
    let mut mins = Vec::new();
    let mut back_mins = Vec::new();
    for e in &entries {
        match (e.service.as_str(), e.operation.as_str()) {
            ("application-autoscaling", "RegisterScalableTarget") => {
                let body: Value =
                    serde_json::from_str(e.body.as_deref().expect("write body logged"))
                        .expect("JSON body");
                let (min, max) = (
                    body["MinCapacity"].as_i64().expect("MinCapacity"),
                    body["MaxCapacity"].as_i64().expect("MaxCapacity"),
                );
                assert_eq!(
                    max,
                    USER_MAX.max(min),
                    "MaxCapacity at least MinCapacity: {body}"
                );
                if e.seq < forward {
                    mins.push(min);
                } else {
                    back_mins.push(min);
                }
                last_min = min;
            }
            ("route53", "ChangeResourceRecordSets") if e.seq < forward => {
                for ch in writelog::parse_changes(e.body.as_deref().unwrap_or_default()) {
                    if ch.set_id.as_deref() == Some("fargate") {
                        let w = ch.weight.expect("weighted");
                        assert!(
                            last_min >= tasks(w),
                            "fargate raised to {w}% with MinCapacity {last_min} (need {})",
                            tasks(w)
                        );
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        mins,
        vec![tasks(25), tasks(50), tasks(100)],
        "MinCapacity ahead of each step"
    );
    assert_eq!(back_mins.last(), Some(&USER_MIN), "restored: {back_mins:?}");
    assert!(
        back_mins.windows(2).all(|w| w[0] > w[1]),
        "MinCapacity only falls on the way back: {back_mins:?}"
    );
}
