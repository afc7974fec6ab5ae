//! Gate scheduling: whether gates matter now, which are due, checking them (a wait for capacity
//! the controller asked for is not a failure), and what their records add up to for the
//! rollout decision.

use std::collections::BTreeMap;

use futures::future::join_all;

use crate::aws::EcsService;
use crate::plan::Observed;
use crate::rollout::{self, GateSummary, Note};
use crate::spec::TrafficSplit;
use crate::state::Phase;
use crate::Result;

use super::Context;

/// What a controller remembers of one gate between cycles (in memory only: after a restart every
/// gate must pass a fresh check before the next step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateRecord {
    pub passing: Option<bool>,
    /// The latest check said to wait (not a pass, not a failure); `passing` is then false.
    pub waiting: bool,
    pub consecutive_failures: u32,
    pub value: Option<f64>,
    pub message: String,
    pub last_check: Option<u64>,
    /// Unix time of the latest failed check (a failing gate stops the step's clock).
    pub last_failure: Option<u64>,
}

/// Gates are checked while a rollout may move: not when Complete/RolledBack, not when paused.
pub(super) fn gates_matter(split: &TrafficSplit, obs: &Observed) -> bool {
    if split.spec.gates.is_empty() || split.spec.rollout.as_ref().is_some_and(|r| r.paused) {
        return false;
    }
    match &obs.state {
        Some(s) if rollout::same_generation(&s.generation, split) => s.phase == Phase::Progressing,
        _ => true,
    }
}

/// Whether an ECS gate's failure is the controller's own doing: it is waiting for capacity it
/// asked for (the stored state of this rollout says since when) and `progressDeadline` has not
/// passed. A deployment whose rolloutState is FAILED is never waited for.
pub(super) fn awaits_capacity(split: &TrafficSplit, obs: &Observed, now: u64) -> bool {
    let Some(s) = &obs.state else { return false };
    let Some(since) = s.capacity_since else {
        return false;
    };
    rollout::same_generation(&s.generation, split)
        && s.phase == Phase::Progressing
        && now < since.saturating_add(split.spec.progress_deadline().as_secs())
}

/// The gates whose next check is due at `now`.
pub(super) fn due_gates<'a>(
    split: &'a TrafficSplit,
    records: &BTreeMap<String, GateRecord>,
    now: u64,
) -> Vec<&'a crate::spec::Gate> {
    let every = split.spec.gate_interval().as_secs();
    split
        .spec
        .gates
        .iter()
        .filter(|g| {
            records
                .get(&g.name)
                .and_then(|r| r.last_check)
                .is_none_or(|at| now >= at + every)
        })
        .collect()
}

/// Check the gates that are due: each runs every `rollout.gateInterval` (and at once when it has
/// never been checked by this process), so `failureThreshold` x `gateInterval` is a time.
pub(super) async fn check_gates(
    ctx: &Context,
    split: &TrafficSplit,
    records: &mut BTreeMap<String, GateRecord>,
    capacity_wait: bool,
    services: &BTreeMap<String, EcsService>,
    now: u64,
) -> Vec<Note> {
    // Gates the checker leaves alone (plan without --with-gates) stay "not checked yet".
    let due: Vec<_> = due_gates(split, records, now)
        .into_iter()
        .filter(|g| ctx.gates.will_check(g))
        .collect();
    let results = join_all(due.iter().map(|g| ctx.gates.check(split, g))).await;
    let mut notes = Vec::new();
    for (g, mut r) in due.into_iter().zip(results) {
        // The controller's own scale-up makes ecsStable and targetHealth fail until the tasks
        // serve; that is a wait (bounded by progressDeadline), not a failure.
        let backend = g
            .ecs_stable
            .as_ref()
            .map(|e| &e.backend)
            .or(g.target_health.as_ref().map(|t| &t.backend));
        if let Some(b) = backend {
            let failed_rollout = services
                .get(b)
                .is_some_and(|s| s.rollout_state.as_deref() == Some("FAILED"));
            if capacity_wait && !r.passing && !failed_rollout {
                r = crate::gates::GateOutcome {
                    waiting: true,
                    message: format!(
                        "waiting for the capacity trafficshift asked for: {}",
                        r.message
                    ),
                    ..r
                };
            }
        }
        let rec = records.entry(g.name.clone()).or_default();
        if r.passing {
            rec.consecutive_failures = 0;
        } else if !r.waiting {
            rec.consecutive_failures += 1;
            rec.last_failure = Some(now);
            notes.push(Note {
                warning: true,
                reason: "GateFailed",
                message: format!(
                    "gate {} failed ({} in a row): {}",
                    g.name, rec.consecutive_failures, r.message
                ),
            });
        }
        rec.passing = Some(r.passing);
        rec.waiting = r.waiting;
        rec.value = r.value;
        rec.message = r.message;
        rec.last_check = Some(now);
    }
    notes
}

