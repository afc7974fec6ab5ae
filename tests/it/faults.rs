//! The controller through `scripts/faultproxy.py` in front of moto: it converges despite
//! throttling, 5xx, latency and dropped connections without ever writing an unsafe batch, and at
//! rest it costs one listing pass per zone per resync and no writes.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use support::controller::{
    metric_sum, provision_splits, wait_for, weights, Controller, FaultProxy, FleetSplit, Scenario,
};
use support::Moto;

const DEADLINE: Duration = Duration::from_secs(150);

/// POST /__proxy/reset.
fn reset(proxy: &FaultProxy) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-X", "POST"])
        .arg(format!("{}/__proxy/reset", proxy.endpoint))
        .output()
        .expect("curl");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(v["reset"], true, "proxy reset: {v}");
}

/// Requests the proxy saw for `service.operation` since the last reset.
/// Requests of `op` the proxy counted. An operation the proxy never saw is absent from its stats
/// and counts 0; stats that are not the proxy's answer (a failed read) fail the test instead of
/// reading as 0.
fn requests(stats: &Value, op: &str) -> u64 {
    let by_op = stats["by_operation"]
        .as_object()
        .unwrap_or_else(|| panic!("GET /__proxy/stats gave no by_operation map: {stats}"));
    match by_op.get(op) {
        None => 0,
        Some(v) => v["requests"]
            .as_u64()
            .unwrap_or_else(|| panic!("{op}: no request count in {v}")),
    }
}

/// Every ChangeResourceRecordSets the proxy forwarded and moto accepted, in order, replayed on a
/// model of the zones' weighted records: after each batch, the weights at every name it touched
/// (per zone) must sum to 100 and not all be 0. Returns (batches, violations, final weights by
/// `zone/name`).
fn check_write_log(moto: &Moto, log: &std::path::Path) -> (u64, Vec<String>, Value) {
    let v = moto.py(
        r#"
import json, re
import xml.etree.ElementTree as ET

def strip(tag):
    return tag.rsplit("}", 1)[-1]

def find(el, name):
    for c in el:
        if strip(c.tag) == name:
            return c
    return None

model = {}          # (zone, name) -> {set_id: weight}
batches, bad = 0, []
for line in open(input["log"]):
    e = json.loads(line)
    if e["operation"] != "ChangeResourceRecordSets" or e.get("upstream_status") != 200:
        continue
    batches += 1
    zone = re.search(r"/hostedzone/([^/]+)/rrset", e["path"]).group(1)
    root = ET.fromstring(e["body"])
    touched = set()
    for ch in root.iter():
        if strip(ch.tag) != "Change":
            continue
        action = find(ch, "Action").text
        rr = find(ch, "ResourceRecordSet")
        name = find(rr, "Name").text.rstrip(".").lower() + "."
        sid = find(rr, "SetIdentifier")
        if sid is None:
            continue
        key = (zone, name)
        ws = model.setdefault(key, {})
        touched.add(key)
        if action == "DELETE":
            ws.pop(sid.text, None)
        else:
            ws[sid.text] = int(find(rr, "Weight").text)
    for key in sorted(touched):
        ws = model[key]
        if ws and (sum(ws.values()) != 100 or all(w == 0 for w in ws.values())):
            bad.append(f"batch {batches} at {e['time']}: {key[1]} weights {ws}")
out = {"batches": batches, "bad": bad,
       "final": {f"{z}/{n}": ws for (z, n), ws in model.items()}}
"#,
        json!({"log": log.display().to_string()}),
    );
    (
        v["batches"].as_u64().unwrap(),
        serde_json::from_value(v["bad"].clone()).unwrap(),
        v["final"].clone(),
    )
}

