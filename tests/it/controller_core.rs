//! The controller binary against moto: issue #2's behaviours, read back with boto3.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use support::controller::{
    change_records, http_get, json_log, metric_sum, run_cli, wait_for, weights, write_atomic,
    Controller, Scenario,
};
use support::Moto;

const DEADLINE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// helpers

/// A temp dir holding `api.yaml` with `doc`.
fn config_dir(doc: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.yaml"), doc).unwrap();
    dir
}

/// Lower-case, without the trailing dot.
fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The record sets at `name` (any type, any set id), as boto3 lists them.
fn at_name(records: &[Value], name: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["Name"] == name)
        .cloned()
        .collect()
}

/// The plain (non-weighted) record at the scenario's name.
fn plain_record(sc: &Scenario, moto: &Moto) -> Value {
    sc.records(moto)
        .into_iter()
        .find(|r| r["Name"] == sc.record.as_str() && r.get("SetIdentifier").is_none())
        .expect("the scenario's plain record")
}

/// The weighted record of `set_id` at the scenario's name.
fn weighted_record(sc: &Scenario, moto: &Moto, set_id: &str) -> Option<Value> {
    sc.records(moto)
        .into_iter()
        .find(|r| r["Name"] == sc.record.as_str() && r["SetIdentifier"] == set_id)
}

fn txt_name(sc: &Scenario) -> String {
    format!("_trafficshift.{}", sc.record)
}

/// Wait until the scenario shows exactly `want` (SetIdentifier -> weight).
fn wait_weights(sc: &Scenario, moto: &Moto, want: &[(&str, i64)], deadline: Duration) {
    let want = weights(want);
    wait_for(&format!("Route53 weights {want:?}"), deadline, || {
        (sc.weights(moto) == want).then_some(())
    });
}

/// The split's status (JSON) once `pred` holds.
fn wait_split(c: &Controller, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, DEADLINE, || c.split(name).filter(|s| pred(s)))
}

fn reconciles(c: &Controller, split: &str, result: &str) -> f64 {
    c.metrics()
        .and_then(|m| {
            metric_sum(
                &m,
                "trafficshift_reconciles_total",
                &[("split", split), ("result", result)],
            )
        })
        .unwrap_or(0.0)
}

/// Wait until the split has been reconciled `n` more times (with `result`) than `from`.
fn wait_reconciles(c: &Controller, split: &str, result: &str, from: f64, n: f64) {
    wait_for(
        &format!("{n} more {result} reconcile(s) of {split}"),
        DEADLINE,
        || (reconciles(c, split, result) >= from + n).then_some(()),
    );
}

/// Whether `err` names `file` followed by `:line:col:`.
fn has_position(err: &str, file: &Path) -> bool {
    let f = file.display().to_string();
    err.match_indices(&f).any(|(i, _)| {
        let rest = &err[i + f.len()..];
        let mut parts = rest.splitn(4, ':');
        parts.next() == Some("")
            && parts
                .next()
                .is_some_and(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_digit()))
    })
}

/// One sample of the weights at the scenario's name and the service's desiredCount.
#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the poller started.
    t: f64,
    weights: BTreeMap<String, i64>,
    desired: i64,
}

impl Sample {
    fn weight(&self, set_id: &str) -> i64 {
        self.weights.get(set_id).copied().unwrap_or(0)
    }
}

/// Poll Route53 (first) and ECS (second) every 200 ms from one Python process until the Python
/// expression `until` (over `w`: set id -> weight, `d`: desiredCount, `t`: seconds) holds or
/// `timeout` passes. `write` is written (atomically) after the first sample, so a document
/// change lands inside the timeline.
fn timeline(
    moto: &Moto,
    sc: &Scenario,
    until: &str,
    timeout: Duration,
    write: Option<(&Path, &str)>,
) -> Vec<Sample> {
    let script = r#"
import os, time
r53, ecs = client("route53"), client("ecs")
t0 = time.time()
out = []
while True:
    t = time.time() - t0
    recs = []
    for page in r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=input["zone"]):
        recs.extend(page["ResourceRecordSets"])
    w = {r["SetIdentifier"]: r["Weight"] for r in recs
         if r["Name"] == input["name"] and "SetIdentifier" in r}
    d = ecs.describe_services(cluster=input["cluster"],
                              services=[input["service"]])["services"][0]["desiredCount"]
    out.append([round(t, 3), w, d])
    if len(out) == 1 and input["path"]:
        tmp = os.path.join(os.path.dirname(input["path"]), ".timeline.tmp")
        with open(tmp, "w") as f:
            f.write(input["text"])
        os.rename(tmp, input["path"])
    if eval(input["until"]) or t > input["timeout"]:
        break
    time.sleep(0.2)
"#;
    let (path, text) = write
        .map(|(p, t)| (p.display().to_string(), t.to_string()))
        .unwrap_or_default();
    let v = moto.py(
        script,
        json!({
            "zone": sc.zone_id, "name": sc.record, "cluster": sc.cluster, "service": sc.service,
            "until": until, "timeout": timeout.as_secs_f64(), "path": path, "text": text,
        }),
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| Sample {
            t: s[0].as_f64().unwrap(),
            weights: serde_json::from_value(s[1].clone()).unwrap(),
            desired: s[2].as_i64().unwrap(),
        })
        .collect()
}

