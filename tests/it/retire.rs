//! Finishing the migration (issue 14 part 5) in the seed's scenario, against moto through the
//! AWS layer, read back with the AWS CLI: after 100 % fargate, deleting the `lambda` backend from
//! the document retires its record after the drain, and `plainWhenSingle` hands the name back as
//! a plain alias to the ALB. No other record of the zone changes.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::controller::{change_records, run_cli, wait_for, Controller, Scenario};
use support::Moto;

const DEADLINE: Duration = Duration::from_secs(120);
/// Short enough for a test, long enough to tell "after the drain" from "at once".
const DRAIN_SECS: u64 = 8;

/// Every record set of the zone, as `aws route53 list-resource-record-sets` prints them.
fn aws_records(moto: &Moto, zone_id: &str) -> Vec<Value> {
    let v = moto.cli(&[
        "route53",
        "list-resource-record-sets",
        "--hosted-zone-id",
        zone_id,
    ]);
    v["ResourceRecordSets"].as_array().cloned().unwrap()
}

/// Records at the split's name or its TXT name.
fn ours(sc: &Scenario, r: &Value) -> bool {
    let name = r["Name"].as_str().unwrap_or_default();
    name == sc.record || name == format!("_trafficshift.{}", sc.record)
}

fn others(sc: &Scenario, records: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .filter(|r| !ours(sc, r))
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    v.sort();
    v
}

fn at_name(sc: &Scenario, records: &[Value]) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["Name"] == sc.record.as_str())
        .cloned()
        .collect()
}

/// SetIdentifier and weight of the weighted records at the name, sorted.
fn weights(sc: &Scenario, records: &[Value]) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = at_name(sc, records)
        .iter()
        .filter_map(|r| {
            Some((
                r["SetIdentifier"].as_str()?.to_string(),
                r["Weight"].as_i64()?,
            ))
        })
        .collect();
    v.sort();
    v
}

fn txt(sc: &Scenario, records: &[Value]) -> Option<String> {
    let name = format!("_trafficshift.{}", sc.record);
    records
        .iter()
        .find(|r| r["Name"] == name.as_str())
        .map(|r| {
            r["ResourceRecords"][0]["Value"]
                .as_str()
                .unwrap()
                .replace('"', "")
        })
}

fn rollout() -> String {
    format!("  rollout:\n    steps: [100]\n    interval: 1s\n    drainDelay: {DRAIN_SECS}s\n")
}

/// The scenario's document without the `lambda` backend.
fn without_lambda(sc: &Scenario, plain_when_single: bool) -> String {
    let doc = sc.document("api", 0, 100, &rollout());
    let lambda = format!(
        "    - name: lambda\n      apiGateway:\n        domainName: {}\n",
        sc.apigw_domain
    );
    assert!(doc.contains(&lambda), "{doc}");
    let mut doc = doc.replace(&lambda, "").replace("    lambda: 0\n", "");
    if plain_when_single {
        doc = doc.replace(
            "    adoptExisting: true\n",
            "    adoptExisting: true\n    plainWhenSingle: true\n",
        );
    }
    doc
}

fn write(path: &Path, text: &str) {
    support::controller::write_atomic(path, text);
}

