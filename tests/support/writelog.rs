//! Checking what the controller wrote, from the fault proxy's JSONL log only (never from the
//! controller's own opinion): the Route53 change batches and ECS UpdateService calls it sent, in
//! the order the proxy finished them, replayed on top of the zones' initial listings.
//!
//! Include with `#[path = "support/writelog.rs"] mod writelog;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

/// Weights by SetIdentifier.
pub type Weights = BTreeMap<String, i64>;

/// One line of the proxy log.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Line number: the order the proxy finished the requests in.
    pub seq: usize,
    /// Unix time (seconds, ms precision) the proxy received the request.
    pub time: f64,
    pub service: String,
    pub operation: String,
    pub path: String,
    pub fault: Option<String>,
    pub status: Option<i64>,
    /// Status moto answered with; None when the request never reached moto.
    pub upstream_status: Option<i64>,
    /// Request body (writes only).
    pub body: Option<String>,
    /// What the AWS layer itself served for each ECS service ("cluster/service") when it received
    /// this Route53 change: desired, running, pending, deployments, rollout_state and per target
    /// group healthy/initial/draining/unhealthy counts. None without the layer's ECS behaviours.
    pub capacity: Option<Value>,
}

impl Entry {
    /// Moto accepted (and so applied) the request.
    pub fn accepted(&self) -> bool {
        self.upstream_status == Some(200)
    }
}

/// Parse the proxy's JSONL log.
pub fn read(path: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read proxy log {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(seq, line)| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("proxy log line {seq} is not JSON ({e}): {line}"));
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Entry {
                seq,
                time: parse_time(v["time"].as_str().unwrap_or_default()),
                service: s("service"),
                operation: s("operation"),
                path: s("path"),
                fault: v["fault"].as_str().map(str::to_string),
                status: v["status"].as_i64(),
                upstream_status: v["upstream_status"].as_i64(),
                body: v["body"].as_str().map(str::to_string),
                capacity: v.get("capacity").filter(|c| c.is_object()).cloned(),
            }
        })
        .collect()
}

fn parse_time(s: &str) -> f64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("bad proxy log time {s:?}: {e}"));
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// Lower-case with a trailing dot.
pub fn fqdn(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') {
        n
    } else {
        format!("{n}.")
    }
}

/// `/hostedzone/Z1` or `Z1` -> `Z1`.
pub fn bare_zone_id(id: &str) -> String {
    id.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(id)
        .to_string()
}

/// One change of a ChangeResourceRecordSets batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RrChange {
    pub action: String,
    pub name: String,
    pub rtype: String,
    pub set_id: Option<String>,
    pub weight: Option<i64>,
    pub values: Vec<String>,
}

/// A ChangeResourceRecordSets request.
#[derive(Debug, Clone)]
pub struct Batch {
    pub seq: usize,
    pub time: f64,
    pub zone_id: String,
    pub accepted: bool,
    pub upstream_status: Option<i64>,
    pub changes: Vec<RrChange>,
    /// The layer's ECS snapshot when the batch reached it (see `Entry::capacity`).
    pub capacity: Option<Value>,
}