fn show_timeline(tl: &[Sample]) -> String {
    tl.iter()
        .map(|s| format!("{:6.2}s {:?} desired={}", s.t, s.weights, s.desired))
        .collect::<Vec<_>>()
        .join("\n")
}

/// ECS tasks the scenario document needs by fargate share: the table written out by hand in
/// `writelog::SCENARIO_TASKS`.
fn tasks_for(share: i64) -> i64 {
    crate::writelog::tasks_in(crate::writelog::SCENARIO_TASKS, share)
}

/// The first index of a JSON log line whose message is `msg` and whose fields match.
fn log_index(log: &[Value], msg: &str, pred: impl Fn(&Value) -> bool) -> Option<usize> {
    log.iter().position(|l| l["message"] == msg && pred(l))
}

// ---------------------------------------------------------------------------------------------
// adoption and creation

/// The issue's example, end to end: the plain alias record becomes the weighted set, capacity
/// first, ending at lambda=0 / fargate=100 with 20 tasks, each record pointing at its backend;
/// the unrelated record is untouched.
#[test]
fn adopts_the_plain_record_and_shifts_capacity_first() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let before: Vec<_> = sc
        .records(&moto)
        .into_iter()
        .filter(|r| r["Name"] == sc.unrelated.as_str())
        .collect();
    assert_eq!(before.len(), 1, "the unrelated record exists");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.yaml"), sc.document("api", 0, 100, "")).unwrap();

    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "2s"]);
    c.wait_ready(DEADLINE);
    let w = wait_for("lambda=0 fargate=100 in Route53", DEADLINE, || {
        let w = sc.weights(&moto);
        (w == weights(&[("lambda", 0), ("fargate", 100)])).then_some(w)
    });
    assert_eq!(w.len(), 2);
    assert_eq!(
        sc.ecs_counts(&moto).0,
        20,
        "desiredCount follows the 100% share"
    );
    assert!(
        !sc.records(&moto)
            .iter()
            .any(|r| r["Name"] == sc.record.as_str() && r.get("SetIdentifier").is_none()),
        "the plain record is gone"
    );
    // Each weighted record points where its backend is: lambda at the API Gateway domain's
    // regional name, fargate at the service's ALB.
    let lambda = weighted_record(&sc, &moto, "lambda").expect("lambda record");
    let fargate = weighted_record(&sc, &moto, "fargate").expect("fargate record");
    assert_eq!(
        norm(lambda["AliasTarget"]["DNSName"].as_str().unwrap()),
        norm(sc.info["apigw_regional_domain"].as_str().unwrap()),
        "lambda's alias target: {lambda}"
    );
    assert_eq!(
        lambda["AliasTarget"]["HostedZoneId"], sc.info["apigw_zone_id"],
        "{lambda}"
    );
    assert_eq!(
        norm(fargate["AliasTarget"]["DNSName"].as_str().unwrap()).trim_start_matches("dualstack."),
        norm(sc.info["alb_dns"].as_str().unwrap()),
        "fargate's alias target: {fargate}"
    );
    assert_eq!(
        fargate["AliasTarget"]["HostedZoneId"], sc.info["alb_zone_id"],
        "{fargate}"
    );
    assert_eq!(lambda["Type"], "A");
    assert_eq!(fargate["Type"], "A");
    let after: Vec<_> = sc
        .records(&moto)
        .into_iter()
        .filter(|r| r["Name"] == sc.unrelated.as_str())
        .collect();
    assert_eq!(before, after, "the unrelated record is untouched");
    let txt = sc.state_txt(&moto).expect("ownership TXT");
    assert!(
        txt.contains("owner=test") && txt.contains("phase=complete"),
        "{txt}"
    );
    // The log shows the order: ECS desiredCount raised before the fargate weight rose.
    let log = c.log_text();
    let scale = log.find("ECS desiredCount").expect("ECS scaled");
    let raise = log.find("weight 0 -> 100").expect("weight raised");
    assert!(scale < raise, "capacity before traffic");
    assert_eq!(
        c.sigterm(Duration::from_secs(20)),
        Some(0),
        "SIGTERM exits 0"
    );
    // A plan on the converged state shows no changes.
    let (code, out, err) = run_cli(
        &moto.endpoint,
        &["plan", "--owner-id", "test", dir.path().to_str().unwrap()],
    );
    assert_eq!(code, 0, "no changes expected:\n{out}\n{err}");
}

