//! On-call overrides: `trafficshift promote|abort|retry|pause|resume|suspend|unsuspend` write one
//! into the split's state TXT (through Route53, with the controller's own compare-and-swap), and
//! the controller reads it back with the rest of the state. Pure: the kinds, how they are stored,
//! which one makes sense in which state, and how each steers the rollout decision.
//!
//! One override at a time: a new one replaces the last. Standing ones (pause, suspend, abort)
//! hold until replaced; one-shot ones (promote, promote --full, retry) are marked `done` by the
//! controller in the same write that carries them out, so a restart never repeats them.

use crate::rollout::{Note, SplitState};
use crate::state::{Phase, RolloutState};

/// What on-call asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Promote,
    PromoteFull,
    Abort,
    Retry,
    Pause,
    Resume,
    Suspend,
    Unsuspend,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::PromoteFull => "promote-full",
            Action::Abort => "abort",
            Action::Retry => "retry",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Suspend => "suspend",
            Action::Unsuspend => "unsuspend",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "promote" => Action::Promote,
            "promote-full" => Action::PromoteFull,
            "abort" => Action::Abort,
            "retry" => Action::Retry,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "suspend" => Action::Suspend,
            "unsuspend" => Action::Unsuspend,
            _ => return None,
        })
    }
}

/// The longest actor (an ARN) kept, in stored (escaped) characters.
pub const ACTOR_MAX: usize = 160;
/// The longest reason kept, in stored (escaped) characters.
pub const REASON_MAX: usize = 200;

/// An override and who asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub action: Action,
    /// Who: the caller's `sts:GetCallerIdentity` ARN.
    pub actor: String,
    /// When: unix seconds.
    pub at: u64,
    /// Why: `--reason`, cleaned and bounded.
    pub reason: String,
    /// The controller carried it out: promote, promote --full and retry are carried out once;
    /// resume and unsuspend are finished by being written; pause, suspend and abort stand until
    /// replaced (an abort is marked done once back at the start split, and still shows).
    pub done: bool,
}

impl Override {
    /// An override as the command writes it: text cleaned and cut so that it fits its TXT keys.
    pub fn new(action: Action, actor: &str, at: u64, reason: &str) -> Self {
        Override {
            action,
            actor: unescape(&escape(actor, ACTOR_MAX)),
            at,
            reason: unescape(&escape(reason, REASON_MAX)),
            done: matches!(action, Action::Resume | Action::Unsuspend),
        }
    }

    /// The longest override a TXT may have to hold (for `validate`'s size check).
    pub fn longest() -> Self {
        Override {
            action: Action::PromoteFull,
            actor: "%".repeat(ACTOR_MAX),
            at: 9_999_999_999,
            reason: "%".repeat(REASON_MAX),
            done: true,
        }
    }

    /// `promote-full by arn:... at 1764000000 (why)`, for events and logs.
    pub fn describe(&self) -> String {
        let why = if self.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", self.reason)
        };
        format!(
            "{} by {} at {}{why}",
            self.action.as_str(),
            if self.actor.is_empty() {
                "unknown"
            } else {
                &self.actor
            },
            crate::status::rfc3339(self.at)
        )
    }

    fn pending(&self, a: Action) -> bool {
        self.action == a && !self.done
    }
}

/// Characters stored as they are; every other byte is `%XX`, so the value never holds the
/// state's separators (`,` `=` `;`), TXT quoting (`"` `\`) or anything outside printable ASCII.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || " -_.:/@+()!?'#".contains(c)
}

/// Cleaned text, escaped, cut to at most `max` stored characters on a character boundary.
fn escape(s: &str, max: usize) -> String {
    let cleaned = crate::sanitize::clean(s.trim(), crate::sanitize::MESSAGE_MAX);
    let mut out = String::new();
    for c in cleaned.trim().chars() {
        let piece = if plain(c) {
            c.to_string()
        } else {
            let mut buf = [0u8; 4];
            c.encode_utf8(&mut buf)
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect()
        };
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
    }
    // TXT values are trimmed when read back: a cut must not leave a trailing space.
    out.trim_end().to_string()
}

