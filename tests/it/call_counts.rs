//! CI guard of the scale benchmark's call counts (issue #6 part 4a), at a small scale: 3 zones of
//! 40 splits (one of them an adopted API Gateway + ECS split) with 200 foreign records each, and a
//! zone of 2,000 foreign records with 3 owned names. Through `scripts/faultproxy.py` (fault rate
//! 0), the AWS calls of the first convergence and of a steady-state cycle must equal the minimum
//! derived here from first principles, and a steady-state cycle writes nothing.
//!
//! The Route53 minimum is not the benchmark's cost model (`fleet::minimum`, which follows the
//! controller's own choices); it is derived in this file from what moto holds, read with boto3,
//! and from Route53's published limits:
//! - ListResourceRecordSets of a zone: a full pass reads ceil(records / 300) pages; reading only
//!   the owned names takes, per name, ceil(records at the name and its `_trafficshift.` TXT / 300)
//!   pages (the TXT sorts right after its name); the fewer of the two.
//! - ChangeResourceRecordSets of a zone: the changes written must fit calls of at most 1,000
//!   ResourceRecord elements and 32,000 Value characters (an UPSERT counts twice), so at least
//!   max(1, ceil(elements / 1000), ceil(characters / 32000)) calls when anything is written.
//!
//! The other operations take the benchmark's model. Both figures are printed side by side with the
//! calls counted at the proxy, so a disagreement between the model and the first principles shows.
//! Timings are not asserted here; `cargo bench --bench scale` measures them.

use crate::scale;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use scale::fleet::{self, Phase, Proxy};
use scale::support::controller::{wait_for, Controller};
use scale::support::Moto;
use serde_json::{json, Value};

const OWNER: &str = "ci-counts";
/// Route53's published limits.
const PAGE: u64 = 300;
const MAX_ELEMENTS: u64 = 1000;
const MAX_CHARS: u64 = 32_000;

/// Per zone id: (records in the zone, records at each given name and at its `_trafficshift.`
/// name), counted by paging ListResourceRecordSets with boto3.
fn count_records(
    moto: &Moto,
    names: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, (u64, BTreeMap<String, u64>)> {
    let v = moto.py(
        r#"
c = client("route53")
out = {}
for zid, names in input["zones"].items():
    total, at = 0, {n: 0 for n in names}
    for page in c.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zid):
        for r in page["ResourceRecordSets"]:
            total += 1
            name = r["Name"].lower()
            for n in names:
                if name in (n.lower(), "_trafficshift." + n.lower()):
                    at[n] += 1
    out[zid] = {"total": total, "at": at}
"#,
        json!({ "zones": names }),
    );
    v.as_object()
        .expect("object")
        .iter()
        .map(|(z, x)| {
            let at = x["at"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(n, c)| (n.clone(), c.as_u64().unwrap()))
                .collect();
            (z.clone(), (x["total"].as_u64().unwrap(), at))
        })
        .collect()
}

