//! Finishing a migration, as pure data: retiring the backends a document no longer names, and
//! handing a single-backend name back as a plain record (`record.plainWhenSingle`).
//!
//! A weighted record whose SetIdentifier the document does not name is someone else's (a
//! Conflict), unless the state TXT this controller owns names it in `cur`, `start` or `retire`:
//! that is proof trafficshift wrote it, so it is a backend being retired. While it is in the set it
//! takes part in the rollout as a fixed target at weight 0 (the rollout lowers it capacity-first
//! like any weight); once Route53 shows it at 0 it stays for the drain delay (kept in the TXT, so a
//! restart neither forgets nor restarts it), then its record is deleted in the batch that writes
//! the state without it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::aws::{Change, ChangeAction, RecordSet};
use crate::plan::{same_destination, Observed, PlannedChange, Target};
use crate::rollout::Note;
use crate::spec::{fqdn, AliasSpec, Backend, FixedTarget, TrafficSplit};
use crate::state::{from_txt_values, txt_name, Phase, RolloutState};

/// A weighted record trafficshift still owns after its backend left the document.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaving {
    pub name: String,
    pub record: RecordSet,
}

/// The leaving backends at the split's name: weighted records of its name and type whose
/// SetIdentifier the document does not name and the owned state TXT does. Anything else stays
/// for `plan::classify` to judge (an unknown SetIdentifier is still a Conflict).
pub fn leaving(split: &TrafficSplit, owner: &str, records: &[&RecordSet]) -> Vec<Leaving> {
    let name = fqdn(&split.spec.record.name);
    // Weighted records of the name whose SetIdentifier the document does not name: nearly always
    // none, and then the state TXT need not be read at all (every cycle asks for every split).
    let unnamed: Vec<(&str, &RecordSet)> = records
        .iter()
        .filter(|r| {
            r.name == name
                && r.rtype == split.spec.record.record_type.as_str()
                && !r.other_routing
                && r.is_weighted()
        })
        .filter_map(|r| {
            let id = r.set_identifier.as_deref()?;
            let known = split.spec.backends.iter().any(|b| b.name == id);
            (!known).then_some((id, *r))
        })
        .collect();
    if unnamed.is_empty() {
        return vec![];
    }
    let txt = txt_name(&name);
    let txts: Vec<&&RecordSet> = records
        .iter()
        .filter(|r| r.name == txt && r.rtype == "TXT")
        .collect();
    let [t] = txts.as_slice() else {
        return vec![];
    };
    let Some(state) = RolloutState::decode(&from_txt_values(&t.values)) else {
        return vec![];
    };
    if state.owner != owner || state.split != split.name() {
        return vec![];
    }
    let named = |id: &str| {
        state.current.contains_key(id)
            || state.start.contains_key(id)
            || state.retiring.contains_key(id)
    };
    unnamed
        .into_iter()
        .filter(|(id, _)| named(id))
        .map(|(id, r)| Leaving {
            name: id.to_string(),
            record: r.clone(),
        })
        .collect()
}

/// The document with each leaving backend added back as a fixed target (where its record points)
/// at weight 0: the rollout then treats it as any backend whose weight must fall. When the
/// document had it at 0 already, this is the document's previous rollout (same generation).
/// Nearly always nothing is leaving: then it is the document itself, not a copy (every cycle
/// calls this for every split).
pub fn with_leaving<'a>(split: &'a TrafficSplit, leaving: &[Leaving]) -> Cow<'a, TrafficSplit> {
    if leaving.is_empty() {
        return Cow::Borrowed(split);
    }
    let mut out = split.clone();
    for l in leaving {
        let r = &l.record;
        out.spec.backends.push(Backend {
            name: l.name.clone(),
            api_gateway: None,
            ecs: None,
            request_metric: None,
            target: Some(FixedTarget {
                alias: r.alias.as_ref().map(|a| AliasSpec {
                    dns_name: a.dns_name.clone(),
                    hosted_zone_id: a.hosted_zone_id.clone(),
                    evaluate_target_health: a.evaluate_target_health,
                }),
                cname: if r.alias.is_none() {
                    r.values.first().cloned()
                } else {
                    None
                },
            }),
        });
        out.spec.weights.insert(l.name.clone(), 0);
    }
    Cow::Owned(out)
}