/// An ECS UpdateService request.
#[derive(Debug, Clone)]
pub struct EcsUpdate {
    pub seq: usize,
    pub time: f64,
    pub cluster: String,
    pub service: String,
    pub desired: Option<i64>,
    pub accepted: bool,
    pub upstream_status: Option<i64>,
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let ent = &rest[1..end];
        let ch = match ent {
            "quot" => Some('"'),
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "apos" => Some('\''),
            _ if ent.starts_with("#x") => u32::from_str_radix(&ent[2..], 16)
                .ok()
                .and_then(char::from_u32),
            _ if ent.starts_with('#') => ent[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Text of every `<tag>...</tag>` in `s`, in order (the SDK writes no attributes on these).
fn tags(s: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(unescape(&after[..j]));
        rest = &after[j + close.len()..];
    }
    out
}

fn tag(s: &str, t: &str) -> Option<String> {
    tags(s, t).into_iter().next()
}

/// Parse a ChangeResourceRecordSets request body.
pub fn parse_changes(body: &str) -> Vec<RrChange> {
    // `<Change>` elements; `<Changes>` also starts with `<Change` so split on the exact tag.
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("<Change>") {
        let after = &rest[i + "<Change>".len()..];
        let end = after.find("</Change>").unwrap_or(after.len());
        let c = &after[..end];
        out.push(RrChange {
            action: tag(c, "Action").unwrap_or_default(),
            name: fqdn(&tag(c, "Name").unwrap_or_default()),
            rtype: tag(c, "Type").unwrap_or_default(),
            set_id: tag(c, "SetIdentifier"),
            weight: tag(c, "Weight").and_then(|w| w.trim().parse().ok()),
            values: tags(c, "Value"),
        });
        rest = &after[end..];
    }
    out
}

/// The Route53 change batches of the log, in log order.
pub fn batches(entries: &[Entry]) -> Vec<Batch> {
    entries
        .iter()
        .filter(|e| e.service == "route53" && e.operation == "ChangeResourceRecordSets")
        .map(|e| Batch {
            seq: e.seq,
            time: e.time,
            zone_id: zone_of_path(&e.path),
            accepted: e.accepted(),
            upstream_status: e.upstream_status,
            changes: parse_changes(e.body.as_deref().unwrap_or_default()),
            capacity: e.capacity.clone(),
        })
        .collect()
}

/// The hosted zone id in a Route53 request path.
fn zone_of_path(path: &str) -> String {
    let zone = path
        .split("/hostedzone/")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next())
        .unwrap_or_default();
    bare_zone_id(zone)
}

/// (seq, zone id, time) of every ListResourceRecordSets moto answered, in log order.
pub fn listings(entries: &[Entry]) -> Vec<(usize, String, f64)> {
    entries
        .iter()
        .filter(|e| e.service == "route53" && e.operation == "ListResourceRecordSets")
        .filter(|e| e.accepted())
        .map(|e| (e.seq, zone_of_path(&e.path), e.time))
        .collect()
}

/// The ECS UpdateService calls of the log, in log order.
pub fn ecs_updates(entries: &[Entry]) -> Vec<EcsUpdate> {
    entries
        .iter()
        .filter(|e| e.service == "ecs" && e.operation == "UpdateService")
        .map(|e| {
            let v: Value =
                serde_json::from_str(e.body.as_deref().unwrap_or("{}")).unwrap_or_default();
            EcsUpdate {
                seq: e.seq,
                time: e.time,
                cluster: v["cluster"].as_str().unwrap_or_default().to_string(),
                service: v["service"].as_str().unwrap_or_default().to_string(),
                desired: v["desiredCount"].as_i64(),
                accepted: e.accepted(),
                upstream_status: e.upstream_status,
            }
        })
        .collect()
}

/// The state TXT payload, parsed by the test (not by trafficshift).
#[derive(Debug, Clone, PartialEq)]
pub struct Txt {
    pub owner: String,
    pub split: String,
    pub gen: String,
    pub phase: String,
    pub step: usize,
    pub since: u64,
    pub start: Weights,
    pub cur: Weights,
}

fn parse_weights(s: &str) -> Option<Weights> {
    if s.is_empty() {
        return Some(Weights::new());
    }
    s.split(';')
        .map(|kv| {
            let (k, v) = kv.split_once(':')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Join TXT values (`"..." "..."` quoted strings) and parse the trafficshift payload.
pub fn parse_txt(values: &[String]) -> Option<Txt> {
    let payload: String = values
        .iter()
        .map(|v| v.replace("\" \"", "").replace('"', ""))
        .collect();
    let kv: BTreeMap<&str, &str> = payload
        .split(',')
        .filter_map(|p| p.split_once('='))
        .collect();
    if kv.get("heritage") != Some(&"trafficshift") {
        return None;
    }
    Some(Txt {
        owner: kv.get("owner")?.to_string(),
        split: kv.get("split")?.to_string(),
        gen: kv.get("gen")?.to_string(),
        phase: kv.get("phase")?.to_string(),
        step: kv.get("step")?.parse().ok()?,
        since: kv.get("since")?.parse().ok()?,
        start: parse_weights(kv.get("start")?)?,
        cur: parse_weights(kv.get("cur")?)?,
    })
}

/// A record as the replay keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rec {
    pub weight: Option<i64>,
    pub values: Vec<String>,
}

/// (name, type, set identifier or "").
pub type Key = (String, String, String);

/// Every zone's records, by zone id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Zones(pub BTreeMap<String, BTreeMap<Key, Rec>>);

impl Zones {
    /// Add a zone from a boto3 `list_resource_record_sets` listing.
    pub fn add_listing(&mut self, zone_id: &str, records: &[Value]) {
        let z = self.0.entry(bare_zone_id(zone_id)).or_default();
        for r in records {
            let key = (
                fqdn(r["Name"].as_str().unwrap_or_default()),
                r["Type"].as_str().unwrap_or_default().to_string(),
                r["SetIdentifier"].as_str().unwrap_or_default().to_string(),
            );
            let values = r["ResourceRecords"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v["Value"].as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default();
            z.insert(
                key,
                Rec {
                    weight: r["Weight"].as_i64(),
                    values,
                },
            );
        }
    }

    /// Apply a batch as Route53 would (the caller knows it was accepted).
    pub fn apply(&mut self, b: &Batch) {
        let z = self.0.entry(b.zone_id.clone()).or_default();
        for c in &b.changes {
            let key = (
                c.name.clone(),
                c.rtype.clone(),
                c.set_id.clone().unwrap_or_default(),
            );
            if c.action == "DELETE" {
                z.remove(&key);
            } else {
                z.insert(
                    key,
                    Rec {
                        weight: c.weight,
                        values: c.values.clone(),
                    },
                );
            }
        }
    }

    /// Weighted records at `name`: SetIdentifier -> weight.
    pub fn weights(&self, zone_id: &str, name: &str) -> Weights {
        let name = fqdn(name);
        self.0
            .get(zone_id)
            .map(|z| {
                z.iter()
                    .filter(|((n, _, s), r)| *n == name && !s.is_empty() && r.weight.is_some())
                    .map(|((_, _, s), r)| (s.clone(), r.weight.unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The parsed state TXT of a record name, if any.
    pub fn txt(&self, zone_id: &str, record: &str) -> Option<Txt> {
        let key = (
            format!("_trafficshift.{}", fqdn(record)),
            "TXT".to_string(),
            String::new(),
        );
        parse_txt(&self.0.get(zone_id)?.get(&key)?.values)
    }
}

/// `faultproxy.py` flags turning on the AWS layer's ECS behaviours, fast enough for a test: tasks
/// start one per 0.2 s, a new target is `initial` for 0.5 s, a stopped one drains for 1 s. The layer
/// then logs, with every ChangeResourceRecordSets, what it served (`Entry::capacity`), which is
/// what the capacity-before-traffic check reads.
pub const LAYER_ECS: &[&str] = &[
    "--task-start",
    "0.2",
    "--health-check-seconds",
    "0.5",
    "--deregistration-delay",
    "1",
];

/// Tasks by share, written out by hand: `(highest share, tasks)` rows in increasing order; a share
/// needs the tasks of the first row whose highest share is at least it.
pub type TaskTable = &'static [(i64, i64)];

/// The tasks of `share` in `table` (panics on a share the table does not cover).
pub fn tasks_in(table: TaskTable, share: i64) -> i64 {
    table
        .iter()
        .find(|(upto, _)| share <= *upto)
        .map(|(_, n)| *n)
        .unwrap_or_else(|| panic!("no task count written down for a {share}% share"))
}

/// FleetSplit documents (`tasksAtFullTraffic: 8, minTasks: 1`): 8 tasks at 100%, one per
/// 12.5% started, at least one.
pub const FLEET_TASKS: TaskTable = &[
    (12, 1),
    (25, 2),
    (37, 3),
    (50, 4),
    (62, 5),
    (75, 6),
    (87, 7),
    (100, 8),
];

/// The scenario document (`tasksAtFullTraffic: 20, minTasks: 2, maxTasks: 40`): one task per 5%
/// started, at least two.
pub const SCENARIO_TASKS: TaskTable = &[
    (10, 2),
    (15, 3),
    (20, 4),
    (25, 5),
    (30, 6),
    (35, 7),
    (40, 8),
    (45, 9),
    (50, 10),
    (55, 11),
    (60, 12),
    (65, 13),
    (70, 14),
    (75, 15),
    (80, 16),
    (85, 17),
    (90, 18),
    (95, 19),
    (100, 20),
];

/// Why the layer's snapshot of one service (an Entry's `capacity[cluster/service]`) does not serve
/// `need` tasks, or None when it does. Serving, as the README promises: desiredCount at least
/// `need`, at least `need` tasks running and none short of desiredCount, one deployment whose
/// rollout is COMPLETED (stable), and at least `need` healthy targets in every target group.
pub fn not_serving(snap: &Value, need: i64) -> Option<String> {
    let n = |k: &str| snap[k].as_i64();
    let (Some(desired), Some(running)) = (n("desired"), n("running")) else {
        return Some(format!(
            "no desired/running counts in the layer's snapshot {snap}"
        ));
    };
    let mut why = Vec::new();
    if desired < need {
        why.push(format!("desiredCount {desired} < {need}"));
    }
    if running < need || running < desired {
        why.push(format!(
            "running {running} (desired {desired}, need {need})"
        ));
    }
    let deployments = n("deployments").unwrap_or(0);
    let state = snap["rollout_state"].as_str().unwrap_or("?");
    if deployments != 1 || state != "COMPLETED" {
        why.push(format!(
            "not stable ({deployments} deployment(s), rollout {state})"
        ));
    }
    if let Some(tgs) = snap["target_groups"].as_object() {
        for (tg, c) in tgs {
            let healthy = c["healthy"].as_i64().unwrap_or(0);
            if healthy < need {
                let tg = tg.rsplit(':').next().unwrap_or(tg);
                why.push(format!("{healthy}/{need} healthy targets in {tg}"));
            }
        }
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Whether `w` is `start + (target - start) * pct/100` rounded: every value within 1 of the exact
/// one (equal when exact is an integer), the same backends, a sum of 100.
pub fn is_step(w: &Weights, start: &Weights, target: &Weights, pct: u32) -> bool {
    if w.keys().collect::<Vec<_>>() != target.keys().collect::<Vec<_>>() {
        return false;
    }
    if w.values().sum::<i64>() != 100 {
        return false;
    }
    target.iter().all(|(k, &t)| {
        let s = start.get(k).copied().unwrap_or(0);
        // Hundredths of a percent: exact is an integer.
        let exact = s * 100 + (t - s) * i64::from(pct);
        (w[k] * 100 - exact).abs() < 100
    })
}

/// An ECS backend of a split, for the capacity-before-traffic check.
#[derive(Debug, Clone)]
pub struct EcsCheck {
    pub backend: String,
    pub cluster: String,
    pub service: String,
    /// Tasks the backend needs by share, written out (e.g. [`FLEET_TASKS`]).
    pub tasks: TaskTable,
}

/// What the checker knows about a split.
#[derive(Debug, Clone)]
pub struct SplitCheck {
    pub name: String,
    /// Record name (fully qualified).
    pub record: String,
    pub zone_id: String,
    /// The weights the rollout starts from (what was provisioned).
    pub start: Weights,
    pub target: Weights,
    /// The rollout's steps in percent, ending at 100 (`[100]` without a rollout).
    pub steps: Vec<u32>,
    pub ecs: Option<EcsCheck>,
    /// (interval, tolerance) in seconds: check that the cycles writing consecutive steps (after
    /// the first) started at least interval - tolerance apart, by the proxy's clock. A cycle
    /// starts with its zone listing: its time is that of the last accepted
    /// ListResourceRecordSets of the zone before the batch (the batch's own time without one).
    pub hold: Option<(f64, f64)>,
}

/// One accepted write touching a split, after replay.
#[derive(Debug, Clone)]
pub struct Applied {
    pub seq: usize,
    pub time: f64,
    pub weights: Weights,
    pub txt: Option<Txt>,
    /// Index into `[0] + steps` the weights match.
    pub index: usize,
}

/// The checker's findings.
#[derive(Debug, Default)]
pub struct Outcome {
    pub violations: Vec<String>,
    pub applied: BTreeMap<String, Vec<Applied>>,
    pub accepted_batches: usize,
    pub failed_batches: usize,
    pub ecs_updates: usize,
    /// The zones after replaying every accepted batch.
    pub state: Zones,
}

impl Outcome {
    /// Panic listing (the first 30) violations.
    pub fn assert_clean(&self, what: &str) {
        if !self.violations.is_empty() {
            let shown: Vec<&String> = self.violations.iter().take(30).collect();
            panic!(
                "{what}: {} invariant violation(s) in the proxy write log:\n  {}",
                self.violations.len(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        }
    }

    /// Step indices of each split's successive writes (for messages).
    pub fn summary(&self) -> String {
        self.applied
            .iter()
            .map(|(n, a)| {
                let idx: Vec<String> = a.iter().map(|x| x.index.to_string()).collect();
                format!("{n}: {}", idx.join(","))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Replay the log over `initial` and check, for every batch moto accepted:
/// - every name written is a split's record or its `_trafficshift.` TXT (all batches, even failed);
/// - per split record touched: weights sum to 100, never all 0, exactly the split's backends;
/// - the split's weights are one of its steps, and successive writes never move backwards or
///   skip a step;
/// - the state TXT, when present, says the same weights (`cur`), the provisioned `start`, a step
///   index matching the weights, steps never decreasing or jumping by more than one, and one
///   `since` per step (no step applied twice);
/// - ECS: a write raising the ECS backend's weight to w reached the AWS layer while the service
///   served the tasks w needs (`not_serving`, from the layer's `capacity` snapshot in the entry);
/// - the hold interval between steps, when asked.
pub fn check(entries: &[Entry], initial: &Zones, splits: &[SplitCheck]) -> Outcome {
    let mut out = Outcome {
        state: initial.clone(),
        ..Outcome::default()
    };
    let mut v = Vec::new();
    let allowed: BTreeSet<String> = splits
        .iter()
        .flat_map(|s| {
            [
                fqdn(&s.record),
                format!("_trafficshift.{}", fqdn(&s.record)),
            ]
        })
        .collect();
    let services: BTreeSet<(String, String)> = splits
        .iter()
        .filter_map(|s| s.ecs.as_ref())
        .map(|e| (e.cluster.clone(), e.service.clone()))
        .collect();
    // Per split: current step index, last TXT, first write time of each TXT step.
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_txt: BTreeMap<String, Txt> = BTreeMap::new();
    let mut since_of: BTreeMap<(String, String, usize), u64> = BTreeMap::new();
    // (cycle start, write time) of the first write of each step.
    let mut first_time: BTreeMap<(String, usize), (f64, f64)> = BTreeMap::new();
    let lists = listings(entries);

    let ecs = ecs_updates(entries);
    let bs = batches(entries);
    let mut events: Vec<(usize, Option<&Batch>, Option<&EcsUpdate>)> = bs
        .iter()
        .map(|b| (b.seq, Some(b), None))
        .chain(ecs.iter().map(|e| (e.seq, None, Some(e))))
        .collect();
    events.sort_by_key(|e| e.0);

    for (_, b, u) in events {
        if let Some(u) = u {
            out.ecs_updates += 1;
            if !services.contains(&(u.cluster.clone(), u.service.clone())) {
                v.push(format!(
                    "#{} UpdateService of a foreign service {}/{}",
                    u.seq, u.cluster, u.service
                ));
            }
            if !u.accepted && u.upstream_status.is_some() {
                v.push(format!("#{} UpdateService rejected by moto", u.seq));
            }
            continue;
        }
        let Some(b) = b else { continue };
        for c in &b.changes {
            if !allowed.contains(&c.name) {
                v.push(format!(
                    "#{} writes a foreign name {} {} ({})",
                    b.seq, c.name, c.rtype, c.action
                ));
            }
        }
        if !b.accepted {
            out.failed_batches += 1;
            if b.upstream_status.is_some() {
                v.push(format!(
                    "#{} batch rejected by moto with HTTP {:?}: {:?}",
                    b.seq, b.upstream_status, b.changes
                ));
            }
            continue;
        }
        out.accepted_batches += 1;
        let before = out.state.clone();
        out.state.apply(b);
        for s in splits.iter().filter(|s| s.zone_id == b.zone_id) {
            let rec = fqdn(&s.record);
            let txt_name = format!("_trafficshift.{rec}");
            if !b
                .changes
                .iter()
                .any(|c| c.name == rec || c.name == txt_name)
            {
                continue;
            }
            let w = out.state.weights(&s.zone_id, &rec);
            let at = format!("#{} {} ({})", b.seq, s.name, show(&w));
            if w.values().sum::<i64>() != 100 {
                v.push(format!("{at}: weights sum to {}", w.values().sum::<i64>()));
            }
            if w.values().all(|&x| x == 0) {
                v.push(format!("{at}: every weight is 0"));
            }
            if w.keys().collect::<Vec<_>>() != s.target.keys().collect::<Vec<_>>() {
                v.push(format!(
                    "{at}: set identifiers are not the split's backends"
                ));
            }

            // Steps: the smallest matching index not behind the current one.
            let pcts: Vec<u32> = std::iter::once(0).chain(s.steps.iter().copied()).collect();
            let matching: Vec<usize> = (0..pcts.len())
                .filter(|&i| is_step(&w, &s.start, &s.target, pcts[i]))
                .collect();
            let cur = index.get(&s.name).copied();
            let floor = cur.unwrap_or(0);
            let idx = match matching.iter().find(|&&i| i >= floor) {
                Some(&i) => {
                    let limit = cur.map_or(1, |c| c + 1);
                    if i > limit {
                        v.push(format!(
                            "{at}: skipped from step {} to step {i} ({}%)",
                            cur.map_or("start".into(), |c| c.to_string()),
                            pcts[i]
                        ));
                    }
                    i
                }
                None if !matching.is_empty() => {
                    v.push(format!(
                        "{at}: moved backwards from step {floor} to step {}",
                        matching[0]
                    ));
                    matching[0]
                }
                None => {
                    v.push(format!(
                        "{at}: not one of the steps from {} to {}",
                        show(&s.start),
                        show(&s.target)
                    ));
                    floor
                }
            };
            index.insert(s.name.clone(), idx);

            // The state TXT travels with the weights.
            let txt = out.state.txt(&s.zone_id, &rec);
            match &txt {
                None => v.push(format!("{at}: no state TXT after the write")),
                Some(t) => {
                    if t.cur != w {
                        v.push(format!(
                            "{at}: TXT cur {} differs from the records",
                            show(&t.cur)
                        ));
                    }
                    if t.start != s.start {
                        v.push(format!(
                            "{at}: TXT start {} is not the provisioned {}",
                            show(&t.start),
                            show(&s.start)
                        ));
                    }
                    if t.split != s.name {
                        v.push(format!("{at}: TXT names split {}", t.split));
                    }
                    match pcts.get(t.step) {
                        Some(&p) if is_step(&w, &t.start, &s.target, p) => {}
                        _ => v.push(format!(
                            "{at}: TXT step {} does not match the weights",
                            t.step
                        )),
                    }
                    if let Some(prev) = last_txt.get(&s.name).filter(|p| p.gen == t.gen) {
                        if t.step < prev.step {
                            v.push(format!(
                                "{at}: TXT step went back {} -> {}",
                                prev.step, t.step
                            ));
                        }
                        if t.step > prev.step + 1 {
                            v.push(format!("{at}: TXT step jumped {} -> {}", prev.step, t.step));
                        }
                        if t.step == prev.step + 1 && t.step >= 2 {
                            if let Some((interval, _)) = s.hold {
                                if (t.since as f64) < prev.since as f64 + interval {
                                    v.push(format!(
                                        "{at}: TXT since {} of step {} is less than {interval}s after {} of step {}",
                                        t.since, t.step, prev.since, prev.step
                                    ));
                                }
                            }
                        }
                    }
                    let key = (s.name.clone(), t.gen.clone(), t.step);
                    match since_of.get(&key) {
                        Some(&old) if old != t.since => v.push(format!(
                            "{at}: step {} applied twice (since {old} then {})",
                            t.step, t.since
                        )),
                        Some(_) => {}
                        None => {
                            since_of.insert(key, t.since);
                        }
                    }
                    last_txt.insert(s.name.clone(), t.clone());
                }
            }

            // Hold interval by the proxy's clock, between the cycles that first wrote successive
            // steps.
            let step_no = txt.as_ref().map_or(idx, |t| t.step);
            let fresh = !first_time.contains_key(&(s.name.clone(), step_no));
            if fresh {
                let cycle = lists
                    .iter()
                    .rev()
                    .find(|(seq, zone, _)| *seq < b.seq && *zone == b.zone_id)
                    .map_or(b.time, |l| l.2);
                first_time.insert((s.name.clone(), step_no), (cycle, b.time));
                if let (Some((interval, tol)), true) = (s.hold, step_no >= 2) {
                    if let Some((prev_cycle, prev_write)) =
                        first_time.get(&(s.name.clone(), step_no - 1))
                    {
                        let gap = cycle - prev_cycle;
                        if gap < interval - tol {
                            v.push(format!(
                                "{at}: step {step_no} decided {gap:.3}s after step {} (written {:.3}s after; interval {interval}s)",
                                step_no - 1,
                                b.time - prev_write
                            ));
                        }
                    }
                }
            }

            // Capacity before traffic, judged from what the AWS layer served when the write
            // reached it (not from what the controller asked ECS for).
            if let Some(e) = &s.ecs {
                let old = before
                    .weights(&s.zone_id, &rec)
                    .get(&e.backend)
                    .copied()
                    .unwrap_or(0);
                let new = w.get(&e.backend).copied().unwrap_or(0);
                if new > old {
                    let need = tasks_in(e.tasks, new);
                    let label = format!("{}/{}", e.cluster, e.service);
                    match b.capacity.as_ref().map(|c| &c[&label]) {
                        None => v.push(format!(
                            "{at}: {} raised {old} -> {new} and the log has no capacity snapshot (run the proxy with the layer's ECS behaviours)",
                            e.backend
                        )),
                        Some(Value::Null) => v.push(format!(
                            "{at}: {} raised {old} -> {new} and the layer knows no service {label}",
                            e.backend
                        )),
                        Some(snap) => {
                            if let Some(why) = not_serving(snap, need) {
                                v.push(format!(
                                    "{at}: {} raised {old} -> {new} while {label} was not serving {need} tasks: {why}",
                                    e.backend
                                ));
                            }
                        }
                    }
                }
            }

            out.applied
                .entry(s.name.clone())
                .or_default()
                .push(Applied {
                    seq: b.seq,
                    time: b.time,
                    weights: w,
                    txt,
                    index: idx,
                });
        }
    }
    out.violations = v;
    out
}

/// `a=1 b=99`
pub fn show(w: &Weights) -> String {
    w.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(p: &[(&str, i64)]) -> Weights {
        p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn parses_a_change_batch() {
        let body = r#"<ChangeResourceRecordSetsRequest xmlns="x"><ChangeBatch><Changes><Change><Action>UPSERT</Action><ResourceRecordSet><Name>s0.z.example.</Name><Type>A</Type><SetIdentifier>a</SetIdentifier><Weight>83</Weight><AliasTarget><HostedZoneId>Z</HostedZoneId><DNSName>d.</DNSName></AliasTarget></ResourceRecordSet></Change><Change><Action>CREATE</Action><ResourceRecordSet><Name>_trafficshift.s0.z.example.</Name><Type>TXT</Type><TTL>300</TTL><ResourceRecords><ResourceRecord><Value>&quot;heritage=trafficshift,owner=t,split=s0,gen=g,phase=progressing,step=1,since=5,start=a:100;b:0,cur=a:83;b:17,drain=&quot;</Value></ResourceRecord></ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>"#;
        let c = parse_changes(body);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].weight, Some(83));
        assert_eq!(c[0].set_id.as_deref(), Some("a"));
        let t = parse_txt(&c[1].values).unwrap();
        assert_eq!(t.step, 1);
        assert_eq!(t.cur, w(&[("a", 83), ("b", 17)]));
    }

    /// What the layer serves for service c/s: `desired`, `running`, `healthy` targets in its one
    /// target group, `deployments` and the primary's rollout state.
    fn served(desired: i64, running: i64, healthy: i64, deployments: i64, state: &str) -> Value {
        serde_json::json!({"c/s": {
            "desired": desired, "running": running, "pending": 0, "deployments": deployments,
            "rollout_state": state, "failing": false,
            "target_groups": {"arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/tg/1": {
                "healthy": healthy, "initial": running - healthy, "draining": 0, "unhealthy": 0}}}})
    }

    /// `batch_entry` reaching the layer while it served `capacity`.
    fn batch_at(
        seq: usize,
        time: f64,
        changes: &[(&str, &str, i64)],
        txt: Option<&str>,
        capacity: Value,
    ) -> Entry {
        Entry {
            capacity: Some(capacity),
            ..batch_entry(seq, time, changes, txt)
        }
    }

    fn batch_entry(
        seq: usize,
        time: f64,
        changes: &[(&str, &str, i64)],
        txt: Option<&str>,
    ) -> Entry {
        let mut body = String::from("<ChangeBatch><Changes>");
        for (name, set_id, weight) in changes {
            body.push_str(&format!(
                "<Change><Action>UPSERT</Action><ResourceRecordSet><Name>{name}</Name><Type>A</Type><SetIdentifier>{set_id}</SetIdentifier><Weight>{weight}</Weight></ResourceRecordSet></Change>"
            ));
        }
        if let Some(t) = txt {
            body.push_str(&format!(
                "<Change><Action>UPSERT</Action><ResourceRecordSet><Name>_trafficshift.r.z.</Name><Type>TXT</Type><ResourceRecords><ResourceRecord><Value>&quot;heritage=trafficshift,owner=o,split=r,{t},drain=&quot;</Value></ResourceRecord></ResourceRecords></ResourceRecordSet></Change>"
            ));
        }
        body.push_str("</Changes></ChangeBatch>");
        Entry {
            seq,
            time,
            service: "route53".into(),
            operation: "ChangeResourceRecordSets".into(),
            path: "/2013-04-01/hostedzone/Z1/rrset".into(),
            fault: None,
            status: Some(200),
            upstream_status: Some(200),
            body: Some(body),
            capacity: None,
        }
    }

    fn ecs_entry(seq: usize, desired: i64) -> Entry {
        Entry {
            seq,
            time: 0.0,
            service: "ecs".into(),
            operation: "UpdateService".into(),
            path: "/".into(),
            fault: None,
            status: Some(200),
            upstream_status: Some(200),
            body: Some(format!(
                r#"{{"cluster":"c","service":"s","desiredCount":{desired}}}"#
            )),
            capacity: None,
        }
    }

    fn fixture() -> (Zones, SplitCheck) {
        let mut z = Zones::default();
        z.add_listing(
            "/hostedzone/Z1",
            &[
                serde_json::json!({"Name": "r.z.", "Type": "A", "SetIdentifier": "a", "Weight": 100}),
                serde_json::json!({"Name": "r.z.", "Type": "A", "SetIdentifier": "b", "Weight": 0}),
            ],
        );
        let s = SplitCheck {
            name: "r".into(),
            record: "r.z".into(),
            zone_id: "Z1".into(),
            start: w(&[("a", 100), ("b", 0)]),
            target: w(&[("a", 0), ("b", 100)]),
            steps: vec![50, 100],
            ecs: Some(EcsCheck {
                backend: "b".into(),
                cluster: "c".into(),
                service: "s".into(),
                tasks: TEN,
            }),
            hold: Some((10.0, 0.5)),
        };
        (z, s)
    }

    const START: &str = "start=a:100;b:0";
    /// tasksAtFullTraffic 10, minTasks 1.
    const TEN: TaskTable = &[
        (10, 1),
        (20, 2),
        (30, 3),
        (40, 4),
        (50, 5),
        (60, 6),
        (70, 7),
        (80, 8),
        (90, 9),
        (100, 10),
    ];

    #[test]
    fn a_clean_rollout_passes() {
        let (z, s) = fixture();
        let log = [
            ecs_entry(0, 5),
            batch_at(
                1,
                100.0,
                &[("r.z.", "a", 50), ("r.z.", "b", 50)],
                Some(&format!(
                    "gen=g,phase=progressing,step=1,since=100,{START},cur=a:50;b:50"
                )),
                served(5, 5, 5, 1, "COMPLETED"),
            ),
            ecs_entry(2, 10),
            batch_at(
                3,
                110.0,
                &[("r.z.", "a", 0), ("r.z.", "b", 100)],
                Some(&format!(
                    "gen=g,phase=complete,step=2,since=110,{START},cur=a:0;b:100"
                )),
                served(10, 10, 10, 1, "COMPLETED"),
            ),
        ];
        let o = check(&log, &z, &[s]);
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        assert_eq!(
            o.applied["r"].iter().map(|a| a.index).collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn violations_are_found() {
        let (z, s) = fixture();
        let log = [
            // Skips step 1, without capacity, and the TXT lags behind the weights.
            batch_at(
                0,
                100.0,
                &[("r.z.", "a", 0), ("r.z.", "b", 100)],
                Some(&format!(
                    "gen=g,phase=progressing,step=1,since=100,{START},cur=a:50;b:50"
                )),
                served(1, 1, 1, 1, "COMPLETED"),
            ),
            // Sum 90, a foreign name.
            batch_entry(
                1,
                101.0,
                &[("r.z.", "a", 0), ("r.z.", "b", 90), ("www.z.", "x", 1)],
                None,
            ),
            // Back to step 1 and the TXT goes back, too soon.
            batch_entry(
                2,
                102.0,
                &[("r.z.", "a", 50), ("r.z.", "b", 50)],
                Some(&format!(
                    "gen=g,phase=progressing,step=0,since=102,{START},cur=a:50;b:50"
                )),
            ),
        ];
        let o = check(&log, &z, &[s]);
        let all = o.violations.join("\n");
        for want in [
            "skipped from step start to step 2",
            "b raised 0 -> 100 while c/s was not serving 10 tasks: desiredCount 1 < 10",
            "TXT cur a=50 b=50 differs",
            "weights sum to 90",
            "foreign name www.z.",
            "moved backwards from step 2 to step 1",
            "TXT step went back 1 -> 0",
        ] {
            assert!(all.contains(want), "{want:?} not found in:\n{all}");
        }
    }

    /// A weight raised onto a service that ECS was asked to scale but that does not serve yet is
    /// caught from what the layer served at the write, whatever desiredCount says.
    #[test]
    fn capacity_that_does_not_serve_is_found() {
        let cases = [
            (
                served(5, 3, 3, 1, "COMPLETED"),
                "running 3 (desired 5, need 5)",
            ),
            (
                served(6, 5, 5, 1, "COMPLETED"),
                "running 5 (desired 6, need 5)",
            ),
            (
                served(5, 5, 2, 1, "COMPLETED"),
                "2/5 healthy targets in targetgroup/tg/1",
            ),
            (
                served(5, 5, 5, 2, "COMPLETED"),
                "not stable (2 deployment(s), rollout COMPLETED)",
            ),
            (
                served(5, 5, 5, 1, "IN_PROGRESS"),
                "not stable (1 deployment(s), rollout IN_PROGRESS)",
            ),
            (serde_json::json!({}), "the layer knows no service c/s"),
        ];
        for (capacity, want) in cases {
            let (z, s) = fixture();
            let log = [
                ecs_entry(0, 5),
                batch_at(
                    1,
                    100.0,
                    &[("r.z.", "a", 50), ("r.z.", "b", 50)],
                    Some(&format!(
                        "gen=g,phase=progressing,step=1,since=100,{START},cur=a:50;b:50"
                    )),
                    capacity.clone(),
                ),
            ];
            let all = check(&log, &z, &[s]).violations.join("\n");
            assert!(
                all.contains("b raised 0 -> 50") && all.contains(want),
                "{want:?} not found for {capacity} in:\n{all}"
            );
        }
        // Without the layer's snapshot nothing can be judged: that is a finding too.
        let (z, s) = fixture();
        let log = [batch_entry(
            0,
            100.0,
            &[("r.z.", "a", 50), ("r.z.", "b", 50)],
            Some(&format!(
                "gen=g,phase=progressing,step=1,since=100,{START},cur=a:50;b:50"
            )),
        )];
        let all = check(&log, &z, &[s]).violations.join("\n");
        assert!(all.contains("no capacity snapshot"), "{all}");
    }

    #[test]
    fn task_tables_are_read_by_share() {
        assert_eq!(tasks_in(FLEET_TASKS, 0), 1);
        assert_eq!(tasks_in(FLEET_TASKS, 13), 2);
        assert_eq!(tasks_in(FLEET_TASKS, 100), 8);
        assert_eq!(tasks_in(SCENARIO_TASKS, 5), 2);
        assert_eq!(tasks_in(SCENARIO_TASKS, 26), 6);
        assert_eq!(tasks_in(SCENARIO_TASKS, 100), 20);
    }

    #[test]
    fn a_short_hold_and_a_step_applied_twice_are_found() {
        let (z, s) = fixture();
        let mut s = s;
        s.steps = vec![25, 50, 75, 100];
        let log = [
            ecs_entry(0, 10),
            batch_entry(
                1,
                100.0,
                &[("r.z.", "a", 75), ("r.z.", "b", 25)],
                Some(&format!(
                    "gen=g,phase=progressing,step=1,since=100,{START},cur=a:75;b:25"
                )),
            ),
            batch_entry(
                2,
                101.0,
                &[("r.z.", "a", 50), ("r.z.", "b", 50)],
                Some(&format!(
                    "gen=g,phase=progressing,step=2,since=101,{START},cur=a:50;b:50"
                )),
            ),
            batch_entry(
                3,
                105.0,
                &[],
                Some(&format!(
                    "gen=g,phase=progressing,step=2,since=105,{START},cur=a:50;b:50"
                )),
            ),
            batch_entry(
                4,
                108.0,
                &[("r.z.", "a", 25), ("r.z.", "b", 75)],
                Some(&format!(
                    "gen=g,phase=progressing,step=3,since=108,{START},cur=a:25;b:75"
                )),
            ),
        ];
        let o = check(&log, &z, &[s]);
        let all = o.violations.join("\n");
        for want in [
            "step 2 applied twice (since 101 then 105)",
            "TXT since 108 of step 3 is less than 10s after 105 of step 2",
            "step 3 decided 7.000s after step 2",
        ] {
            assert!(all.contains(want), "{want:?} not found in:\n{all}");
        }
    }

    #[test]
    fn steps_allow_rounding_only() {
        let s = w(&[("a", 100), ("b", 0), ("c", 0)]);
        let t = w(&[("a", 0), ("b", 50), ("c", 50)]);
        assert!(is_step(&w(&[("a", 75), ("b", 13), ("c", 12)]), &s, &t, 25));
        assert!(!is_step(&w(&[("a", 74), ("b", 13), ("c", 13)]), &s, &t, 25));
        assert!(is_step(&s, &s, &t, 0));
    }
}