#[test]
fn deleting_lambda_retires_its_record_after_the_drain_and_hands_the_name_back() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 20);
    // A foreign weighted set elsewhere in the zone: never to be touched.
    let legacy = format!("legacy.{}.", sc.zone);
    change_records(
        &moto,
        &sc.zone_id,
        json!([
            {"Action": "CREATE", "ResourceRecordSet": {"Name": legacy, "Type": "A", "TTL": 60,
              "SetIdentifier": "blue", "Weight": 10, "ResourceRecords": [{"Value": "192.0.2.10"}]}},
            {"Action": "CREATE", "ResourceRecordSet": {"Name": legacy, "Type": "A", "TTL": 60,
              "SetIdentifier": "green", "Weight": 0, "ResourceRecords": [{"Value": "192.0.2.11"}]}},
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("api.yaml");
    write(&doc, &sc.document("api", 0, 100, &rollout()));
    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "1s"]);
    c.wait_ready(DEADLINE);

    wait_for("adopted and at 100 % fargate", DEADLINE, || {
        let r = aws_records(&moto, &sc.zone_id);
        let w = weights(&sc, &r);
        (w == [("fargate".into(), 100), ("lambda".into(), 0)]
            && txt(&sc, &r).is_some_and(|t| t.contains("phase=complete")))
        .then_some(())
    });
    let before = aws_records(&moto, &sc.zone_id);
    let others_before = others(&sc, &before);
    assert!(
        others_before.iter().any(|r| r.contains("\"blue\"")),
        "{others_before:?}"
    );
    let fargate_before = at_name(&sc, &before)
        .into_iter()
        .find(|r| r["SetIdentifier"] == "fargate")
        .unwrap();

    // `plan` shows both steps before they happen.
    let plan_dir = tempfile::tempdir().unwrap();
    write(
        &plan_dir.path().join("api.yaml"),
        &without_lambda(&sc, true),
    );
    let (code, out, err) = run_cli(
        moto.aws(),
        &[
            "plan",
            plan_dir.path().to_str().unwrap(),
            "--owner-id",
            "test",
        ],
    );
    assert!(code == 0 || code == 2, "plan failed ({code}): {out}{err}");
    assert!(out.contains("retiring lambda"), "{out}{err}");
    assert!(out.contains("handed back as plain record"), "{out}{err}");

    // Delete `lambda` from the document.
    let edited = Instant::now();
    write(&doc, &without_lambda(&sc, false));
    let mut saw_retiring = false;
    wait_for("lambda's record deleted", DEADLINE, || {
        if let Some(s) = c.split("api") {
            let w = s["waitingFor"].as_str().unwrap_or_default();
            saw_retiring |= w.contains("retiring lambda (drains until");
            assert_ne!(s["state"], "Conflict", "{s}");
        }
        let r = aws_records(&moto, &sc.zone_id);
        (weights(&sc, &r) == [("fargate".into(), 100)]).then_some(())
    });
    let took = edited.elapsed();
    assert!(
        took >= Duration::from_secs(DRAIN_SECS),
        "deleted {took:?} after the edit, before the {DRAIN_SECS}s drain"
    );
    assert!(saw_retiring, "status said it was retiring lambda");
    let after = aws_records(&moto, &sc.zone_id);
    let t = txt(&sc, &after).expect("state TXT kept");
    assert!(
        !t.contains("lambda") && t.contains("cur=fargate:100"),
        "{t}"
    );
    let fargate_after = at_name(&sc, &after)
        .into_iter()
        .find(|r| r["SetIdentifier"] == "fargate")
        .unwrap();
    assert_eq!(fargate_after, fargate_before, "fargate untouched");
    assert_eq!(
        others(&sc, &after),
        others_before,
        "no other record touched"
    );
    // It stays so: a few more cycles write nothing new.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(aws_records(&moto, &sc.zone_id), after);
    let s = c.split("api").unwrap();
    assert_eq!(s["state"], "Complete", "{s}");

    // plainWhenSingle: the set collapses into a plain alias to the ALB, and the TXT goes.
    write(&doc, &without_lambda(&sc, true));
    let plain = wait_for("a plain record at the name", DEADLINE, || {
        let r = aws_records(&moto, &sc.zone_id);
        let at = at_name(&sc, &r);
        (at.len() == 1 && at[0].get("SetIdentifier").is_none() && txt(&sc, &r).is_none())
            .then(|| at[0].clone())
    });
    assert_eq!(plain["Type"], "A");
    assert_eq!(
        plain["AliasTarget"], fargate_before["AliasTarget"],
        "points where fargate's weighted record did"
    );
    assert_eq!(
        plain["AliasTarget"]["DNSName"]
            .as_str()
            .unwrap()
            .trim_end_matches('.')
            .trim_start_matches("dualstack."),
        sc.info["alb_dns"].as_str().unwrap().trim_end_matches('.'),
        "the ALB"
    );
    // Handed back: no Conflict loop, no re-adoption, nothing else touched.
    let s = wait_for("status says handed back", DEADLINE, || {
        let s = c.split("api")?;
        s["waitingFor"]
            .as_str()?
            .contains("handed back as plain record")
            .then_some(s)
    });
    assert_eq!(s["state"], "Complete", "{s}");
    let settled = aws_records(&moto, &sc.zone_id);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(aws_records(&moto, &sc.zone_id), settled, "left alone");
    assert_eq!(
        others(&sc, &settled),
        others_before,
        "no other record touched"
    );
    let s = c.split("api").unwrap();
    assert_eq!(s["state"], "Complete", "{s}");
    assert!(
        s["lastError"].is_null(),
        "no error after the hand-back: {s}"
    );
}

#[test]
fn an_unknown_set_identifier_is_still_a_conflict() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 20);
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("api.yaml");
    write(&doc, &sc.document("api", 0, 100, &rollout()));
    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "1s"]);
    c.wait_ready(DEADLINE);
    wait_for("at 100 % fargate", DEADLINE, || {
        let r = aws_records(&moto, &sc.zone_id);
        (weights(&sc, &r) == [("fargate".into(), 100), ("lambda".into(), 0)]).then_some(())
    });
    // Someone adds a set id of their own at our name: not ours to retire.
    let fargate = at_name(&sc, &aws_records(&moto, &sc.zone_id))
        .into_iter()
        .find(|r| r["SetIdentifier"] == "fargate")
        .unwrap();
    let mut stranger = fargate.clone();
    stranger["SetIdentifier"] = "canary".into();
    stranger["Weight"] = 0.into();
    change_records(
        &moto,
        &sc.zone_id,
        json!([{"Action": "CREATE", "ResourceRecordSet": stranger}]),
    );
    let before = aws_records(&moto, &sc.zone_id);
    let s = wait_for("Conflict", DEADLINE, || {
        let s = c.split("api")?;
        (s["state"] == "Conflict").then_some(s)
    });
    assert!(
        s["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("canary"),
        "{s}"
    );
    assert_eq!(aws_records(&moto, &sc.zone_id), before, "nothing written");
}
