//! From the records observed at a split's name to the Route53 change batch that makes them match
//! the decided split (external-dns' plan): pure data in, data out.
//!
//! Ownership rules: records we did not create are never changed unless the document asks to adopt
//! them; weighted records with SetIdentifiers the document does not name, a TXT naming another
//! owner, other routing policies and CNAME clashes are conflicts, and nothing is written.

use std::collections::BTreeMap;

use crate::aws::{AliasTarget, Change, ChangeAction, RecordSet};
use crate::spec::{fqdn, RecordType, TrafficSplit, Weights};
use crate::state::{from_txt_values, to_txt_values, txt_name, RolloutState};
use crate::{Error, Result};

/// Where a backend's record must point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Alias(AliasTarget),
    Cname(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Alias(a) => write!(f, "alias {}", a.dns_name),
            Target::Cname(c) => write!(f, "cname {c}"),
        }
    }
}

/// What exists at the split's name, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Owned weighted records by SetIdentifier.
    pub weighted: BTreeMap<String, RecordSet>,
    /// A plain record of our name and type that adoption will replace.
    pub plain: Option<RecordSet>,
    /// The TXT record, if any.
    pub txt: Option<RecordSet>,
    /// The state decoded from an owned TXT.
    pub state: Option<RolloutState>,
    /// Observed split in percent (normalised from Route53 weights); None when nothing exists.
    pub weights: Option<Weights>,
    /// Raw Route53 weights by SetIdentifier, for the drift metric and logs.
    pub raw_weights: Weights,
}

/// Records at `name` (and the TXT at `_trafficshift.<name>`) picked from a zone listing.
pub fn records_for<'a>(split: &TrafficSplit, zone_records: &'a [RecordSet]) -> Vec<&'a RecordSet> {
    let name = fqdn(&split.spec.record.name);
    let txt = txt_name(&name);
    zone_records
        .iter()
        .filter(|r| r.name == name || r.name == txt)
        .collect()
}