/// What retirement adds to a cycle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retirement {
    /// Weighted records to delete in this cycle's batch (with the state TXT that drops them).
    pub delete: Vec<RecordSet>,
    /// What the split waits for, for `status` and `plan`.
    pub waiting_for: Option<String>,
    pub notes: Vec<Note>,
}

/// Move each retirement on. `next` is the state this cycle's batch will write (decided over
/// `with_leaving`); `writes` says whether a batch is written at all this cycle.
pub fn advance(
    doc: &TrafficSplit,
    leaving: &[Leaving],
    stored: Option<&RolloutState>,
    next: &mut RolloutState,
    writes: bool,
    now: u64,
) -> Retirement {
    let mut out = Retirement::default();
    let drain = doc.spec.drain_delay().as_secs();
    // A retirement whose record is gone (deleted by hand, or by our last batch) is over.
    next.retiring
        .retain(|k, _| leaving.iter().any(|l| &l.name == k));
    let mut waits = Vec::new();
    let mut deleted = Vec::new();
    for l in leaving {
        // The drain starts only once a committed write put the weight at 0 and Route53 shows it.
        let at_zero = l.record.weight == Some(0)
            && stored.is_some_and(|s| s.current.get(&l.name).copied().unwrap_or(0) == 0)
            && next.current.get(&l.name).copied().unwrap_or(0) == 0;
        if !at_zero {
            next.retiring.remove(&l.name);
            waits.push(format!("retiring {} (weight going to 0)", l.name));
            continue;
        }
        let until = match stored.and_then(|s| s.retiring.get(&l.name)) {
            Some(&until) => until,
            None => {
                // `now` is whole seconds (rounded down): one more second so the record
                // stays for at least the full drain after this cycle.
                let until = now.saturating_add(drain).saturating_add(1);
                out.notes.push(Note {
                    warning: false,
                    reason: "Retiring",
                    message: format!(
                        "retiring {} (drains until {}); its weighted record is deleted then",
                        l.name,
                        clock(until)
                    ),
                });
                until
            }
        };
        next.retiring.insert(l.name.clone(), until);
        if now >= until && writes && next.phase == Phase::Complete {
            deleted.push(l);
        } else {
            waits.push(format!(
                "retiring {} (drains until {})",
                l.name,
                clock(until)
            ));
        }
    }
    for l in &deleted {
        next.current.remove(&l.name);
        next.start.remove(&l.name);
        next.drains.remove(&l.name);
        next.autoscaling.remove(&l.name);
        next.retiring.remove(&l.name);
        out.delete.push(l.record.clone());
        out.notes.push(Note {
            warning: false,
            reason: "Retired",
            message: format!(
                "retired {}: its weighted record is deleted with this state",
                l.name
            ),
        });
    }
    if !deleted.is_empty() && next.start.values().sum::<u32>() != 100 {
        // The retired backend held the start's share (lambda 100 -> fargate 100): a start that no
        // longer sums to 100 would be refused as invalid on the next read and restart the rollout.
        // The rollout is complete, so what remains started where it is now.
        next.start = next.current.clone();
    }
    if !deleted.is_empty() {
        // The state now describes the rollout of what remains, so the next cycle carries it on
        // instead of starting a new one.
        let rest: Vec<Leaving> = leaving
            .iter()
            .filter(|l| !deleted.iter().any(|d| d.name == l.name))
            .cloned()
            .collect();
        next.generation = crate::rollout::generation(&with_leaving(doc, &rest));
    }
    if !waits.is_empty() {
        let mut w = waits.join(", ");
        if single_backend(doc).is_some() {
            w.push_str("; then handed back as plain record (plainWhenSingle)");
        }
        out.waiting_for = Some(w);
    }
    out
}

