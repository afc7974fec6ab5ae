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
    let mut state_problem = None;
    if let Some(t) = &txt {
        let payload = from_txt_values(&t.values);
        match RolloutState::owner_of(&payload) {
            Some(o) if o == owner => {
                state = RolloutState::decode_checked(&payload)
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
        // Route53 answers a set whose weights are all 0 evenly across its records.
        all.extend(crate::weights::route53_shares(&raw_weights));
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
        state_problem,
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
                    || e.alias != want.alias
                    || e.values != want.values;
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
    // The guard reads the set as it will be after the batch, record by record: a map that names
    // no backend (or only unknown ones) would otherwise write 0 everywhere and pass.
    let after: Vec<(&str, u32)> = split
        .spec
        .backends
        .iter()
        .map(|b| (b.name.as_str(), weights.get(&b.name).copied().unwrap_or(0)))
        .collect();
    if after.iter().all(|&(_, w)| w == 0) {
        return Err(Error::Unsafe(format!(
            "split {} would set every weight to 0",
            split.name()
        )));
    }
    if let Some((b, w)) = after.iter().find(|&&(_, w)| w > 255) {
        return Err(Error::Unsafe(format!(
            "weight {w} for {b} exceeds Route53's maximum of 255"
        )));
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
    if txt_same && out.is_empty() {
        return Ok(out);
    }
    // Fenced write: the TXT is replaced by DELETE of exactly what was read plus CREATE, in the
    // batch that carries the weights. Route53 rejects the whole batch when the TXT changed since
    // it was read (a second controller, a hand edit), so no decision made on a stale read is ever
    // applied. The fence also guards a batch whose state is unchanged (a drift correction).
    let why = if txt_same {
        "state: unchanged (fence)".to_string()
    } else {
        format!("state: {} step {} ", phase_word(state), state.step)
            .trim_end()
            .to_string()
    };
    if let Some(old) = &obs.txt {
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