/// Classify the records at the split's name. Errors are conflicts: nothing may be written.
pub fn classify(
    split: &TrafficSplit,
    owner: &str,
    records: &[&RecordSet],
    targets: &BTreeMap<String, Target>,
) -> Result<Observed> {
    let spec = &split.spec.record;
    let name = fqdn(&spec.name);
    let txt_fqdn = txt_name(&name);
    let rtype = spec.record_type.as_str();

    let at_name: Vec<&RecordSet> = records.iter().copied().filter(|r| r.name == name).collect();
    let txts: Vec<&RecordSet> = records
        .iter()
        .copied()
        .filter(|r| r.name == txt_fqdn && r.rtype == "TXT")
        .collect();

    // CNAME clashes: Route53 rejects them, moto does not.
    if spec.record_type == RecordType::CNAME {
        if let Some(other) = at_name.iter().find(|r| r.rtype != "CNAME") {
            return Err(Error::Conflict(format!(
                "{name} has a {} record; a CNAME cannot coexist with other types at one name",
                other.rtype
            )));
        }
    } else if at_name.iter().any(|r| r.rtype == "CNAME") {
        return Err(Error::Conflict(format!(
            "{name} has a CNAME record; an {rtype} record cannot coexist with it"
        )));
    }

    let ours: Vec<&RecordSet> = at_name
        .iter()
        .copied()
        .filter(|r| r.rtype == rtype)
        .collect();
    if let Some(r) = ours.iter().find(|r| r.other_routing) {
        return Err(Error::Conflict(format!(
            "{name} {rtype} uses a routing policy other than weighted (set id {:?}); trafficshift manages only weighted sets",
            r.set_identifier.as_deref().unwrap_or("-")
        )));
    }

    if txts.len() > 1 {
        return Err(Error::Conflict(format!(
            "{txt_fqdn} has {} TXT records; expected one",
            txts.len()
        )));
    }
    let txt = txts.first().map(|r| (*r).clone());
    let mut state = None;
    if let Some(t) = &txt {
        let payload = from_txt_values(&t.values);
        match RolloutState::owner_of(&payload) {
            Some(o) if o == owner => {
                state = RolloutState::decode(&payload);
                if let Some(s) = &state {
                    if s.split != split.name() {
                        return Err(Error::Conflict(format!(
                            "{name} is managed by split {:?} of this controller; two documents name the same record",
                            s.split
                        )));
                    }
                }
            }
            Some(o) => {
                return Err(Error::Conflict(format!(
                    "{name} is owned by trafficshift owner {o:?} (TXT {txt_fqdn}); this controller is {owner:?} and will not touch it"
                )))
            }
            None => {
                return Err(Error::Conflict(format!(
                    "{txt_fqdn} holds a TXT record that trafficshift did not write; remove it or rename the record"
                )))
            }
        }
    }

    let plain: Vec<&RecordSet> = ours
        .iter()
        .copied()
        .filter(|r| r.set_identifier.is_none())
        .collect();
    let weighted: Vec<&RecordSet> = ours
        .iter()
        .copied()
        .filter(|r| r.set_identifier.is_some())
        .collect();

    let known: Vec<&str> = split
        .spec
        .backends
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    let foreign: Vec<&str> = weighted
        .iter()
        .filter_map(|r| r.set_identifier.as_deref())
        .filter(|id| !known.contains(id))
        .collect();
    if !foreign.is_empty() {
        return Err(Error::Conflict(format!(
            "{name} {rtype} has weighted records with SetIdentifier(s) {} that the document does not name; trafficshift will not change or delete them — add them as backends or remove them by hand",
            foreign.join(", ")
        )));
    }
    if let Some(w) = weighted.iter().find(|r| !r.is_weighted()) {
        return Err(Error::Conflict(format!(
            "{name} {rtype} set id {:?} is not a weighted record",
            w.set_identifier
        )));
    }

    if !weighted.is_empty() && state.is_none() && txt.is_none() && !spec.adopt_existing {
        return Err(Error::Conflict(format!(
            "{name} {rtype} already has weighted records that trafficshift does not own (no TXT {txt_fqdn}); set spec.record.adoptExisting: true to take them over"
        )));
    }

    let raw_weights: Weights = weighted
        .iter()
        .map(|r| {
            (
                r.set_identifier.clone().unwrap_or_default(),
                r.weight.unwrap_or(0).clamp(0, 255) as u32,
            )
        })
        .collect();

    let mut plain_rec = None;
    let weights = if let Some(p) = plain.first() {
        if !weighted.is_empty() {
            return Err(Error::Conflict(format!(
                "{name} {rtype} has both a plain and weighted records; fix it by hand"
            )));
        }
        if !spec.adopt_existing {
            return Err(Error::Conflict(format!(
                "{name} {rtype} already exists as a plain (non-weighted) record; set spec.record.adoptExisting: true to convert it into the weighted set"
            )));
        }
        // The adopted record's target keeps 100% at first.
        let current = plain_target(p);
        let owner_backend = targets
            .iter()
            .find(|(_, t)| current.as_ref().is_some_and(|c| same_destination(c, t)))
            .map(|(b, _)| b.clone());
        let Some(b) = owner_backend else {
            return Err(Error::Conflict(format!(
                "{name} {rtype} points at {}, which matches no backend of the document; add that target as a backend so adoption keeps its traffic",
                current.map(|t| t.to_string()).unwrap_or_else(|| p.values.join(" "))
            )));
        };
        plain_rec = Some((*p).clone());
        Some(
            split
                .spec
                .backends
                .iter()
                .map(|x| (x.name.clone(), if x.name == b { 100 } else { 0 }))
                .collect(),
        )
    } else if weighted.is_empty() {
        None
    } else {
        let mut all: Weights = split
            .spec
            .backends
            .iter()
            .map(|b| (b.name.clone(), 0))
            .collect();
        all.extend(raw_weights.clone());
        crate::weights::normalize(&all)
    };

    Ok(Observed {
        weighted: weighted
            .iter()
            .map(|r| (r.set_identifier.clone().unwrap_or_default(), (*r).clone()))
            .collect(),
        plain: plain_rec,
        txt,
        state,
        weights,
        raw_weights,
    })
}

/// Whether two targets send traffic to the same place (ignoring evaluateTargetHealth and the
/// `dualstack.` prefix ELB alias names may carry).
fn same_destination(a: &Target, b: &Target) -> bool {
    fn norm(n: &str) -> String {
        let n = fqdn(n);
        n.strip_prefix("dualstack.")
            .map(str::to_string)
            .unwrap_or(n)
    }
    match (a, b) {
        (Target::Alias(x), Target::Alias(y)) => {
            norm(&x.dns_name) == norm(&y.dns_name)
                && x.hosted_zone_id.eq_ignore_ascii_case(&y.hosted_zone_id)
        }
        (Target::Cname(x), Target::Cname(y)) => norm(x) == norm(y),
        _ => false,
    }
}