/// Two splits (two zones) converge through 30% faults (throttle, 500, 503, delay up to 1 s,
/// dropped connections); throttles are counted in the metrics; every accepted batch leaves
/// weights summing to 100 and never all zero.
#[test]
fn converges_through_faults_without_unsafe_writes() {
    let moto = Moto::start();
    let a = Scenario::provision(&moto, 2);
    let b = Scenario::provision(&moto, 2);
    let proxy = FaultProxy::start(
        &moto.endpoint,
        7,
        0.3,
        "throttle,500,503,delay,drop",
        &["--max-delay", "1"],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), a.document("a", 0, 100, "")).unwrap();
    let rollout = "  rollout:\n    steps: [20, 60, 100]\n    interval: 1s\n";
    std::fs::write(dir.path().join("b.yaml"), b.document("b", 30, 70, rollout)).unwrap();

    let c = Controller::start(&proxy.endpoint, &[dir.path()], "test", &["--resync", "2s"]);
    let want_a = weights(&[("lambda", 0), ("fargate", 100)]);
    let want_b = weights(&[("lambda", 30), ("fargate", 70)]);
    wait_for(
        "both splits at their targets through faults",
        DEADLINE,
        || (a.weights(&moto) == want_a && b.weights(&moto) == want_b).then_some(()),
    );
    assert_eq!(a.ecs_counts(&moto).0, 20);
    assert_eq!(b.ecs_counts(&moto).0, 14);
    for (sc, name) in [(&a, "a"), (&b, "b")] {
        let txt = sc.state_txt(&moto).expect("state TXT");
        assert!(
            txt.contains(&format!("split={name},")) && txt.contains("phase=complete"),
            "{txt}"
        );
    }

    let stats = proxy.stats();
    let faults: u64 = stats["by_fault"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert!(faults > 0, "the proxy injected no faults: {stats:#}");
    let metrics = c.metrics().expect("/metrics");
    let throttled = metric_sum(
        &metrics,
        "trafficshift_aws_requests_total",
        &[("outcome", "throttled")],
    )
    .unwrap_or(0.0);
    assert!(
        throttled > 0.0,
        "no throttled requests counted (proxy: {}):\n{metrics}",
        stats["by_fault"]
    );

    let (batches, bad, last) = check_write_log(&moto, &proxy.log);
    assert!(batches >= 4, "{batches} accepted batches in the proxy log");
    assert!(bad.is_empty(), "unsafe batches:\n{}", bad.join("\n"));
    // The replayed log ends where Route53 is: the log holds every accepted write.
    for (sc, want) in [(&a, &want_a), (&b, &want_b)] {
        let key = format!("{}/{}", sc.zone_id, sc.record);
        assert_eq!(
            serde_json::from_value::<BTreeMap<String, i64>>(last[&key].clone())
                .ok()
                .as_ref(),
            Some(want),
            "replayed {key}: {last:#}"
        );
    }
    eprintln!(
        "faults injected: {}; throttled attempts counted: {throttled}; accepted batches: {batches}",
        stats["by_fault"]
    );
}

/// Reconciles of every split so far, by split.
fn reconciles_by_split(c: &Controller, names: &[String]) -> Option<BTreeMap<String, f64>> {
    let m = c.metrics()?;
    Some(
        names
            .iter()
            .map(|n| {
                let v = metric_sum(&m, "trafficshift_reconciles_total", &[("split", n)]);
                (n.clone(), v.unwrap_or(0.0))
            })
            .collect(),
    )
}

/// Wait until every split has been reconciled again since `before`.
fn wait_all_reconciled(c: &Controller, names: &[String], before: &BTreeMap<String, f64>) {
    wait_for(
        "every split reconciled once more",
        Duration::from_secs(30),
        || {
            let now = reconciles_by_split(c, names)?;
            names.iter().all(|n| now[n] > before[n]).then_some(())
        },
    );
}