/// Nothing at the name: the controller creates both weighted records and the TXT, and ECS is at
/// 20 tasks before the fargate record (weight 100) exists.
#[test]
fn creates_the_weighted_set_from_nothing_capacity_first() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let plain = plain_record(&sc, &moto);
    change_records(
        &moto,
        &sc.zone_id,
        json!([{"Action": "DELETE", "ResourceRecordSet": plain}]),
    );
    assert!(at_name(&sc.records(&moto), &sc.record).is_empty());
    let dir = config_dir(&sc.document("api", 0, 100, ""));

    let _c = Controller::start(
        &moto.endpoint,
        &[dir.path()],
        "test",
        &["--resync", "2s", "--log-format", "json"],
    );
    let tl = timeline(&moto, &sc, "'fargate' in w", Duration::from_secs(60), None);
    let first = tl.last().unwrap();
    assert!(
        first.weights.contains_key("fargate"),
        "the fargate record was never created:\n{}",
        show_timeline(&tl)
    );
    assert_eq!(
        first.desired,
        20,
        "desiredCount when the fargate record first appeared:\n{}",
        show_timeline(&tl)
    );
    wait_weights(&sc, &moto, &[("lambda", 0), ("fargate", 100)], DEADLINE);
    let txt = wait_for("the state TXT", DEADLINE, || sc.state_txt(&moto));
    assert!(
        txt.starts_with("heritage=trafficshift,owner=test,split=api,")
            && txt.contains("phase=complete"),
        "{txt}"
    );
    assert_eq!(sc.ecs_counts(&moto).0, 20);
    let records = sc.records(&moto);
    assert!(
        !records
            .iter()
            .any(|r| r["Name"] == sc.record.as_str() && r.get("SetIdentifier").is_none()),
        "no plain record was created"
    );
    assert_eq!(at_name(&records, &txt_name(&sc)).len(), 1);
    let lambda = weighted_record(&sc, &moto, "lambda").unwrap();
    assert_eq!(
        norm(lambda["AliasTarget"]["DNSName"].as_str().unwrap()),
        norm(sc.info["apigw_regional_domain"].as_str().unwrap())
    );
}

/// An unrelated record, a record of another type at another name, a record of another type at a
/// name that merely contains the split's name, and a sub-name of the split's record are all left
/// byte-identical.
#[test]
fn unrelated_records_are_left_untouched() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let zone = format!("{}.", sc.zone);
    change_records(
        &moto,
        &sc.zone_id,
        json!([
            {"Action": "CREATE", "ResourceRecordSet": {"Name": format!("mail.{zone}"), "Type": "MX",
                "TTL": 600, "ResourceRecords": [{"Value": "10 mx1.example.net."}]}},
            {"Action": "CREATE", "ResourceRecordSet": {"Name": format!("xapi.{zone}"), "Type": "TXT",
                "TTL": 60, "ResourceRecords": [{"Value": "\"v=spf1 -all\""}]}},
            {"Action": "CREATE", "ResourceRecordSet": {"Name": format!("v2.{}", sc.record), "Type": "A",
                "TTL": 60, "ResourceRecords": [{"Value": "192.0.2.44"}]}},
            {"Action": "CREATE", "ResourceRecordSet": {"Name": format!("_trafficshift.other.{zone}"),
                "Type": "TXT", "TTL": 300, "ResourceRecords": [{"Value": "\"hello\""}]}},
        ]),
    );
    let theirs = |records: Vec<Value>| -> Vec<Value> {
        records
            .into_iter()
            .filter(|r| r["Name"] != sc.record.as_str() && r["Name"] != txt_name(&sc).as_str())
            .collect()
    };
    let before = theirs(sc.records(&moto));
    assert_eq!(
        before.len(),
        7,
        "SOA, NS, www, mx, txt, sub-name, other TXT: {before:?}"
    );
    let dir = config_dir(&sc.document("api", 50, 50, ""));
    let c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "1s"]);
    wait_weights(&sc, &moto, &[("lambda", 50), ("fargate", 50)], DEADLINE);
    // A few more cycles over the converged state.
    let n = reconciles(&c, "api", "success");
    wait_reconciles(&c, "api", "success", n, 2.0);
    assert_eq!(
        before,
        theirs(sc.records(&moto)),
        "records trafficshift does not own changed"
    );
}

// ---------------------------------------------------------------------------------------------
// conflicts