fn plain_target(r: &RecordSet) -> Option<Target> {
    if let Some(a) = &r.alias {
        return Some(Target::Alias(a.clone()));
    }
    if r.rtype == "CNAME" {
        return r.values.first().map(|v| Target::Cname(fqdn(v)));
    }
    None
}

/// The hosted zone of every CloudFront distribution (edge-optimized API Gateway domains too).
pub const CLOUDFRONT_ZONE: &str = "Z2FDTNDATAQYW2";

/// Whether a record points somewhere other than `want` (a hand edit), as opposed to the same
/// place written differently: a `dualstack.` prefix or evaluateTargetHealth that trafficshift now
/// writes on its own.
fn points_elsewhere(e: &RecordSet, want: &RecordSet) -> bool {
    match (&e.alias, &want.alias) {
        (Some(x), Some(y)) => {
            !same_destination(&Target::Alias(x.clone()), &Target::Alias(y.clone()))
        }
        _ => e.alias != want.alias || e.values != want.values,
    }
}

/// The record a backend must have.
fn desired_record(
    split: &TrafficSplit,
    backend: &str,
    weight: u32,
    target: &Target,
    existing: Option<&RecordSet>,
) -> RecordSet {
    let spec = &split.spec.record;
    let (alias, values, ttl) = match target {
        Target::Alias(a) if a.hosted_zone_id.eq_ignore_ascii_case(CLOUDFRONT_ZONE) => {
            // Route53 refuses EvaluateTargetHealth=true on an alias to CloudFront (moto accepts
            // it), whoever asked for it.
            let a = AliasTarget {
                evaluate_target_health: false,
                ..a.clone()
            };
            (Some(a), vec![], None)
        }
        Target::Alias(a) => (Some(a.clone()), vec![], None),
        Target::Cname(c) => (None, vec![c.clone()], Some(spec.ttl)),
    };
    RecordSet {
        name: fqdn(&spec.name),
        rtype: spec.record_type.as_str().to_string(),
        set_identifier: Some(backend.to_string()),
        weight: Some(i64::from(weight)),
        ttl,
        alias,
        values,
        // A health check someone attached by hand stays attached.
        health_check_id: existing.and_then(|e| e.health_check_id.clone()),
        other_routing: false,
    }
}

/// One change of a plan, with the reason a reviewer reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    pub change: Change,
    /// `create`, `adopt`, `weight 75 -> 50`, `target changed`, `state` ...
    pub why: String,
    /// The weight change is not the decided one: someone edited the record.
    pub drift: bool,
}

