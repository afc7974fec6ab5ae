//! The step machine: from the document, the persisted state, live observations and gate results,
//! decide which split Route53 must show now and which ECS counts are needed. Pure: no IO, no clock.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::spec::{OnGateFailure, TrafficSplit, Weights};
use crate::state::{Drain, Phase, RolloutState};
use crate::weights::{interpolate, tasks_for};

/// A live ECS service, as the step machine needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EcsObs {
    pub desired: i32,
    pub running: i32,
    /// The SDKs' ServicesStable: one deployment, running == desired, rollout not FAILED.
    pub stable: bool,
    /// Entries in the service's `deployments` (2 while a new task definition rolls out).
    pub deployments: usize,
    /// The PRIMARY deployment's rolloutState is FAILED: the circuit breaker gave up on its tasks.
    pub rollout_failed: bool,
    /// The service registers its tasks in target groups (its `loadBalancers` list is not empty).
    pub load_balanced: bool,
    /// The target group with the fewest `healthy` targets, as (name, healthy count); None when
    /// target health was not read this cycle (it is read only for a weight about to rise).
    pub healthy: Option<(String, u32)>,
}

/// Gate results, summarised by the controller's gate tracker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateSummary {
    /// Every gate has been checked and passed its most recent check (true when there are none).
    pub all_passing: bool,
    /// Gates whose latest check failed or that were never checked, with why.
    pub failing: Vec<String>,
    /// Gates whose latest check said to wait (capacity trafficshift asked for is still coming,
    /// an alarm has INSUFFICIENT_DATA), with why. They hold the step but are not failures.
    pub waiting: Vec<String>,
    /// A gate that failed `failureThreshold` times in a row: (name, message).
    pub tripped: Option<(String, String)>,
    /// Unix time of the latest failed check of any gate: a failing gate stops the step's clock,
    /// so the hold interval counts from here.
    pub last_failure: Option<u64>,
    /// Unix time of a check that began a run of failures (the first failure in a row) made this
    /// cycle. The step machine persists the restart of the hold interval then, once per run.
    pub new_failure: Option<u64>,
}

impl GateSummary {
    pub fn none() -> Self {
        GateSummary {
            all_passing: true,
            ..GateSummary::default()
        }
    }
}

/// What the split is doing, as far as the step machine knows. Conflict and Invalid are decided
/// before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitState {
    Progressing,
    Complete,
    Paused,
    Degraded,
    RolledBack,
    /// Rolled back by `trafficshift abort`, until `retry` or a new generation.
    Aborted,
    /// `trafficshift suspend`: nothing is written for the split until `unsuspend`.
    Suspended,
}

impl SplitState {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitState::Progressing => "Progressing",
            SplitState::Complete => "Complete",
            SplitState::Paused => "Paused",
            SplitState::Degraded => "Degraded",
            SplitState::RolledBack => "RolledBack",
            SplitState::Aborted => "Aborted",
            SplitState::Suspended => "Suspended",
        }
    }
}

/// Something worth an event in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

pub struct Inputs<'a> {
    pub split: &'a TrafficSplit,
    pub owner: &'a str,
    pub stored: Option<&'a RolloutState>,
    /// Weights now in Route53 (percent); None when the weighted set does not exist yet.
    pub observed: Option<&'a Weights>,
    /// Live ECS services by backend name; a missing entry means the service was not found.
    pub ecs: &'a BTreeMap<String, EcsObs>,
    pub gates: &'a GateSummary,
    /// Unix time in milliseconds. Stored times are whole seconds rounded up and compared with
    /// the time rounded down, so a hold interval is never cut short by rounding.
    pub now_ms: u64,
    /// Why a step may not advance now (a closed change window or a freeze), from
    /// `crate::windows`; rollbacks and drift corrections ignore it.
    pub window: Option<&'a crate::windows::Hold>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The state to persist next to the records.
    pub state: RolloutState,
    /// The split Route53 must show after this cycle; None to leave Route53 alone this cycle
    /// (capacity is not yet in place for a weight that must rise).
    pub write: Option<Weights>,
    /// ECS desired counts by backend name.
    pub ecs_desired: BTreeMap<String, u32>,
    pub status: SplitState,
    pub waiting_for: Option<String>,
    pub next_step_at: Option<u64>,
    pub steps: usize,
    pub progress: f64,
    pub rolled_back: bool,
    pub notes: Vec<Note>,
    /// ECS backends whose target health this decision needed but `Inputs::ecs` did not carry:
    /// read it and decide again (the decision is only valid when this is empty).
    pub needs_target_health: Vec<String>,
}

/// Hash of what defines a rollout: target weights, steps and backend names. Editing gates, the
/// interval or `paused` does not restart a rollout, and neither does reordering `backends`.
pub fn generation(split: &TrafficSplit) -> String {
    hash_of(split, &sorted_backend_names(split))
}

fn sorted_backend_names(split: &TrafficSplit) -> Vec<&str> {
    let mut names: Vec<&str> = split
        .spec
        .backends
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    names.sort_unstable();
    names
}

/// The generation releases up to 0.1 wrote: backends in document order. A state TXT they wrote
/// must still name the same rollout after an upgrade, or the upgrade would restart every rollout
/// in flight and forget its holds.
fn legacy_generation(split: &TrafficSplit) -> String {
    let names: Vec<&str> = split
        .spec
        .backends
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    hash_of(split, &names)
}

/// Whether a stored generation is this document's rollout (current or legacy hash).
pub fn same_generation(stored: &str, split: &TrafficSplit) -> bool {
    stored == generation(split) || stored == legacy_generation(split)
}

