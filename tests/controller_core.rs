//! The controller binary against moto: issue #2's behaviours, read back with boto3.

mod support;

use std::time::Duration;

use support::controller::{run_cli, wait_for, weights, Controller, Scenario};
use support::Moto;

const DEADLINE: Duration = Duration::from_secs(90);

/// The example, end to end: the plain alias record becomes the weighted set, capacity
/// first, ending at lambda=0 / fargate=100 with 20 tasks; the unrelated record is untouched.
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

    let mut c = Controller::start(&moto.endpoint, &[dir.path()], "test", &["--resync", "2s"]);
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