/// The one backend of a `plainWhenSingle` document.
fn single_backend(doc: &TrafficSplit) -> Option<&str> {
    match doc.spec.backends.as_slice() {
        [b] if doc.spec.record.plain_when_single => Some(&b.name),
        _ => None,
    }
}

/// The batch that collapses the weighted set into a plain record: DELETE the last weighted
/// record, DELETE the state TXT (exactly as read, so a concurrent write fails the whole batch)
/// and CREATE the plain record pointing where the weighted one did. Only once the one backend
/// is at 100 in a committed state, with nothing retiring.
pub fn collapse(
    doc: &TrafficSplit,
    obs: &Observed<'_>,
    stored: Option<&RolloutState>,
    next: &RolloutState,
    leaving: &[Leaving],
) -> Option<Vec<PlannedChange>> {
    let b = single_backend(doc)?;
    let full: crate::spec::Weights = [(b.to_string(), 100)].into();
    let committed = stored.is_some_and(|s| s.current == full);
    if !leaving.is_empty()
        || !next.retiring.is_empty()
        || next.phase != Phase::Complete
        || next.current != full
        || !committed
        || obs.plain.is_some()
        || obs.weighted.len() != 1
    {
        return None;
    }
    let weighted = *obs.weighted.get(b).filter(|r| r.weight.unwrap_or(0) > 0)?;
    let txt = obs.txt?;
    let plain = RecordSet {
        set_identifier: None,
        weight: None,
        ..weighted.clone()
    };
    let why = "plainWhenSingle: hand back as plain record".to_string();
    Some(vec![
        PlannedChange {
            change: Change {
                action: ChangeAction::Delete,
                record: weighted.clone(),
            },
            why: why.clone(),
            drift: false,
        },
        PlannedChange {
            change: Change {
                action: ChangeAction::Delete,
                record: txt.clone(),
            },
            why: why.clone(),
            drift: false,
        },
        PlannedChange {
            change: Change {
                action: ChangeAction::Create,
                record: plain,
            },
            why,
            drift: false,
        },
    ])
}

/// Whether the split's name was handed back: a `plainWhenSingle` document with one backend, no
/// state TXT, no weighted record, and a plain record pointing at that backend. Then there is
/// nothing to do (not a Conflict, and not an adoption: that would undo the hand-back).
pub fn handed_back(
    doc: &TrafficSplit,
    records: &[&RecordSet],
    targets: &BTreeMap<String, Target>,
) -> bool {
    let Some(b) = single_backend(doc) else {
        return false;
    };
    let name = fqdn(&doc.spec.record.name);
    if records.iter().any(|r| r.name == txt_name(&name)) {
        return false;
    }
    let rtype = doc.spec.record.record_type.as_str();
    let ours: Vec<&&RecordSet> = records
        .iter()
        .filter(|r| r.name == name && r.rtype == rtype)
        .collect();
    let [p] = ours.as_slice() else {
        return false;
    };
    p.set_identifier.is_none()
        && !p.other_routing
        && crate::plan::plain_target(p)
            .zip(targets.get(b))
            .is_some_and(|(have, want)| same_destination(&have, want))
}

