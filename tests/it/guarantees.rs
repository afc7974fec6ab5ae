//! README "What it guarantees", one test per promise that had none, each judged from outside:
//! moto read back with boto3, the fault proxy's write log and clock, and real scrapes.

use crate::outside;
use crate::support;
use crate::writelog;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use outside::{must, proxy_post, scrape, wait_reconciles, zone_bytes};
use support::controller::{
    change_records, provision_splits, run_cli, wait_for, weights, write_atomic, Controller,
    FleetSplit, Scenario,
};
use support::Moto;

const DEADLINE: Duration = Duration::from_secs(60);

fn write_doc(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.yaml")), text).expect("write document");
}

/// Wait until moto holds exactly `want` at the scenario's record.
fn wait_weights(moto: &Moto, sc: &Scenario, want: &[(&str, i64)]) {
    let want = weights(want);
    wait_for(&format!("Route53 weights {want:?}"), DEADLINE, || {
        (sc.weights(moto) == want).then_some(())
    });
}

/// Wait until moto's ECS desiredCount is `want`.
fn wait_desired(moto: &Moto, sc: &Scenario, want: i64, deadline: Duration) {
    wait_for(&format!("ECS desiredCount {want}"), deadline, || {
        (sc.ecs_counts(moto).0 == want).then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// Capacity: the default drain delay and the maxTasks clamp.

/// No `drainDelay` and TTL 10: the drain is max(2 x 10 s, 60 s) = 60 s. Measured on the proxy's
/// clock from the accepted change that drops fargate to 0 to the UpdateService that scales it
/// down.
#[test]
fn default_drain_delay_is_at_least_60_s_after_the_weight_drops() {
    let t0 = Instant::now();
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let ttl10 = |l: u32, f: u32| sc.document("api", l, f, "").replace("ttl: 60", "ttl: 10");
    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), "api", &ttl10(0, 100));
    let c = Controller::start(moto.aws(), &[dir.path()], "drain", &["--resync", "1s"]);
    wait_weights(&moto, &sc, &[("lambda", 0), ("fargate", 100)]);
    // tasksAtFullTraffic 20 at 100%.
    wait_desired(&moto, &sc, 20, DEADLINE);

    write_atomic(&dir.path().join("api.yaml"), &ttl10(100, 0));
    wait_weights(&moto, &sc, &[("lambda", 100), ("fargate", 0)]);
    // minTasks 2 once drained; 60 s of drain plus a few resyncs.
    wait_desired(&moto, &sc, 2, Duration::from_secs(85));

    let log = moto.layer().expect("the AWS layer").log.clone();
    let entries = writelog::read(&log);
    let lowered = writelog::batches(&entries)
        .into_iter()
        .filter(|b| b.accepted)
        .find(|b| {
            b.changes.iter().any(|ch| {
                ch.action != "DELETE"
                    && ch.set_id.as_deref() == Some("fargate")
                    && ch.weight == Some(0)
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no accepted change dropping fargate to 0 in {}",
                log.display()
            )
        });
    let down = writelog::ecs_updates(&entries)
        .into_iter()
        .find(|u| u.accepted && u.desired == Some(2) && u.seq > lowered.seq)
        .unwrap_or_else(|| {
            panic!(
                "no accepted UpdateService to 2 after the drop in {}",
                log.display()
            )
        });
    let waited = down.time - lowered.time;
    assert!(
        waited >= 60.0,
        "scaled down {waited:.1} s after fargate's weight dropped; the default drain (2 x TTL 10 s, \
         at least 60 s) is 60 s"
    );
    assert!(
        waited <= 75.0,
        "scaled down only {waited:.1} s after the drop (drain 60 s, resync 1 s)"
    );
    drop(c);
    eprintln!("default drain test took {:?}", t0.elapsed());
}

/// tasksAtFullTraffic 20 at 100% wants 20 tasks; maxTasks 12 caps it at 12, and the weight
/// still rises once 12 serve.
#[test]
fn max_tasks_clamps_the_desired_count() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let dir = tempfile::tempdir().unwrap();
    let doc = sc
        .document("api", 0, 100, "")
        .replace("maxTasks: 40", "maxTasks: 12");
    write_doc(dir.path(), "api", &doc);
    let _c = Controller::start(moto.aws(), &[dir.path()], "clamp", &["--resync", "1s"]);
    wait_weights(&moto, &sc, &[("lambda", 0), ("fargate", 100)]);
    assert_eq!(
        sc.ecs_counts(&moto).0,
        12,
        "desiredCount at 100% with maxTasks 12"
    );
    // Every UpdateService the controller sent stayed within the clamp.
    let entries = writelog::read(&moto.layer().unwrap().log);
    let sent: Vec<Option<i64>> = writelog::ecs_updates(&entries)
        .iter()
        .map(|u| u.desired)
        .collect();
    assert!(
        !sent.is_empty() && sent.iter().all(|d| d.is_some_and(|d| d <= 12)),
        "UpdateService desiredCounts {sent:?}, none may exceed maxTasks 12"
    );
}

// ---------------------------------------------------------------------------------------------
// Conflicts: nothing written, the Conflict shown in /status and on a scrape.

#[derive(Debug, Clone, Copy)]
enum Clash {
    /// A CNAME where the document wants an A record.
    Cname,
    /// A latency record (another routing policy) under a backend's SetIdentifier.
    OtherRoutingPolicy,
    /// A plain and a weighted record at one name.
    PlainAndWeighted,
    /// A TXT at `_trafficshift.<name>` that trafficshift did not write.
    ForeignTxt,
    /// A second document naming the record a first document already manages.
    TwoDocuments,
}

fn conflict_case(clash: Clash) {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let info = sc.info.clone();
    let plain = sc
        .records(&moto)
        .into_iter()
        .find(|r| r["Name"] == sc.record.as_str() && r.get("SetIdentifier").is_none())
        .expect("the scenario's plain record");
    let alias = json!({"DNSName": info["apigw_regional_domain"], "HostedZoneId": info["apigw_zone_id"],
                       "EvaluateTargetHealth": false});
    let dir = tempfile::tempdir().unwrap();
    let mut conflicted = "api";
    match clash {
        Clash::Cname => change_records(
            &moto,
            &sc.zone_id,
            json!([{"Action": "DELETE", "ResourceRecordSet": plain},
                   {"Action": "CREATE", "ResourceRecordSet": {"Name": sc.record, "Type": "CNAME",
                       "TTL": 300, "ResourceRecords": [{"Value": "elsewhere.example."}]}}]),
        ),
        Clash::OtherRoutingPolicy => change_records(
            &moto,
            &sc.zone_id,
            json!([{"Action": "DELETE", "ResourceRecordSet": plain},
                   {"Action": "CREATE", "ResourceRecordSet": {"Name": sc.record, "Type": "A",
                       "SetIdentifier": "lambda", "Region": "us-east-1", "AliasTarget": alias}}]),
        ),
        Clash::PlainAndWeighted => change_records(
            &moto,
            &sc.zone_id,
            json!([{"Action": "CREATE", "ResourceRecordSet": {"Name": sc.record, "Type": "A",
                       "SetIdentifier": "lambda", "Weight": 100, "AliasTarget": alias}}]),
        ),
        Clash::ForeignTxt => change_records(
            &moto,
            &sc.zone_id,
            json!([{"Action": "CREATE", "ResourceRecordSet": {
                "Name": format!("_trafficshift.{}", sc.record), "Type": "TXT", "TTL": 300,
                "ResourceRecords": [{"Value": "\"v=verification-token-1234\""}]}}]),
        ),
        Clash::TwoDocuments => conflicted = "api-copy",
    }
    write_doc(dir.path(), "api", &sc.document("api", 0, 100, ""));
    let c = Controller::start(moto.aws(), &[dir.path()], "conflict", &["--resync", "1s"]);
    if let Clash::TwoDocuments = clash {
        // The first document takes the record; then a second one names it too.
        wait_weights(&moto, &sc, &[("lambda", 0), ("fargate", 100)]);
        wait_for("the first split Complete", DEADLINE, || {
            c.split("api").filter(|s| s["state"] == "Complete")
        });
        std::fs::write(
            dir.path().join("api-copy.yaml"),
            sc.document("api-copy", 100, 0, ""),
        )
        .unwrap();
    }
    let before = zone_bytes(&sc.records(&moto));
    let desired = sc.ecs_counts(&moto).0;

    let s = wait_for(
        &format!("{conflicted} in Conflict ({clash:?})"),
        DEADLINE,
        || c.split(conflicted).filter(|s| s["state"] == "Conflict"),
    );
    // It looks again, and again writes nothing.
    let errors = must(
        &scrape(&c),
        "trafficshift_reconciles_total",
        &[("split", conflicted), ("result", "error")],
    );
    wait_reconciles(&c, conflicted, "error", errors, 2.0);
    let m = scrape(&c);
    assert_eq!(
        must(
            &m,
            "trafficshift_split_state",
            &[("split", conflicted), ("state", "Conflict")]
        ),
        1.0,
        "{clash:?}: Conflict on the scrape"
    );
    assert!(
        must(
            &m,
            "trafficshift_reconcile_errors_total",
            &[("split", conflicted), ("kind", "conflict")]
        ) >= 1.0,
        "{clash:?}: errors of kind conflict counted"
    );
    assert_eq!(
        before,
        zone_bytes(&sc.records(&moto)),
        "{clash:?}: the zone changed despite the Conflict ({s:#})"
    );
    assert_eq!(sc.ecs_counts(&moto).0, desired, "{clash:?}: ECS scaled");
}

#[test]
fn conflict_cname_clash_writes_nothing() {
    conflict_case(Clash::Cname);
}

#[test]
fn conflict_other_routing_policy_writes_nothing() {
    conflict_case(Clash::OtherRoutingPolicy);
}

#[test]
fn conflict_plain_and_weighted_together_writes_nothing() {
    conflict_case(Clash::PlainAndWeighted);
}

#[test]
fn conflict_foreign_txt_writes_nothing() {
    conflict_case(Clash::ForeignTxt);
}

#[test]
fn conflict_two_documents_naming_one_record_writes_nothing() {
    conflict_case(Clash::TwoDocuments);
}

// ---------------------------------------------------------------------------------------------
// A broken document: the position in the logs, in `trafficshift status`, config_valid 0 on a
// scrape, and AWS keeps the last good state.

#[test]
fn a_broken_document_is_shown_with_its_position_and_changes_nothing() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api.yaml");
    write_doc(dir.path(), "api", &sc.document("api", 50, 50, ""));
    let c = Controller::start(moto.aws(), &[dir.path()], "broken", &["--resync", "1s"]);
    wait_weights(&moto, &sc, &[("lambda", 50), ("fargate", 50)]);
    wait_for("api Complete", DEADLINE, || {
        c.split("api").filter(|s| s["state"] == "Complete")
    });
    assert_eq!(must(&scrape(&c), "trafficshift_config_valid", &[]), 1.0);
    let good = zone_bytes(&sc.records(&moto));
    let desired = sc.ecs_counts(&moto).0;

    // Line 10 is `    ttl: 60`: a string where a number belongs, with new weights after it
    // that must not be applied.
    let broken = sc
        .document("api", 0, 100, "")
        .replace("ttl: 60", "ttl: sixty");
    assert!(broken.lines().nth(9).unwrap().contains("ttl: sixty"));
    write_atomic(&file, &broken);
    let at = "api.yaml:10:".to_string();
    let has_position = |text: &str| {
        text.match_indices(&at).any(|(i, _)| {
            text[i + at.len()..]
                .chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_digit())
        })
    };

    // The scrape.
    wait_for("trafficshift_config_valid 0", DEADLINE, || {
        (must(&scrape(&c), "trafficshift_config_valid", &[]) == 0.0).then_some(())
    });
    // The logs.
    wait_for(&format!("{at}COL in the log"), DEADLINE, || {
        has_position(&c.log_text()).then_some(())
    });
    // `trafficshift status` against the running controller: the status is published after each
    // cycle (so a split's target and state always come from the same cycle), and the cycle after
    // the reload may be retrying AWS for seconds, so poll.
    wait_for(
        &format!("{at}COL in `trafficshift status`"),
        DEADLINE,
        || {
            let (_, out, err) = run_cli(&moto.endpoint, &["status", "--endpoint", &c.endpoint]);
            (has_position(&out) || has_position(&err)).then_some(())
        },
    );
    // It keeps looking at AWS and still writes nothing.
    let ok = must(
        &scrape(&c),
        "trafficshift_reconciles_total",
        &[("split", "api")],
    );
    wait_for("two more reconciles", DEADLINE, || {
        (must(
            &scrape(&c),
            "trafficshift_reconciles_total",
            &[("split", "api")],
        ) >= ok + 2.0)
            .then_some(())
    });
    assert_eq!(good, zone_bytes(&sc.records(&moto)), "the zone changed");
    assert_eq!(sc.ecs_counts(&moto).0, desired, "ECS changed");
    assert_eq!(must(&scrape(&c), "trafficshift_config_valid", &[]), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Cheap on the API: a rejected batch is retried split by split; the Route53 rate limit.

/// Three splits in one zone; the layer refuses every change naming `bad`'s record. The zone's
/// batch is refused, then each split alone: `one` and `two` land, `bad` stays as it was.
#[test]
fn a_rejected_batch_is_retried_split_by_split() {
    let moto = Moto::start();
    let zone = format!("{}.example.", support::unique("split"));
    let splits = [
        FleetSplit::new("one", &zone, &[100, 0], &[0, 100], None),
        FleetSplit::new("bad", &zone, &[100, 0], &[0, 100], None),
        FleetSplit::new("two", &zone, &[100, 0], &[0, 100], None),
    ];
    let ids = provision_splits(&moto, "unused", &splits, &Default::default());
    let zone_id = ids["zones"][&zone].as_str().unwrap().to_string();
    moto.aws();
    let layer = moto.layer().unwrap();
    layer.allow_refusals("refuse_names");
    proxy_post(
        layer,
        "route53",
        json!({"refuse_names": [splits[1].record]}),
    );
    let dir = tempfile::tempdir().unwrap();
    for s in &splits {
        write_doc(dir.path(), &s.name, &s.document("unused", &s.target, ""));
    }
    let c = Controller::start(moto.aws(), &[dir.path()], "batch", &["--resync", "1s"]);
    let weights_at = |name: &str| {
        support::controller::list_zones(&moto, std::slice::from_ref(&zone_id))[&zone_id]
            .iter()
            .filter(|r| r["Name"] == name && r.get("SetIdentifier").is_some())
            .map(|r| {
                (
                    r["SetIdentifier"].as_str().unwrap().to_string(),
                    r["Weight"].as_i64().unwrap(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    wait_for("one and two at their targets", DEADLINE, || {
        (weights_at(&splits[0].record) == splits[0].target
            && weights_at(&splits[2].record) == splits[2].target)
            .then_some(())
    });
    assert_eq!(
        weights_at(&splits[1].record),
        splits[1].start,
        "bad changed"
    );
    wait_for("bad in error", DEADLINE, || {
        c.split("bad")
            .filter(|s| s["state"] != "Complete" && !s["lastError"].is_null())
    });
    // From the write log: a refused batch naming all three, then one-split batches.
    let entries = writelog::read(&layer.log);
    let batches = writelog::batches(&entries);
    let names = |b: &writelog::Batch| {
        let mut n: Vec<String> = b.changes.iter().map(|c| c.name.clone()).collect();
        n.sort();
        n.dedup();
        n.retain(|x| !x.starts_with("_trafficshift."));
        n
    };
    let whole = batches
        .iter()
        .position(|b| !b.accepted && names(b).len() == 3)
        .unwrap_or_else(|| panic!("no refused batch with all three splits: {batches:#?}"));
    let alone: Vec<Vec<String>> = batches[whole + 1..].iter().map(names).collect();
    for s in [&splits[0], &splits[2]] {
        assert!(
            batches[whole + 1..]
                .iter()
                .any(|b| b.accepted && names(b) == vec![writelog::fqdn(&s.record)]),
            "{} was not retried alone and accepted after the refused batch: {alone:?}",
            s.name
        );
    }
}

/// The real default (no --route53-rps): at most 5 Route53 requests a second after a burst of 3,
/// measured on the proxy's clock over twelve zones converging at once.
#[test]
fn route53_requests_stay_under_5_per_second_by_default() {
    let moto = Moto::start();
    let zones: Vec<String> = (0..12)
        .map(|i| format!("{}.example.", support::unique(&format!("rl{i}"))))
        .collect();
    let splits: Vec<FleetSplit> = zones
        .iter()
        .map(|z| FleetSplit::new("api", z, &[100, 0], &[0, 100], None))
        .collect();
    // moto's DELETE-by-SetIdentifier quirk wants distinct set ids per zone only; names repeat
    // across zones, so each split gets its own document name.
    provision_splits(&moto, "unused", &splits, &Default::default());
    let dir = tempfile::tempdir().unwrap();
    for (i, s) in splits.iter().enumerate() {
        let doc = s
            .document("unused", &s.target, "")
            .replace("name: api\n", &format!("name: api{i}\n"));
        write_doc(dir.path(), &format!("api{i}"), &doc);
    }
    let layer_log = {
        moto.aws();
        moto.layer().unwrap().log.clone()
    };
    let t = Instant::now();
    let c = Controller::start(moto.aws(), &[dir.path()], "rate", &["--resync", "2s"]);
    for i in 0..splits.len() {
        let name = format!("api{i}");
        wait_for(&format!("{name} Complete"), DEADLINE, || {
            c.split(&name).filter(|x| x["state"] == "Complete")
        });
    }
    eprintln!("12 zones converged in {:?}", t.elapsed());
    let times: Vec<f64> = writelog::read(&layer_log)
        .iter()
        .filter(|e| e.service == "route53")
        .map(|e| e.time)
        .collect();
    assert!(
        times.len() >= 36,
        "expected at least a list, a change and a GetChange per zone, saw {} Route53 requests",
        times.len()
    );
    // Sliding window on the proxy's clock. GCRA at 5/s with a burst of 3 admits at most
    // 3 + 4 = 7 requests in any [t, t + 1 s); arrival jitter on the way to the proxy is allowed
    // 100 ms, so the window checked is 0.9 s.
    let mut worst = (0, 0.0);
    for (i, t0) in times.iter().enumerate() {
        let n = times[i..].iter().take_while(|t| **t < t0 + 0.9).count();
        if n > worst.0 {
            worst = (n, *t0);
        }
    }
    assert!(
        worst.0 <= 7,
        "{} Route53 requests within 0.9 s from {:.3} (limit 5/s, burst 3)",
        worst.0,
        worst.1
    );
    // And the sustained rate over the whole run.
    let span = times.last().unwrap() - times[0];
    let rate = (times.len() as f64 - 3.0) / span;
    assert!(
        rate <= 5.25,
        "{} Route53 requests in {span:.2} s: {rate:.2}/s sustained, above 5/s",
        times.len()
    );
}

// ---------------------------------------------------------------------------------------------
// /readyz while draining.

/// SIGTERM: /readyz must answer 503 at least once before the listener closes.
#[test]
fn readyz_answers_503_while_draining() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let dir = tempfile::tempdir().unwrap();
    write_doc(dir.path(), "api", &sc.document("api", 50, 50, ""));
    let mut c = Controller::start(moto.aws(), &[dir.path()], "drain", &["--resync", "1s"]);
    c.wait_ready(DEADLINE);
    let endpoint = c.endpoint.clone();
    // Poll every 50 ms from another thread while this one sends SIGTERM and waits for the exit.
    let (seen, code) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut seen: Vec<u16> = Vec::new();
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                // curl says 000 when the connection is refused.
                let code = support::controller::http_get(&endpoint, "/readyz").map_or(0, |x| x.0);
                if seen.last() != Some(&code) {
                    seen.push(code);
                }
                if (code == 0 && seen.len() > 1) || Instant::now() > end {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // Let the poller see the ready state first.
        std::thread::sleep(Duration::from_millis(300));
        let code = c.sigterm(Duration::from_secs(20));
        (poller.join().expect("poller"), code)
    });
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert_eq!(seen.first(), Some(&200), "/readyz before SIGTERM: {seen:?}");
    let refused = seen.iter().position(|c| *c == 0);
    let not_ready = seen.iter().position(|c| *c == 503);
    assert!(
        matches!((not_ready, refused), (Some(n), Some(r)) if n < r),
        "/readyz after SIGTERM went {seen:?} (0 = connection refused): no 503 before the listener closed"
    );
}