/// Weighted records with SetIdentifiers `blue`/`green` at the name: Conflict, and nothing is
/// written (records byte-identical, no TXT) over several retries. A TXT owned by another owner id
/// at a second name: Conflict too, nothing written.
#[test]
fn foreign_set_ids_and_foreign_owner_are_conflicts_without_writes() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let info = &sc.info;
    let plain = plain_record(&sc, &moto);
    change_records(
        &moto,
        &sc.zone_id,
        json!([
            {"Action": "DELETE", "ResourceRecordSet": plain},
            {"Action": "CREATE", "ResourceRecordSet": {"Name": sc.record, "Type": "A",
                "SetIdentifier": "blue", "Weight": 70, "AliasTarget": {
                    "DNSName": info["apigw_regional_domain"], "HostedZoneId": info["apigw_zone_id"],
                    "EvaluateTargetHealth": false}}},
            {"Action": "CREATE", "ResourceRecordSet": {"Name": sc.record, "Type": "A",
                "SetIdentifier": "green", "Weight": 30, "AliasTarget": {
                    "DNSName": info["alb_dns"], "HostedZoneId": info["alb_zone_id"],
                    "EvaluateTargetHealth": false}}},
        ]),
    );
    // A second split in another zone whose TXT names another owner.
    let other = Scenario::provision(&moto, 2);
    let payload = "heritage=trafficshift,owner=other,split=api2,gen=abcdef,phase=complete,step=1,since=1700000000,start=lambda:100;fargate:0,cur=lambda:100;fargate:0";
    change_records(
        &moto,
        &other.zone_id,
        json!([{"Action": "CREATE", "ResourceRecordSet": {"Name": txt_name(&other), "Type": "TXT",
            "TTL": 300, "ResourceRecords": [{"Value": format!("\"{payload}\"")}]}}]),
    );
    let before = sc.records(&moto);
    let before_other = other.records(&moto);
    let (desired, _) = sc.ecs_counts(&moto);
    let (desired_other, _) = other.ecs_counts(&moto);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.yaml"), sc.document("api", 0, 100, "")).unwrap();
    std::fs::write(
        dir.path().join("api2.yaml"),
        other.document("api2", 0, 100, ""),
    )
    .unwrap();
    let c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "1s"]);
    let s = wait_split(&c, "api", "api in Conflict naming blue", |s| {
        s["state"] == "Conflict" && s["lastError"].as_str().is_some_and(|e| e.contains("blue"))
    });
    assert!(
        s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Conflict"),
        "{s:#}"
    );
    let s2 = wait_split(&c, "api2", "api2 in Conflict naming owner other", |s| {
        s["state"] == "Conflict"
            && s["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("\"other\""))
    });
    // Let it retry a few times: still nothing written.
    wait_reconciles(&c, "api", "error", 0.0, 3.0);
    wait_reconciles(&c, "api2", "error", 0.0, 3.0);
    let m = c.metrics().unwrap();
    assert_eq!(
        metric_sum(
            &m,
            "trafficshift_split_state",
            &[("split", "api"), ("state", "Conflict")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        before,
        sc.records(&moto),
        "records changed despite the conflict"
    );
    assert!(
        at_name(&sc.records(&moto), &txt_name(&sc)).is_empty(),
        "a TXT was written"
    );
    assert_eq!(
        before_other,
        other.records(&moto),
        "records changed despite the other owner ({s2:#})"
    );
    assert_eq!(
        sc.ecs_counts(&moto).0,
        desired,
        "ECS scaled despite the conflict"
    );
    assert_eq!(
        other.ecs_counts(&moto).0,
        desired_other,
        "ECS scaled despite the conflict"
    );
}

/// `adoptExisting: false` with a plain record at the name: Conflict, nothing written.
#[test]
fn plain_record_without_adopt_existing_is_a_conflict() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let before = sc.records(&moto);
    let doc = sc
        .document("api", 0, 100, "")
        .replace("adoptExisting: true", "adoptExisting: false");
    assert!(doc.contains("adoptExisting: false"));
    let dir = config_dir(&doc);
    let c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "1s"]);
    wait_split(&c, "api", "Conflict naming adoptExisting", |s| {
        s["state"] == "Conflict"
            && s["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("adoptExisting"))
    });
    wait_reconciles(&c, "api", "error", 0.0, 3.0);
    assert_eq!(before, sc.records(&moto), "records changed");
    assert_eq!(sc.ecs_counts(&moto).0, 2, "ECS scaled despite the conflict");
}

// ---------------------------------------------------------------------------------------------
// drift