/// Text of every `<tag>...</tag>` in `s`.
fn elements<'a>(s: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// Per zone id: (ResourceRecord elements, Value characters) of the changes the accepted
/// ChangeResourceRecordSets of `entries` carried, an UPSERT counted twice, as Route53 counts them.
fn written(entries: &[Value]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in entries
        .iter()
        .filter(|e| e["operation"] == "ChangeResourceRecordSets" && e["status"] == 200)
    {
        let path = e["path"].as_str().unwrap_or_default();
        let zone = path
            .split("/hostedzone/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("zone id in the path")
            .to_string();
        let body = e["body"].as_str().expect("logged request body");
        let z = out.entry(zone).or_default();
        for change in elements(body, "Change") {
            let twice = if elements(change, "Action") == ["UPSERT"] {
                2
            } else {
                1
            };
            let values = elements(change, "Value");
            z.0 += twice * values.len() as u64;
            z.1 += twice
                * values
                    .iter()
                    .map(|v| {
                        v.replace("&quot;", "\"")
                            .replace("&apos;", "'")
                            .replace("&lt;", "<")
                            .replace("&gt;", ">")
                            .replace("&amp;", "&")
                            .chars()
                            .count() as u64
                    })
                    .sum::<u64>();
        }
    }
    out
}

/// The Route53 minimum of one cycle over `due` (see the module comment), from `records` counted
/// when the cycle read the zones and the changes it wrote.
fn route53_minimum(
    fleet: &fleet::Fleet,
    due: &[&fleet::SplitInfo],
    records: &BTreeMap<String, (u64, BTreeMap<String, u64>)>,
    writes: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for z in &fleet.zones {
        if !due.iter().any(|s| s.zone == z.name) {
            continue;
        }
        let (total, at) = &records[&z.id];
        let full_pass = total.div_ceil(PAGE).max(1);
        // Only the names due in this cycle need reading.
        let targeted: u64 = due
            .iter()
            .filter(|s| s.zone == z.name)
            .map(|s| at[&s.record].div_ceil(PAGE).max(1))
            .sum();
        *m.entry("route53.ListResourceRecordSets".to_string())
            .or_default() += full_pass.min(targeted);
        if let Some(&(elements, chars)) = writes.get(&z.id) {
            *m.entry("route53.ChangeResourceRecordSets".to_string())
                .or_default() += 1u64
                .max(elements.div_ceil(MAX_ELEMENTS))
                .max(chars.div_ceil(MAX_CHARS));
        }
    }
    m
}

/// Owned record names of `due`, per zone id.
fn names_by_zone(fleet: &fleet::Fleet, due: &[&fleet::SplitInfo]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in due {
        let z = fleet.zones.iter().find(|z| z.name == s.zone).expect("zone");
        out.entry(z.id.clone()).or_default().push(s.record.clone());
    }
    out
}

/// The minimum: the benchmark's model with the Route53 lists and batches from first principles.
/// Prints calls, minimum and model side by side; fails when the calls are not the minimum.
fn assert_minimal(
    what: &str,
    actual: &BTreeMap<String, u64>,
    model: &BTreeMap<String, u64>,
    route53: &BTreeMap<String, u64>,
) {
    let mut min = model.clone();
    for op in [
        "route53.ListResourceRecordSets",
        "route53.ChangeResourceRecordSets",
    ] {
        match route53.get(op) {
            Some(n) => min.insert(op.to_string(), *n),
            None => min.remove(op),
        };
    }
    let rows = fleet::compare(actual, &min);
    let mut table = format!(
        "{what}\n\n| operation | calls | first-principles minimum | benchmark model |\n|---|---:|---:|---:|\n"
    );
    for (k, a, m) in &rows {
        table += &format!(
            "| {k} | {a} | {m} | {} |\n",
            model.get(k).copied().unwrap_or(0)
        );
    }
    eprintln!("{table}");
    let off: Vec<String> = rows
        .iter()
        .filter(|(_, a, m)| a != m)
        .map(|(k, a, m)| format!("{k}: {a} calls, minimum {m}"))
        .collect();
    assert!(
        off.is_empty(),
        "{what}: not at the minimum: {off:?}\n{table}"
    );
}

#[test]
fn first_convergence_and_steady_state_make_the_minimum_of_calls() {
    let moto = Moto::start();
    let plans = fleet::layout(3, 40, 200, 1, 2000, 3);
    let fleet = fleet::provision(&moto, &plans);
    let n = fleet.splits.len();
    let proxy = Proxy::start(&moto.endpoint);
    let before = fleet::record_counts(&moto);
    let all: Vec<&fleet::SplitInfo> = fleet.splits.iter().collect();
    let counted_before = count_records(&moto, &names_by_zone(&fleet, &all));
    proxy.reset();
    let skip = proxy.entries().len();

    // First convergence: one cycle, nothing cached.
    let (code, took, log) = fleet::run_once(&proxy.url, &fleet.dir, OWNER, &["--route53-rps", "0"]);
    assert_eq!(
        code,
        Some(0),
        "trafficshift run --once failed after {took:?}:\n{log}"
    );
    let actual = proxy.stats();
    let entries = proxy.entries()[skip..].to_vec();
    let writes = fleet::writes(&entries);
    let due: Vec<&fleet::SplitInfo> = fleet.splits.iter().collect();
    let model = fleet::minimum(
        &fleet,
        &due,
        Phase::First,
        &before,
        &fleet::value_chars(&writes),
    );
    let route53 = route53_minimum(&fleet, &due, &counted_before, &written(&entries));
    assert_minimal("first convergence", &actual, &model, &route53);
    let changes: usize = writes.iter().map(|(_, c)| c.len()).sum();
    assert_eq!(
        changes,
        fleet::expected_changes(due.iter().copied(), Phase::First),
        "Route53 changes written in the first convergence"
    );

    // Steady state: the second cycle of a long-running controller (zones cached), nothing to do.
    let after = fleet::record_counts(&moto);
    let counted_after = count_records(&moto, &names_by_zone(&fleet, &all));
    let mut c = Controller::start(
        &proxy.url,
        &[fleet.dir.as_path()],
        OWNER,
        // The traffic poller's once-a-minute CloudWatch read is not part of the reconciler's
        // minimum (its calls land in a cycle or not depending on the clock): off here.
        &[
            "--resync",
            "10s",
            "--route53-rps",
            "0",
            "--traffic-poll-interval",
            "0s",
        ],
    );
    let started = Instant::now();
    c.wait_ready(Duration::from_secs(120));
    // The first cycle of this process is over (ready); the next starts at the 10 s resync tick.
    let at_reset = fleet::reconciles(&c.metrics().expect("metrics"));
    proxy.reset();
    let skip = proxy.entries().len();
    assert_eq!(
        at_reset as usize,
        n,
        "reset after exactly one cycle (ready after {:?})",
        started.elapsed()
    );
    wait_for(
        "every split reconciled a second time",
        Duration::from_secs(120),
        || {
            let m = c.metrics()?;
            (fleet::reconciles(&m) >= 2 * n as u64).then_some(())
        },
    );
    let actual = proxy.stats();
    assert_eq!(
        fleet::reconciles(&c.metrics().expect("metrics")),
        2 * n as u64,
        "exactly one steady cycle counted"
    );
    let st = c.status().expect("status");
    assert!(
        fleet::all_converged(&st, n),
        "every split Complete and Ready:\n{st:#}"
    );
    let writes = fleet::writes(&proxy.entries()[skip..]);
    assert!(
        writes.is_empty(),
        "a steady-state cycle writes nothing: {writes:?}"
    );
    let model = fleet::minimum(&fleet, &due, Phase::Steady, &after, &Default::default());
    let route53 = route53_minimum(&fleet, &due, &counted_after, &BTreeMap::new());
    assert_minimal("steady state", &actual, &model, &route53);

    // One document edited: only that split is due; a targeted list of its name is cheaper than
    // a full pass of its (2-page) zone.
    let split = fleet.split("z1-s0005").clone();
    let base = fleet::reconciles(&c.metrics().expect("metrics"));
    proxy.reset();
    let skip = proxy.entries().len();
    std::fs::write(
        &split.file,
        fleet::fixed_doc(&split.name, &split.zone, &split.record, &fleet.tag, 70),
    )
    .expect("edit document");
    wait_for(
        "the edited split's write and its reconcile",
        Duration::from_secs(60),
        || {
            let m = c.metrics()?;
            (fleet::reconciles(&m) > base).then_some(())
        },
    );
    let actual = proxy.stats();
    assert_eq!(
        fleet::reconciles(&c.metrics().expect("metrics")),
        base + 1,
        "only the edited split was reconciled (no resync tick in between)"
    );
    let entries = proxy.entries()[skip..].to_vec();
    let writes = fleet::writes(&entries);
    let changes: usize = writes.iter().map(|(_, c)| c.len()).sum();
    // Two weights, and the state TXT replaced under the fence: DELETE(value read) + CREATE(new).
    assert_eq!(changes, 4, "changes of one edited split: {writes:?}");
    let mut model = fleet::minimum(
        &fleet,
        &[&split],
        Phase::Steady,
        &after,
        &Default::default(),
    );
    // The change is not awaited: its GetChange belongs to the split's next cycle, not this one.
    model.insert("route53.ChangeResourceRecordSets".into(), 1);
    let route53 = route53_minimum(&fleet, &[&split], &counted_after, &written(&entries));
    assert_minimal("one document edited", &actual, &model, &route53);
}