/// The Route53 changes that make the records show `weights` and `state`.
pub fn route53_changes(
    split: &TrafficSplit,
    obs: &Observed,
    weights: &Weights,
    state: &RolloutState,
    targets: &BTreeMap<String, Target>,
    intended: &Weights,
) -> Result<Vec<PlannedChange>> {
    if weights.values().all(|&w| w == 0) {
        return Err(Error::Unsafe(format!(
            "split {} would set every weight to 0",
            split.name()
        )));
    }
    if let Some((b, w)) = weights.iter().find(|(_, &w)| w > 255) {
        return Err(Error::Unsafe(format!(
            "weight {w} for {b} exceeds Route53's maximum of 255"
        )));
    }
    let mut out = Vec::new();
    if let Some(p) = &obs.plain {
        out.push(PlannedChange {
            change: Change {
                action: ChangeAction::Delete,
                record: p.clone(),
            },
            why: "adopt: replace the plain record by the weighted set".into(),
            drift: false,
        });
    }
    for b in &split.spec.backends {
        let w = weights.get(&b.name).copied().unwrap_or(0);
        let Some(target) = targets.get(&b.name) else {
            return Err(Error::NotFound(format!(
                "no target resolved for backend {}",
                b.name
            )));
        };
        let existing = obs.weighted.get(&b.name);
        let want = desired_record(split, &b.name, w, target, existing);
        match existing {
            Some(e) if *e == want => {}
            Some(e) => {
                let old = e.weight.unwrap_or(0);
                let mut why = Vec::new();
                if old != i64::from(w) {
                    why.push(format!("weight {old} -> {w}"));
                }
                if e.alias != want.alias || e.values != want.values || e.ttl != want.ttl {
                    why.push(format!("target -> {target}"));
                }
                // Drift: the record is not what trafficshift last applied.
                let drift = intended
                    .get(&b.name)
                    .map(|&iw| i64::from(iw) != old)
                    .unwrap_or(false)
                    || points_elsewhere(e, &want);
                out.push(PlannedChange {
                    change: Change {
                        action: ChangeAction::Upsert,
                        record: want,
                    },
                    why: why.join(", "),
                    drift,
                });
            }
            None => out.push(PlannedChange {
                change: Change {
                    action: ChangeAction::Create,
                    record: want,
                },
                why: format!("create weight {w} -> {target}"),
                drift: obs.state.is_some(),
            }),
        }
    }
    let encoded = state.encode();
    let txt_value = to_txt_values(&encoded);
    let txt_record = RecordSet {
        name: txt_name(&fqdn(&split.spec.record.name)),
        rtype: "TXT".into(),
        set_identifier: None,
        weight: None,
        ttl: Some(300),
        alias: None,
        values: txt_value,
        health_check_id: None,
        other_routing: false,
    };
    let txt_same = obs
        .txt
        .as_ref()
        .is_some_and(|t| from_txt_values(&t.values) == encoded && t.ttl == txt_record.ttl);
    if !txt_same {
        out.push(PlannedChange {
            change: Change {
                action: if obs.txt.is_some() {
                    ChangeAction::Upsert
                } else {
                    ChangeAction::Create
                },
                record: txt_record,
            },
            why: format!("state: {} step {} ", phase_word(state), state.step)
                .trim_end()
                .to_string(),
            drift: false,
        });
    }
    Ok(out)
}

fn phase_word(s: &RolloutState) -> &'static str {
    match s.phase {
        crate::state::Phase::Progressing => "progressing",
        crate::state::Phase::Complete => "complete",
        crate::state::Phase::RolledBack => "rolled back",
    }
}

/// Route53's limits on one ChangeResourceRecordSets call: changes, ResourceRecord elements and
/// characters in Value elements (the last two count UPSERTs twice; alias records have none).
pub const MAX_CHANGES_PER_BATCH: usize = 1000;
pub const MAX_RECORD_ELEMENTS_PER_BATCH: usize = 1000;
pub const MAX_VALUE_CHARS_PER_BATCH: usize = 32_000;

fn upsert_factor(c: &Change) -> usize {
    if c.action == ChangeAction::Upsert {
        2
    } else {
        1
    }
}

/// ResourceRecord elements Route53 counts toward the batch limit.
pub fn change_elements(c: &Change) -> usize {
    c.record.values.len() * upsert_factor(c)
}

/// Characters of Value elements Route53 counts toward the batch limit.
pub fn change_chars(c: &Change) -> usize {
    c.record.values.iter().map(|v| v.len()).sum::<usize>() * upsert_factor(c)
}

