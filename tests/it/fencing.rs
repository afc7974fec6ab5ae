//! Fenced state writes (issue 13 §3): two controllers with the same owner id run one split's
//! multi-step rollout at once, through the fault proxy in its Route53-fencing mode (moto itself
//! accepts a DELETE of a stale value, Route53 does not). Judged only from the proxy's write log
//! and from moto read back with boto3: no lost update, no step taken twice or skipped, no
//! flapping, the target reached.

use crate::support;
use crate::writelog;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::controller::{Controller, FaultProxy, Scenario};
use support::Moto;
use writelog::{bare_zone_id, fqdn, parse_txt, show, EcsCheck, SplitCheck, Zones};

const STEPS: [u32; 5] = [20, 40, 60, 80, 100];
const DEADLINE: Duration = Duration::from_secs(120);

fn w(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn zone_now(moto: &Moto, sc: &Scenario, zone_id: &str) -> Zones {
    let mut z = Zones::default();
    z.add_listing(zone_id, &sc.records(moto));
    z
}

#[test]
fn two_controllers_with_one_owner_id_lose_no_update() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let zone_id = bare_zone_id(&sc.zone_id);
    let initial = zone_now(&moto, &sc, &zone_id);
    let dir = tempfile::tempdir().unwrap();
    // minTasks 20: capacity for every step is there after the first scale-up, so the two
    // controllers race on every step instead of waiting for ECS.
    let doc = sc
        .document(
            "api",
            0,
            100,
            "  rollout:\n    steps: [20, 40, 60, 80, 100]\n    interval: 1s\n",
        )
        .replace("minTasks: 2", "minTasks: 20");
    std::fs::write(dir.path().join("api.yaml"), doc).unwrap();

    // Delays of up to 0.4 s on a third of the requests stretch the window between a
    // controller's read and its write, so the other one lands inside it.
    let proxy = FaultProxy::start(
        &moto.endpoint,
        13,
        0.3,
        "delay",
        &[
            &["--max-delay", "0.4", "--route53-fencing"],
            writelog::LAYER_ECS,
        ]
        .concat(),
    );
    // The fence is Route53 refusing a DELETE of a state TXT another writer has replaced.
    proxy.allow_refusals("_trafficshift.");
    let args = ["--resync", "1s"];
    let mut a = Controller::start(&proxy.endpoint, &[dir.path()], "shared", &args);
    let mut b = Controller::start(&proxy.endpoint, &[dir.path()], "shared", &args);

    let target = w(&[("lambda", 0), ("fargate", 100)]);
    let t0 = Instant::now();
    loop {
        let now = zone_now(&moto, &sc, &zone_id);
        let done = now.weights(&zone_id, &sc.record) == target
            && now.txt(&zone_id, &sc.record).map(|t| t.phase).as_deref() == Some("complete");
        if done {
            break;
        }
        for (name, c) in [("a", &mut a), ("b", &mut b)] {
            if let Some(code) = c.exit_code() {
                panic!("controller {name} exited with {code:?}:\n{}", c.log_tail());
            }
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "target not reached after {DEADLINE:?}: {} (TXT {:?})\na:\n{}\nb:\n{}",
            show(&now.weights(&zone_id, &sc.record)),
            now.txt(&zone_id, &sc.record),
            a.log_tail(),
            b.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A few more cycles of both at rest: nothing may move once the target is reached.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(a.sigterm(Duration::from_secs(30)), Some(0));
    assert_eq!(b.sigterm(Duration::from_secs(30)), Some(0));

    let entries = writelog::read(&proxy.log);
    let checks = [SplitCheck {
        name: "api".into(),
        record: sc.record.clone(),
        zone_id: zone_id.clone(),
        start: w(&[("lambda", 100), ("fargate", 0)]),
        target: target.clone(),
        steps: STEPS.to_vec(),
        ecs: Some(EcsCheck {
            backend: "fargate".into(),
            cluster: sc.cluster.clone(),
            service: sc.service.clone(),
            // minTasks 20: every share needs all 20.
            tasks: &[(100, 20)],
        }),
        // Two controllers' listings interleave in the log, so the proxy-clock hold check cannot
        // tell whose cycle wrote a step; the write times are compared below instead.
        hold: None,
    }];
    let outcome = writelog::check(&entries, &initial, &checks);
    outcome.assert_clean("two controllers, one owner id");

    // Each step exactly once, in order: the start split (adoption), then every step.
    let indices: Vec<usize> = outcome.applied["api"].iter().map(|x| x.index).collect();
    assert_eq!(
        indices,
        (0..=STEPS.len()).collect::<Vec<_>>(),
        "every step written once, none skipped or repeated, nothing written after the target: {}",
        outcome.summary()
    );

    // No lost update: the accepted writes of the state TXT form one chain, each DELETE naming
    // exactly the value the previous accepted write created; the first creates it.
    let txt_name = format!("_trafficshift.{}", fqdn(&sc.record));
    let accepted: Vec<writelog::Batch> = writelog::batches(&entries)
        .into_iter()
        .filter(|b| b.accepted)
        .collect();
    let mut last: Option<Vec<String>> = None;
    // (step, proxy time) of each accepted state write.
    let mut steps: Vec<(usize, f64)> = Vec::new();
    for b in &accepted {
        let txt: Vec<&writelog::RrChange> = b
            .changes
            .iter()
            .filter(|c| c.name == txt_name && c.rtype == "TXT")
            .collect();
        let deleted: Vec<&writelog::RrChange> = txt
            .iter()
            .copied()
            .filter(|c| c.action == "DELETE")
            .collect();
        let created: Vec<&writelog::RrChange> = txt
            .iter()
            .copied()
            .filter(|c| c.action == "CREATE")
            .collect();
        assert!(
            txt.iter().all(|c| c.action != "UPSERT"),
            "#{}: the state TXT is never UPSERTed",
            b.seq
        );
        assert_eq!(created.len(), 1, "#{}: one CREATE of the TXT", b.seq);
        match &last {
            None => assert!(
                deleted.is_empty(),
                "#{}: the first write creates the TXT",
                b.seq
            ),
            Some(prev) => {
                assert_eq!(deleted.len(), 1, "#{}: one DELETE of the TXT", b.seq);
                assert_eq!(
                    &deleted[0].values, prev,
                    "#{}: deletes what the previous accepted write created",
                    b.seq
                );
            }
        }
        last = Some(created[0].values.clone());
        if let Some(t) = parse_txt(&created[0].values) {
            steps.push((t.step, b.time));
        }
    }
    // Each step after the first held its 1 s interval by the proxy's clock, whichever controller
    // wrote it: the hold counts from the decision, which precedes its write by the request's
    // way to the proxy (the rate limiter's wait included), hence the slack.
    for pair in steps.windows(2) {
        let ((from, t0), (to, t1)) = (pair[0], pair[1]);
        if to == from + 1 && from >= 1 {
            assert!(
                t1 - t0 >= 1.0 - 0.5,
                "step {to} written {:.3}s after step {from} by the proxy's clock (interval 1s): {steps:?}",
                t1 - t0
            );
        }
    }
    assert!(
        steps.len() > STEPS.len(),
        "every step's state write logged: {steps:?}"
    );
    // The controllers really raced: some batches were refused by the fence.
    let fenced = entries
        .iter()
        .filter(|e| e.operation == "ChangeResourceRecordSets" && !e.accepted())
        .count();
    assert!(
        fenced > 0,
        "no write was fenced: the two controllers never raced ({} accepted)",
        accepted.len()
    );

    // Route53 ends where the replayed log ends: the log missed nothing.
    let end = zone_now(&moto, &sc, &zone_id);
    assert_eq!(end.weights(&zone_id, &sc.record), target);
    assert_eq!(
        outcome.state.txt(&zone_id, &sc.record),
        end.txt(&zone_id, &sc.record)
    );
    eprintln!(
        "{} accepted, {} fenced batches; steps {}",
        accepted.len(),
        fenced,
        outcome.summary()
    );
}