/// RFC 3339 UTC of a Unix time, for status lines.
fn clock(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::AliasTarget;
    use crate::spec::Weights;

    const NAME: &str = "api.abceed.example.";

    fn w(p: &[(&str, u32)]) -> Weights {
        p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn alias(dns: &str) -> AliasTarget {
        AliasTarget {
            dns_name: dns.into(),
            hosted_zone_id: "ZALB".into(),
            evaluate_target_health: true,
        }
    }

    fn weighted(id: &str, weight: i64, dns: &str) -> RecordSet {
        RecordSet {
            name: NAME.into(),
            rtype: "A".into(),
            set_identifier: Some(id.into()),
            weight: Some(weight),
            ttl: None,
            alias: Some(alias(dns)),
            values: vec![],
            health_check_id: None,
            other_routing: false,
        }
    }

    fn state(cur: Weights) -> RolloutState {
        RolloutState {
            owner: "test".into(),
            split: "api".into(),
            generation: "g".into(),
            phase: Phase::Complete,
            step: 1,
            since: 1,
            start: cur.clone(),
            current: cur,
            drains: BTreeMap::new(),
            capacity_since: None,
            autoscaling: BTreeMap::new(),
            control: None,
            rev: 3,
            retiring: BTreeMap::new(),
        }
    }

    fn txt(s: &RolloutState) -> RecordSet {
        RecordSet {
            name: txt_name(NAME),
            rtype: "TXT".into(),
            set_identifier: None,
            weight: None,
            ttl: Some(300),
            alias: None,
            values: crate::state::to_txt_values(&s.encode()),
            health_check_id: None,
            other_routing: false,
        }
    }

    /// The document after `lambda` was deleted from it.
    fn fargate_only() -> TrafficSplit {
        let mut s = TrafficSplit::test().with_weights(&[("fargate", 100)]);
        s.spec.backends.retain(|b| b.name == "fargate");
        s
    }

    #[test]
    fn only_a_set_identifier_the_owned_txt_names_is_leaving() {
        let doc = fargate_only();
        let st = state(w(&[("fargate", 100), ("lambda", 0)]));
        let t = txt(&st);
        let lambda = weighted("lambda", 0, "d-1.execute-api");
        let stranger = weighted("blue", 0, "elsewhere");
        let fargate = weighted("fargate", 100, "alb");
        let recs = [&t, &lambda, &stranger, &fargate];
        let l = leaving(&doc, "test", &recs);
        assert_eq!(
            l.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["lambda"]
        );
        assert!(leaving(&doc, "someone-else", &recs).is_empty(), "not ours");
        assert!(
            leaving(&doc, "test", &[&lambda, &fargate]).is_empty(),
            "no TXT, no proof"
        );
        // Added back at weight 0 it is the rollout the TXT names (the old document's).
        let back = with_leaving(&doc, &l);
        assert_eq!(back.spec.weights, w(&[("fargate", 100), ("lambda", 0)]));
        assert_eq!(
            crate::rollout::generation(&back),
            crate::rollout::generation(&TrafficSplit::test())
        );
    }

    #[test]
    fn a_retirement_waits_for_zero_then_the_drain_then_deletes() {
        let doc = fargate_only();
        let drain = doc.spec.drain_delay().as_secs();
        assert_eq!(drain, 120, "2 x TTL 60");
        // Still carrying traffic: no drain clock yet.
        let l = vec![Leaving {
            name: "lambda".into(),
            record: weighted("lambda", 25, "d-1"),
        }];
        let stored = state(w(&[("fargate", 75), ("lambda", 25)]));
        let mut next = state(w(&[("fargate", 100), ("lambda", 0)]));
        let r = advance(&doc, &l, Some(&stored), &mut next, true, 1000);
        assert!(r.delete.is_empty());
        assert!(next.retiring.is_empty());
        assert!(r.waiting_for.unwrap().contains("weight going to 0"));

        // At 0 in Route53 and in the committed state: the clock starts, written into the TXT.
        let l = vec![Leaving {
            name: "lambda".into(),
            record: weighted("lambda", 0, "d-1"),
        }];
        let stored = state(w(&[("fargate", 100), ("lambda", 0)]));
        let mut next = stored.clone();
        let r = advance(&doc, &l, Some(&stored), &mut next, true, 1000);
        assert!(r.delete.is_empty());
        assert_eq!(next.retiring, [("lambda".to_string(), 1121)].into());
        assert_eq!(r.notes[0].reason, "Retiring");
        assert!(
            r.waiting_for
                .as_deref()
                .unwrap()
                .starts_with("retiring lambda (drains until 1970-01-01T00:18:41Z)"),
            "{:?}",
            r.waiting_for
        );

        // A restart mid-drain keeps the clock (read back from the TXT), and nothing before it.
        let stored = RolloutState::decode(&next.encode()).unwrap();
        let mut again = stored.clone();
        let r = advance(&doc, &l, Some(&stored), &mut again, true, 1120);
        assert!(r.delete.is_empty());
        assert_eq!(again, stored, "nothing new to write mid-drain");

        // Drained, but no batch this cycle: wait.
        let mut no_write = stored.clone();
        assert!(advance(&doc, &l, Some(&stored), &mut no_write, false, 1121)
            .delete
            .is_empty());

        // Drained: deleted with the state that no longer names it.
        let mut last = stored.clone();
        let r = advance(&doc, &l, Some(&stored), &mut last, true, 1121);
        assert_eq!(r.delete, vec![weighted("lambda", 0, "d-1")]);
        assert_eq!(last.current, w(&[("fargate", 100)]));
        assert_eq!(last.start, w(&[("fargate", 100)]));
        assert!(last.retiring.is_empty());
        assert_eq!(last.generation, crate::rollout::generation(&doc));
        assert!(r.waiting_for.is_none());
    }

    #[test]
    fn collapse_needs_one_backend_at_100_committed_and_nothing_retiring() {
        let mut doc = fargate_only();
        let st = state(w(&[("fargate", 100)]));
        let fargate = weighted("fargate", 100, "alb");
        let state_txt = txt(&st);
        let obs = Observed {
            weighted: [("fargate", &fargate)].into(),
            plain: None,
            txt: Some(&state_txt),
            state: Some(st.clone()),
            state_problem: None,
            weights: Some(w(&[("fargate", 100)])),
            raw_weights: w(&[("fargate", 100)]),
        };
        assert_eq!(collapse(&doc, &obs, Some(&st), &st, &[]), None, "flag off");
        doc.spec.record.plain_when_single = true;
        let c = collapse(&doc, &obs, Some(&st), &st, &[]).expect("collapses");
        let actions: Vec<_> = c.iter().map(|c| c.change.action).collect();
        assert_eq!(
            actions,
            [
                ChangeAction::Delete,
                ChangeAction::Delete,
                ChangeAction::Create
            ]
        );
        assert_eq!(c[0].change.record, fargate);
        assert_eq!(c[1].change.record.rtype, "TXT");
        let plain = &c[2].change.record;
        assert_eq!(plain.set_identifier, None);
        assert_eq!(plain.weight, None);
        assert_eq!(plain.alias, Some(alias("alb")));

        // Not while something retires, nor before the 100 is committed.
        let l = [Leaving {
            name: "lambda".into(),
            record: weighted("lambda", 0, "d-1"),
        }];
        assert_eq!(collapse(&doc, &obs, Some(&st), &st, &l), None);
        let before = state(w(&[("fargate", 100), ("lambda", 0)]));
        assert_eq!(collapse(&doc, &obs, Some(&before), &st, &[]), None);
        let mut draining = st.clone();
        draining.retiring.insert("lambda".into(), 5);
        assert_eq!(collapse(&doc, &obs, Some(&st), &draining, &[]), None);

        // Handed back: the plain record alone, pointing at the backend, is left as it is.
        let targets: BTreeMap<String, Target> =
            [("fargate".to_string(), Target::Alias(alias("alb.")))].into();
        assert!(handed_back(&doc, &[plain], &targets));
        assert!(!handed_back(&doc, &[plain, &c[1].change.record], &targets));
        let other: BTreeMap<String, Target> =
            [("fargate".to_string(), Target::Alias(alias("other")))].into();
        assert!(!handed_back(&doc, &[plain], &other), "points elsewhere");
        doc.spec.record.plain_when_single = false;
        assert!(!handed_back(&doc, &[plain], &targets));
    }
}