/// 50 splits in one zone (10 of them with an ECS backend) plus 200 foreign records, at rest:
/// one resync costs exactly one ListResourceRecordSets pass over the zone and no writes.
#[test]
fn at_rest_one_listing_pass_per_resync_and_no_writes() {
    let moto = Moto::start();
    let zone = "calls.example.";
    let splits: Vec<FleetSplit> = (0..50)
        .map(|i| {
            let svc = format!("svc{i}");
            FleetSplit::new(
                &format!("s{i}"),
                zone,
                &[100, 0],
                &[40, 60],
                (i % 5 == 0).then_some(svc.as_str()),
            )
        })
        .collect();
    let filler: Vec<Value> = (0..200)
        .map(|i| json!({"name": format!("f{i}.{zone}"), "type": "A", "values": ["192.0.2.1"]}))
        .collect();
    let out = provision_splits(
        &moto,
        "calls",
        &splits,
        &BTreeMap::from([(zone.to_string(), filler)]),
    );
    let zone_id = out["zones"][zone].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    for s in &splits {
        std::fs::write(
            dir.path().join(format!("{}.yaml", s.name)),
            s.document("calls", &s.target, ""),
        )
        .unwrap();
    }
    let proxy = FaultProxy::start(&moto.endpoint, 1, 0.0, "throttle", &[]);
    let c = Controller::start(
        &proxy.endpoint,
        &[dir.path()],
        "test",
        &["--resync", "3s", "--route53-rps", "50"],
    );

    let names: Vec<String> = splits.iter().map(|s| s.name.clone()).collect();
    let listing = || -> Vec<Value> {
        moto.py(
            r#"
c = client("route53")
out = []
for page in c.get_paginator("list_resource_record_sets").paginate(HostedZoneId=input["zone"]):
    out.extend(page["ResourceRecordSets"])
"#,
            json!({"zone": zone_id}),
        )
        .as_array()
        .cloned()
        .unwrap_or_default()
    };
    wait_for("all 50 splits at 40/60 with state TXTs", DEADLINE, || {
        let recs = listing();
        let done = splits.iter().all(|s| {
            let w: BTreeMap<String, i64> = recs
                .iter()
                .filter(|r| r["Name"] == s.record.as_str() && r.get("SetIdentifier").is_some())
                .map(|r| {
                    (
                        r["SetIdentifier"].as_str().unwrap().to_string(),
                        r["Weight"].as_i64().unwrap(),
                    )
                })
                .collect();
            w == s.target
                && recs
                    .iter()
                    .any(|r| r["Name"] == format!("_trafficshift.{}", s.record).as_str())
        });
        done.then_some(())
    });
    wait_for("all splits Complete", DEADLINE, || {
        let st = c.status()?;
        let splits = st["splits"].as_array()?;
        (splits.len() == 50 && splits.iter().all(|s| s["state"] == "Complete")).then_some(())
    });
    let services: Vec<String> = splits
        .iter()
        .filter_map(|s| s.ecs.as_ref().map(|e| e.1.clone()))
        .collect();
    assert_eq!(services.len(), 10);
    let desired = support::controller::ecs_desired(&moto, "calls", &services);
    assert!(
        desired.values().all(|&d| d == 5),
        "ECS at ceil(8 x 60%) = 5: {desired:?}"
    );

    // How many ListResourceRecordSets calls one pass over this zone takes.
    let pages = moto
        .py(
            r#"
c = client("route53")
out = [len(p["ResourceRecordSets"]) for p in c.get_paginator("list_resource_record_sets").paginate(
    HostedZoneId=input["zone"], PaginationConfig={"PageSize": 300})]
"#,
            json!({"zone": zone_id}),
        )
        .as_array()
        .unwrap()
        .len() as u64;
    let records = listing().len() as u64;
    assert!(
        records > 300,
        "{records} records: expected more than a page"
    );
    assert_eq!(
        pages,
        records.div_ceil(300),
        "boto3 needs {pages} pages for {records} records"
    );

    // Line up just after a cycle: see a listing start, then every split reconciled.
    // (Counters move when a cycle ends, after all its AWS calls: ending a wait on them puts us
    // between cycles, whichever cycle it was.)
    let seen = requests(&proxy.stats(), "route53.ListResourceRecordSets");
    wait_for("a listing pass", Duration::from_secs(30), || {
        (requests(&proxy.stats(), "route53.ListResourceRecordSets") > seen).then_some(())
    });
    let before = reconciles_by_split(&c, &names).unwrap();
    wait_all_reconciled(&c, &names, &before);

    // One full resync from here.
    reset(&proxy);
    let before = reconciles_by_split(&c, &names).unwrap();
    wait_all_reconciled(&c, &names, &before);
    let stats = proxy.stats();
    let by_op: BTreeMap<String, u64> = stats["by_operation"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, _)| (k.clone(), requests(&stats, k)))
        .collect();
    assert_eq!(
        requests(&stats, "route53.ListResourceRecordSets"),
        pages,
        "one pass of {pages} page(s) over {records} records in one resync; calls: {by_op:?}"
    );
    assert_eq!(
        requests(&stats, "route53.ChangeResourceRecordSets"),
        0,
        "writes at rest: {by_op:?}"
    );
    assert_eq!(
        requests(&stats, "ecs.UpdateService"),
        0,
        "ECS writes at rest: {by_op:?}"
    );
    assert!(
        requests(&stats, "ecs.DescribeServices") <= 1,
        "one batched describe for the cluster (10 services fit one call): {by_op:?}"
    );
}