/// Hand edits of weights and of an alias target are put back; the drift counter and the
/// DriftCorrected event say so.
#[test]
fn drift_is_corrected() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let dir = config_dir(&sc.document("api", 30, 70, ""));
    let c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "2s"]);
    wait_weights(&sc, &moto, &[("lambda", 30), ("fargate", 70)], DEADLINE);
    wait_split(&c, "api", "api Complete", |s| s["state"] == "Complete");

    // Weights edited by hand.
    let mut lambda = weighted_record(&sc, &moto, "lambda").unwrap();
    let mut fargate = weighted_record(&sc, &moto, "fargate").unwrap();
    lambda["Weight"] = json!(95);
    fargate["Weight"] = json!(5);
    change_records(
        &moto,
        &sc.zone_id,
        json!([{"Action": "UPSERT", "ResourceRecordSet": lambda},
               {"Action": "UPSERT", "ResourceRecordSet": fargate}]),
    );
    // (The controller may put it back before a read-back here could see it.)
    wait_weights(&sc, &moto, &[("lambda", 30), ("fargate", 70)], DEADLINE);
    let corrections = |c: &Controller| {
        c.metrics()
            .and_then(|m| {
                metric_sum(
                    &m,
                    "trafficshift_drift_corrections_total",
                    &[("split", "api")],
                )
            })
            .unwrap_or(0.0)
    };
    let n = wait_for("drift_corrections_total{split=api} >= 1", DEADLINE, || {
        let n = corrections(&c);
        (n >= 1.0).then_some(n)
    });
    wait_split(&c, "api", "a DriftCorrected event", |s| {
        s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "DriftCorrected")
    });

    // The alias target edited by hand.
    let mut fargate = weighted_record(&sc, &moto, "fargate").unwrap();
    let alb = fargate["AliasTarget"]["DNSName"].clone();
    fargate["AliasTarget"]["DNSName"] = json!("elsewhere.example.net.");
    change_records(
        &moto,
        &sc.zone_id,
        json!([{"Action": "UPSERT", "ResourceRecordSet": fargate}]),
    );
    wait_for("fargate's alias target put back", DEADLINE, || {
        let r = weighted_record(&sc, &moto, "fargate")?;
        (r["AliasTarget"]["DNSName"] == alb).then_some(())
    });
    assert_eq!(
        sc.weights(&moto),
        weights(&[("lambda", 30), ("fargate", 70)])
    );
    wait_for("a second drift correction counted", DEADLINE, || {
        (corrections(&c) >= n + 1.0).then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// invalid documents

/// Five snapshots over 6 s (--resync 1s): the records never change while the controller keeps
/// reconciling, and it stays alive.
fn assert_records_hold(c: &mut Controller, sc: &Scenario, moto: &Moto, want: &[Value]) {
    let n = reconciles(c, "api", "success");
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(
            want,
            sc.records(moto),
            "records changed (snapshot {i}) while the document is invalid"
        );
        assert_eq!(c.exit_code(), None, "the controller exited");
        assert_eq!(
            http_get(&c.endpoint, "/healthz").map(|(code, _)| code),
            Some(200),
            "healthz"
        );
    }
    assert!(
        reconciles(c, "api", "success") >= n + 2.0,
        "the controller kept reconciling with the last good document"
    );
}

/// Wait for the split to be Invalid with a config error at `file:line:col` mentioning `needle`.
fn wait_invalid(c: &Controller, file: &Path, needle: &str) -> Value {
    let st = wait_for(
        &format!(
            "config error at {}:line:col naming {needle:?}",
            file.display()
        ),
        DEADLINE,
        || {
            let st = c.status()?;
            let errs = st["config"]["errors"].as_array()?.clone();
            (st["config"]["valid"] == false
                && errs.iter().any(|e| {
                    let e = e.as_str().unwrap_or_default();
                    has_position(e, file) && e.contains(needle)
                }))
            .then_some(st)
        },
    );
    wait_split(c, "api", "api Invalid", |s| {
        s["state"] == "Invalid"
            && s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["type"] == "Degraded" && k["reason"] == "InvalidDocument")
    });
    st
}

#[test]
fn invalid_documents_change_nothing_and_the_process_stays_up() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let dir = config_dir(&sc.document("api", 50, 50, ""));
    let file = dir.path().join("api.yaml");
    let mut c = Controller::start(moto.aws(), &[dir.path()], "test", &["--resync", "1s"]);
    wait_weights(&sc, &moto, &[("lambda", 50), ("fargate", 50)], DEADLINE);
    wait_split(&c, "api", "api Complete", |s| s["state"] == "Complete");
    let good = sc.records(&moto);

    // Weights summing to 90.
    write_atomic(&file, &sc.document("api", 40, 50, ""));
    wait_invalid(&c, &file, "sum to 90");
    assert_records_hold(&mut c, &sc, &moto, &good);

    // A valid document again: converges, leaves Invalid.
    write_atomic(&file, &sc.document("api", 20, 80, ""));
    wait_weights(&sc, &moto, &[("lambda", 20), ("fargate", 80)], DEADLINE);
    wait_split(&c, "api", "api leaves Invalid", |s| {
        s["state"] == "Complete"
    });
    let st = c.status().unwrap();
    assert_eq!(st["config"]["valid"], true, "{st:#}");
    let good = sc.records(&moto);

    // A YAML syntax error.
    let broken = sc
        .document("api", 20, 80, "")
        .replace("  weights:\n", "  weights: [unclosed\n");
    write_atomic(&file, &broken);
    wait_invalid(&c, &file, "");
    assert_records_hold(&mut c, &sc, &moto, &good);

    // An unknown field.
    write_atomic(&file, &sc.document("api", 10, 90, "  colour: blue\n"));
    wait_invalid(&c, &file, "colour");
    assert_records_hold(&mut c, &sc, &moto, &good);
    assert_eq!(
        sc.weights(&moto),
        weights(&[("lambda", 20), ("fargate", 80)])
    );
}

// ---------------------------------------------------------------------------------------------
// config watching