fn hash_of(split: &TrafficSplit, backend_names: &[&str]) -> String {
    use crate::state::push_decimal;
    // One buffer for the whole input, written without the formatting machinery: every cycle
    // hashes every split. The text hashed is `w:{name}={weight};`... `s:{step};`... `b:{name};`...
    let mut buf = String::with_capacity(128);
    for (k, v) in &split.spec.weights {
        buf.push_str("w:");
        buf.push_str(k);
        buf.push('=');
        push_decimal(&mut buf, u64::from(*v));
        buf.push(';');
    }
    for s in split.spec.steps() {
        buf.push_str("s:");
        push_decimal(&mut buf, u64::from(s));
        buf.push(';');
    }
    for b in backend_names {
        buf.push_str("b:");
        buf.push_str(b);
        buf.push(';');
    }
    let digest = Sha256::digest(buf.as_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(12);
    for b in digest.iter().take(6) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

fn zeroes(split: &TrafficSplit) -> Weights {
    split
        .spec
        .backends
        .iter()
        .map(|b| (b.name.clone(), 0))
        .collect()
}

/// Restrict to the split's backends; None unless it is a usable split (sums to 100).
fn usable(split: &TrafficSplit, w: &Weights) -> Option<Weights> {
    let mut out = zeroes(split);
    for (k, v) in w {
        if let Some(slot) = out.get_mut(k) {
            *slot = *v;
        }
    }
    // u64: a hand-edited TXT can hold any u32, and the sum must not overflow.
    (out.values().map(|&v| u64::from(v)).sum::<u64>() == 100).then_some(out)
}

/// What Route53 answers for an observed set, as a usable split. Route53 answers a set whose
/// weights are all 0 evenly across its records, so such a set counts as equal shares (for
/// capacity and drains alike), not as no traffic.
fn observed_shares(split: &TrafficSplit, observed: &Weights) -> Option<Weights> {
    let mut records: Vec<&String> = observed
        .keys()
        .filter(|k| split.backend(k).is_some())
        .collect();
    if records.is_empty() || observed.values().any(|&v| v > 0) {
        return usable(split, observed);
    }
    records.sort();
    let n = records.len() as u32;
    let mut out = zeroes(split);
    for (i, k) in records.into_iter().enumerate() {
        // 100 / n, the remainder to the first names: integers summing to 100.
        out.insert(k.clone(), 100 / n + u32::from((i as u32) < 100 % n));
    }
    Some(out)
}

/// Stored times further ahead of this clock than this are not believed (a controller on another
/// node may run a little ahead; a hand-edited `since` far in the future would hold a step forever).
const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Why a stored state of this rollout (same owner and generation) does not fit the document and
/// cannot be carried forward. The TXT is remote input anyone with Route53 access can edit: a state
/// that passes here keeps every index and sum in `decide` in range.
fn validate_stored(
    split: &TrafficSplit,
    s: &RolloutState,
    target: &Weights,
    steps: &[u32],
    now: u64,
) -> Result<(), String> {
    let n = steps.len();
    if s.split != split.name() {
        return Err(format!("it names split {:?}", s.split));
    }
    let ok_step = match s.phase {
        Phase::Progressing => s.step < n,
        Phase::Complete => s.step == n,
        Phase::RolledBack => s.step <= n,
    };
    if !ok_step {
        return Err(format!(
            "step {} does not fit phase {:?} of a {n}-step rollout",
            s.step, s.phase
        ));
    }
    let want = sorted_backend_names(split);
    for (what, w) in [("start", &s.start), ("cur", &s.current)] {
        if !w.keys().map(String::as_str).eq(want.iter().copied()) {
            let names: Vec<&str> = w.keys().map(String::as_str).collect();
            return Err(format!(
                "{what} names backends {names:?}, the document {want:?}"
            ));
        }
        // It names exactly the backends, so it is usable when it sums to 100 (u64: a
        // hand-edited TXT can hold any u32).
        if w.values().map(|&v| u64::from(v)).sum::<u64>() != 100 {
            return Err(format!(
                "{what} {} does not sum to 100",
                crate::weights::show(w)
            ));
        }
    }
    // `cur` is always the start moved the step's share of the way to the target (the start
    // itself when rolled back): anything else was not written by trafficshift.
    let expected = match s.phase {
        Phase::RolledBack => s.start.clone(),
        _ if s.step == 0 => s.start.clone(),
        _ => interpolate(&s.start, target, steps[s.step - 1]),
    };
    if s.current != expected {
        return Err(format!(
            "cur {} is not step {} from {} ({})",
            crate::weights::show(&s.current),
            s.step,
            crate::weights::show(&s.start),
            crate::weights::show(&expected)
        ));
    }
    if s.since > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(format!("since {} is in the future", s.since));
    }
    // A drain's end is not checked here: editing drainDelay (or the TTL behind its default)
    // does not restart a rollout, so an end beyond today's delay can be legitimate; it is bounded
    // by `sane_drains` instead.
    for (b, d) in &s.drains {
        if split.backend(b).is_none_or(|x| x.ecs.is_none()) {
            return Err(format!("drain names {b:?}, not an ECS backend"));
        }
        if d.share > 100 {
            return Err(format!("drain of {b} at {}% is out of range", d.share));
        }
    }
    Ok(())
}

/// The drains of a stored state worth keeping: ECS backends of the document, a share that is a
/// percentage, an end no further away than a drain of this document can last (a hand-edited
/// `until` must not keep a service scaled up for ever).
fn sane_drains(split: &TrafficSplit, s: &RolloutState, now: u64) -> BTreeMap<String, Drain> {
    let limit = now
        .saturating_add(split.spec.drain_delay().as_secs())
        .saturating_add(MAX_CLOCK_SKEW_SECS);
    s.drains
        .iter()
        .filter(|(b, d)| split.backend(b).is_some_and(|x| x.ecs.is_some()) && d.share <= 100)
        .map(|(b, d)| {
            let until = d.until.min(limit);
            (b.clone(), Drain { until, ..*d })
        })
        .collect()
}

/// Why capacity for `want` is not serving yet, for a backend whose weight rises above `baseline`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gap {
    /// What is missing, in words (`fargate 3/5 healthy targets in tg api-tg`).
    what: String,
    /// Waiting cannot help: the deployment's rolloutState is FAILED.
    failed: bool,
}

/// The first ECS backend whose weight rises from `baseline` to `want` without the capacity to
/// serve it. An ECS service behind target groups serves `need` tasks when it has one deployment,
/// at least `need` running tasks and at least `need` healthy targets in each target group; one
/// without load balancers only has its counts (desired, running, stable). Backends whose target
/// health is needed but not observed are added to `unknown`.
fn capacity_gap(
    split: &TrafficSplit,
    want: &Weights,
    baseline: &Weights,
    ecs: &BTreeMap<String, EcsObs>,
    unknown: &mut Vec<String>,
) -> Option<Gap> {
    let mut pending = None;
    for b in &split.spec.backends {
        let Some(cfg) = &b.ecs else { continue };
        let w = want.get(&b.name).copied().unwrap_or(0);
        if w <= baseline.get(&b.name).copied().unwrap_or(0) {
            continue;
        }
        let need = tasks_for(cfg, w);
        let gap = |what: String| {
            Some(Gap {
                what: format!("{what} for {w}%"),
                failed: false,
            })
        };
        let Some(o) = ecs.get(&b.name) else {
            return gap(format!(
                "ECS service {}/{} of {} to exist",
                cfg.cluster, cfg.service, b.name
            ));
        };
        if o.rollout_failed {
            return Some(Gap {
                what: format!(
                    "ECS service {}/{} of {}: deployment rolloutState FAILED ({} of {need} tasks running)",
                    cfg.cluster, cfg.service, b.name, o.running
                ),
                failed: true,
            });
        }
        let running = u32::try_from(o.running).unwrap_or(0);
        let desired = u32::try_from(o.desired).unwrap_or(0);
        if !o.load_balanced {
            if desired < need || running < need || !o.stable {
                return gap(format!(
                    "{} stable at {need} tasks (desired {desired}, running {running}{})",
                    b.name,
                    if o.stable { "" } else { ", not stable" }
                ));
            }
            continue;
        }
        if o.deployments != 1 {
            return gap(format!(
                "{} to finish its deployment ({} deployments)",
                b.name, o.deployments
            ));
        }
        if desired < need || running < need {
            return gap(format!(
                "{} {running}/{need} tasks running (desired {desired})",
                b.name
            ));
        }
        match &o.healthy {
            None => {
                // Go on: every backend whose health is needed is named in one pass, so a split
                // with several rising ECS backends gets all of them read in the same cycle.
                unknown.push(b.name.clone());
                pending.get_or_insert_with(|| Gap {
                    what: format!("{} target health to be read for {w}%", b.name),
                    failed: false,
                });
            }
            Some((tg, healthy)) if *healthy < need => {
                return gap(format!(
                    "{} {healthy}/{need} healthy targets in tg {tg}",
                    b.name
                ));
            }
            Some(_) => {}
        }
    }
    pending
}

/// `40s`, `3m20s`: whole seconds, for status messages.
fn secs(n: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(n)).to_string()
}