/// Last guard before a batch leaves: every weight within Route53's 0-255, which moto does not
/// enforce. (Type and TTL agree by construction: `route53_changes` writes every record of a set
/// from one spec.)
pub fn check_batch(changes: &[Change]) -> Result<()> {
    for c in changes {
        if let Some(w) = c.record.weight {
            if !(0..=255).contains(&w) {
                return Err(Error::Unsafe(format!(
                    "{} weight {w} is outside 0-255",
                    c.record.name
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Phase;

    fn alias(dns: &str, zone: &str, eth: bool) -> Target {
        Target::Alias(AliasTarget {
            dns_name: dns.into(),
            hosted_zone_id: zone.into(),
            evaluate_target_health: eth,
        })
    }

    fn state(split: &TrafficSplit, w: &Weights) -> RolloutState {
        RolloutState {
            owner: "test".into(),
            split: split.name().into(),
            generation: crate::rollout::generation(split),
            phase: Phase::Complete,
            step: 1,
            since: 1,
            start: w.clone(),
            current: w.clone(),
            drains: BTreeMap::new(),
            capacity_since: None,
            autoscaling: BTreeMap::new(),
        }
    }

    fn weighted(backend: &str, weight: i64, target: &Target) -> RecordSet {
        let Target::Alias(a) = target else {
            panic!("alias only")
        };
        RecordSet {
            name: "api.abceed.example.".into(),
            rtype: "A".into(),
            set_identifier: Some(backend.into()),
            weight: Some(weight),
            ttl: None,
            alias: Some(a.clone()),
            values: vec![],
            health_check_id: None,
            other_routing: false,
        }
    }

    #[test]
    fn aliases_to_cloudfront_never_evaluate_target_health() {
        let split = TrafficSplit::test().with_weights(&[("lambda", 100), ("fargate", 0)]);
        let targets: BTreeMap<String, Target> = [
            // Asked for EvaluateTargetHealth=true, which Route53 refuses for CloudFront.
            (
                "lambda".to_string(),
                alias("d111.cloudfront.net.", "Z2FDTNDATAQYW2", true),
            ),
            (
                "fargate".to_string(),
                alias("dualstack.alb-1.elb.amazonaws.com.", "Z35SXDOTRQ7X7K", true),
            ),
        ]
        .into();
        let obs = classify(&split, "test", &[], &targets).expect("nothing there");
        let w = split.spec.weights.clone();
        let changes =
            route53_changes(&split, &obs, &w, &state(&split, &w), &targets, &w).expect("plan");
        let eth: BTreeMap<String, bool> = changes
            .iter()
            .filter_map(|c| {
                let a = c.change.record.alias.as_ref()?;
                Some((
                    c.change.record.set_identifier.clone()?,
                    a.evaluate_target_health,
                ))
            })
            .collect();
        assert_eq!(
            eth,
            [("fargate".to_string(), true), ("lambda".to_string(), false)].into()
        );
    }

    #[test]
    fn moving_to_the_dualstack_name_is_an_update_not_drift() {
        let split = TrafficSplit::test().with_weights(&[("lambda", 50), ("fargate", 50)]);
        let lambda = alias(
            "d-1.execute-api.us-east-1.amazonaws.com.",
            "Z1UJRXOUMOOFQ8",
            true,
        );
        let old_alb = alias("alb-1.elb.amazonaws.com.", "Z35SXDOTRQ7X7K", true);
        let new_alb = alias("dualstack.alb-1.elb.amazonaws.com.", "Z35SXDOTRQ7X7K", true);
        let w = split.spec.weights.clone();
        let st = state(&split, &w);
        let txt = RecordSet {
            name: "_trafficshift.api.abceed.example.".into(),
            rtype: "TXT".into(),
            set_identifier: None,
            weight: None,
            ttl: Some(300),
            alias: None,
            values: to_txt_values(&st.encode()),
            health_check_id: None,
            other_routing: false,
        };
        let records = [
            weighted("lambda", 50, &lambda),
            weighted("fargate", 50, &old_alb),
            txt,
        ];
        let refs: Vec<&RecordSet> = records.iter().collect();
        let targets: BTreeMap<String, Target> = [
            ("lambda".to_string(), lambda.clone()),
            ("fargate".to_string(), new_alb.clone()),
        ]
        .into();
        let obs = classify(&split, "test", &refs, &targets).expect("owned");
        let changes = route53_changes(&split, &obs, &w, &st, &targets, &w).expect("plan");
        assert_eq!(changes.len(), 1, "{changes:?}");
        let c = &changes[0];
        assert_eq!(c.change.action, ChangeAction::Upsert);
        assert_eq!(
            c.change.record.alias.as_ref().map(|a| a.dns_name.as_str()),
            Some("dualstack.alb-1.elb.amazonaws.com.")
        );
        assert!(!c.drift, "same load balancer, not a hand edit: {c:?}");

        // Another load balancer is a hand edit.
        let records = [
            weighted("lambda", 50, &lambda),
            weighted(
                "fargate",
                50,
                &alias("alb-2.elb.amazonaws.com.", "Z35SXDOTRQ7X7K", true),
            ),
            records[2].clone(),
        ];
        let refs: Vec<&RecordSet> = records.iter().collect();
        let obs = classify(&split, "test", &refs, &targets).expect("owned");
        let changes = route53_changes(&split, &obs, &w, &st, &targets, &w).expect("plan");
        assert!(changes.iter().any(|c| c.drift), "{changes:?}");
    }
}