pub(super) fn summarize(
    split: &TrafficSplit,
    records: &BTreeMap<String, GateRecord>,
    now: u64,
) -> GateSummary {
    let threshold = split
        .spec
        .rollout
        .as_ref()
        .map(|r| r.failure_threshold)
        .unwrap_or(3)
        .max(1);
    let mut s = GateSummary {
        all_passing: true,
        ..GateSummary::default()
    };
    for g in &split.spec.gates {
        match records.get(&g.name) {
            Some(r) if r.passing == Some(true) => {}
            Some(r) if r.waiting => {
                s.all_passing = false;
                s.waiting.push(format!("{}: {}", g.name, r.message));
            }
            Some(r) => {
                s.all_passing = false;
                s.failing.push(format!("{}: {}", g.name, r.message));
                if r.consecutive_failures >= threshold && s.tripped.is_none() {
                    s.tripped = Some((g.name.clone(), r.message.clone()));
                }
                if r.consecutive_failures == 1 && r.last_check == Some(now) {
                    s.new_failure = Some(now);
                }
            }
            None => {
                s.all_passing = false;
                s.failing.push(format!("{}: not checked yet", g.name));
            }
        }
        if let Some(t) = records.get(&g.name).and_then(|r| r.last_failure) {
            s.last_failure = Some(s.last_failure.map_or(t, |x: u64| x.max(t)));
        }
    }
    s
}

/// The short name of a target group ARN (`arn:...:targetgroup/api-tg/73e2d6bc24d8a067` ->
/// `api-tg`), for status messages.
fn tg_name(arn: &str) -> &str {
    arn.split_once(":targetgroup/")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or(arn)
}

/// The target group of `svc` with the fewest healthy targets: (name, healthy).
pub(super) async fn least_healthy(ctx: &Context, svc: &EcsService) -> Result<(String, u32)> {
    let mut least: Option<(String, u32)> = None;
    for tg in &svc.target_groups {
        let (healthy, _total) = ctx.aws.targets.target_health(tg).await?;
        if least.as_ref().is_none_or(|(_, h)| healthy < *h) {
            least = Some((tg_name(tg).to_string(), healthy));
        }
    }
    Ok(least.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Gate;
    use std::time::Duration;

    fn split() -> TrafficSplit {
        TrafficSplit::test()
            .with_steps(&[50, 100], 60)
            .with_gate(Gate::ecs_stable("a", "fargate"))
            .with_gate(Gate::ecs_stable("b", "fargate"))
    }

    fn checked(at: u64, passing: bool, failures: u32) -> GateRecord {
        GateRecord {
            passing: Some(passing),
            consecutive_failures: failures,
            last_check: Some(at),
            last_failure: (!passing).then_some(at),
            message: if passing { "ok" } else { "bad" }.into(),
            ..GateRecord::default()
        }
    }

    #[test]
    fn gates_run_on_their_own_clock() {
        // gateInterval 30s (default). (records of a and b, now, gates due)
        let never = BTreeMap::new();
        let a_at_100: BTreeMap<String, GateRecord> =
            [("a".to_string(), checked(100, true, 0))].into();
        let both_at_100: BTreeMap<String, GateRecord> = [
            ("a".to_string(), checked(100, true, 0)),
            ("b".to_string(), checked(110, false, 1)),
        ]
        .into();
        let table: [(&BTreeMap<String, GateRecord>, u64, Vec<&str>); 6] = [
            (&never, 0, vec!["a", "b"]),
            (&a_at_100, 101, vec!["b"]),
            (&a_at_100, 129, vec!["b"]),
            (&a_at_100, 130, vec!["a", "b"]),
            (&both_at_100, 135, vec!["a"]),
            (&both_at_100, 140, vec!["a", "b"]),
        ];
        let s = split();
        for (records, now, want) in table {
            let due: Vec<&str> = due_gates(&s, records, now)
                .iter()
                .map(|g| g.name.as_str())
                .collect();
            assert_eq!(due, want, "t={now}");
        }
        let mut s = split();
        s.spec.rollout.as_mut().unwrap().gate_interval =
            crate::spec::HumanDuration(Duration::from_secs(5));
        let due: Vec<&str> = due_gates(&s, &a_at_100, 105)
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(due, vec!["a", "b"], "gateInterval 5s");
    }

    #[test]
    fn summary_separates_waits_from_failures() {
        let s = split();
        let waiting = GateRecord {
            waiting: true,
            ..checked(100, false, 0)
        };
        let records: BTreeMap<String, GateRecord> = [
            ("a".to_string(), waiting),
            ("b".to_string(), checked(100, true, 0)),
        ]
        .into();
        let sum = summarize(&s, &records, 100);
        assert!(!sum.all_passing);
        assert_eq!(sum.waiting, vec!["a: bad".to_string()]);
        assert!(sum.failing.is_empty());
        assert_eq!((sum.tripped, sum.new_failure), (None, None));

        // b fails for the first time at 130 (a new run), then a third time in a row.
        let records: BTreeMap<String, GateRecord> = [
            ("a".to_string(), checked(100, true, 0)),
            ("b".to_string(), checked(130, false, 1)),
        ]
        .into();
        let sum = summarize(&s, &records, 130);
        assert_eq!(sum.new_failure, Some(130));
        assert_eq!(sum.last_failure, Some(130));
        assert_eq!(sum.tripped, None);
        let sum = summarize(&s, &records, 131);
        assert_eq!(sum.new_failure, None, "only the cycle that checked it");
        let records: BTreeMap<String, GateRecord> =
            [("b".to_string(), checked(190, false, 3))].into();
        let sum = summarize(&s, &records, 190);
        assert_eq!(sum.tripped, Some(("b".to_string(), "bad".to_string())));
        assert_eq!(sum.failing, vec!["a: not checked yet", "b: bad"]);
    }

    #[test]
    fn target_group_names_for_messages() {
        let table = [
            (
                "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/api-tg/73e2d6bc24d8a067",
                "api-tg",
            ),
            ("api-tg", "api-tg"),
        ];
        for (arn, name) in table {
            assert_eq!(tg_name(arn), name);
        }
    }
}