pub fn decide(i: &Inputs) -> Decision {
    let split = i.split;
    // `now` for comparisons (rounded down), `stamp` for times written down (rounded up).
    let now = i.now_ms / 1000;
    let stamp = i.now_ms.div_ceil(1000);
    // `validate` refuses a target that does not sum to 100; should one get here anyway, its
    // proportions are used, so every split written still sums to 100.
    let target = usable(split, &split.spec.weights)
        .or_else(|| {
            let mut known = zeroes(split);
            for (k, v) in &split.spec.weights {
                if let Some(slot) = known.get_mut(k) {
                    *slot = *v;
                }
            }
            crate::weights::normalize(&known)
        })
        .unwrap_or_else(|| split.spec.weights.clone());
    let steps = split.spec.steps();
    let n = steps.len();
    let gen = generation(split);
    // same_generation without hashing the current form again.
    let ours = |stored: &str| stored == gen || stored == legacy_generation(split);
    let observed_or_zero = i
        .observed
        .and_then(|o| observed_shares(split, o))
        .unwrap_or_else(|| zeroes(split));
    let mut notes = Vec::new();

    // A stored state of this rollout that does not fit the document is not ours to trust.
    let stored = match i.stored {
        Some(s) if s.owner == i.owner && ours(&s.generation) => {
            match validate_stored(split, s, &target, &steps, now) {
                Ok(()) => Some(s),
                Err(why) => {
                    notes.push(Note {
                        warning: true,
                        reason: "StateInvalid",
                        message: format!(
                            "the stored rollout state does not fit the document ({why}); starting a new rollout from what Route53 shows"
                        ),
                    });
                    None
                }
            }
        }
        Some(s) if s.owner != i.owner => {
            notes.push(Note {
                warning: true,
                reason: "StateInvalid",
                message: format!(
                    "the stored rollout state belongs to owner {:?}; starting a new rollout from what Route53 shows",
                    s.owner
                ),
            });
            None
        }
        other => other,
    };
    let mut st = match stored {
        Some(s) if ours(&s.generation) => RolloutState {
            // A legacy hash is carried forward in the current form with the next write.
            generation: gen.clone(),
            drains: sane_drains(split, s, now),
            ..s.clone()
        },
        other => {
            // A new rollout starts from what trafficshift applied last (the TXT wins over hand
            // edits), else from what Route53 shows, else (nothing exists) from the target.
            let start = other
                .and_then(|s| usable(split, &s.current))
                .or_else(|| i.observed.and_then(|o| observed_shares(split, o)))
                .unwrap_or_else(|| target.clone());
            let done = start == target;
            notes.push(Note {
                warning: false,
                reason: "RolloutStarted",
                message: format!(
                    "new rollout {gen} from {} to {} in {n} step(s)",
                    crate::weights::show(&start),
                    crate::weights::show(&target)
                ),
            });
            RolloutState {
                owner: i.owner.to_string(),
                split: split.name().to_string(),
                generation: gen.clone(),
                phase: if done {
                    Phase::Complete
                } else {
                    Phase::Progressing
                },
                step: if done { n } else { 0 },
                since: stamp,
                current: start.clone(),
                start,
                drains: i
                    .stored
                    .map(|s| sane_drains(split, s, now))
                    .unwrap_or_default(),
                capacity_since: None,
                autoscaling: i.stored.map(|s| s.autoscaling.clone()).unwrap_or_default(),
                retiring: i.stored.map(|s| s.retiring.clone()).unwrap_or_default(),
                rev: i.stored.map_or(0, |s| s.rev),
                control: crate::overrides::carried_into_new_rollout(
                    i.stored.and_then(|s| s.control.as_ref()),
                ),
            }
        }
    };
    // On-call overrides from the TXT: abort and retry change the state here, the rest steer.
    let steer = crate::overrides::steer(&mut st, stamp, &mut notes);

    let rollout = split.spec.rollout.as_ref();
    let paused = rollout.is_some_and(|r| r.paused) || steer.paused;
    let on_failure = rollout.map(|r| r.on_gate_failure).unwrap_or_default();
    let interval = split.spec.interval().as_secs();
    let deadline = split.spec.progress_deadline().as_secs();
    let mut waiting_for = None;
    let mut next_step_at = None;
    // Weights whose capacity this cycle asks ECS for ahead of the step that needs them.
    let mut prescale: Option<Weights> = None;
    let mut rolled_back = false;
    let mut unknown = Vec::new();
    // A step that cannot be taken: (event reason, why, what a hold waits for). It rolls back or
    // holds per onGateFailure.
    let mut failure: Option<(&'static str, String, String)> = None;
    // The step waited for capacity it asked for and the deadline passed: once the wait is over,
    // the gates that were waiting on that capacity fail too, but the failure is the deadline's.
    let deadline_passed = st
        .capacity_since
        .filter(|since| now.saturating_sub(*since) >= deadline)
        .map(|since| {
            let why = format!(
                "capacity not serving after {} (progressDeadline {}); gates: {}",
                secs(now.saturating_sub(since)),
                secs(deadline),
                i.gates.failing.join("; ")
            );
            let hold = format!("{why}; holding (onGateFailure: hold)");
            ("ProgressDeadlineExceeded", why, hold)
        });
    let mut status = match st.phase {
        Phase::Complete => SplitState::Complete,
        Phase::RolledBack => SplitState::RolledBack,
        Phase::Progressing
            if deadline_passed.is_some() && !i.gates.failing.is_empty() && !paused =>
        {
            failure = deadline_passed;
            SplitState::Degraded
        }
        Phase::Progressing => {
            if let Some((gate, msg)) = &i.gates.tripped {
                failure = Some((
                    "GateFailed",
                    format!("gate {gate} failed ({msg})"),
                    format!("gate {gate} to pass ({msg})"),
                ));
                SplitState::Degraded
            } else if paused {
                waiting_for = Some(if steer.paused {
                    "trafficshift resume".to_string()
                } else {
                    "rollout.paused to be false".to_string()
                });
                SplitState::Paused
            } else {
                let next = if steer.full {
                    target.clone()
                } else {
                    interpolate(&st.start, &target, steps[st.step.min(n - 1)])
                };
                // A failing gate stops the clock: the hold interval counts from its latest failed
                // check. The first failure of a run is written down (with the state, one Route53
                // write per run, not per check) so a restart cannot cut the hold short; later
                // failures of the run extend it in memory only, and a restart makes every gate
                // pass a fresh check before the next step anyway.
                if st.step > 0 {
                    if let Some(t) = i.gates.new_failure {
                        st.since = st.since.max(t);
                    }
                }
                let hold_from = st.since.max(i.gates.last_failure.unwrap_or(0));
                // The first step leaves the start split at once; later ones hold for the interval.
                let due = if st.step == 0 || steer.skip_hold {
                    0
                } else {
                    hold_from.saturating_add(interval)
                };
                if now < due {
                    waiting_for = Some(format!("hold interval at step {}/{n}", st.step));
                    next_step_at = Some(due);
                    SplitState::Progressing
                } else if let Some(h) = i.window {
                    waiting_for = Some(h.reason.clone());
                    next_step_at = h.until.and_then(|t| u64::try_from(t).ok());
                    SplitState::Progressing
                } else if !i.gates.failing.is_empty() {
                    waiting_for = Some(format!("gates to pass: {}", i.gates.failing.join("; ")));
                    SplitState::Progressing
                } else {
                    let baseline: Weights = st
                        .current
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                (*v).max(observed_or_zero.get(k).copied().unwrap_or(0)),
                            )
                        })
                        .collect();
                    match capacity_gap(split, &next, &baseline, i.ecs, &mut unknown) {
                        Some(gap) => {
                            prescale = Some(next);
                            let since = *st.capacity_since.get_or_insert(stamp);
                            let waited = now.saturating_sub(since);
                            if gap.failed {
                                let why = format!("capacity: {}", gap.what);
                                let hold = format!("{why}; holding (onGateFailure: hold)");
                                failure = Some(("RolloutFailed", why, hold));
                            } else if waited >= deadline {
                                let why = format!(
                                    "capacity: {} not serving after {} (progressDeadline {})",
                                    gap.what,
                                    secs(waited),
                                    secs(deadline)
                                );
                                let hold = format!("{why}; holding (onGateFailure: hold)");
                                failure = Some(("ProgressDeadlineExceeded", why, hold));
                            } else {
                                waiting_for = Some(format!(
                                    "capacity: {} (waiting {} of {})",
                                    gap.what,
                                    secs(waited),
                                    secs(deadline)
                                ));
                            }
                            SplitState::Progressing
                        }
                        None if !i.gates.waiting.is_empty() => {
                            waiting_for =
                                Some(format!("gates to pass: {}", i.gates.waiting.join("; ")));
                            SplitState::Progressing
                        }
                        None => {
                            st.step = if steer.full { n } else { st.step + 1 };
                            crate::overrides::stepped(&mut st, &mut notes);
                            notes.push(Note {
                                warning: false,
                                reason: "StepAdvanced",
                                message: format!(
                                    "step {}/{n} ({}%): {} -> {}",
                                    st.step,
                                    steps[st.step - 1],
                                    crate::weights::show(&st.current),
                                    crate::weights::show(&next)
                                ),
                            });
                            st.current = next;
                            st.since = stamp;
                            st.capacity_since = None;
                            if st.step >= n {
                                st.phase = Phase::Complete;
                                SplitState::Complete
                            } else {
                                next_step_at = Some(stamp.saturating_add(interval));
                                SplitState::Progressing
                            }
                        }
                    }
                }
            }
        }
    };
    if let Some((reason, why, hold)) = failure {
        match on_failure {
            OnGateFailure::Rollback => {
                rolled_back = true;
                notes.push(Note {
                    warning: true,
                    reason: "RolledBack",
                    message: format!(
                        "{why}; rolling back from {} to {}",
                        crate::weights::show(&st.current),
                        crate::weights::show(&st.start)
                    ),
                });
                if reason != "GateFailed" {
                    notes.push(Note {
                        warning: true,
                        reason,
                        message: why,
                    });
                }
                st.current = st.start.clone();
                st.phase = Phase::RolledBack;
                st.since = stamp;
                st.capacity_since = None;
                prescale = None;
                status = SplitState::RolledBack;
            }
            OnGateFailure::Hold => {
                waiting_for = Some(hold);
                status = SplitState::Degraded;
            }
        }
    }

    // Capacity before traffic also guards drift corrections and rollbacks: never raise a weight
    // above what Route53 shows until the ECS service can carry it.
    let want = &st.current;
    let write = match capacity_gap(split, want, &observed_or_zero, i.ecs, &mut unknown) {
        None => Some(want.clone()),
        Some(gap) => {
            waiting_for.get_or_insert(format!("capacity: {}", gap.what));
            None
        }
    };

    // Remember the share a lowered ECS backend carried until DNS caches have drained.
    let drain_secs = split.spec.drain_delay().as_secs();
    if write.is_some() {
        for b in split.spec.backends.iter().filter(|b| b.ecs.is_some()) {
            let before = observed_or_zero.get(&b.name).copied().unwrap_or(0);
            let after = want.get(&b.name).copied().unwrap_or(0);
            if after < before {
                let share = match st.drains.get(&b.name) {
                    Some(d) if d.until > now => d.share.max(before),
                    _ => before,
                };
                st.drains.insert(
                    b.name.clone(),
                    Drain {
                        share,
                        until: stamp.saturating_add(drain_secs),
                    },
                );
            }
        }
        // Forget finished drains only when the state is written anyway, so an expiry alone
        // never costs a Route53 write.
        let unchanged = i.stored.is_some_and(|s| *s == st);
        if !unchanged {
            st.drains.retain(|_, d| d.until > now);
        }
    }

    // A scale-up made ahead of a step stays while the step waits (on its interval, its gates,
    // a pause or a hold): while the rollout is in progress no count drops below what the next
    // step needs, up to what the service already has. Counts drop only through drains, after a
    // weight really dropped.
    let ahead = (st.phase == Phase::Progressing)
        .then(|| interpolate(&st.start, &target, steps[st.step.min(n - 1)]));

    let mut ecs_desired = BTreeMap::new();
    for b in &split.spec.backends {
        let Some(cfg) = &b.ecs else { continue };
        let mut share = want.get(&b.name).copied().unwrap_or(0);
        share = share.max(observed_or_zero.get(&b.name).copied().unwrap_or(0));
        if let Some(d) = st.drains.get(&b.name).filter(|d| d.until > now) {
            share = share.max(d.share);
            if d.share > want.get(&b.name).copied().unwrap_or(0)
                && waiting_for.is_none()
                && status == SplitState::Complete
            {
                waiting_for = Some(format!("{} to drain before scaling down", b.name));
            }
        }
        if let Some(p) = &prescale {
            share = share.max(p.get(&b.name).copied().unwrap_or(0));
        }
        let mut count = tasks_for(cfg, share);
        if let (Some(next), Some(o)) = (&ahead, i.ecs.get(&b.name)) {
            let live = u32::try_from(o.desired).unwrap_or(0);
            let ahead_need = tasks_for(cfg, next.get(&b.name).copied().unwrap_or(0));
            count = count.max(live.min(ahead_need));
        }
        ecs_desired.insert(b.name.clone(), count);
    }

    let progress = match st.phase {
        Phase::Complete => 1.0,
        Phase::RolledBack => 0.0,
        Phase::Progressing if st.step == 0 => 0.0,
        Phase::Progressing => f64::from(steps[st.step - 1]) / 100.0,
    };

    Decision {
        status: crate::overrides::shown_state(&st, status),
        state: st,
        write,
        ecs_desired,
        waiting_for,
        next_step_at,
        steps: n,
        progress,
        rolled_back,
        notes,
        needs_target_health: {
            unknown.sort();
            unknown.dedup();
            unknown
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Gate;
    use proptest::prelude::*;

    fn w(pairs: &[(&str, u32)]) -> Weights {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// A service without load balancers: only its counts matter.
    fn ecs(desired: i32, running: i32, stable: bool) -> BTreeMap<String, EcsObs> {
        [(
            "fargate".to_string(),
            EcsObs {
                desired,
                running,
                stable,
                deployments: 1,
                ..EcsObs::default()
            },
        )]
        .into()
    }

    /// A service behind target groups, `healthy` targets in the least healthy one (None: not
    /// read), one deployment.
    fn lb(desired: i32, running: i32, healthy: Option<u32>) -> BTreeMap<String, EcsObs> {
        [(
            "fargate".to_string(),
            EcsObs {
                desired,
                running,
                stable: desired == running,
                deployments: 1,
                rollout_failed: false,
                load_balanced: true,
                healthy: healthy.map(|h| ("api-tg".to_string(), h)),
            },
        )]
        .into()
    }

    fn failing(gate: &str) -> GateSummary {
        GateSummary {
            all_passing: false,
            failing: vec![format!("{gate}: failing")],
            ..GateSummary::default()
        }
    }

    struct World {
        split: TrafficSplit,
        stored: Option<RolloutState>,
        observed: Option<Weights>,
        ecs: BTreeMap<String, EcsObs>,
        gates: GateSummary,
        now: u64,
        window: Option<crate::windows::Hold>,
    }

    impl World {
        fn new(split: TrafficSplit) -> Self {
            World {
                split,
                stored: None,
                observed: Some(w(&[("lambda", 100), ("fargate", 0)])),
                ecs: ecs(2, 2, true),
                gates: GateSummary::none(),
                now: 1_000,
                window: None,
            }
        }
        fn decide(&self) -> Decision {
            decide(&Inputs {
                split: &self.split,
                owner: "test",
                stored: self.stored.as_ref(),
                observed: self.observed.as_ref(),
                ecs: &self.ecs,
                gates: &self.gates,
                now_ms: self.now * 1000,
                window: self.window.as_ref(),
            })
        }
        /// Decide and apply the decision the way the reconciler does (ECS scales and settles).
        fn cycle(&mut self) -> Decision {
            let d = self.decide();
            if let Some(wr) = &d.write {
                self.observed = Some(wr.clone());
                self.stored = Some(d.state.clone());
            }
            if let Some(&n) = d.ecs_desired.get("fargate") {
                self.ecs = ecs(n as i32, n as i32, true);
            }
            d
        }
    }

    #[test]
    fn capacity_comes_before_traffic_without_a_rollout() {
        let mut world = World::new(TrafficSplit::test());
        let d = world.decide();
        assert_eq!(
            d.write,
            Some(w(&[("lambda", 100), ("fargate", 0)])),
            "adopts as is"
        );
        assert_eq!(d.ecs_desired["fargate"], 20, "scales up first");
        assert!(
            d.waiting_for
                .as_deref()
                .unwrap()
                .contains("stable at 20 tasks"),
            "{:?}",
            d.waiting_for
        );
        assert_eq!(d.status, SplitState::Progressing);
        world.cycle();
        // Scaled but not yet running: still waits.
        world.ecs = ecs(20, 12, false);
        assert_eq!(
            world.decide().write,
            Some(w(&[("lambda", 100), ("fargate", 0)]))
        );
        world.ecs = ecs(20, 20, true);
        let d = world.cycle();
        assert_eq!(d.write, Some(w(&[("lambda", 0), ("fargate", 100)])));
        assert_eq!(d.status, SplitState::Complete);
        assert_eq!(d.progress, 1.0);
        // Steady state: the same decision, nothing new to write.
        let again = world.decide();
        assert_eq!(again.state, world.stored.clone().unwrap());
        assert_eq!(again.write, world.observed.clone());
        assert!(again.notes.is_empty());
    }

    #[test]
    fn steps_hold_for_the_interval_and_never_jump_after_restart() {
        let mut world = World::new(TrafficSplit::test().with_steps(&[5, 25, 50, 100], 300));
        let d = world.cycle();
        assert_eq!(d.write, Some(w(&[("lambda", 95), ("fargate", 5)])));
        assert_eq!(d.next_step_at, Some(1_300));
        world.now += 299;
        let d = world.cycle();
        assert_eq!(d.write, Some(w(&[("lambda", 95), ("fargate", 5)])));
        assert!(d.waiting_for.unwrap().contains("hold interval"));
        // A restart keeps only what Route53 holds: the stored state. Still no jump.
        let stored = world.stored.clone();
        let mut restarted = World::new(world.split.clone());
        restarted.stored = stored;
        restarted.observed = world.observed.clone();
        restarted.ecs = world.ecs.clone();
        restarted.now = world.now;
        assert_eq!(restarted.decide().state.step, 1);
        world.now += 1;
        let d = world.cycle();
        assert_eq!(
            d.write,
            Some(w(&[("lambda", 95), ("fargate", 5)])),
            "capacity for 25% first"
        );
        assert_eq!(d.ecs_desired["fargate"], 5);
        let d = world.cycle();
        assert_eq!(d.write, Some(w(&[("lambda", 75), ("fargate", 25)])));
        assert_eq!(d.state.step, 2);
    }

    #[test]
    fn failing_gates_block_and_a_tripped_gate_rolls_back() {
        let split = TrafficSplit::test()
            .with_steps(&[50, 100], 10)
            .with_gate(Gate::ecs_stable("stable", "fargate"));
        let mut world = World::new(split);
        world.ecs = ecs(20, 20, true);
        world.cycle();
        world.now += 10;
        world.gates = GateSummary {
            all_passing: false,
            failing: vec!["stable: not stable".into()],
            ..GateSummary::default()
        };
        let d = world.cycle();
        assert_eq!(d.state.step, 1, "no advance while a gate fails");
        assert!(d.waiting_for.unwrap().contains("gates to pass"));
        world.gates.tripped = Some(("stable".into(), "not stable".into()));
        let d = world.cycle();
        assert!(d.rolled_back);
        assert_eq!(d.status, SplitState::RolledBack);
        assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
        assert_eq!(
            d.ecs_desired["fargate"], 10,
            "keeps capacity for the drained 50% share"
        );
        // Stays rolled back even when gates recover, until the document changes.
        world.gates = GateSummary::none();
        world.now += 1_000;
        let d = world.cycle();
        assert_eq!(d.status, SplitState::RolledBack);
        assert_eq!(
            d.ecs_desired["fargate"], 2,
            "scaled down after the drain delay"
        );
        world.split = world
            .split
            .clone()
            .with_weights(&[("lambda", 50), ("fargate", 50)]);
        let d = world.cycle();
        assert_eq!(d.status, SplitState::Progressing);
        assert_eq!(d.state.start, w(&[("lambda", 100), ("fargate", 0)]));
    }

    #[test]
    fn a_closed_window_holds_steps_but_not_rollbacks_or_drift() {
        let split = TrafficSplit::test()
            .with_steps(&[50, 100], 10)
            .with_gate(Gate::ecs_stable("stable", "fargate"));
        let mut world = World::new(split);
        world.ecs = ecs(20, 20, true);
        world.window = Some(crate::windows::Hold {
            reason: "waiting for window (opens Mon 09:00 JST)".into(),
            until: Some(5_000),
        });
        // Not even the first step, and no capacity asked for ahead of it.
        let d = world.cycle();
        assert_eq!(d.state.step, 0);
        assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
        assert_eq!(
            d.waiting_for.as_deref(),
            Some("waiting for window (opens Mon 09:00 JST)")
        );
        assert_eq!(d.next_step_at, Some(5_000));
        // Drift is put back while the window is closed.
        world.observed = Some(w(&[("lambda", 70), ("fargate", 30)]));
        let d = world.cycle();
        assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
        // The window opens: the step is taken.
        world.window = None;
        let d = world.cycle();
        assert_eq!(d.state.step, 1);
        assert_eq!(d.write, Some(w(&[("lambda", 50), ("fargate", 50)])));
        // Closed again: a tripped gate still rolls back.
        world.window = Some(crate::windows::Hold {
            reason: "waiting for window (opens Tue 09:00 JST)".into(),
            until: None,
        });
        world.now += 10;
        world.gates.tripped = Some(("stable".into(), "not stable".into()));
        let d = world.cycle();
        assert!(d.rolled_back);
        assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
    }

    #[test]
    fn hold_reports_degraded_and_resumes() {
        let split = TrafficSplit::test()
            .with_steps(&[50, 100], 0)
            .with_rollout(|r| r.on_gate_failure = OnGateFailure::Hold);
        let mut world = World::new(split);
        world.ecs = ecs(20, 20, true);
        world.cycle();
        world.gates = GateSummary {
            all_passing: false,
            failing: vec!["x".into()],
            tripped: Some(("x".into(), "bad".into())),
            ..GateSummary::default()
        };
        let d = world.cycle();
        assert_eq!(d.status, SplitState::Degraded);
        assert_eq!(d.write, Some(w(&[("lambda", 50), ("fargate", 50)])));
        world.ecs = ecs(10, 10, true);
        world.gates = GateSummary::none();
        assert!(world
            .cycle()
            .waiting_for
            .unwrap()
            .contains("stable at 20 tasks"));
        assert_eq!(world.cycle().status, SplitState::Complete);
    }

    #[test]
    fn paused_holds_but_corrects_drift() {
        let split = TrafficSplit::test().with_steps(&[50, 100], 0);
        let mut world = World::new(split);
        world.ecs = ecs(20, 20, true);
        world.cycle();
        world.split.spec.rollout.as_mut().unwrap().paused = true;
        world.observed = Some(w(&[("lambda", 80), ("fargate", 20)]));
        let d = world.cycle();
        assert_eq!(d.status, SplitState::Paused);
        assert_eq!(
            d.write,
            Some(w(&[("lambda", 50), ("fargate", 50)])),
            "the stored state wins over the hand edit"
        );
    }

    #[test]
    fn document_change_replans_from_the_applied_split() {
        let mut world = World::new(TrafficSplit::test().with_steps(&[50, 100], 100));
        world.ecs = ecs(20, 20, true);
        world.cycle();
        // The service scaled back to what 50% needs (10 tasks), e.g. by hand.
        world.ecs = ecs(10, 10, true);
        world.split = world
            .split
            .clone()
            .with_weights(&[("lambda", 20), ("fargate", 80)]);
        let d = world.cycle();
        assert_eq!(d.state.start, w(&[("lambda", 50), ("fargate", 50)]));
        assert_eq!(d.write, Some(w(&[("lambda", 50), ("fargate", 50)])));
        assert_eq!(d.ecs_desired["fargate"], 13, "capacity for 65% first");
        let d = world.cycle();
        assert_eq!(d.write, Some(w(&[("lambda", 35), ("fargate", 65)])));
        // Gate or interval edits do not restart the rollout.
        let gen = d.state.generation.clone();
        world.split.spec.rollout.as_mut().unwrap().interval =
            crate::spec::HumanDuration(std::time::Duration::from_secs(5));
        assert_eq!(world.decide().state.generation, gen);
    }

    #[test]
    fn creation_from_nothing_waits_for_capacity() {
        let mut world = World::new(TrafficSplit::test());
        world.observed = None;
        let d = world.decide();
        assert_eq!(
            d.write, None,
            "nothing is written before the service can take the traffic"
        );
        assert_eq!(d.ecs_desired["fargate"], 20);
        world.ecs = ecs(20, 20, true);
        assert_eq!(
            world.decide().write,
            Some(w(&[("lambda", 0), ("fargate", 100)]))
        );
    }

    impl World {
        /// Persist what a decision wrote, without touching ECS (the test moves it).
        fn apply(&mut self, d: &Decision) {
            if let Some(wr) = &d.write {
                self.observed = Some(wr.clone());
                self.stored = Some(d.state.clone());
            }
        }
    }

    fn issue_split() -> TrafficSplit {
        TrafficSplit::test()
            .with_steps(&[25, 50, 100], 4)
            .with_gate(Gate::ecs_stable("fargate-stable", "fargate"))
    }

    /// Issue 9's reproduction: steps [25, 50, 100], interval 4s, one task starting every 4 s. The
    /// controller scaled 2 -> 5 ahead of the 25% step, then 2 s later back to 2 because the step
    /// waited on its (own-scale-up-failing) gate. The scale-up must stay while the step waits.
    #[test]
    fn a_scale_up_ahead_of_a_step_stays_while_the_step_waits() {
        let mut world = World::new(issue_split());
        world.ecs = lb(2, 2, Some(2));
        let d = world.decide();
        assert_eq!(d.ecs_desired["fargate"], 5, "5 tasks for 25% of 20");
        assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
        assert_eq!(
            d.waiting_for.as_deref(),
            Some("capacity: fargate 2/5 tasks running (desired 2) for 25% (waiting 0s of 10m)")
        );
        assert_eq!(
            d.state.capacity_since,
            Some(1_000),
            "the wait start is persisted"
        );
        world.apply(&d);
        world.ecs = lb(5, 2, None);
        // Whatever the gates say while the step waits, the count stays at 5.
        let summaries = [
            ("failing", failing("fargate-stable")),
            (
                "waiting",
                GateSummary {
                    waiting: vec!["fargate-stable: waiting".into()],
                    ..GateSummary::default()
                },
            ),
            (
                "tripped with hold",
                GateSummary {
                    tripped: Some(("fargate-stable".into(), "bad".into())),
                    ..failing("fargate-stable")
                },
            ),
        ];
        for (what, gates) in summaries {
            for dt in [2, 4, 6] {
                world.now = 1_000 + dt;
                world.gates = gates.clone();
                world.split.spec.rollout.as_mut().unwrap().on_gate_failure = OnGateFailure::Hold;
                let d = world.decide();
                assert_eq!(d.ecs_desired["fargate"], 5, "gates {what}, t+{dt}s");
                assert_eq!(d.state.step, 0, "gates {what}, t+{dt}s");
            }
        }
        world.split.spec.rollout.as_mut().unwrap().paused = true;
        world.gates = GateSummary::none();
        assert_eq!(world.decide().ecs_desired["fargate"], 5, "paused");
        world.split.spec.rollout.as_mut().unwrap().paused = false;

        // Running, target health not read: the decision asks for it (and only then).
        world.now = 1_012;
        world.ecs = lb(5, 5, None);
        let d = world.decide();
        assert_eq!(d.needs_target_health, vec!["fargate".to_string()]);
        assert_eq!(d.state.step, 0);
        world.ecs = lb(5, 5, Some(3));
        let d = world.decide();
        assert!(d.needs_target_health.is_empty());
        assert_eq!(
            d.waiting_for.as_deref(),
            Some("capacity: fargate 3/5 healthy targets in tg api-tg for 25% (waiting 12s of 10m)")
        );
        assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
        world.ecs = lb(5, 5, Some(5));
        let d = world.decide();
        assert_eq!(d.write, Some(w(&[("lambda", 75), ("fargate", 25)])));
        assert_eq!(d.state.step, 1);
        assert_eq!(
            d.state.capacity_since, None,
            "cleared with the step's write"
        );
        assert_eq!(d.ecs_desired["fargate"], 5);
        world.apply(&d);
        // Steady at the step during its hold: no target health needed, nothing lowered.
        world.now = 1_014;
        let d = world.decide();
        assert!(d.needs_target_health.is_empty());
        assert_eq!(d.ecs_desired["fargate"], 5);
        assert_eq!(d.write, world.observed.clone());
        assert_eq!(
            Some(&d.state),
            world.stored.as_ref(),
            "nothing new to write"
        );
    }

    /// What a load-balanced service must show before a weight rises (25% of 20 tasks = 5).
    #[test]
    fn serving_capacity_needs_running_tasks_one_deployment_and_healthy_targets() {
        let split = TrafficSplit::test().with_steps(&[25, 50, 100], 4);
        let obs =
            |desired: i32, running: i32, deployments: usize, healthy: Option<u32>, failed: bool| {
                EcsObs {
                    desired,
                    running,
                    stable: desired == running && deployments == 1 && !failed,
                    deployments,
                    rollout_failed: failed,
                    load_balanced: true,
                    healthy: healthy.map(|h| ("api-tg".to_string(), h)),
                }
            };
        // (observation, waiting_for, rises, needs target health, rolled back)
        let table = [
            (obs(5, 5, 1, Some(5), false), None, true, false, false),
            (obs(9, 5, 1, Some(5), false), None, true, false, false),
            (
                obs(5, 4, 1, Some(5), false),
                Some("capacity: fargate 4/5 tasks running (desired 5) for 25% (waiting 0s of 10m)"),
                false,
                false,
                false,
            ),
            (
                obs(5, 5, 2, Some(5), false),
                Some("capacity: fargate to finish its deployment (2 deployments) for 25% (waiting 0s of 10m)"),
                false,
                false,
                false,
            ),
            (
                obs(5, 5, 1, Some(4), false),
                Some("capacity: fargate 4/5 healthy targets in tg api-tg for 25% (waiting 0s of 10m)"),
                false,
                false,
                false,
            ),
            (obs(5, 5, 1, None, false), None, false, true, false),
            (obs(5, 1, 1, None, true), None, false, false, true),
        ];
        for (o, waiting, rises, needs, rolled_back) in table {
            let mut world = World::new(split.clone());
            world.ecs = [("fargate".to_string(), o.clone())].into();
            let d = world.decide();
            let label = format!("{o:?}");
            assert_eq!(d.state.step == 1, rises, "{label}");
            assert_eq!(d.needs_target_health.len() == 1, needs, "{label}");
            assert_eq!(d.rolled_back, rolled_back, "{label}");
            if !needs {
                assert_eq!(d.waiting_for.as_deref(), waiting, "{label}");
            }
        }
    }

    #[test]
    fn every_rising_backend_gets_its_target_health_read_in_one_pass() {
        let mut split =
            TrafficSplit::test().with_weights(&[("lambda", 0), ("fargate", 50), ("green", 50)]);
        let mut green = split.spec.backends[1].clone();
        green.name = "green".into();
        green.ecs.as_mut().unwrap().service = "green".into();
        split.spec.backends.push(green);
        let mut world = World::new(split);
        world.observed = Some(w(&[("lambda", 100), ("fargate", 0), ("green", 0)]));
        let mut both = lb(10, 10, None);
        both.insert("green".into(), both["fargate"].clone());
        world.ecs = both.clone();
        let d = world.decide();
        assert_eq!(
            d.needs_target_health,
            vec!["fargate".to_string(), "green".to_string()]
        );
        for o in both.values_mut() {
            o.healthy = Some(("api-tg".into(), 10));
        }
        world.ecs = both;
        let d = world.decide();
        assert!(d.needs_target_health.is_empty());
        assert_eq!(
            d.write,
            Some(w(&[("lambda", 0), ("fargate", 50), ("green", 50)]))
        );
    }

    #[test]
    fn rollout_state_failed_fails_the_step_at_once() {
        let mut world = World::new(issue_split());
        world.ecs = lb(5, 1, None);
        world.ecs.get_mut("fargate").unwrap().rollout_failed = true;
        let d = world.decide();
        assert!(d.rolled_back);
        assert_eq!(d.status, SplitState::RolledBack);
        assert!(
            d.notes.iter().any(|n| n.reason == "RolloutFailed"
                && n.message
                    == "capacity: ECS service prod/api of fargate: deployment rolloutState FAILED (1 of 5 tasks running)"),
            "{:?}",
            d.notes
        );
    }

    /// Capacity that never serves fails the step at progressDeadline (default 10m), not before:
    /// rollback by default, Degraded in place with `onGateFailure: hold`. The wait's start comes
    /// from the stored state, so a restart does not reset it.
    #[test]
    fn capacity_not_serving_by_the_progress_deadline_fails_the_step() {
        for hold in [false, true] {
            let mut split = issue_split();
            if hold {
                split = split.with_rollout(|r| r.on_gate_failure = OnGateFailure::Hold);
            }
            let mut world = World::new(split);
            world.ecs = lb(2, 2, Some(2));
            let d = world.decide();
            world.apply(&d);
            world.ecs = lb(5, 2, None);
            world.now = 1_599;
            let d = world.decide();
            assert_eq!(d.status, SplitState::Progressing, "hold={hold}");
            assert_eq!(
                d.waiting_for.as_deref(),
                Some("capacity: fargate 2/5 tasks running (desired 5) for 25% (waiting 9m 59s of 10m)")
            );
            // A restarted controller knows only the stored state: same answer.
            let mut restarted = World::new(world.split.clone());
            restarted.stored = world.stored.clone();
            restarted.observed = world.observed.clone();
            restarted.ecs = world.ecs.clone();
            restarted.now = 1_600;
            let d = restarted.decide();
            let why = "capacity: fargate 2/5 tasks running (desired 5) for 25% not serving after 10m (progressDeadline 10m)";
            if hold {
                assert_eq!(d.status, SplitState::Degraded);
                assert_eq!(
                    d.waiting_for.as_deref(),
                    Some(format!("{why}; holding (onGateFailure: hold)").as_str())
                );
                assert_eq!(d.ecs_desired["fargate"], 5, "still asking for the capacity");
                assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
            } else {
                assert!(d.rolled_back);
                assert_eq!(d.status, SplitState::RolledBack);
                assert_eq!(d.state.capacity_since, None);
                assert!(
                    d.notes
                        .iter()
                        .any(|n| n.reason == "ProgressDeadlineExceeded" && n.message == why),
                    "{:?}",
                    d.notes
                );
            }
        }
    }

    /// Issue 9's "nothing fails earlier", seen from the other side: the ecsStable gate waited on
    /// the controller's own scale-up until progressDeadline; from then on its checks fail (and
    /// may trip failureThreshold), but the step fails for the deadline, not for the gate.
    #[test]
    fn gates_failing_once_the_capacity_deadline_passed_fail_the_step_for_the_deadline() {
        for tripped in [false, true] {
            let mut world = World::new(issue_split());
            world.ecs = lb(2, 2, Some(2));
            let d = world.decide();
            world.apply(&d);
            world.ecs = lb(5, 2, None);
            world.now = 1_600;
            world.gates = failing("fargate-stable");
            if tripped {
                world.gates.tripped = Some(("fargate-stable".into(), "not stable".into()));
            }
            let d = world.decide();
            assert!(d.rolled_back, "tripped={tripped}");
            let reasons: Vec<&str> = d.notes.iter().map(|n| n.reason).collect();
            assert_eq!(
                reasons,
                vec!["RolledBack", "ProgressDeadlineExceeded"],
                "tripped={tripped}: {:?}",
                d.notes
            );
            assert!(
                d.notes[1]
                    .message
                    .starts_with("capacity not serving after 10m (progressDeadline 10m)"),
                "{}",
                d.notes[1].message
            );
        }
    }

    /// A failing gate stops the clock: the hold interval counts from its latest failed check. The
    /// first failure of a run moves the stored `since` (one write), later ones do not.
    #[test]
    fn a_failed_check_restarts_the_hold_interval() {
        let mut world = World::new(TrafficSplit::test().with_steps(&[50, 100], 300));
        world.ecs = ecs(20, 20, true);
        let d = world.cycle();
        assert_eq!(d.state.step, 1);
        assert_eq!(d.state.since, 1_000);
        // (now, new_failure, last_failure, stored since after, waiting_for, step)
        type Row = (u64, Option<u64>, Option<u64>, u64, &'static str, usize);
        let table: [Row; 5] = [
            (
                1_100,
                Some(1_100),
                Some(1_100),
                1_100,
                "hold interval at step 1/2",
                1,
            ),
            (
                1_250,
                None,
                Some(1_250),
                1_100,
                "hold interval at step 1/2",
                1,
            ),
            (
                1_500,
                None,
                Some(1_250),
                1_100,
                "hold interval at step 1/2",
                1,
            ),
            (
                1_549,
                None,
                Some(1_250),
                1_100,
                "hold interval at step 1/2",
                1,
            ),
            (1_550, None, Some(1_250), 1_550, "", 2),
        ];
        for (now, new_failure, last_failure, since, waiting, step) in table {
            world.now = now;
            let still_failing = new_failure.is_some() || now == 1_250;
            world.gates = GateSummary {
                new_failure,
                last_failure,
                ..if still_failing {
                    failing("alarm")
                } else {
                    GateSummary::none()
                }
            };
            let d = world.cycle();
            assert_eq!(d.state.since, since, "t={now}");
            assert_eq!(d.state.step, step, "t={now}");
            assert!(
                d.waiting_for.as_deref().unwrap_or("").starts_with(waiting),
                "t={now}: {:?}",
                d.waiting_for
            );
        }
    }

    /// Waiting gates (INSUFFICIENT_DATA, capacity the controller asked for) hold the step without
    /// counting as failures: no rollback, no clock restart.
    #[test]
    fn waiting_gates_hold_the_step_without_failing_it() {
        let mut world = World::new(TrafficSplit::test().with_steps(&[50, 100], 10));
        world.ecs = ecs(20, 20, true);
        world.cycle();
        world.now = 1_010;
        world.gates = GateSummary {
            waiting: vec!["no-5xx: api-5xx INSUFFICIENT_DATA (onInsufficientData: wait)".into()],
            ..GateSummary::default()
        };
        let d = world.cycle();
        assert_eq!(d.state.step, 1);
        assert_eq!(d.status, SplitState::Progressing);
        assert_eq!(
            d.waiting_for.as_deref(),
            Some("gates to pass: no-5xx: api-5xx INSUFFICIENT_DATA (onInsufficientData: wait)")
        );
        assert_eq!(d.state.since, 1_000, "a wait does not restart the clock");
        world.gates = GateSummary::none();
        assert_eq!(world.cycle().state.step, 2);
    }

    fn invalid_notes(d: &Decision) -> Vec<&Note> {
        d.notes
            .iter()
            .filter(|n| n.reason == "StateInvalid")
            .collect()
    }

    /// The issue's crash: a TXT edited to `step=2,since=1` while a 2-step rollout holds at step 1.
    #[test]
    fn a_tampered_step_starts_over_from_route53_instead_of_panicking() {
        let mut world = World::new(TrafficSplit::test().with_steps(&[50, 100], 300));
        world.ecs = ecs(20, 20, true);
        let d = world.cycle();
        assert_eq!(d.write, Some(w(&[("lambda", 50), ("fargate", 50)])));
        let mut tampered = world.stored.clone().unwrap();
        tampered.step = 2;
        tampered.since = 1;
        world.stored = Some(tampered);
        world.ecs = ecs(20, 20, true);
        world.now += 10;
        let d = world.decide();
        let notes = invalid_notes(&d);
        assert_eq!(notes.len(), 1, "{:?}", d.notes);
        assert!(notes[0].warning);
        assert!(notes[0].message.contains("step 2"), "{}", notes[0].message);
        // A new rollout from what Route53 shows (50/50): its first step is half-way to the target.
        assert_eq!(d.state.start, w(&[("lambda", 50), ("fargate", 50)]));
        assert_eq!(d.state.step, 1);
        assert_eq!(d.write, Some(w(&[("lambda", 25), ("fargate", 75)])));
    }

    #[test]
    fn every_kind_of_misfit_state_is_reported_and_replaced() {
        let split = TrafficSplit::test().with_steps(&[50, 100], 300);
        let mut world = World::new(split);
        world.ecs = ecs(20, 20, true);
        world.cycle();
        let good = world.stored.clone().unwrap();
        assert_eq!(good.step, 1);
        type Edit = Box<dyn Fn(&mut RolloutState)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("step past the steps", Box::new(|s| s.step = 7)),
            ("progressing at the last step", Box::new(|s| s.step = 2)),
            (
                "complete before the end",
                Box::new(|s| s.phase = Phase::Complete),
            ),
            (
                "unknown backend",
                Box::new(|s| {
                    s.current = w(&[("lambda", 50), ("ghost", 50)]);
                }),
            ),
            (
                "missing backend",
                Box::new(|s| s.start = w(&[("lambda", 100)])),
            ),
            (
                "all-zero cur",
                Box::new(|s| {
                    s.current = w(&[("lambda", 0), ("fargate", 0)]);
                }),
            ),
            (
                "cur not summing to 100",
                Box::new(|s| {
                    s.current = w(&[("lambda", 60), ("fargate", 60)]);
                }),
            ),
            (
                "overflowing start",
                Box::new(|s| {
                    s.start = w(&[("lambda", u32::MAX), ("fargate", 101)]);
                }),
            ),
            (
                "cur not the step's weights",
                Box::new(|s| {
                    s.current = w(&[("lambda", 10), ("fargate", 90)]);
                }),
            ),
            ("since far in the future", Box::new(|s| s.since = u64::MAX)),
            (
                "drain of an unknown backend",
                Box::new(|s| {
                    s.drains.insert(
                        "ghost".into(),
                        Drain {
                            share: 5,
                            until: 1_100,
                        },
                    );
                }),
            ),
            (
                "drain of more than everything",
                Box::new(|s| {
                    s.drains.insert(
                        "fargate".into(),
                        Drain {
                            share: 101,
                            until: 1_100,
                        },
                    );
                }),
            ),
            ("another split", Box::new(|s| s.split = "web".into())),
            (
                "another owner",
                Box::new(|s| s.owner = "someone-else".into()),
            ),
        ];
        for (what, edit) in cases {
            let mut bad = good.clone();
            edit(&mut bad);
            world.stored = Some(bad);
            let d = world.decide();
            assert_eq!(invalid_notes(&d).len(), 1, "{what}: {:?}", d.notes);
            assert_eq!(d.state.owner, "test", "{what}");
            assert_eq!(
                d.state.start,
                w(&[("lambda", 50), ("fargate", 50)]),
                "{what}: restarts from what Route53 shows"
            );
            assert!(
                d.state.drains.values().all(|x| x.until < u64::MAX),
                "{what}"
            );
        }
        // The untouched state is carried as is.
        world.stored = Some(good.clone());
        let d = world.decide();
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(d.state, good);
        // A drain that would never end is kept, but only as long as a drain can last (120 s
        // drainDelay plus 600 s of clock skew): editing drainDelay does not restart a rollout.
        let mut forever = good.clone();
        forever.drains.insert(
            "fargate".into(),
            Drain {
                share: 50,
                until: u64::MAX,
            },
        );
        world.stored = Some(forever);
        let d = world.decide();
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(d.state.step, good.step);
        assert_eq!(d.state.drains["fargate"].until, world.now + 120 + 600);
    }

    #[test]
    fn an_all_zero_set_is_equal_shares_for_capacity_and_drains() {
        // Route53 answers 0/0 as 50/50: fargate already carries half the traffic.
        let mut world =
            World::new(TrafficSplit::test().with_weights(&[("lambda", 100), ("fargate", 0)]));
        world.observed = Some(w(&[("lambda", 0), ("fargate", 0)]));
        world.ecs = ecs(2, 2, true);
        let d = world.decide();
        assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
        assert_eq!(
            d.state.drains.get("fargate").map(|x| x.share),
            Some(50),
            "fargate drains the half it carried"
        );
        assert_eq!(
            d.ecs_desired["fargate"], 10,
            "10 tasks = 50% of 20 until drained"
        );
        // Raising fargate from an all-zero set needs capacity only above its 50% share.
        let mut world =
            World::new(TrafficSplit::test().with_weights(&[("lambda", 40), ("fargate", 60)]));
        world.observed = Some(w(&[("lambda", 0), ("fargate", 0)]));
        world.ecs = ecs(10, 10, true);
        let d = world.decide();
        assert_eq!(
            d.write,
            Some(w(&[("lambda", 50), ("fargate", 50)])),
            "what Route53 answers, written out; 60% needs 12 tasks and 10 run"
        );
        assert_eq!(d.ecs_desired["fargate"], 12);
        assert!(d.waiting_for.unwrap().contains("stable at 12 tasks"));
    }

    #[test]
    fn generation_ignores_backend_order_and_accepts_the_legacy_hash() {
        let split = TrafficSplit::test().with_steps(&[25, 50, 100], 300);
        let mut swapped = split.clone();
        swapped.spec.backends.reverse();
        assert_eq!(generation(&split), generation(&swapped));
        // The fixture lists lambda before fargate: the legacy hash (document order) differs.
        assert_ne!(legacy_generation(&split), generation(&split));
        assert!(same_generation(&legacy_generation(&split), &split));
        assert!(same_generation(&legacy_generation(&swapped), &swapped));
        assert!(!same_generation("000000000000", &split));
    }

    /// Each released TXT format, as written by that release, must be carried forward: same step,
    /// same hold, same drains, rewritten in the current form.
    #[test]
    fn released_state_formats_carry_forward_without_restarting() {
        let fixture = include_str!("../tests/fixtures/state-v1.txt");
        let states: Vec<RolloutState> = fixture
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let payload = crate::state::from_txt_values(&[l.to_string()]);
                RolloutState::decode_checked(&payload).unwrap_or_else(|e| panic!("{l}: {e}"))
            })
            .collect();
        assert_eq!(states.len(), 2);
        let split = TrafficSplit::test().with_steps(&[25, 50, 100], 300);

        // Progressing at step 1, 100 s into a 300 s hold.
        let mut world = World::new(split.clone());
        world.stored = Some(states[0].clone());
        world.observed = Some(w(&[("lambda", 75), ("fargate", 25)]));
        world.ecs = ecs(20, 20, true);
        world.now = 1_764_000_100;
        let d = world.decide();
        assert!(d.notes.is_empty(), "no restart: {:?}", d.notes);
        assert_eq!(d.state.step, 1);
        assert_eq!(d.state.since, 1_764_000_000, "the hold keeps its start");
        assert_eq!(d.next_step_at, Some(1_764_000_300));
        assert_eq!(d.write, Some(w(&[("lambda", 75), ("fargate", 25)])));
        assert_eq!(
            d.state.generation,
            generation(&split),
            "rewritten in the current form"
        );
        assert_eq!(
            RolloutState {
                generation: states[0].generation.clone(),
                ..d.state.clone()
            },
            states[0]
        );
        // After the upgrade the rewritten state is carried as is, and the rollout goes on.
        world.stored = Some(d.state.clone());
        world.now = 1_764_000_300;
        let d = world.decide();
        assert_eq!(d.state.step, 2);
        assert_eq!(d.write, Some(w(&[("lambda", 50), ("fargate", 50)])));

        // Rolled back, draining fargate's 50% until 1764000520.
        let mut world = World::new(split.clone());
        world.stored = Some(states[1].clone());
        world.observed = Some(w(&[("lambda", 100), ("fargate", 0)]));
        world.ecs = ecs(10, 10, true);
        world.now = 1_764_000_460;
        let d = world.decide();
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(d.status, SplitState::RolledBack);
        assert_eq!(d.ecs_desired["fargate"], 10, "the drain is kept");
        assert_eq!(d.state.drains, states[1].drains);
    }

    /// Any string decodes to a state or to a reason, never a panic.
    #[test]
    fn decoding_odd_payloads_never_panics() {
        for p in [
            "",
            ",",
            "=",
            "heritage=trafficshift",
            "heritage=trafficshift,owner=a,split=b,gen=c,phase=paused,step=0,since=0,start=,cur=,drain=",
            "heritage=trafficshift,owner=a,split=b,gen=c,phase=complete,step=99999999999999999999999,since=0,start=,cur=,drain=",
            "heritage=trafficshift,owner=a,split=b,gen=c,phase=complete,step=1,since=-1,start=a:1,cur=a:x,drain=",
            "heritage=trafficshift,owner=a,split=b,gen=c,phase=complete,step=1,since=1,start=a,cur=a:1,drain=a:1@",
        ] {
            assert!(RolloutState::decode_checked(p).is_err(), "{p}");
        }
        let huge = format!("heritage=trafficshift,owner={}", "x".repeat(5000));
        assert!(RolloutState::decode_checked(&huge)
            .unwrap_err()
            .contains("characters"));
    }

    proptest! {
        /// Whatever the steps and start, every written split sums to 100, no step moves more than
        /// its configured size (plus rounding), the rollout ends at the target, and re-deciding at
        /// the end changes nothing.
        #[test]
        fn rollouts_converge_within_their_steps(
            raw_steps in prop::collection::btree_set(1u32..100, 0..6),
            start_lambda in 0u32..=100,
            target_lambda in 0u32..=100,
            resume_at in 0usize..8,
        ) {
            let mut steps: Vec<u32> = raw_steps.into_iter().collect();
            steps.push(100);
            let split = TrafficSplit::test()
                .with_steps(&steps, 5)
                .with_weights(&[("lambda", target_lambda), ("fargate", 100 - target_lambda)]);
            let mut world = World::new(split.clone());
            world.observed = Some(w(&[("lambda", start_lambda), ("fargate", 100 - start_lambda)]));
            let start = world.observed.clone().unwrap();
            let target = split.spec.weights.clone();
            let mut last = start.clone();
            let mut prev_pct = 0u32;
            for round in 0..(steps.len() * 3 + 4) {
                if round == resume_at {
                    // Re-plan mid-way: a new target starts from the applied split and converges.
                    break;
                }
                let d = world.cycle();
                if let Some(wr) = &d.write {
                    prop_assert_eq!(wr.values().sum::<u32>(), 100);
                    let pct = if d.state.step == 0 { 0 } else { steps[d.state.step - 1] };
                    let size = pct - prev_pct;
                    for (k, v) in wr {
                        let moved = (i64::from(*v) - i64::from(last[k])).unsigned_abs();
                        let span = (i64::from(target[k]) - i64::from(start[k])).unsigned_abs();
                        prop_assert!(moved <= span * u64::from(size) / 100 + 1, "{k} moved {moved} in a {size}% step");
                    }
                    last = wr.clone();
                    prev_pct = pct;
                }
                world.now += 5;
            }
            // Finish (possibly after a re-plan toward a changed target).
            world.split = split.with_weights(&[("lambda", 100 - target_lambda), ("fargate", target_lambda)]);
            for _ in 0..(steps.len() * 3 + 4) {
                let d = world.cycle();
                if let Some(wr) = &d.write {
                    prop_assert_eq!(wr.values().sum::<u32>(), 100);
                }
                world.now += 5;
            }
            let final_target = world.split.spec.weights.clone();
            prop_assert_eq!(world.observed.clone().unwrap(), final_target);
            let d = world.decide();
            prop_assert_eq!(d.status, SplitState::Complete);
            prop_assert_eq!(Some(d.state), world.stored.clone());
        }
    }
}