/// The text of an escaped value; None if it is not one (a hand edit).
fn unescape_checked(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    let text = String::from_utf8(bytes).ok()?;
    // Remote input: clean again, whatever was stored.
    Some(crate::sanitize::clean(&text, crate::sanitize::MESSAGE_MAX))
}

fn unescape(s: &str) -> String {
    unescape_checked(s).unwrap_or_default()
}

/// The TXT keys of an override (appended to the state payload; none without an override).
pub fn encode(o: Option<&Override>) -> String {
    let Some(o) = o else {
        return String::new();
    };
    format!(
        ",ovr={},ovrby={},ovrat={},ovrwhy={},ovrdone={}",
        o.action.as_str(),
        escape(&o.actor, ACTOR_MAX),
        o.at,
        escape(&o.reason, REASON_MAX),
        u8::from(o.done)
    )
}

/// The override in a state payload's keys: Ok(None) when there is none (TXTs written before
/// overrides existed), Err saying what is malformed.
pub fn decode(kv: &crate::state::Fields) -> Result<Option<Override>, String> {
    let Some(action) = kv.get("ovr") else {
        return Ok(None);
    };
    let action = Action::parse(action).ok_or_else(|| "ovr= names no override".to_string())?;
    let text = |k: &str, max: usize| -> Result<String, String> {
        let v = kv.get(k).unwrap_or("");
        if v.len() > max {
            return Err(format!("{k}= is longer than {max} characters"));
        }
        unescape_checked(v).ok_or_else(|| format!("{k}= is malformed"))
    };
    Ok(Some(Override {
        action,
        actor: text("ovrby", ACTOR_MAX)?,
        at: kv
            .get("ovrat")
            .ok_or("no ovrat=")?
            .parse()
            .map_err(|_| "ovrat= is malformed".to_string())?,
        reason: text("ovrwhy", REASON_MAX)?,
        done: match kv.get("ovrdone") {
            Some("1") => true,
            Some("0") | None => false,
            Some(_) => return Err("ovrdone= is malformed".into()),
        },
    }))
}

/// Why `action` makes no sense for a split in state `s`, if it does not.
pub fn refusal(action: Action, s: &RolloutState) -> Option<String> {
    let standing = s
        .control
        .as_ref()
        .filter(|o| !o.done || o.action == Action::Abort);
    let by = |o: &Override| o.describe();
    if let Some(o) = standing.filter(|o| o.action == Action::Suspend) {
        if action != Action::Unsuspend {
            return Some(format!(
                "the split is suspended ({}); unsuspend it first",
                by(o)
            ));
        }
    }
    let phase = match s.phase {
        Phase::Progressing => "progressing",
        Phase::Complete => "complete",
        Phase::RolledBack if standing.is_some_and(|o| o.action == Action::Abort) => "aborted",
        Phase::RolledBack => "rolled back",
    };
    match action {
        Action::Unsuspend => (!standing.is_some_and(|o| o.action == Action::Suspend))
            .then(|| "the split is not suspended".to_string()),
        Action::Suspend => None,
        Action::Resume => (!standing.is_some_and(|o| o.action == Action::Pause))
            .then(|| "the split is not paused by an override (rollout.paused in the document is changed in the document)".to_string()),
        Action::Pause => standing
            .filter(|o| o.action == Action::Pause)
            .map(|o| format!("the split is already paused ({})", by(o))),
        Action::Promote | Action::PromoteFull => {
            if let Some(o) = standing.filter(|o| o.action == Action::Pause) {
                Some(format!(
                    "the split is paused ({}); resume it first",
                    by(o)
                ))
            } else if s.phase != Phase::Progressing {
                Some(format!("the rollout is {phase}; there is no step to promote"))
            } else {
                None
            }
        }
        Action::Abort => (s.phase != Phase::Progressing).then(|| {
            format!("the rollout is {phase}; only a rollout in progress can be aborted")
        }),
        Action::Retry => (s.phase != Phase::RolledBack).then(|| {
            format!("the rollout is {phase}; only a rolled-back or aborted rollout can be retried")
        }),
    }
}

