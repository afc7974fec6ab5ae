//! From the records observed at a split's name to the Route53 change batch that makes them match
//! the decided split (external-dns' plan): pure data in, data out.
//!
//! Ownership rules: records we did not create are never changed unless the document asks to adopt
//! them; weighted records with SetIdentifiers the document does not name, a TXT naming another
//! owner, other routing policies and CNAME clashes are conflicts, and nothing is written.

use std::collections::BTreeMap;

use crate::aws::{AliasTarget, Change, ChangeAction, RecordSet};
use crate::spec::{fqdn, RecordType, TrafficSplit, Weights};
use crate::state::{from_txt_values, to_txt_values, txt_holds, txt_name, Payload, RolloutState};
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

/// What exists at the split's name, classified. It borrows the listed records: every cycle
/// classifies every split, and copying them cost more than the rest of the classification.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<'a> {
    /// Owned weighted records by SetIdentifier.
    pub weighted: BTreeMap<&'a str, &'a RecordSet>,
    /// A plain record of our name and type that adoption will replace.
    pub plain: Option<&'a RecordSet>,
    /// The TXT record, if any.
    pub txt: Option<&'a RecordSet>,
    /// The state decoded from an owned TXT.
    pub state: Option<RolloutState>,
    /// Why an owned TXT could not be read as a state (then `state` is None and a new rollout
    /// starts from what Route53 shows).
    pub state_problem: Option<String>,
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
pub fn classify<'a>(
    split: &TrafficSplit,
    owner: &str,
    records: &[&'a RecordSet],
    targets: &BTreeMap<String, Target>,
) -> Result<Observed<'a>> {
    let spec = &split.spec.record;
    let name = fqdn(&spec.name);
    let txt_fqdn = txt_name(&name);
    let rtype = spec.record_type.as_str();

    let at_name: Vec<&'a RecordSet> = records.iter().copied().filter(|r| r.name == name).collect();
    let txts: Vec<&'a RecordSet> = records
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

    let ours: Vec<&'a RecordSet> = at_name
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
    let txt = txts.first().copied();
    let mut state = None;
    let mut state_problem = None;
    if let Some(t) = txt {
        let payload = from_txt_values(&t.values);
        let payload = Payload::parse(&payload);
        match payload.owner() {
            Some(o) if o == owner => {
                state = payload
                    .decode()
                    .map_err(|e| state_problem = Some(e))
                    .ok();
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

    let plain: Vec<&'a RecordSet> = ours
        .iter()
        .copied()
        .filter(|r| r.set_identifier.is_none())
        .collect();
    let weighted: Vec<&'a RecordSet> = ours
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
        plain_rec = Some(*p);
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
        // Route53 answers a set whose weights are all 0 evenly across its records.
        all.extend(crate::weights::route53_shares(&raw_weights));
        crate::weights::normalize(&all)
    };

    Ok(Observed {
        weighted: weighted
            .iter()
            .map(|r| (r.set_identifier.as_deref().unwrap_or_default(), *r))
            .collect(),
        plain: plain_rec,
        txt,
        state,
        state_problem,
        weights,
        raw_weights,
    })
}

/// Whether two targets send traffic to the same place (ignoring evaluateTargetHealth and the
/// `dualstack.` prefix ELB alias names may carry).
pub(crate) fn same_destination(a: &Target, b: &Target) -> bool {
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

pub(crate) fn plain_target(r: &RecordSet) -> Option<Target> {
    if let Some(a) = &r.alias {
        return Some(Target::Alias(a.clone()));
    }
    if r.rtype == "CNAME" {
        return r.values.first().map(|v| Target::Cname(fqdn(v)));
    }
    None
}

/// TTL of the state TXT record.
const STATE_TXT_TTL: i64 = 300;

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

/// The record a backend must have, borrowed from the document and the resolved target: compared
/// with the existing record without allocating (every cycle compares every record), built only
/// when it must be written.
struct Desired<'a> {
    name: &'a str,
    rtype: &'static str,
    backend: &'a str,
    weight: u32,
    /// The alias, with the evaluateTargetHealth to write.
    alias: Option<(&'a AliasTarget, bool)>,
    cname: Option<&'a str>,
    ttl: Option<i64>,
}

impl<'a> Desired<'a> {
    fn new(
        split: &TrafficSplit,
        name: &'a str,
        backend: &'a str,
        weight: u32,
        target: &'a Target,
    ) -> Self {
        let spec = &split.spec.record;
        let (alias, cname, ttl) = match target {
            // Route53 refuses EvaluateTargetHealth=true on an alias to CloudFront (moto accepts
            // it), whoever asked for it.
            Target::Alias(a) if a.hosted_zone_id.eq_ignore_ascii_case(CLOUDFRONT_ZONE) => {
                (Some((a, false)), None, None)
            }
            Target::Alias(a) => (Some((a, a.evaluate_target_health)), None, None),
            Target::Cname(c) => (None, Some(c.as_str()), Some(spec.ttl)),
        };
        Desired {
            name,
            rtype: spec.record_type.as_str(),
            backend,
            weight,
            alias,
            cname,
            ttl,
        }
    }

    /// Whether `e` is already this record (a health check attached by hand is kept either way).
    fn is(&self, e: &RecordSet) -> bool {
        let RecordSet {
            name,
            rtype,
            set_identifier,
            weight,
            ttl,
            alias,
            values,
            health_check_id: _,
            other_routing,
        } = e;
        let alias_same = match (alias, self.alias) {
            (None, None) => true,
            (Some(x), Some((a, eth))) => {
                x.dns_name == a.dns_name
                    && x.hosted_zone_id == a.hosted_zone_id
                    && x.evaluate_target_health == eth
            }
            _ => false,
        };
        name == self.name
            && rtype == self.rtype
            && set_identifier.as_deref() == Some(self.backend)
            && *weight == Some(i64::from(self.weight))
            && *ttl == self.ttl
            && alias_same
            && values.iter().map(String::as_str).eq(self.cname)
            && !other_routing
    }

    fn record(&self, existing: Option<&RecordSet>) -> RecordSet {
        RecordSet {
            name: self.name.to_string(),
            rtype: self.rtype.to_string(),
            set_identifier: Some(self.backend.to_string()),
            weight: Some(i64::from(self.weight)),
            ttl: self.ttl,
            alias: self.alias.map(|(a, eth)| AliasTarget {
                evaluate_target_health: eth,
                ..a.clone()
            }),
            values: self.cname.map(str::to_string).into_iter().collect(),
            // A health check someone attached by hand stays attached.
            health_check_id: existing.and_then(|e| e.health_check_id.clone()),
            other_routing: false,
        }
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
    obs: &Observed<'_>,
    weights: &Weights,
    state: &RolloutState,
    targets: &BTreeMap<String, Target>,
    intended: &Weights,
) -> Result<Vec<PlannedChange>> {
    let mut out = Vec::new();
    if let Some(p) = &obs.plain {
        out.push(PlannedChange {
            change: Change {
                action: ChangeAction::Delete,
                record: (*p).clone(),
            },
            why: "adopt: replace the plain record by the weighted set".into(),
            drift: false,
        });
    }
    let name = fqdn(&split.spec.record.name);
    for b in &split.spec.backends {
        let w = weights.get(&b.name).copied().unwrap_or(0);
        let Some(target) = targets.get(&b.name) else {
            return Err(Error::NotFound(format!(
                "no target resolved for backend {}",
                b.name
            )));
        };
        let existing = obs.weighted.get(b.name.as_str()).copied();
        let desired = Desired::new(split, &name, &b.name, w, target);
        match existing {
            Some(e) if desired.is(e) => {}
            Some(e) => {
                let want = desired.record(existing);
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
                    record: desired.record(None),
                },
                why: format!("create weight {w} -> {target}"),
                drift: obs.state.is_some(),
            }),
        }
    }
    // The guard reads the set as it will be after the batch, record by record: a map that names
    // no backend (or only unknown ones) would otherwise write 0 everywhere and pass.
    let after = || {
        split
            .spec
            .backends
            .iter()
            .map(|b| (b.name.as_str(), weights.get(&b.name).copied().unwrap_or(0)))
    };
    if after().all(|(_, w)| w == 0) {
        return Err(Error::Unsafe(format!(
            "split {} would set every weight to 0",
            split.name()
        )));
    }
    if let Some((b, w)) = after().find(|&(_, w)| w > 255) {
        return Err(Error::Unsafe(format!(
            "weight {w} for {b} exceeds Route53's maximum of 255"
        )));
    }

    // Compared with what was read as is; written with the next write count.
    let txt_same = obs
        .txt
        .as_ref()
        .is_some_and(|t| t.ttl == Some(STATE_TXT_TTL) && txt_holds(&t.values, &state.encode()));
    if txt_same && out.is_empty() {
        return Ok(out);
    }
    let written = RolloutState {
        rev: state.rev.saturating_add(1),
        ..state.clone()
    };
    let txt_record = RecordSet {
        name: txt_name(&name),
        rtype: "TXT".into(),
        set_identifier: None,
        weight: None,
        ttl: Some(STATE_TXT_TTL),
        alias: None,
        values: to_txt_values(&written.encode()),
        health_check_id: None,
        other_routing: false,
    };
    // Fenced write: the TXT is replaced by DELETE of exactly what was read plus CREATE, in the
    // batch that carries the weights. Route53 rejects the whole batch when the TXT changed since
    // it was read (a second controller, a hand edit), so no decision made on a stale read is ever
    // applied. The fence also guards a batch whose state is otherwise unchanged (a drift
    // correction): the write count alone changes.
    let why = if txt_same {
        "state: unchanged (fence)".to_string()
    } else {
        format!("state: {} step {} ", phase_word(state), state.step)
            .trim_end()
            .to_string()
    };
    if let Some(old) = obs.txt {
        out.push(PlannedChange {
            change: Change {
                action: ChangeAction::Delete,
                record: old.clone(),
            },
            why: why.clone(),
            drift: false,
        });
    }
    out.push(PlannedChange {
        change: Change {
            action: ChangeAction::Create,
            record: txt_record,
        },
        why,
        drift: false,
    });
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
            rev: 0,
            retiring: BTreeMap::new(),
            control: None,
        }
    }

    fn weighted_to(backend: &str, weight: i64, target: &Target) -> RecordSet {
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

    use crate::rollout::{self, EcsObs, GateSummary};
    use crate::spec::OnGateFailure;
    use crate::state::{Drain, Phase};
    use proptest::prelude::*;

    const NOW_MS: u64 = 1_764_000_000_000;

    fn w(pairs: &[(&str, u32)]) -> Weights {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn targets() -> BTreeMap<String, Target> {
        ["lambda", "fargate"]
            .into_iter()
            .map(|b| {
                (
                    b.to_string(),
                    Target::Alias(AliasTarget {
                        dns_name: format!("{b}.lb.example."),
                        hosted_zone_id: "ZLB".into(),
                        evaluate_target_health: false,
                    }),
                )
            })
            .collect()
    }

    fn weighted(split: &TrafficSplit, backend: &str, weight: i64) -> RecordSet {
        RecordSet {
            name: fqdn(&split.spec.record.name),
            ..weighted_to(backend, weight, &targets()[backend])
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
            weighted_to("lambda", 50, &lambda),
            weighted_to("fargate", 50, &old_alb),
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
        // The record itself, plus the fenced state write (DELETE + CREATE) every batch carries.
        let written: Vec<_> = changes
            .iter()
            .filter(|c| c.change.record.rtype != "TXT")
            .collect();
        assert_eq!(written.len(), 1, "{changes:?}");
        let c = written[0];
        assert_eq!(c.change.action, ChangeAction::Upsert);
        assert_eq!(
            c.change.record.alias.as_ref().map(|a| a.dns_name.as_str()),
            Some("dualstack.alb-1.elb.amazonaws.com.")
        );
        assert!(!c.drift, "same load balancer, not a hand edit: {c:?}");

        // Another load balancer is a hand edit.
        let records = [
            weighted_to("lambda", 50, &lambda),
            weighted_to(
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

    fn txt(split: &TrafficSplit, payload: &str, ttl: i64) -> RecordSet {
        RecordSet {
            name: txt_name(&fqdn(&split.spec.record.name)),
            rtype: "TXT".into(),
            set_identifier: None,
            weight: None,
            ttl: Some(ttl),
            alias: None,
            values: to_txt_values(payload),
            health_check_id: None,
            other_routing: false,
        }
    }

    /// Route53's rules for a change batch, written from its documentation (not from the code
    /// under test): all or nothing; DELETE needs a record with exactly the given values; CREATE
    /// needs none of that name, type and set identifier; UPSERT replaces.
    fn apply_like_route53(zone: &mut Vec<RecordSet>, changes: &[Change]) -> Result<(), String> {
        let mut next = zone.clone();
        let key = |r: &RecordSet| (r.name.clone(), r.rtype.clone(), r.set_identifier.clone());
        for c in changes {
            let at = next.iter().position(|r| key(r) == key(&c.record));
            match (c.action, at) {
                (ChangeAction::Delete, Some(i)) if next[i] == c.record => {
                    next.remove(i);
                }
                (ChangeAction::Delete, _) => {
                    return Err(format!(
                        "Tried to delete {} but the values do not match",
                        c.record.name
                    ))
                }
                (ChangeAction::Create, Some(_)) => {
                    return Err(format!(
                        "Tried to create {} but it already exists",
                        c.record.name
                    ))
                }
                (ChangeAction::Create, None) => next.push(c.record.clone()),
                (ChangeAction::Upsert, Some(i)) => next[i] = c.record.clone(),
                (ChangeAction::Upsert, None) => next.push(c.record.clone()),
            }
        }
        *zone = next;
        Ok(())
    }

    fn plan_once(
        split: &TrafficSplit,
        zone: &[RecordSet],
        ecs: &BTreeMap<String, EcsObs>,
        now_ms: u64,
    ) -> Vec<Change> {
        let refs: Vec<&RecordSet> = zone.iter().collect();
        let obs = classify(split, "test", &refs, &targets()).expect("ours");
        let d = rollout::decide(&rollout::Inputs {
            split,
            owner: "test",
            stored: obs.state.as_ref(),
            observed: obs.weights.as_ref(),
            ecs,
            gates: &GateSummary::none(),
            now_ms,
            window: None,
        });
        let intended = obs
            .state
            .as_ref()
            .map(|s| s.current.clone())
            .unwrap_or_default();
        let Some(write) = d.write else { return vec![] };
        route53_changes(split, &obs, &write, &d.state, &targets(), &intended)
            .expect("plans")
            .into_iter()
            .map(|c| c.change)
            .collect()
    }

    #[test]
    fn a_hand_edit_between_read_and_write_fails_the_batch() {
        let split = TrafficSplit::test().with_steps(&[50, 100], 60);
        let full: BTreeMap<String, EcsObs> = [(
            "fargate".to_string(),
            EcsObs {
                desired: 20,
                running: 20,
                stable: true,
                ..EcsObs::default()
            },
        )]
        .into();
        let mut zone = vec![
            weighted(&split, "lambda", 100),
            weighted(&split, "fargate", 0),
        ];
        // No TXT yet: CREATE alone, which fails if someone created one meanwhile.
        let first = plan_once(&split, &zone, &full, NOW_MS);
        let txts: Vec<&Change> = first.iter().filter(|c| c.record.rtype == "TXT").collect();
        assert_eq!(txts.len(), 1);
        assert_eq!(txts[0].action, ChangeAction::Create);
        apply_like_route53(&mut zone, &first).unwrap();
        let read = zone.iter().find(|r| r.rtype == "TXT").cloned().unwrap();

        // The next step is planned on that read; the DELETE repeats exactly what was read.
        let later = NOW_MS + 61_000;
        let second = plan_once(&split, &zone, &full, later);
        let del: Vec<&Change> = second
            .iter()
            .filter(|c| c.record.rtype == "TXT" && c.action == ChangeAction::Delete)
            .collect();
        assert_eq!(del.len(), 1);
        assert_eq!(
            del[0].record, read,
            "DELETE carries the exact value and TTL read"
        );
        assert!(second
            .iter()
            .all(|c| c.action != ChangeAction::Upsert || c.record.rtype != "TXT"));

        // A hand edit lands between read and write: the whole batch fails, weights included.
        let mut edited = zone.clone();
        for r in edited.iter_mut().filter(|r| r.rtype == "TXT") {
            r.values = to_txt_values(&from_txt_values(&r.values).replace("since=", "since=1"));
        }
        let before = edited.clone();
        assert!(apply_like_route53(&mut edited, &second).is_err());
        assert_eq!(edited, before, "nothing applied");
        // Without the edit the same batch goes through.
        apply_like_route53(&mut zone, &second).unwrap();
    }

    #[test]
    fn the_zero_guard_reads_the_weights_written() {
        let split = TrafficSplit::test();
        let zone = [
            weighted(&split, "lambda", 100),
            weighted(&split, "fargate", 0),
        ];
        let refs: Vec<&RecordSet> = zone.iter().collect();
        let obs = classify(&split, "test", &refs, &targets()).unwrap();
        let state = crate::state::RolloutState {
            owner: "test".into(),
            split: "api".into(),
            generation: "x".into(),
            phase: Phase::Complete,
            step: 1,
            since: 1,
            start: w(&[("lambda", 100), ("fargate", 0)]),
            current: w(&[("lambda", 100), ("fargate", 0)]),
            drains: BTreeMap::new(),
            rev: 0,
            capacity_since: None,
            autoscaling: BTreeMap::new(),
            retiring: BTreeMap::new(),
            control: None,
        };
        for bad in [
            w(&[("ghost", 100)]),
            w(&[("lambda", 0), ("fargate", 0)]),
            w(&[]),
            w(&[("lambda", 256), ("fargate", 0)]),
        ] {
            let r = route53_changes(&split, &obs, &bad, &state, &targets(), &Weights::new());
            assert!(matches!(r, Err(Error::Unsafe(_))), "{bad:?}: {r:?}");
        }
        // An all-zero set as read is equal shares, not "nothing there".
        let zero = [
            weighted(&split, "lambda", 0),
            weighted(&split, "fargate", 0),
        ];
        let refs: Vec<&RecordSet> = zero.iter().collect();
        let obs = classify(&split, "test", &refs, &targets()).unwrap();
        assert_eq!(obs.weights, Some(w(&[("lambda", 50), ("fargate", 50)])));
    }

    #[derive(Debug, Clone)]
    struct StoredCase {
        owner: &'static str,
        split: &'static str,
        /// 0 current hash, 1 legacy hash, 2 something else.
        gen: u8,
        phase: Phase,
        step: usize,
        since: u64,
        start: Weights,
        current: Weights,
        drains: BTreeMap<String, Drain>,
        rev: u64,
        /// Replace the payload after `heritage=...,owner=test,` by this text.
        garbage: Option<String>,
    }

    fn any_weights() -> impl Strategy<Value = Weights> {
        prop::collection::btree_map(
            prop::sample::select(vec!["lambda".to_string(), "fargate".into(), "ghost".into()]),
            prop_oneof![4 => 0u32..=100, 1 => any::<u32>()],
            0..4,
        )
    }

    fn any_stored() -> impl Strategy<Value = StoredCase> {
        let now = NOW_MS / 1000;
        (
            (
                prop::sample::select(vec!["test", "test", "test", "other"]),
                prop::sample::select(vec!["api", "api", "api", "web"]),
                0u8..3,
                prop::sample::select(vec![Phase::Progressing, Phase::Complete, Phase::RolledBack]),
                prop_oneof![8 => 0usize..6, 1 => any::<usize>()],
                prop_oneof![4 => now - 1000..now + 1000, 1 => any::<u64>()],
            ),
            (
                any_weights(),
                any_weights(),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "lambda".to_string(),
                        "fargate".into(),
                        "ghost".into(),
                    ]),
                    (
                        prop_oneof![0u32..=100, any::<u32>()],
                        prop_oneof![now - 500..now + 500, any::<u64>()],
                    )
                        .prop_map(|(share, until)| Drain { share, until }),
                    0..3,
                ),
                prop::option::weighted(0.1, "[ -~]{0,80}"),
                prop_oneof![0u64..10, any::<u64>()],
            ),
        )
            .prop_map(
                |(
                    (owner, split, gen, phase, step, since),
                    (start, current, drains, garbage, rev),
                )| {
                    StoredCase {
                        owner,
                        split,
                        gen,
                        phase,
                        step,
                        since,
                        start,
                        current,
                        drains,
                        rev,
                        garbage,
                    }
                },
            )
    }

    fn any_document() -> impl Strategy<Value = TrafficSplit> {
        (
            prop_oneof![
                4 => (0u32..=100).prop_map(|l| vec![("lambda", l), ("fargate", 100 - l)]),
                1 => (0u32..300, 0u32..300).prop_map(|(l, f)| vec![("lambda", l), ("fargate", f)]),
                1 => Just(vec![("ghost", 100)]),
            ],
            prop::option::of(prop::collection::vec(0u32..=120, 0..5)),
            0u64..600,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(weights, steps, interval, hold, paused, swap)| {
                let mut split = TrafficSplit::test().with_weights(&weights);
                if let Some(steps) = steps {
                    split = split.with_steps(&steps, interval).with_rollout(|r| {
                        r.paused = paused;
                        if hold {
                            r.on_gate_failure = OnGateFailure::Hold;
                        }
                    });
                }
                if swap {
                    split.spec.backends.reverse();
                }
                split
            })
    }

    fn any_gates() -> impl Strategy<Value = GateSummary> {
        (any::<bool>(), prop::option::weighted(0.2, "[a-z]{1,8}")).prop_map(|(passing, tripped)| {
            GateSummary {
                all_passing: passing && tripped.is_none(),
                failing: if passing {
                    vec![]
                } else {
                    vec!["g: failing".into()]
                },
                tripped: tripped.map(|g| (g, "bad".into())),
                ..GateSummary::default()
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Arbitrary stored states x observations x documents through `decide` and the planner:
        /// no panic, and nothing written that Route53 would answer badly: never every weight 0,
        /// never a weight above 255, never a weight raised above what Route53 answers before ECS
        /// can carry it, and the state TXT only ever fenced (DELETE of what was read + CREATE).
        #[test]
        fn nothing_unsafe_is_written_from_any_state(
            split in any_document(),
            stored in prop::option::of(any_stored()),
            observed in prop::option::of(prop::collection::btree_map(
                prop::sample::select(vec!["lambda".to_string(), "fargate".into()]),
                prop_oneof![0i64..=3, 0i64..=255],
                1..3,
            )),
            ecs in prop::option::of((0i32..30, 0i32..30, any::<bool>())),
            gates in any_gates(),
            now_offset_ms in 0u64..2_000_000,
        ) {
            let now_ms = NOW_MS + now_offset_ms;
            let mut zone: Vec<RecordSet> = observed
                .iter()
                .flatten()
                .map(|(b, &wt)| weighted(&split, b, wt))
                .collect();
            if let Some(s) = &stored {
                let state = crate::state::RolloutState {
                    owner: s.owner.into(),
                    split: s.split.into(),
                    generation: match s.gen {
                        0 => rollout::generation(&split),
                        1 => {
                            // The legacy hash: backends in document order.
                            let mut h = sha2::Sha256::new();
                            use sha2::Digest;
                            for (k, v) in &split.spec.weights { h.update(format!("w:{k}={v};")); }
                            for st in split.spec.steps() { h.update(format!("s:{st};")); }
                            for b in &split.spec.backends { h.update(format!("b:{};", b.name)); }
                            h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
                        }
                        _ => "0123456789ab".into(),
                    },
                    phase: s.phase,
                    step: s.step,
                    since: s.since,
                    start: s.start.clone(),
                    current: s.current.clone(),
                    drains: s.drains.clone(),
                    rev: s.rev,
                    capacity_since: None,
                    autoscaling: BTreeMap::new(),
                    retiring: BTreeMap::new(),
                    control: None,
                };
                let payload = match &s.garbage {
                    Some(g) => format!("heritage=trafficshift,owner=test,{g}"),
                    None => state.encode(),
                };
                zone.push(txt(&split, &payload, 300));
            }
            let ecs_obs: BTreeMap<String, EcsObs> = ecs
                .map(|(desired, running, stable)| ("fargate".to_string(), EcsObs { desired, running, stable, ..EcsObs::default() }))
                .into_iter()
                .collect();

            let refs: Vec<&RecordSet> = zone.iter().collect();
            // A conflict (another owner, another split) is reported and nothing is written.
            let Ok(obs) = classify(&split, "test", &refs, &targets()) else { return Ok(()); };
            let d = rollout::decide(&rollout::Inputs {
                split: &split,
                owner: "test",
                stored: obs.state.as_ref(),
                observed: obs.weights.as_ref(),
                ecs: &ecs_obs,
                gates: &gates,
                now_ms,
                window: None,
            });
            let Some(write) = &d.write else { return Ok(()); };
            let intended = obs.state.as_ref().map(|s| s.current.clone()).unwrap_or_default();
            let planned = route53_changes(&split, &obs, write, &d.state, &targets(), &intended);
            let valid_doc = crate::spec::validate::check(&split).is_empty();
            prop_assert!(planned.is_ok() || !valid_doc, "a valid document must plan: {planned:?}");
            let Ok(planned) = planned else { return Ok(()); };
            let changes: Vec<Change> = planned.into_iter().map(|c| c.change).collect();
            prop_assert!(check_batch(&changes).is_ok());
            if changes.is_empty() {
                return Ok(());
            }

            // The set as Route53 holds it after the batch.
            let mut after = zone.clone();
            apply_like_route53(&mut after, &changes).map_err(TestCaseError::fail)?;
            let set: BTreeMap<String, i64> = after
                .iter()
                .filter(|r| r.rtype == "A")
                .map(|r| (r.set_identifier.clone().unwrap_or_default(), r.weight.unwrap_or(0)))
                .collect();
            prop_assert!(set.values().any(|&x| x > 0), "all weights 0: {set:?}");
            prop_assert!(set.values().all(|&x| (0..=255).contains(&x)), "out of range: {set:?}");

            // Capacity: fargate (20 tasks at full traffic) raised above the share Route53 answered
            // (rounded up to a whole percent) only with ceil(20 * share / 100) tasks stable.
            let total: i64 = set.values().sum();
            prop_assert_eq!(total, 100, "{:?}", set);
            let new = set.get("fargate").copied().unwrap_or(0);
            let before: Vec<(&String, i64)> = observed.iter().flatten().map(|(k, &v)| (k, v)).collect();
            let old_ceil = match before.iter().find(|(k, _)| *k == "fargate") {
                None => 0,
                Some(_) => {
                    let sum: i64 = before.iter().map(|(_, v)| v).sum();
                    if sum == 0 {
                        // Route53 answers an all-zero set evenly.
                        (100 + before.len() as i64 - 1) / before.len() as i64
                    } else {
                        let f = before.iter().find(|(k, _)| *k == "fargate").unwrap().1;
                        (100 * f + sum - 1) / sum
                    }
                }
            };
            if new > old_ceil {
                let need = (20 * new + 99) / 100;
                let ok = ecs.is_some_and(|(desired, running, stable)| {
                    i64::from(desired) >= need && i64::from(running) >= need && stable
                });
                prop_assert!(ok, "fargate raised {old_ceil}% -> {new}% with ECS {ecs:?} (needs {need})");
            }

            // The state TXT is only ever written fenced.
            let txt_changes: Vec<&Change> = changes.iter().filter(|c| c.record.rtype == "TXT").collect();
            let read = zone.iter().find(|r| r.rtype == "TXT");
            match read {
                Some(old) => {
                    prop_assert_eq!(txt_changes.len(), 2);
                    prop_assert_eq!(txt_changes[0].action, ChangeAction::Delete);
                    prop_assert_eq!(&txt_changes[0].record, old);
                    prop_assert_eq!(txt_changes[1].action, ChangeAction::Create);
                }
                None => {
                    prop_assert_eq!(txt_changes.len(), 1);
                    prop_assert_eq!(txt_changes[0].action, ChangeAction::Create);
                }
            }
        }
    }
}