/// `ln -s target link` then `rename(link, dst)`: an atomic symlink swap, like kubelet and git-sync.
fn swap_symlink(target: &Path, dst: &Path) {
    let tmp = dst.with_file_name(format!(
        "{}_tmp",
        dst.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// With --resync 300s only the file watch can explain a change: a kubelet `..data` swap, an
/// editor's rename over a file given as `--config FILE`, and a git-sync worktree swap are all
/// picked up.
#[test]
fn config_changes_are_picked_up_by_the_watch() {
    let moto = Moto::start();
    let zone = |p: &str| format!("{}.example", support::unique(p));
    let cm = Scenario::provision_in(&moto, &zone("cm"), "api", 2);
    let ed = Scenario::provision_in(&moto, &zone("ed"), "api", 2);
    let gs = Scenario::provision_in(&moto, &zone("gs"), "api", 2);
    let root = tempfile::tempdir().unwrap();
    let r = root.path();

    // ConfigMap volume: api.yaml -> ..data/api.yaml, ..data -> ..2024_01_01_v1/
    let cm_dir = r.join("configmap");
    std::fs::create_dir_all(cm_dir.join("..2024_01_01_v1")).unwrap();
    std::fs::write(
        cm_dir.join("..2024_01_01_v1/api.yaml"),
        cm.document("cm", 50, 50, ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2024_01_01_v1", cm_dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/api.yaml", cm_dir.join("api.yaml")).unwrap();

    // A plain file given by path, replaced by an editor's rename.
    let ed_dir = r.join("editor");
    std::fs::create_dir_all(&ed_dir).unwrap();
    let ed_file = ed_dir.join("api.yaml");
    std::fs::write(&ed_file, ed.document("ed", 50, 50, "")).unwrap();

    // git-sync: <root>/repo -> wt1, config at repo/splits.
    std::fs::create_dir_all(r.join("wt1/splits")).unwrap();
    std::fs::write(r.join("wt1/splits/api.yaml"), gs.document("gs", 50, 50, "")).unwrap();
    std::os::unix::fs::symlink(r.join("wt1"), r.join("repo")).unwrap();
    let gs_path = r.join("repo/splits");

    let configs: [&Path; 3] = [&cm_dir, &ed_file, &gs_path];
    let c = Controller::start(moto.aws(), &configs, "test", &["--resync", "300s"]);
    for sc in [&cm, &ed, &gs] {
        wait_weights(sc, &moto, &[("lambda", 50), ("fargate", 50)], DEADLINE);
    }
    for name in ["cm", "ed", "gs"] {
        wait_split(&c, name, "Complete", |s| s["state"] == "Complete");
    }

    // kubelet: new timestamped dir, ..data_tmp -> it, rename over ..data, remove the old one.
    std::fs::create_dir_all(cm_dir.join("..2024_01_01_v2")).unwrap();
    std::fs::write(
        cm_dir.join("..2024_01_01_v2/api.yaml"),
        cm.document("cm", 20, 80, ""),
    )
    .unwrap();
    swap_symlink(Path::new("..2024_01_01_v2"), &cm_dir.join("..data"));
    std::fs::remove_dir_all(cm_dir.join("..2024_01_01_v1")).unwrap();

    // Editor: write a temp file next to it and rename over it.
    let tmp = ed_dir.join("api.yaml.swp");
    std::fs::write(&tmp, ed.document("ed", 20, 80, "")).unwrap();
    std::fs::rename(&tmp, &ed_file).unwrap();

    // git-sync: a new worktree, the repo link swapped to it, the old one removed.
    std::fs::create_dir_all(r.join("wt2/splits")).unwrap();
    std::fs::write(r.join("wt2/splits/api.yaml"), gs.document("gs", 20, 80, "")).unwrap();
    swap_symlink(&r.join("wt2"), &r.join("repo"));
    std::fs::remove_dir_all(r.join("wt1")).unwrap();

    for (sc, what) in [
        (&cm, "ConfigMap swap"),
        (&ed, "editor rename"),
        (&gs, "git-sync swap"),
    ] {
        let want = weights(&[("lambda", 20), ("fargate", 80)]);
        wait_for(&format!("{what}: 20/80 in Route53"), DEADLINE, || {
            (sc.weights(&moto) == want).then_some(())
        });
    }

    // A second change of each, to check the watches survived the swaps.
    std::fs::create_dir_all(cm_dir.join("..2024_01_01_v3")).unwrap();
    std::fs::write(
        cm_dir.join("..2024_01_01_v3/api.yaml"),
        cm.document("cm", 60, 40, ""),
    )
    .unwrap();
    swap_symlink(Path::new("..2024_01_01_v3"), &cm_dir.join("..data"));
    std::fs::remove_dir_all(cm_dir.join("..2024_01_01_v2")).unwrap();
    std::fs::write(&tmp, ed.document("ed", 60, 40, "")).unwrap();
    std::fs::rename(&tmp, &ed_file).unwrap();
    std::fs::create_dir_all(r.join("wt3/splits")).unwrap();
    std::fs::write(r.join("wt3/splits/api.yaml"), gs.document("gs", 60, 40, "")).unwrap();
    swap_symlink(&r.join("wt3"), &r.join("repo"));
    std::fs::remove_dir_all(r.join("wt2")).unwrap();
    for (sc, what) in [
        (&cm, "ConfigMap swap"),
        (&ed, "editor rename"),
        (&gs, "git-sync swap"),
    ] {
        let want = weights(&[("lambda", 60), ("fargate", 40)]);
        wait_for(
            &format!("second {what}: 60/40 in Route53"),
            DEADLINE,
            || (sc.weights(&moto) == want).then_some(()),
        );
    }
    let st = c.status().unwrap();
    assert_eq!(st["config"]["valid"], true, "{st:#}");
}

// ---------------------------------------------------------------------------------------------
// capacity and drain

/// A rollout 0 -> 100 in steps [50, 100]: at every sample the desiredCount covers the fargate
/// weight Route53 shows (capacity before traffic). Back to fargate 0: the tasks stay for the
/// drain delay (6 s) and then drop to minTasks.
#[test]
fn ecs_scales_up_before_the_weight_rises_and_down_after_the_drain() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    let rollout = "  rollout:\n    steps: [50, 100]\n    interval: 2s\n    drainDelay: 6s\n";
    let dir = config_dir(&sc.document("api", 0, 100, rollout));
    let file = dir.path().join("api.yaml");
    let c = Controller::start(
        &moto.endpoint,
        &[dir.path()],
        "test",
        &["--resync", "2s", "--log-format", "json"],
    );

    let up = timeline(
        &moto,
        &sc,
        "w.get('fargate') == 100",
        Duration::from_secs(60),
        None,
    );
    let shown = show_timeline(&up);
    eprintln!("scale-up timeline:\n{shown}");
    assert_eq!(
        up.last().unwrap().weight("fargate"),
        100,
        "never reached fargate 100:\n{shown}"
    );
    for s in &up {
        assert!(
            s.desired >= tasks_for(s.weight("fargate")),
            "fargate at {}% with desiredCount {} at {:.2}s:\n{shown}",
            s.weight("fargate"),
            s.desired,
            s.t
        );
    }
    assert!(
        up.iter().any(|s| s.weight("fargate") == 50),
        "the 50% step was never seen:\n{shown}"
    );
    // The log agrees: each rise of the fargate weight comes after a scale-up that covers it.
    let log = json_log(&c);
    for (w, need) in [(50, 10), (100, 20)] {
        let reason = format!("weight 0 -> {w}");
        let reason2 = format!("weight 50 -> {w}");
        let raise = log_index(&log, "Route53 change", |l| {
            l["set_id"] == "fargate"
                && (l["reason"] == reason.as_str()
                    || l["reason"] == reason2.as_str()
                    || l["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("create weight ") && w == 50))
        })
        .unwrap_or_else(|| {
            panic!(
                "no Route53 change raising fargate to {w}:\n{}",
                c.log_tail()
            )
        });
        let scale = log_index(&log, "ECS desiredCount", |l| l["to"].as_i64() >= Some(need))
            .unwrap_or_else(|| panic!("no scale-up to {need}:\n{}", c.log_tail()));
        assert!(
            scale < raise,
            "scale-up to {need} logged after fargate's weight rose to {w}"
        );
    }
    assert_eq!(sc.ecs_counts(&moto).0, 20);

    // Back to lambda: fargate drops at once, its tasks stay 6 s, then minTasks.
    let back = sc.document(
        "api",
        100,
        0,
        "  rollout:\n    steps: [100]\n    drainDelay: 6s\n",
    );
    let down = timeline(
        &moto,
        &sc,
        "d == 2",
        Duration::from_secs(60),
        Some((&file, &back)),
    );
    let shown = show_timeline(&down);
    eprintln!("drain timeline:\n{shown}");
    let dropped = down
        .iter()
        .find(|s| s.weight("fargate") == 0)
        .unwrap_or_else(|| panic!("fargate never dropped to 0:\n{shown}"));
    assert_eq!(dropped.weight("lambda"), 100, "{shown}");
    assert!(
        down.iter()
            .filter(|s| s.t < dropped.t)
            .all(|s| s.desired >= 20),
        "scaled down before the weight dropped:\n{shown}"
    );
    let scaled = down
        .iter()
        .find(|s| s.t > dropped.t && s.desired < 20)
        .unwrap_or_else(|| panic!("never scaled down:\n{shown}"));
    assert!(
        scaled.t - dropped.t >= 4.5,
        "scaled down {:.2}s after the weight dropped, drainDelay is 6s:\n{shown}",
        scaled.t - dropped.t
    );
    assert_eq!(
        down.last().unwrap().desired,
        2,
        "minTasks after the drain:\n{shown}"
    );
    assert_eq!(scaled.desired, 2, "straight to minTasks:\n{shown}");
}

// ---------------------------------------------------------------------------------------------
// CLI: plan, run --once, --dry-run, validate, schema

fn cli(moto: &Moto, args: &[&str]) -> (i32, String, String) {
    run_cli(&moto.endpoint, args)
}

/// `plan` before/after, `run --dry-run --once`, `run --once`, conflicts, missing zone.
#[test]
fn plan_once_and_dry_run() {
    let moto = Moto::start();
    // 5 tasks: adopting lambda=100 scales fargate down to minTasks, an ECS change in the plan.
    let sc = Scenario::provision(&moto, 5);
    let dir = config_dir(&sc.document("api", 100, 0, ""));
    let d = dir.path().to_str().unwrap();
    let before = sc.records(&moto);

    let (code, out, err) = cli(&moto, &["plan", "--owner-id", "test", d]);
    assert_eq!(code, 2, "changes pending:\n{out}\n{err}");
    let rec = &sc.record;
    let txt = txt_name(&sc);
    for want in [
        format!("- route53 Delete {rec} A set=-"),
        format!("+ route53 Create {rec} A set=lambda weight=100"),
        format!("+ route53 Create {rec} A set=fargate weight=0"),
        format!("+ route53 Create {txt} TXT"),
        format!("~ ecs {}/{} desiredCount 5 -> 2", sc.cluster, sc.service),
    ] {
        assert!(out.contains(&want), "plan lacks {want:?}:\n{out}");
    }
    assert_eq!(before, sc.records(&moto), "plan wrote to Route53");
    assert_eq!(sc.ecs_counts(&moto).0, 5, "plan wrote to ECS");

    // --dry-run --once: nothing written, the log says dry-run.
    let out = std::process::Command::new(support::controller::bin())
        .args(["run", "--dry-run", "--once", "--owner-id", "test"])
        .args(["--listen", "127.0.0.1:0", "--config", d])
        .envs(moto.aws_env())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "dry-run exit code:\n{log}");
    assert!(log.contains("dry-run"), "{log}");
    assert_eq!(before, sc.records(&moto), "dry-run wrote to Route53");
    assert_eq!(sc.ecs_counts(&moto).0, 5, "dry-run wrote to ECS");

    // --once: one cycle converges (nothing waits for capacity here).
    let out = std::process::Command::new(support::controller::bin())
        .args(["run", "--once", "--owner-id", "test"])
        .args(["--listen", "127.0.0.1:0", "--config", d])
        .envs(moto.aws_env())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "run --once:\n{log}");
    assert_eq!(
        sc.weights(&moto),
        weights(&[("lambda", 100), ("fargate", 0)]),
        "{log}"
    );
    assert_eq!(sc.ecs_counts(&moto).0, 2);
    assert!(sc.state_txt(&moto).is_some());

    let (code, out, err) = cli(&moto, &["plan", "--owner-id", "test", d]);
    assert_eq!(code, 0, "converged:\n{out}\n{err}");
    assert!(out.contains("no changes"), "{out}");

    // Invalid document: exit 1 with file:line:col.
    let bad = config_dir(&sc.document("api", 40, 50, ""));
    let bad_file = bad.path().join("api.yaml");
    let (code, out, err) = cli(
        &moto,
        &["plan", "--owner-id", "test", bad.path().to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.lines().any(|l| has_position(l, &bad_file)),
        "no {}:line:col in:\n{err}",
        bad_file.display()
    );

    // A hosted zone that does not exist: exit 1 naming it.
    let missing = config_dir(&sc.document("api", 100, 0, "").replace(
        &format!("hostedZone: {}.", sc.zone),
        "hostedZone: nowhere-zone.example.",
    ));
    let (code, out, err) = cli(
        &moto,
        &[
            "plan",
            "--owner-id",
            "test",
            missing.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("nowhere-zone.example"),
        "the missing zone is not named:\n{out}\n{err}"
    );

    // run --once with a conflict: exit 1, nothing written.
    let conf = Scenario::provision(&moto, 2);
    let conf_before = conf.records(&moto);
    let conf_dir = config_dir(
        &conf
            .document("conf", 0, 100, "")
            .replace("adoptExisting: true", "adoptExisting: false"),
    );
    let out = std::process::Command::new(support::controller::bin())
        .args(["run", "--once", "--owner-id", "test"])
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(conf_dir.path())
        .envs(moto.aws_env())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "conflict:\n{log}");
    assert_eq!(
        conf_before,
        conf.records(&moto),
        "written despite the conflict"
    );
}

#[test]
fn validate_and_schema() {
    let moto_free = "http://127.0.0.1:9"; // validate and schema never call AWS
    let sc = Scenario {
        zone: "example.com".into(),
        zone_id: String::new(),
        record: "api.example.com.".into(),
        cluster: "prod".into(),
        service: "api".into(),
        apigw_domain: "api-gw.example.com".into(),
        unrelated: String::new(),
        info: Value::Null,
    };
    let good = config_dir(&sc.document("api", 20, 80, ""));
    let (code, out, err) = run_cli(moto_free, &["validate", good.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("split api valid"), "{out}");

    // Several problems in several files: every one is listed with its position.
    let bad = tempfile::tempdir().unwrap();
    let sum = bad.path().join("a-sum.yaml");
    std::fs::write(
        &sum,
        sc.document("sum", 40, 50, "  rollout:\n    steps: [50, 20]\n"),
    )
    .unwrap();
    let unknown = bad.path().join("b-unknown.yaml");
    std::fs::write(&unknown, sc.document("unknown", 20, 80, "  colour: blue\n")).unwrap();
    let syntax = bad.path().join("c-syntax.yaml");
    std::fs::write(
        &syntax,
        sc.document("syntax", 20, 80, "")
            .replace("  weights:\n", "  weights: [unclosed\n"),
    )
    .unwrap();
    let (code, out, err) = run_cli(moto_free, &["validate", bad.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    for (file, needle) in [
        (&sum, "sum to 90"),
        (&sum, "last step must be 100"),
        (&unknown, "colour"),
        (&syntax, ""),
    ] {
        assert!(
            err.lines()
                .any(|l| has_position(l, file) && l.contains(needle)),
            "missing {}:line:col ... {needle:?} in:\n{err}",
            file.display()
        );
    }

    let (code, out, err) = run_cli(moto_free, &["schema"]);
    assert_eq!(code, 0, "{err}");
    let schema: Value = serde_json::from_str(&out).expect("schema prints JSON");
    assert!(
        schema["$id"].as_str().is_some_and(|s| !s.is_empty()),
        "no $id: {out}"
    );
}