/// The state the command writes: `s` with the override (the write count is raised by the
/// fenced write itself).
pub fn with_override(s: &RolloutState, o: Override) -> RolloutState {
    RolloutState {
        control: Some(o),
        ..s.clone()
    }
}

/// The override a new rollout (a new generation, or a stored state that does not fit) keeps:
/// a standing pause or suspension, never an abort or a one-shot action of the old rollout.
pub fn carried_into_new_rollout(o: Option<&Override>) -> Option<Override> {
    o.filter(|o| matches!(o.action, Action::Pause | Action::Suspend) && !o.done)
        .cloned()
}

/// The split is suspended: the controller writes nothing for it.
pub fn suspended(s: Option<&RolloutState>) -> bool {
    s.and_then(|s| s.control.as_ref())
        .is_some_and(|o| o.pending(Action::Suspend))
}

/// A retry waits to be carried out: the rollout restarts, and forgets its gates' failures
/// (a gate still tripped would roll it back at once).
pub fn retrying(s: Option<&RolloutState>) -> bool {
    s.and_then(|s| s.control.as_ref())
        .is_some_and(|o| o.pending(Action::Retry))
}

/// How the standing override steers this cycle's step machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Steer {
    /// Hold step progress (drift is still corrected).
    pub paused: bool,
    /// Take the next step without waiting for the hold interval.
    pub skip_hold: bool,
    /// The next step is the target.
    pub full: bool,
}

/// Carry out abort and retry on the state before the step machine runs, and say how the rest
/// steers it. `stamp`: unix seconds to write down.
pub fn steer(st: &mut RolloutState, stamp: u64, notes: &mut Vec<Note>) -> Steer {
    let Some(o) = st.control.clone() else {
        return Steer::default();
    };
    let mut steer = Steer::default();
    match o.action {
        Action::Abort if !o.done => {
            if st.phase == Phase::Progressing {
                notes.push(Note {
                    warning: true,
                    reason: "Aborted",
                    message: format!(
                        "{}; back from {} to the start split {}",
                        o.describe(),
                        crate::weights::show(&st.current),
                        crate::weights::show(&st.start)
                    ),
                });
                st.current = st.start.clone();
                st.phase = Phase::RolledBack;
                st.since = stamp;
                st.capacity_since = None;
            }
            mark_done(st);
        }
        Action::Retry if !o.done => {
            if st.phase == Phase::RolledBack {
                notes.push(Note {
                    warning: false,
                    reason: "Retried",
                    message: format!(
                        "{}; restarting the rollout from {}",
                        o.describe(),
                        crate::weights::show(&st.current)
                    ),
                });
                st.start = st.current.clone();
                st.step = 0;
                st.phase = Phase::Progressing;
                st.since = stamp;
                st.capacity_since = None;
            }
            mark_done(st);
        }
        Action::Promote | Action::PromoteFull if !o.done => {
            if st.phase == Phase::Progressing {
                steer.skip_hold = true;
                steer.full = o.action == Action::PromoteFull;
            } else {
                // Nothing left to promote: acknowledged so it never applies to a later rollout.
                mark_done(st);
            }
        }
        Action::Pause if !o.done => steer.paused = true,
        _ => {}
    }
    steer
}

/// After the step machine took a step on a promote, acknowledge it.
pub fn stepped(st: &mut RolloutState, notes: &mut Vec<Note>) {
    if let Some(o) = st
        .control
        .as_ref()
        .filter(|o| matches!(o.action, Action::Promote | Action::PromoteFull) && !o.done)
    {
        notes.push(Note {
            warning: false,
            reason: "Promoted",
            message: o.describe(),
        });
        mark_done(st);
    }
}

fn mark_done(st: &mut RolloutState) {
    if let Some(o) = st.control.as_mut() {
        o.done = true;
    }
}

/// The state to show for a decision's status: Aborted instead of RolledBack after an abort.
pub fn shown_state(st: &RolloutState, status: SplitState) -> SplitState {
    match (&st.control, status) {
        (Some(o), SplitState::RolledBack) if o.action == Action::Abort => SplitState::Aborted,
        _ => status,
    }
}