/// POST /__proxy/config with `changes`.
fn configure(proxy: &FaultProxy, changes: Value) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-f", "-m", "5", "-X", "POST", "-d"])
        .arg(changes.to_string())
        .arg(format!("{}/__proxy/config", proxy.endpoint))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "proxy config {changes}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The event on-call reads for a failed write is one line of at most 300 characters: service
/// and operation, the HTTP status or "no response", AWS's code and message, and whether the
/// change may have been applied. Never the SDK's debug dump.
#[test]
fn failed_writes_read_as_one_line_events() {
    let moto = Moto::start();
    let sc = Scenario::provision(&moto, 2);
    // Every Route53 write fails: the split cannot converge until the proxy lets a write through.
    let proxy = FaultProxy::start(
        &moto.endpoint,
        3,
        1.0,
        "throttle",
        &["--only", "route53.ChangeResourceRecordSets"],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.yaml"), sc.document("w", 0, 100, "")).unwrap();
    let c = Controller::start(&proxy.endpoint, &[dir.path()], "test", &["--resync", "2s"]);

    // The first event of split w whose message contains `needle`.
    let event = |what: &str, needle: &str| -> String {
        wait_for(what, DEADLINE, || {
            let st = c.status()?;
            st["splits"][0]["events"]
                .as_array()?
                .iter()
                .filter_map(|e| e["message"].as_str())
                .find(|m| m.contains(needle))
                .map(str::to_string)
        })
    };
    let one_line = |m: &str| {
        assert!(
            m.chars().count() <= 300,
            "{} characters: {m}",
            m.chars().count()
        );
        assert!(!m.contains('\n'), "{m:?}");
        for dump in ["ServiceError", "raw:", "Response {", "source:", "Unhandled"] {
            assert!(
                !m.contains(dump),
                "SDK debug text {dump:?} in the event: {m}"
            );
        }
    };

    let throttled = event(
        "a throttled-write event",
        "route53 ChangeResourceRecordSets: HTTP 400",
    );
    one_line(&throttled);
    assert!(
        throttled.contains("PriorRequestNotComplete: The request was rejected"),
        "AWS's code and message: {throttled}"
    );
    assert!(throttled.contains("nothing was written"), "{throttled}");

    configure(&proxy, json!({"faults": ["503"]}));
    let unavailable = event(
        "a 503-write event",
        "route53 ChangeResourceRecordSets: HTTP 503",
    );
    one_line(&unavailable);
    assert!(
        unavailable.contains("ServiceUnavailable: Service is unable to handle request"),
        "{unavailable}"
    );
    assert!(
        unavailable.contains("the change may have been applied"),
        "{unavailable}"
    );

    // The write reaches moto, then the proxy drops the connection before answering.
    configure(
        &proxy,
        json!({"fault_rate": 0.0, "post_write_fault_rate": 1.0, "post_write_kinds": ["drop"]}),
    );
    let dropped = event(
        "a dropped-write event",
        "route53 ChangeResourceRecordSets: no response, connection",
    );
    one_line(&dropped);
    assert!(
        dropped.contains("the change may have been applied"),
        "{dropped}"
    );
    // It was applied: Route53 holds the target, read back with boto3.
    let want = weights(&[("lambda", 0), ("fargate", 100)]);
    wait_for("the dropped write visible in Route53", DEADLINE, || {
        (sc.weights(&moto) == want).then_some(())
    });
    // The logs at info and above carry the same lines; the dump is at debug only.
    let log = c.log_text();
    let above_debug: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        above_debug
            .iter()
            .any(|l| l.contains("ChangeResourceRecordSets: HTTP 503")),
        "the failed write is logged above debug:\n{log}"
    );
    for line in above_debug {
        assert!(
            !line.contains("ServiceError"),
            "SDK dump above debug: {line}"
        );
    }
    eprintln!("events:\n  {throttled}\n  {unavailable}\n  {dropped}");
}
