//! CI guard of the scale benchmark's call counts (issue #6 part 4a), at a small scale: 3 zones of
//! 40 splits (one of them an adopted API Gateway + ECS split) with 200 foreign records each, and a
//! zone of 2,000 foreign records with 3 owned names. Through `scripts/faultproxy.py` (fault rate
//! 0), the AWS calls of the first convergence and of a steady-state cycle must equal the
//! theoretical minimum (`fleet::minimum`) exactly, and a steady-state cycle writes nothing.
//! Timings are not asserted here; `cargo bench --bench scale` measures them.

#[allow(dead_code)]
#[path = "../benches/scale.rs"]
mod scale;

use std::time::{Duration, Instant};

use scale::fleet::{self, Phase, Proxy};
use scale::support::controller::{wait_for, Controller};
use scale::support::Moto;

const OWNER: &str = "ci-counts";

fn assert_minimal(
    what: &str,
    actual: &std::collections::BTreeMap<String, u64>,
    min: &std::collections::BTreeMap<String, u64>,
) {
    let rows = fleet::compare(actual, min);
    let table = fleet::table(what, &rows);
    eprintln!("{table}");
    let off: Vec<String> = rows
        .iter()
        .filter(|(_, a, m)| a != m)
        .map(|(k, a, m)| format!("{k}: {a} calls, minimum {m}"))
        .collect();
    assert!(
        off.is_empty(),
        "{what}: not at the theoretical minimum: {off:?}\n{table}"
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
    let writes = fleet::writes(&proxy.entries()[skip..]);
    let due: Vec<&fleet::SplitInfo> = fleet.splits.iter().collect();
    let min = fleet::minimum(
        &fleet,
        &due,
        Phase::First,
        &before,
        &fleet::value_chars(&writes),
    );
    assert_minimal("first convergence", &actual, &min);
    let changes: usize = writes.iter().map(|(_, c)| c.len()).sum();
    assert_eq!(
        changes,
        fleet::expected_changes(due.iter().copied(), Phase::First),
        "Route53 changes written in the first convergence"
    );

    // Steady state: the second cycle of a long-running controller (zones cached), nothing to do.
    let after = fleet::record_counts(&moto);
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
    let min = fleet::minimum(&fleet, &due, Phase::Steady, &after, &Default::default());
    assert_minimal("steady state", &actual, &min);

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
    let writes = fleet::writes(&proxy.entries()[skip..]);
    let changes: usize = writes.iter().map(|(_, c)| c.len()).sum();
    // Two weights, and the state TXT replaced under the fence: DELETE(value read) + CREATE(new).
    assert_eq!(changes, 4, "changes of one edited split: {writes:?}");
    let mut min = fleet::minimum(
        &fleet,
        &[&split],
        Phase::Steady,
        &after,
        &Default::default(),
    );
    // The change is not awaited: its GetChange belongs to the split's next cycle, not this one.
    min.insert("route53.ChangeResourceRecordSets".into(), 1);
    assert_minimal("one document edited", &actual, &min);
}