/// The event a state change into or out of an override's hold deserves (Suspended, Unsuspended,
/// Paused, Resumed); `prev` is the state shown before.
pub fn transition_note(prev: &str, now: SplitState, o: Option<&Override>) -> Option<Note> {
    let o = o?;
    let (reason, warning) = match (o.action, now) {
        (Action::Suspend, SplitState::Suspended) if prev != "Suspended" => ("Suspended", true),
        (Action::Unsuspend, _) if prev == "Suspended" => ("Unsuspended", false),
        (Action::Pause, SplitState::Paused) if prev != "Paused" => ("Paused", false),
        (Action::Resume, _) if prev == "Paused" => ("Resumed", false),
        _ => return None,
    };
    Some(Note {
        warning,
        reason,
        message: o.describe(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RolloutState;
    use std::collections::BTreeMap;

    fn w(pairs: &[(&str, u32)]) -> crate::spec::Weights {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn state(phase: Phase, control: Option<Override>) -> RolloutState {
        RolloutState {
            owner: "test".into(),
            split: "api".into(),
            generation: "abc".into(),
            phase,
            step: 1,
            since: 100,
            start: w(&[("a", 100), ("b", 0)]),
            current: w(&[("a", 75), ("b", 25)]),
            drains: Default::default(),
            capacity_since: None,
            autoscaling: Default::default(),
            retiring: BTreeMap::new(),
            rev: 3,
            control,
        }
    }

    fn ovr(a: Action) -> Override {
        Override::new(a, "arn:aws:iam::123456789012:user/oncall", 200, "why")
    }

    #[test]
    fn text_is_escaped_bounded_and_round_trips() {
        let o = Override::new(
            Action::Abort,
            "arn:aws:sts::1:assumed-role/a+b=c,d/x@y",
            5,
            "p99 > 2s, \"bad\";\nsee \u{202e}runbook é",
        );
        assert_eq!(o.actor, "arn:aws:sts::1:assumed-role/a+b=c,d/x@y");
        assert_eq!(o.reason, "p99 > 2s, \"bad\"; see runbook é");
        let keys = encode(Some(&o));
        // Nothing that would split the payload or break TXT quoting.
        let values: Vec<&str> = keys.split(',').skip(1).collect();
        assert_eq!(values.len(), 5, "{keys}");
        assert!(!keys.contains(['"', '\\', ';', '\n']), "{keys}");
        assert!(keys.is_ascii());
        let kv: crate::state::Fields = values.iter().map(|p| p.split_once('=').unwrap()).collect();
        assert_eq!(decode(&kv), Ok(Some(o)));

        let long = Override::new(Action::Pause, &"é".repeat(500), 1, &"x".repeat(5000));
        assert_eq!(long.reason.len(), REASON_MAX);
        // Each é is 2 bytes, 6 stored characters: 26 fit in 160.
        assert_eq!(long.actor.chars().count(), 26);
        assert!(encode(Some(&long)).len() <= encode(Some(&Override::longest())).len());
    }

    #[test]
    fn malformed_or_absent_keys() {
        let kv: crate::state::Fields = [("phase", "progressing")].into_iter().collect();
        assert_eq!(decode(&kv), Ok(None));
        for bad in [
            vec![("ovr", "explode"), ("ovrat", "1")],
            vec![("ovr", "pause")],
            vec![("ovr", "pause"), ("ovrat", "1"), ("ovrwhy", "%G1")],
            vec![("ovr", "pause"), ("ovrat", "1"), ("ovrdone", "yes")],
        ] {
            let kv: crate::state::Fields = bad.into_iter().collect();
            assert!(decode(&kv).is_err(), "{kv:?}");
        }
    }

    #[test]
    fn refusals_say_why() {
        let prog = state(Phase::Progressing, None);
        let done = state(Phase::Complete, None);
        let back = state(Phase::RolledBack, None);
        let paused = state(Phase::Progressing, Some(ovr(Action::Pause)));
        let suspended = state(Phase::Progressing, Some(ovr(Action::Suspend)));
        let aborted = state(
            Phase::RolledBack,
            Some(Override {
                done: true,
                ..ovr(Action::Abort)
            }),
        );
        // (action, state, refused)
        let table = [
            (Action::Resume, &prog, true),
            (Action::Resume, &paused, false),
            (Action::Unsuspend, &prog, true),
            (Action::Unsuspend, &suspended, false),
            (Action::Abort, &suspended, true),
            (Action::Retry, &prog, true),
            (Action::Retry, &back, false),
            (Action::Retry, &aborted, false),
            (Action::Abort, &aborted, true),
            (Action::Abort, &prog, false),
            (Action::Abort, &done, true),
            (Action::Promote, &paused, true),
            (Action::PromoteFull, &done, true),
            (Action::Promote, &prog, false),
            (Action::Pause, &paused, true),
            (Action::Pause, &prog, false),
            (Action::Suspend, &prog, false),
        ];
        for (a, s, refused) in table {
            assert_eq!(
                refusal(a, s).is_some(),
                refused,
                "{a:?} on {:?}/{:?}: {:?}",
                s.phase,
                s.control,
                refusal(a, s)
            );
        }
        assert!(refusal(Action::Retry, &aborted).is_none());
        assert!(refusal(Action::Abort, &aborted)
            .unwrap()
            .contains("aborted"));
        assert!(refusal(Action::Promote, &paused)
            .unwrap()
            .contains("resume it first"));
    }

    #[test]
    fn abort_returns_to_start_once_and_retry_restarts() {
        let mut st = state(Phase::Progressing, Some(ovr(Action::Abort)));
        let mut notes = vec![];
        let s = steer(&mut st, 300, &mut notes);
        assert_eq!(s, Steer::default());
        assert_eq!(st.current, w(&[("a", 100), ("b", 0)]));
        assert_eq!(st.phase, Phase::RolledBack);
        assert!(st.control.as_ref().unwrap().done);
        assert_eq!(notes[0].reason, "Aborted");
        assert_eq!(
            shown_state(&st, SplitState::RolledBack),
            SplitState::Aborted
        );
        // Acknowledged: a second cycle (or a restart) does nothing more.
        let before = st.clone();
        notes.clear();
        steer(&mut st, 400, &mut notes);
        assert_eq!(st, before);
        assert!(notes.is_empty());

        st.control = Some(ovr(Action::Retry));
        st.current = w(&[("a", 100), ("b", 0)]);
        steer(&mut st, 500, &mut notes);
        assert_eq!((st.phase, st.step, st.since), (Phase::Progressing, 0, 500));
        assert_eq!(st.start, w(&[("a", 100), ("b", 0)]));
        assert!(st.control.as_ref().unwrap().done);
        assert_eq!(
            shown_state(&st, SplitState::Progressing),
            SplitState::Progressing
        );
    }

    #[test]
    fn promote_steers_until_a_step_is_taken() {
        let mut st = state(Phase::Progressing, Some(ovr(Action::PromoteFull)));
        let mut notes = vec![];
        let s = steer(&mut st, 300, &mut notes);
        assert!(s.skip_hold && s.full && !s.paused);
        assert!(!st.control.as_ref().unwrap().done, "not before the step");
        stepped(&mut st, &mut notes);
        assert!(st.control.as_ref().unwrap().done);
        assert_eq!(notes[0].reason, "Promoted");
        assert_eq!(steer(&mut st, 301, &mut notes), Steer::default());

        // A promote that finds the rollout finished is acknowledged without effect.
        let mut st = state(Phase::Complete, Some(ovr(Action::Promote)));
        assert_eq!(steer(&mut st, 300, &mut notes), Steer::default());
        assert!(st.control.as_ref().unwrap().done);
    }

    #[test]
    fn pause_and_suspend_stand_and_survive_a_new_rollout() {
        let mut st = state(Phase::Progressing, Some(ovr(Action::Pause)));
        assert!(steer(&mut st, 300, &mut vec![]).paused);
        assert!(carried_into_new_rollout(st.control.as_ref()).is_some());
        let s = state(Phase::Progressing, Some(ovr(Action::Suspend)));
        assert!(suspended(Some(&s)));
        assert!(retrying(Some(&state(
            Phase::RolledBack,
            Some(ovr(Action::Retry))
        ))));
        assert!(!retrying(Some(&state(
            Phase::Progressing,
            Some(Override {
                done: true,
                ..ovr(Action::Retry)
            })
        ))));
        assert!(carried_into_new_rollout(s.control.as_ref()).is_some());
        for a in [Action::Abort, Action::Promote, Action::Resume] {
            assert_eq!(carried_into_new_rollout(Some(&ovr(a))), None, "{a:?}");
        }
        let resumed = Override::new(Action::Resume, "x", 1, "");
        assert!(resumed.done, "resume is finished by being written");
        assert!(!suspended(Some(&state(
            Phase::Progressing,
            Some(ovr(Action::Unsuspend))
        ))));
    }

    fn fixture(text: &str) -> Vec<RolloutState> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let payload = crate::state::from_txt_values(&[l.to_string()]);
                RolloutState::decode_checked(&payload).unwrap_or_else(|e| panic!("{l}: {e}"))
            })
            .collect()
    }

    fn decide_at(
        stored: &RolloutState,
        observed: crate::spec::Weights,
        now: u64,
    ) -> crate::rollout::Decision {
        let split = crate::spec::TrafficSplit::test().with_steps(&[25, 50, 100], 300);
        let ecs = [(
            "fargate".to_string(),
            crate::rollout::EcsObs {
                desired: 20,
                running: 20,
                stable: true,
                deployments: 1,
                ..Default::default()
            },
        )]
        .into();
        crate::rollout::decide(&crate::rollout::Inputs {
            split: &split,
            owner: "test",
            stored: Some(stored),
            observed: Some(&observed),
            ecs: &ecs,
            gates: &crate::rollout::GateSummary::none(),
            now_ms: now * 1000,
            window: None,
        })
    }

    /// Both released TXT formats decode: v1 (no override) unchanged in meaning, v2 with one.
    #[test]
    fn state_fixtures_v1_and_v2_decode() {
        let v1 = fixture(include_str!("../tests/fixtures/state-v1.txt"));
        assert_eq!(v1.len(), 2);
        assert!(v1.iter().all(|s| s.control.is_none()));
        // No override keys are added to a state without one: v1 re-encodes as v1 did (+rev).
        assert!(!v1[0].encode().contains("ovr"), "{}", v1[0].encode());
        let d = decide_at(&v1[0], w(&[("lambda", 75), ("fargate", 25)]), 1_764_000_300);
        assert_eq!(d.state.step, 2, "v1 goes on stepping");

        let v2 = fixture(include_str!("../tests/fixtures/state-v2.txt"));
        assert_eq!(v2.len(), 2);
        let pause = v2[0].control.clone().unwrap();
        assert_eq!(
            (pause.action, pause.at, pause.done),
            (Action::Pause, 1_764_000_050, false)
        );
        assert_eq!(
            pause.actor,
            "arn:aws:sts::123456789012:assumed-role/oncall/alice"
        );
        assert_eq!(pause.reason, "p99 latency, see INC-42");
        // Re-encoding gives back the stored text exactly (the compare-and-swap compares it).
        let line = include_str!("../tests/fixtures/state-v2.txt")
            .lines()
            .next()
            .unwrap();
        assert_eq!(format!("\"{}\"", v2[0].encode()), line);
        // Paused past the hold: no step, the split is held and corrected.
        let d = decide_at(&v2[0], w(&[("lambda", 75), ("fargate", 25)]), 1_764_000_900);
        assert_eq!((d.status, d.state.step), (SplitState::Paused, 1));
        assert_eq!(d.write, Some(w(&[("lambda", 75), ("fargate", 25)])));
        assert_eq!(
            RolloutState {
                generation: v2[0].generation.clone(),
                ..d.state
            },
            v2[0],
            "nothing new but the current generation form to write down"
        );

        let abort = v2[1].control.clone().unwrap();
        assert_eq!((abort.action, abort.done), (Action::Abort, true));
        let d = decide_at(&v2[1], w(&[("lambda", 100), ("fargate", 0)]), 1_764_000_460);
        assert_eq!(d.status, SplitState::Aborted);
        assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
        assert!(d.notes.is_empty(), "acknowledged already: {:?}", d.notes);
        assert_eq!(d.ecs_desired["fargate"], 10, "the drain is kept");
    }

    /// Through the step machine: promote skips one hold, --full goes to the target but only once
    /// the capacity for it serves, abort writes the start split.
    #[test]
    fn the_step_machine_follows_the_override() {
        let v1 = fixture(include_str!("../tests/fixtures/state-v1.txt"));
        let at_step1 = w(&[("lambda", 75), ("fargate", 25)]);
        // 100 s into a 300 s hold.
        let now = 1_764_000_100;
        let d = decide_at(&v1[0], at_step1.clone(), now);
        assert_eq!((d.state.step, d.next_step_at), (1, Some(1_764_000_300)));

        let promoted = with_override(&v1[0], ovr(Action::Promote));
        let d = decide_at(&promoted, at_step1.clone(), now);
        assert_eq!(d.state.step, 2);
        assert_eq!(d.write, Some(w(&[("lambda", 50), ("fargate", 50)])));
        assert!(d.state.control.as_ref().unwrap().done);

        // 20 tasks serve 100 %: --full takes the target in one step.
        let full = with_override(&v1[0], ovr(Action::PromoteFull));
        let d = decide_at(&full, at_step1.clone(), now);
        assert_eq!((d.state.step, d.status), (3, SplitState::Complete));
        assert_eq!(d.write, Some(w(&[("lambda", 0), ("fargate", 100)])));

        let aborted = with_override(&v1[0], ovr(Action::Abort));
        let d = decide_at(&aborted, at_step1, now);
        assert_eq!(d.status, SplitState::Aborted);
        assert_eq!(d.write, Some(w(&[("lambda", 100), ("fargate", 0)])));
        assert_eq!(d.state.phase, Phase::RolledBack);
    }

    #[test]
    fn promote_full_scales_before_it_shifts() {
        let v1 = fixture(include_str!("../tests/fixtures/state-v1.txt"));
        let split = crate::spec::TrafficSplit::test().with_steps(&[25, 50, 100], 300);
        let full = with_override(&v1[0], ovr(Action::PromoteFull));
        // 5 tasks serve 25 %; 100 % needs 20.
        let ecs = [(
            "fargate".to_string(),
            crate::rollout::EcsObs {
                desired: 5,
                running: 5,
                stable: true,
                deployments: 1,
                ..Default::default()
            },
        )]
        .into();
        let observed = w(&[("lambda", 75), ("fargate", 25)]);
        let d = crate::rollout::decide(&crate::rollout::Inputs {
            split: &split,
            owner: "test",
            stored: Some(&full),
            observed: Some(&observed),
            ecs: &ecs,
            gates: &crate::rollout::GateSummary::none(),
            now_ms: 1_764_000_100_000,
            window: None,
        });
        assert_eq!(d.state.step, 1, "no step before the capacity serves");
        assert_eq!(d.write, Some(observed));
        assert_eq!(d.ecs_desired["fargate"], 20, "scaled for the target first");
        assert!(!d.state.control.as_ref().unwrap().done, "still to do");
    }

    #[test]
    fn transitions_make_one_event() {
        let o = ovr(Action::Suspend);
        assert_eq!(
            transition_note("Progressing", SplitState::Suspended, Some(&o))
                .unwrap()
                .reason,
            "Suspended"
        );
        assert_eq!(
            transition_note("Suspended", SplitState::Suspended, Some(&o)),
            None
        );
        let u = Override::new(Action::Unsuspend, "x", 1, "");
        assert_eq!(
            transition_note("Suspended", SplitState::Progressing, Some(&u))
                .unwrap()
                .reason,
            "Unsuspended"
        );
    }
}
