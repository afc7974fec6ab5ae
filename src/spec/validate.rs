//! Semantic validation: the rules a document must follow beyond its shape.
//!
//! [`check`] is pure and returns `(path, message)` pairs; the loader turns paths into positions.
//! Paths look like `spec.backends[1].name`; keys that are not plain names are written
//! `["a.b"]`, and a trailing `#key` points at a mapping key rather than its value.

use std::collections::HashMap;
use std::time::Duration;

use super::{fqdn, Backend, Gate, RecordType, TrafficSplit, API_VERSION, KIND};

/// Route53 accepts TTLs up to 2^31 - 1 seconds.
pub const MAX_TTL: i64 = 2_147_483_647;
/// Route53 allows at most 100 weighted records per name and type.
pub const MAX_BACKENDS: usize = 100;
pub const MAX_TASKS: u32 = 5000;
pub const MAX_STEPS: usize = 100;
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
const MIN_GATE_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_GATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Short deadlines and gate intervals are allowed so tests against emulated AWS stay fast; the
/// reference explains why production wants minutes.
const MIN_PROGRESS_DEADLINE: Duration = Duration::from_secs(1);
const MIN_GATE_INTERVAL: Duration = Duration::from_secs(1);
const MAX_GATE_INTERVAL: Duration = Duration::from_secs(3600);

/// `parent.key`, quoting keys that are not plain names so that the path stays parseable.
pub fn join_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_string(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => format!(
            "{parent}[{}]",
            serde_json::to_string(key).unwrap_or_default()
        ),
    }
}

/// Check the semantic rules. Returns `(path, message)` for each problem; empty when valid.
pub fn check(split: &TrafficSplit) -> Vec<(String, String)> {
    let mut c = Checker::default();
    if split.api_version != API_VERSION {
        c.err(
            "apiVersion",
            format!(
                "apiVersion must be {API_VERSION}, found '{}'",
                split.api_version
            ),
        );
    }
    if split.kind != KIND {
        c.err(
            "kind",
            format!("kind must be {KIND}, found '{}'", split.kind),
        );
    }
    if !is_lower_name(&split.metadata.name) {
        c.err(
            "metadata.name",
            format!(
                "metadata.name '{}' is invalid: use 1-63 lowercase letters, digits and '-'",
                split.metadata.name
            ),
        );
    }
    check_record(&mut c, split);
    check_backends(&mut c, split);
    check_weights(&mut c, split);
    check_rollout(&mut c, split);
    check_gates(&mut c, split);
    for (path, message) in crate::traffic::problems(split) {
        c.err(path, message);
    }
    check_state_size(&mut c, split);
    if let Some(aws) = &split.spec.aws {
        c.problems.extend(super::aws::problems(aws));
    }
    c.problems
}

/// The rollout state of a split lives in one TXT record value, which Route53 limits to 4,000
/// characters. Refuse a document whose state could outgrow it mid-rollout: the longest state it
/// can have is every backend at a 3-digit weight in `start` and `cur`, a drain for every ECS
/// backend, the longest owner id and phase, 10-digit times and a 20-digit write count.
fn check_state_size(c: &mut Checker, split: &TrafficSplit) {
    use crate::state::MAX_TXT_VALUE_CHARS;
    let len = longest_state_len(split, None);
    if len > MAX_TXT_VALUE_CHARS {
        c.err(
            "spec.backends",
            format!(
                "the rollout state of this split can need {len} characters in its TXT record, more than Route53's {MAX_TXT_VALUE_CHARS}: use fewer backends or shorter backend names"
            ),
        );
    }
}

/// The TXT value length of the longest state `split` can have, carrying `control` (an on-call
/// override, which its command checks against the limit before writing it).
pub fn longest_state_len(
    split: &TrafficSplit,
    control: Option<crate::overrides::Override>,
) -> usize {
    use crate::state::{txt_value_len, Drain, Phase, RolloutState, MAX_OWNER_LEN};
    const LONGEST_TIME: u64 = 9_999_999_999;
    let all: crate::spec::Weights = split
        .spec
        .backends
        .iter()
        .map(|b| (b.name.clone(), 100))
        .collect();
    let longest = RolloutState {
        owner: "o".repeat(MAX_OWNER_LEN),
        split: split.name().to_string(),
        generation: crate::rollout::generation(split),
        phase: Phase::Progressing,
        step: split.spec.steps().len(),
        since: LONGEST_TIME,
        start: all.clone(),
        current: all,
        drains: split
            .spec
            .backends
            .iter()
            .filter(|b| b.ecs.is_some())
            .map(|b| {
                (
                    b.name.clone(),
                    Drain {
                        share: 100,
                        until: LONGEST_TIME,
                    },
                )
            })
            .collect(),
        rev: u64::MAX,
        capacity_since: Some(LONGEST_TIME),
        control,
        autoscaling: split
            .spec
            .backends
            .iter()
            .filter(|b| b.ecs.is_some())
            .map(|b| {
                let bound = crate::state::ScalableTarget {
                    min: i32::MIN,
                    max: i32::MIN,
                };
                (b.name.clone(), bound)
            })
            .collect(),
        // A retiring backend has left `backends`: it takes the place of one, never adds to them.
        retiring: Default::default(),
    };
    txt_value_len(&longest.encode())
}

#[derive(Default)]
struct Checker {
    problems: Vec<(String, String)>,
}

/// Where a named list entry is and what it is called.
struct Entry<'p, 'a> {
    at: &'p str,
    what: &'static str,
    name: &'a str,
    i: usize,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push((path.into(), message.into()));
    }

    /// The checks every named list entry (backend, gate) shares: a valid name, unique in its
    /// list, exactly one kind.
    fn entry<'a>(
        &mut self,
        e: Entry<'_, 'a>,
        name_ok: Result<(), &str>,
        first: &mut HashMap<&'a str, usize>,
        kinds: &[&str],
        allowed: &str,
    ) {
        let (at, what, name) = (e.at, e.what, e.name);
        if let Err(rule) = name_ok {
            self.err(
                format!("{at}.name"),
                format!("{what} name '{name}' is invalid: use {rule}"),
            );
        }
        if let Some(j) = first.get(name) {
            self.err(
                format!("{at}.name"),
                format!("duplicate {what} name '{name}' (first at index {j})"),
            );
        } else {
            first.insert(name, e.i);
        }
        if kinds.len() != 1 {
            let found = if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(" and ")
            };
            self.err(
                at.to_string(),
                format!("{what} '{name}' needs exactly one of {allowed}; found {found}"),
            );
        }
    }
}

fn is_lower_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_backend_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A hosted zone id such as `Z0123456789ABCDEFGHIJ` (optionally `/hostedzone/Z...`).
pub fn is_zone_id(s: &str) -> bool {
    let id = s.trim().trim_start_matches("/hostedzone/");
    id.len() >= 2
        && id.starts_with('Z')
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Why `name` is not a valid DNS name, if it is not (case-insensitive, trailing dot optional).
pub fn dns_name_problem(name: &str) -> Option<String> {
    let n = fqdn(name);
    let bare = n.trim_end_matches('.');
    if bare.is_empty() {
        return Some("is empty".into());
    }
    if bare.len() > 253 {
        return Some(format!(
            "is {} characters long, at most 253 are allowed",
            bare.len()
        ));
    }
    for (i, label) in bare.split('.').enumerate() {
        if label == "*" {
            if i == 0 {
                continue;
            }
            return Some("has '*' outside the first label".into());
        }
        if label.is_empty() {
            return Some("has an empty label (two dots in a row?)".into());
        }
        if label.len() > 63 {
            return Some(format!(
                "has a label of {} characters, at most 63 are allowed",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Some(format!(
                "contains {bad:?}; use letters, digits, '-' and '_'"
            ));
        }
    }
    None
}

fn check_record(c: &mut Checker, split: &TrafficSplit) {
    let record = &split.spec.record;
    let zone = record.hosted_zone.trim();
    let zone_by_name = !zone.is_empty() && !is_zone_id(zone);
    if zone.is_empty() {
        c.err(
            "spec.record.hostedZone",
            "hostedZone is empty: give the zone name (e.g. example.com.) or its id (Z...)",
        );
    } else if zone_by_name {
        if let Some(problem) = dns_name_problem(zone) {
            c.err(
                "spec.record.hostedZone",
                format!("hostedZone '{zone}' is neither a zone id (Z...) nor a valid DNS name: it {problem}"),
            );
        }
    }
    let name_ok = match dns_name_problem(&record.name) {
        Some(problem) => {
            c.err(
                "spec.record.name",
                format!(
                    "record name '{}' is not a valid DNS name: it {problem}",
                    record.name
                ),
            );
            false
        }
        None => true,
    };
    // With a zone id, the zone's name is only known once AWS is asked.
    if zone_by_name && name_ok && dns_name_problem(zone).is_none() {
        let (zone, name) = (fqdn(zone), fqdn(&record.name));
        if name != zone && !name.ends_with(&format!(".{zone}")) {
            c.err(
                "spec.record.name",
                format!("record name {name} is outside hosted zone {zone}"),
            );
        } else if name == zone && record.record_type == RecordType::CNAME {
            c.err(
                "spec.record.type",
                format!("a CNAME cannot be at the zone apex {zone}; use type A with an alias"),
            );
        }
    }
    if !(0..=MAX_TTL).contains(&record.ttl) {
        c.err(
            "spec.record.ttl",
            format!("ttl {} is out of range 0-{MAX_TTL}", record.ttl),
        );
    }
}

fn backend_kinds(b: &Backend) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    if b.api_gateway.is_some() {
        kinds.push("apiGateway");
    }
    if b.ecs.is_some() {
        kinds.push("ecs");
    }
    if b.target.is_some() {
        kinds.push("target");
    }
    kinds
}

fn check_backends(c: &mut Checker, split: &TrafficSplit) {
    let backends = &split.spec.backends;
    let record_type = split.spec.record.record_type;
    if backends.is_empty() {
        c.err("spec.backends", "at least one backend is required");
    } else if backends.len() > MAX_BACKENDS {
        c.err(
            "spec.backends",
            format!(
                "{} backends, at most {MAX_BACKENDS} are allowed",
                backends.len()
            ),
        );
    }
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, b) in backends.iter().enumerate() {
        let at = format!("spec.backends[{i}]");
        let kinds = backend_kinds(b);
        c.entry(
            Entry {
                at: &at,
                what: "backend",
                name: &b.name,
                i,
            },
            is_backend_name(&b.name)
                .then_some(())
                .ok_or("1-128 letters, digits, '-' and '_'"),
            &mut first,
            &kinds,
            "apiGateway, ecs or target",
        );
        if let Some(api) = &b.api_gateway {
            if let Some(problem) = dns_name_problem(&api.domain_name) {
                c.err(
                    format!("{at}.apiGateway.domainName"),
                    format!(
                        "domainName '{}' is not a valid DNS name: it {problem}",
                        api.domain_name
                    ),
                );
            }
        }
        if let Some(ecs) = &b.ecs {
            let at = format!("{at}.ecs");
            if ecs.cluster.trim().is_empty() {
                c.err(
                    format!("{at}.cluster"),
                    "cluster is empty: give the ECS cluster name or ARN",
                );
            }
            if ecs.service.trim().is_empty() {
                c.err(
                    format!("{at}.service"),
                    "service is empty: give the ECS service name or ARN",
                );
            }
            if ecs.tasks_at_full_traffic < 1 {
                c.err(
                    format!("{at}.tasksAtFullTraffic"),
                    "tasksAtFullTraffic must be at least 1",
                );
            }
            match ecs.max_tasks {
                Some(0) => c.err(format!("{at}.maxTasks"), "maxTasks must be at least 1"),
                Some(max) if max > MAX_TASKS => {
                    c.err(format!("{at}.maxTasks"), format!("maxTasks {max} is above the limit of {MAX_TASKS}"))
                }
                Some(max) if ecs.min_tasks > max => c.err(
                    format!("{at}.minTasks"),
                    format!("minTasks {} is greater than maxTasks {max}", ecs.min_tasks),
                ),
                Some(_) => {}
                None if ecs.max_tasks() > MAX_TASKS => c.err(
                    at.clone(),
                    format!(
                        "maxTasks defaults to {} (max of tasksAtFullTraffic and minTasks), above the limit of {MAX_TASKS}",
                        ecs.max_tasks()
                    ),
                ),
                None => {}
            }
        }
        if let Some(target) = &b.target {
            let at = format!("{at}.target");
            match (&target.alias, &target.cname) {
                (Some(_), Some(_)) | (None, None) => c.err(
                    at.clone(),
                    format!(
                        "target of backend '{}' needs exactly one of alias or cname",
                        b.name
                    ),
                ),
                _ => {}
            }
            if let Some(alias) = &target.alias {
                if !record_type.is_alias() {
                    c.err(
                        format!("{at}.alias"),
                        format!(
                            "target.alias needs record type A or AAAA, but spec.record.type is {}",
                            record_type.as_str()
                        ),
                    );
                }
                if let Some(problem) = dns_name_problem(&alias.dns_name) {
                    c.err(
                        format!("{at}.alias.dnsName"),
                        format!(
                            "dnsName '{}' is not a valid DNS name: it {problem}",
                            alias.dns_name
                        ),
                    );
                }
                if alias.hosted_zone_id.trim().is_empty() {
                    c.err(
                        format!("{at}.alias.hostedZoneId"),
                        "hostedZoneId of the alias target is empty",
                    );
                }
            }
            if let Some(cname) = &target.cname {
                if record_type != RecordType::CNAME {
                    c.err(
                        format!("{at}.cname"),
                        format!(
                            "target.cname needs record type CNAME, but spec.record.type is {}",
                            record_type.as_str()
                        ),
                    );
                }
                if let Some(problem) = dns_name_problem(cname) {
                    c.err(
                        format!("{at}.cname"),
                        format!("cname '{cname}' is not a valid DNS name: it {problem}"),
                    );
                }
            }
        }
    }
}

fn check_weights(c: &mut Checker, split: &TrafficSplit) {
    let weights = &split.spec.weights;
    let names: Vec<&str> = split
        .spec
        .backends
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    let mut ok = true;
    for (key, weight) in weights {
        let at = join_key("spec.weights", key);
        if !names.contains(&key.as_str()) {
            ok = false;
            c.err(
                format!("{at}#key"),
                format!(
                    "weights name unknown backend '{key}'; the backends are {}",
                    names.join(", ")
                ),
            );
        } else if *weight > 100 {
            ok = false;
            c.err(
                at,
                format!("weight {weight} for '{key}' is out of range 0-100"),
            );
        }
    }
    for name in &names {
        if !weights.contains_key(*name) {
            ok = false;
            c.err(
                "spec.weights",
                format!("backend '{name}' has no weight; give every backend a weight (0 to send it nothing)"),
            );
        }
    }
    if ok && !names.is_empty() {
        let sum: u64 = weights.values().map(|w| u64::from(*w)).sum();
        if sum == 0 {
            c.err(
                "spec.weights",
                "weights are all zero; at least one backend must get traffic",
            );
        } else if sum != 100 {
            c.err(
                "spec.weights",
                format!("weights sum to {sum}, must sum to 100"),
            );
        }
    }
}

fn check_rollout(c: &mut Checker, split: &TrafficSplit) {
    let Some(rollout) = &split.spec.rollout else {
        return;
    };
    match (&rollout.steps, rollout.step_percent) {
        (Some(_), Some(_)) => c.err(
            "spec.rollout",
            "rollout needs exactly one of steps or stepPercent, found both",
        ),
        (None, None) => c.err(
            "spec.rollout",
            "rollout needs exactly one of steps or stepPercent, found neither",
        ),
        _ => {}
    }
    if let Some(steps) = &rollout.steps {
        if steps.is_empty() {
            c.err(
                "spec.rollout.steps",
                "steps is empty; end it with 100, e.g. [10, 50, 100]",
            );
        } else if steps.len() > MAX_STEPS {
            c.err(
                "spec.rollout.steps",
                format!("{} steps, at most {MAX_STEPS} are allowed", steps.len()),
            );
        }
        let mut prev = 0;
        for (i, step) in steps.iter().enumerate() {
            let at = format!("spec.rollout.steps[{i}]");
            if !(1..=100).contains(step) {
                c.err(at, format!("step {step} is out of range 1-100"));
            } else if *step <= prev {
                c.err(
                    at,
                    format!("steps must be strictly increasing: {step} follows {prev}"),
                );
            }
            prev = prev.max(*step);
        }
        if let Some(last) = steps.last() {
            if *last != 100 {
                c.err(
                    format!("spec.rollout.steps[{}]", steps.len() - 1),
                    format!("the last step must be 100, found {last}"),
                );
            }
        }
    }
    if let Some(p) = rollout.step_percent {
        if !(1..=100).contains(&p) {
            c.err(
                "spec.rollout.stepPercent",
                format!("stepPercent {p} is out of range 1-100"),
            );
        }
    }
    if rollout.interval.get() > MAX_WAIT {
        c.err(
            "spec.rollout.interval",
            format!("interval {} is longer than 24h", rollout.interval),
        );
    }
    if let Some(d) = rollout.drain_delay {
        if d.get() > MAX_WAIT {
            c.err(
                "spec.rollout.drainDelay",
                format!("drainDelay {d} is longer than 24h"),
            );
        }
    }
    // A gate interval under a second would only burn AWS calls (a reconcile takes about that).
    let deadline = rollout.progress_deadline.get();
    if !(MIN_PROGRESS_DEADLINE..=MAX_WAIT).contains(&deadline) {
        c.err(
            "spec.rollout.progressDeadline",
            format!(
                "progressDeadline {} is out of range 1s-24h",
                rollout.progress_deadline
            ),
        );
    }
    let gate_interval = rollout.gate_interval.get();
    if !(MIN_GATE_INTERVAL..=MAX_GATE_INTERVAL).contains(&gate_interval) {
        c.err(
            "spec.rollout.gateInterval",
            format!(
                "gateInterval {} is out of range 1s-1h",
                rollout.gate_interval
            ),
        );
    }
    if !(1..=100).contains(&rollout.failure_threshold) {
        c.err(
            "spec.rollout.failureThreshold",
            format!(
                "failureThreshold {} is out of range 1-100",
                rollout.failure_threshold
            ),
        );
    }
    check_windows(c, rollout);
}

/// Change windows and freezes: parsed by the same code that applies them (`crate::windows`).
fn check_windows(c: &mut Checker, rollout: &super::Rollout) {
    use crate::windows::{parse_hhmm, parse_instant, zone};
    for (i, w) in rollout.windows.iter().enumerate() {
        let at = format!("spec.rollout.windows[{i}]");
        if w.days.is_empty() {
            c.err(
                format!("{at}.days"),
                "days is empty; list at least one of mon, tue, wed, thu, fri, sat, sun",
            );
        }
        if let Err(e) = zone(&w.time_zone) {
            c.err(format!("{at}.timeZone"), e);
        }
        let start = parse_hhmm(&w.start, false).map_err(|e| c.err(format!("{at}.start"), e));
        let end = parse_hhmm(&w.end, true).map_err(|e| c.err(format!("{at}.end"), e));
        if let (Ok(s), Ok(e)) = (start, end) {
            if s == e {
                c.err(
                    format!("{at}.end"),
                    format!(
                        "end equals start ({}): use start 00:00 and end 24:00 for a whole day",
                        w.start
                    ),
                );
            }
        }
    }
    for (i, f) in rollout.freeze.iter().enumerate() {
        let at = format!("spec.rollout.freeze[{i}]");
        let from = parse_instant(&f.from).map_err(|e| c.err(format!("{at}.from"), e));
        let to = parse_instant(&f.to).map_err(|e| c.err(format!("{at}.to"), e));
        if let (Ok(from), Ok(to)) = (from, to) {
            if to <= from {
                c.err(
                    format!("{at}.to"),
                    format!("to {} is not after from {}", f.to, f.from),
                );
            }
        }
    }
}

fn gate_kinds(g: &Gate) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    if g.cloudwatch_alarm.is_some() {
        kinds.push("cloudwatchAlarm");
    }
    if g.ecs_stable.is_some() {
        kinds.push("ecsStable");
    }
    if g.target_health.is_some() {
        kinds.push("targetHealth");
    }
    if g.prometheus.is_some() {
        kinds.push("prometheus");
    }
    if g.http.is_some() {
        kinds.push("http");
    }
    if g.traffic_share.is_some() {
        kinds.push("trafficShare");
    }
    kinds
}

/// Why `url` is not an http(s) URL a gate may call, if it is not. Loopback is judged at run time
/// (`--allow-loopback-gates`); names are judged after lookup, by the gate client's resolver.
fn http_url_problem(url: &str) -> Option<String> {
    // Errors are shown in /status and logs: no credentials or query strings in them.
    let shown = crate::gates::redact(url);
    let shown = crate::sanitize::echo(&shown);
    match reqwest::Url::parse(url) {
        Err(e) => Some(format!("'{shown}' is not a URL ({e})")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            Some(format!("'{shown}' must start with http:// or https://"))
        }
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Some(format!("'{shown}' has no host")),
        Ok(u) => u
            .host_str()
            .and_then(crate::gates::literal_ip)
            .filter(|ip| crate::gates::is_link_local(*ip))
            .map(|ip| {
                format!(
                    "'{shown}' points at {ip}, a link-local address (instance metadata); gates may not call it"
                )
            }),
    }
}

fn check_timeout(c: &mut Checker, at: String, timeout: Duration) {
    if !(MIN_GATE_TIMEOUT..=MAX_GATE_TIMEOUT).contains(&timeout) {
        c.err(
            at,
            format!(
                "timeout {} is out of range 100ms-60s",
                humantime::format_duration(timeout)
            ),
        );
    }
}

fn check_gates(c: &mut Checker, split: &TrafficSplit) {
    let gates = &split.spec.gates;
    if !gates.is_empty() && split.spec.rollout.is_none() {
        c.err(
            "spec.gates",
            "gates need a rollout block (spec.rollout): without one, trafficshift goes straight to the weights",
        );
    }
    let mut first: HashMap<&str, usize> = HashMap::new();
    let ecs_backend = |name: &str| split.backend(name).is_some_and(|b| b.ecs.is_some());
    for (i, g) in gates.iter().enumerate() {
        let at = format!("spec.gates[{i}]");
        let kinds = gate_kinds(g);
        c.entry(
            Entry {
                at: &at,
                what: "gate",
                name: &g.name,
                i,
            },
            is_lower_name(&g.name)
                .then_some(())
                .ok_or("1-63 lowercase letters, digits and '-'"),
            &mut first,
            &kinds,
            "cloudwatchAlarm, ecsStable, targetHealth, prometheus, http or trafficShare",
        );
        if let Some(cw) = &g.cloudwatch_alarm {
            if cw.alarm_names.is_empty() {
                c.err(
                    format!("{at}.cloudwatchAlarm.alarmNames"),
                    "alarmNames is empty: name at least one alarm",
                );
            }
            for (j, name) in cw.alarm_names.iter().enumerate() {
                if name.trim().is_empty() {
                    c.err(
                        format!("{at}.cloudwatchAlarm.alarmNames[{j}]"),
                        "alarm name is empty",
                    );
                }
            }
        }
        let backend_refs = [
            g.ecs_stable
                .as_ref()
                .map(|r| ("ecsStable", r.backend.as_str())),
            g.target_health
                .as_ref()
                .map(|t| ("targetHealth", t.backend.as_str())),
        ];
        for (kind, backend) in backend_refs.into_iter().flatten() {
            if !ecs_backend(backend) {
                let what = if split.backend(backend).is_some() {
                    "is not an ecs backend"
                } else {
                    "is not a backend"
                };
                c.err(
                    format!("{at}.{kind}.backend"),
                    format!(
                        "gate '{}': '{backend}' {what} of this split; {kind} needs an ecs backend",
                        g.name
                    ),
                );
            }
        }
        if let Some(t) = &g.target_health {
            if t.min_healthy_percent > 100 {
                c.err(
                    format!("{at}.targetHealth.minHealthyPercent"),
                    format!(
                        "minHealthyPercent {} is out of range 0-100",
                        t.min_healthy_percent
                    ),
                );
            }
        }
        if let Some(p) = &g.prometheus {
            let at = format!("{at}.prometheus");
            if let Some(problem) = http_url_problem(&p.address) {
                c.err(format!("{at}.address"), format!("address {problem}"));
            }
            if p.query.trim().is_empty() {
                c.err(
                    format!("{at}.query"),
                    "query is empty: give a PromQL query returning one value",
                );
            }
            for (field, v) in [("min", p.min), ("max", p.max)] {
                if v.is_some_and(|v| !v.is_finite()) {
                    c.err(
                        format!("{at}.{field}"),
                        format!("{field} must be a finite number"),
                    );
                }
            }
            match (p.min, p.max) {
                (None, None) => c.err(at.clone(), "a prometheus gate needs min, max or both"),
                (Some(min), Some(max)) if min > max => c.err(
                    format!("{at}.min"),
                    format!("min {min} is greater than max {max}"),
                ),
                _ => {}
            }
            check_timeout(c, format!("{at}.timeout"), p.timeout.get());
        }
        if let Some(h) = &g.http {
            let at = format!("{at}.http");
            if let Some(problem) = http_url_problem(&h.url) {
                c.err(format!("{at}.url"), format!("url {problem}"));
            }
            if !(100..=599).contains(&h.expect_status) {
                c.err(
                    format!("{at}.expectStatus"),
                    format!(
                        "expectStatus {} is not an HTTP status (100-599)",
                        h.expect_status
                    ),
                );
            }
            check_timeout(c, format!("{at}.timeout"), h.timeout.get());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::*;

    const EXAMPLE: &str = r#"
apiVersion: trafficshift.dev/v1alpha1
kind: TrafficSplit
metadata:
  name: api
spec:
  record:
    hostedZone: abceed.example.
    name: api.abceed.example.
    type: A
    ttl: 60
  backends:
    - name: lambda
      apiGateway:
        domainName: api.abceed.example
    - name: fargate
      ecs:
        cluster: prod
        service: api
        tasksAtFullTraffic: 20
        minTasks: 2
        maxTasks: 40
  weights:
    lambda: 0
    fargate: 100
"#;

    /// A valid split, changed step by step.
    struct Fixture(TrafficSplit);

    impl Fixture {
        fn valid() -> Self {
            Fixture(serde_saphyr::from_str(EXAMPLE).expect("example parses"))
        }
        fn with(mut self, f: impl FnOnce(&mut TrafficSplit)) -> Self {
            f(&mut self.0);
            self
        }
        fn with_weights(self, weights: &[(&str, u32)]) -> Self {
            self.with(|s| {
                s.spec.weights = weights.iter().map(|(k, v)| (k.to_string(), *v)).collect()
            })
        }
        fn with_record(self, zone: &str, name: &str, t: RecordType) -> Self {
            self.with(|s| {
                s.spec.record.hosted_zone = zone.into();
                s.spec.record.name = name.into();
                s.spec.record.record_type = t;
            })
        }
        fn with_backend(self, b: Backend) -> Self {
            self.with(|s| {
                s.spec.weights.insert(b.name.clone(), 0);
                s.spec.backends.push(b);
            })
        }
        fn with_rollout(self, steps: Option<Vec<u32>>, step_percent: Option<u32>) -> Self {
            self.with(|s| {
                s.spec.rollout = Some(Rollout {
                    steps,
                    step_percent,
                    interval: HumanDuration(Duration::from_secs(60)),
                    drain_delay: None,
                    failure_threshold: 3,
                    on_gate_failure: OnGateFailure::Rollback,
                    paused: false,
                    progress_deadline: HumanDuration(Duration::from_secs(600)),
                    gate_interval: HumanDuration(Duration::from_secs(30)),
                    windows: vec![],
                    freeze: vec![],
                })
            })
        }
        fn with_gate(self, g: Gate) -> Self {
            self.with(|s| s.spec.gates.push(g))
        }
        fn problems(&self) -> Vec<(String, String)> {
            check(&self.0)
        }
        /// Exactly one problem, at `path`, whose message contains `text`.
        #[track_caller]
        fn expect(&self, path: &str, text: &str) {
            let problems = self.problems();
            assert!(
                problems.len() == 1 && problems[0].0 == path && problems[0].1.contains(text),
                "expected one problem at {path} containing {text:?}, got {problems:#?}"
            );
        }
        /// At least one problem at `path` whose message contains `text`.
        #[track_caller]
        fn expect_among(&self, path: &str, text: &str) {
            let problems = self.problems();
            assert!(
                problems.iter().any(|(p, m)| p == path && m.contains(text)),
                "expected a problem at {path} containing {text:?}, got {problems:#?}"
            );
        }
        #[track_caller]
        fn expect_valid(&self) {
            assert_eq!(self.problems(), vec![]);
        }
    }

    fn gate(name: &str) -> Gate {
        Gate {
            name: name.into(),
            cloudwatch_alarm: None,
            ecs_stable: None,
            target_health: None,
            prometheus: None,
            http: None,
            traffic_share: None,
        }
    }
    fn alarm_gate(name: &str) -> Gate {
        Gate {
            cloudwatch_alarm: Some(CloudwatchAlarmGate {
                alarm_names: vec!["a".into()],
                on_insufficient_data: Default::default(),
            }),
            ..gate(name)
        }
    }
    fn prom(min: Option<f64>, max: Option<f64>) -> PrometheusGate {
        PrometheusGate {
            address: "http://prometheus:9090".into(),
            query: "up".into(),
            min,
            max,
            on_no_data: OnNoData::Fail,
            timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
    fn http(url: &str, status: u16, timeout: Duration) -> HttpGate {
        HttpGate {
            url: url.into(),
            expect_status: status,
            timeout: HumanDuration(timeout),
        }
    }
    fn target_backend(name: &str, alias: bool, cname: bool) -> Backend {
        Backend {
            name: name.into(),
            api_gateway: None,
            ecs: None,
            target: Some(FixedTarget {
                alias: alias.then(|| AliasSpec {
                    dns_name: "lb.example.com".into(),
                    hosted_zone_id: "Z35SXDOTRQ7X7K".into(),
                    evaluate_target_health: true,
                }),
                cname: cname.then(|| "other.example.com".into()),
            }),
            request_metric: None,
        }
    }

    /// k target backends with 128-character names, the first taking all traffic.
    fn long_named(k: usize) -> Fixture {
        let mut f = Fixture::valid().with(|s| {
            s.spec.backends.clear();
            s.spec.weights.clear();
        });
        for i in 0..k {
            f = f.with_backend(target_backend(
                &format!("b{i:03}{}", "x".repeat(124)),
                true,
                false,
            ));
        }
        f.with(|s| *s.spec.weights.values_mut().next().unwrap() = 100)
    }

    #[test]
    fn state_must_fit_a_txt_value() {
        // Worked out by hand from the TXT format: fixed keys and values (heritage, a 63-char
        // owner, split "api", a 12-char gen, "progressing", step 1, a 10-digit since, empty
        // drain, a 20-digit rev) take 202 characters; each backend adds "<128 chars>:100" to
        // start and cur with a separator, 266 more. 14 backends: 3926 characters, 16 quoted
        // strings of at most 255, 3973 with quotes and spaces. 15 backends: 4192 characters
        // before quoting.
        long_named(14).expect_valid();
        long_named(15).expect("spec.backends", "more than Route53's 4000");
        // Drains count: an ECS backend's drain entry ("<name>:100@<10 digits>", 143 more with
        // its separator) needs its name again. 13 backends: 3660 characters as targets (3704
        // quoted), 5519 as ECS services.
        long_named(13).expect_valid();
        long_named(13)
            .with(|s| {
                for (i, b) in s.spec.backends.iter_mut().enumerate() {
                    b.target = None;
                    b.ecs = Some(EcsBackend {
                        cluster: "prod".into(),
                        service: format!("svc-{i}"),
                        tasks_at_full_traffic: 20,
                        min_tasks: 2,
                        max_tasks: Some(40),
                    });
                }
            })
            .expect("spec.backends", "more than Route53's 4000");
    }

    #[test]
    fn example_is_valid() {
        Fixture::valid().expect_valid();
        Fixture::valid()
            .with_rollout(Some(vec![5, 25, 50, 100]), None)
            .with_gate(alarm_gate("g"))
            .expect_valid();
    }

    #[test]
    fn api_version_kind_and_name() {
        Fixture::valid()
            .with(|s| s.api_version = "v1".into())
            .expect("apiVersion", "must be trafficshift.dev/v1alpha1");
        Fixture::valid()
            .with(|s| s.kind = "Split".into())
            .expect("kind", "kind must be TrafficSplit");
        for bad in ["", "Api", "a_b", &"a".repeat(64)] {
            Fixture::valid()
                .with(|s| s.metadata.name = bad.into())
                .expect("metadata.name", "is invalid");
        }
        Fixture::valid()
            .with(|s| s.metadata.name = "a".repeat(63))
            .expect_valid();
    }

    #[test]
    fn record_zone_and_name() {
        Fixture::valid()
            .with_record("", "api.abceed.example", RecordType::A)
            .expect("spec.record.hostedZone", "empty");
        Fixture::valid()
            .with_record("abceed..example", "api.abceed.example", RecordType::A)
            .expect("spec.record.hostedZone", "empty label");
        // Case-insensitive, trailing dot optional, zone id skips the containment checks.
        Fixture::valid()
            .with_record("ABCEED.example", "API.abceed.EXAMPLE.", RecordType::A)
            .expect_valid();
        Fixture::valid()
            .with_record("Z0123456789ABC", "api.other.example", RecordType::A)
            .expect_valid();
        Fixture::valid()
            .with_record(
                "/hostedzone/Z0123456789ABC",
                "api.other.example",
                RecordType::A,
            )
            .expect_valid();
        Fixture::valid()
            .with_record("abceed.example.", "api.other.example.", RecordType::A)
            .expect(
                "spec.record.name",
                "record name api.other.example. is outside hosted zone abceed.example.",
            );
        // A suffix that is not a label boundary is outside too.
        Fixture::valid()
            .with_record("abceed.example.", "xabceed.example.", RecordType::A)
            .expect("spec.record.name", "outside hosted zone");
        Fixture::valid()
            .with_record("abceed.example", "*.abceed.example", RecordType::A)
            .expect_valid();
        Fixture::valid()
            .with_record("abceed.example", "a.*.abceed.example", RecordType::A)
            .expect("spec.record.name", "'*' outside the first label");
        Fixture::valid()
            .with_record(
                "abceed.example",
                &format!("{}.abceed.example", "a".repeat(64)),
                RecordType::A,
            )
            .expect("spec.record.name", "label of 64 characters");
        let long = format!("{}abceed.example", "abcdefghi.".repeat(25));
        Fixture::valid()
            .with_record("abceed.example", &long, RecordType::A)
            .expect("spec.record.name", "at most 253");
        Fixture::valid()
            .with_record("abceed.example", "a b.abceed.example", RecordType::A)
            .expect("spec.record.name", "contains ' '");
    }

    #[test]
    fn cname_at_apex() {
        Fixture::valid()
            .with_record("abceed.example.", "abceed.example", RecordType::CNAME)
            .expect(
                "spec.record.type",
                "a CNAME cannot be at the zone apex abceed.example.; use type A with an alias",
            );
        Fixture::valid()
            .with_record("abceed.example.", "abceed.example", RecordType::A)
            .expect_valid();
        Fixture::valid()
            .with_record("abceed.example.", "www.abceed.example", RecordType::CNAME)
            .expect_valid();
    }

    #[test]
    fn ttl_range() {
        Fixture::valid()
            .with(|s| s.spec.record.ttl = -1)
            .expect("spec.record.ttl", "out of range 0-2147483647");
        Fixture::valid()
            .with(|s| s.spec.record.ttl = MAX_TTL + 1)
            .expect("spec.record.ttl", "out of range");
        Fixture::valid()
            .with(|s| s.spec.record.ttl = 0)
            .expect_valid();
        Fixture::valid()
            .with(|s| s.spec.record.ttl = MAX_TTL)
            .expect_valid();
    }

    #[test]
    fn backend_count_names_and_duplicates() {
        Fixture::valid()
            .with(|s| {
                s.spec.backends.clear();
                s.spec.weights.clear();
            })
            .expect("spec.backends", "at least one backend");
        // A single backend is a plain managed record.
        Fixture::valid()
            .with(|s| {
                s.spec.backends.truncate(1);
                s.spec.weights = [("lambda".to_string(), 100)].into();
            })
            .expect_valid();
        let many = (0..101).fold(Fixture::valid(), |f, i| {
            f.with_backend(target_backend(&format!("b{i}"), true, false))
        });
        assert!(many
            .problems()
            .iter()
            .any(|(p, m)| p == "spec.backends" && m.contains("at most 100")));
        Fixture::valid()
            .with(|s| {
                s.spec.backends[1].name = "lambda".into();
                s.spec.weights = [("lambda".to_string(), 100)].into();
            })
            .expect(
                "spec.backends[1].name",
                "duplicate backend name 'lambda' (first at index 0)",
            );
        Fixture::valid()
            .with_backend(target_backend("bad name", true, false))
            .expect(
                "spec.backends[2].name",
                "backend name 'bad name' is invalid",
            );
        Fixture::valid()
            .with_backend(target_backend(&"x".repeat(128), true, false))
            .expect_valid();
    }

    #[test]
    fn backend_kinds_exactly_one() {
        let none = Backend {
            name: "none".into(),
            api_gateway: None,
            ecs: None,
            target: None,
            request_metric: None,
        };
        Fixture::valid()
            .with_backend(none)
            .expect("spec.backends[2]", "found none");
        Fixture::valid()
            .with(|s| s.spec.backends[0].ecs = s.spec.backends[1].ecs.clone())
            .expect("spec.backends[0]", "found apiGateway and ecs");
    }

    #[test]
    fn target_alias_cname_and_record_type() {
        Fixture::valid()
            .with_backend(target_backend("t", true, true))
            .expect_among("spec.backends[2].target", "exactly one of alias or cname");
        Fixture::valid()
            .with_backend(target_backend("t", false, false))
            .expect("spec.backends[2].target", "exactly one of alias or cname");
        Fixture::valid()
            .with_backend(target_backend("t", false, true))
            .expect(
                "spec.backends[2].target.cname",
                "target.cname needs record type CNAME",
            );
        Fixture::valid()
            .with(|s| s.spec.record.record_type = RecordType::AAAA)
            .with_backend(target_backend("t", true, false))
            .expect_valid();
        Fixture::valid()
            .with_record("abceed.example", "www.abceed.example", RecordType::CNAME)
            .with_backend(target_backend("t", true, false))
            .expect(
                "spec.backends[2].target.alias",
                "target.alias needs record type A or AAAA",
            );
        // apiGateway and ecs backends work with CNAME records.
        Fixture::valid()
            .with_record("abceed.example", "www.abceed.example", RecordType::CNAME)
            .with_backend(target_backend("t", false, true))
            .expect_valid();
    }

    #[test]
    fn ecs_task_bounds() {
        let ecs = |f: fn(&mut EcsBackend)| {
            Fixture::valid().with(move |s| f(s.spec.backends[1].ecs.as_mut().unwrap()))
        };
        ecs(|e| e.tasks_at_full_traffic = 0)
            .expect("spec.backends[1].ecs.tasksAtFullTraffic", "at least 1");
        ecs(|e| e.max_tasks = Some(0)).expect("spec.backends[1].ecs.maxTasks", "at least 1");
        ecs(|e| e.max_tasks = Some(5001)).expect("spec.backends[1].ecs.maxTasks", "limit of 5000");
        ecs(|e| e.max_tasks = Some(5000)).expect_valid();
        ecs(|e| e.min_tasks = 41).expect(
            "spec.backends[1].ecs.minTasks",
            "minTasks 41 is greater than maxTasks 40",
        );
        ecs(|e| {
            e.max_tasks = None;
            e.tasks_at_full_traffic = 6000;
        })
        .expect("spec.backends[1].ecs", "defaults to 6000");
        ecs(|e| e.cluster = " ".into()).expect("spec.backends[1].ecs.cluster", "cluster is empty");
    }

    #[test]
    fn weights_rules() {
        Fixture::valid()
            .with_weights(&[("lambda", 50), ("fargate", 50)])
            .expect_valid();
        Fixture::valid()
            .with_weights(&[("lambda", 0), ("fargate", 150)])
            .expect(
                "spec.weights.fargate",
                "weight 150 for 'fargate' is out of range 0-100",
            );
        Fixture::valid()
            .with_weights(&[("lambda", 40), ("fargate", 50)])
            .expect("spec.weights", "weights sum to 90, must sum to 100");
        Fixture::valid()
            .with_weights(&[("lambda", 0), ("fargate", 0)])
            .expect("spec.weights", "all zero");
        Fixture::valid()
            .with_weights(&[("fargate", 100)])
            .expect("spec.weights", "backend 'lambda' has no weight");
        Fixture::valid()
            .with_weights(&[("lambda", 0), ("fargate", 100), ("ec2", 0)])
            .expect("spec.weights.ec2#key", "unknown backend 'ec2'");
        Fixture::valid()
            .with_weights(&[("lambda", 0), ("fargate", 100), ("a.b", 0)])
            .expect("spec.weights[\"a.b\"]#key", "unknown backend 'a.b'");
        // Large values must not overflow the sum.
        let huge = Fixture::valid()
            .with_weights(&[("lambda", u32::MAX), ("fargate", u32::MAX)])
            .problems();
        assert_eq!(huge.len(), 2, "{huge:?}");
    }

    #[test]
    fn rollout_rules() {
        let f = Fixture::valid;
        f().with_rollout(None, Some(10)).expect_valid();
        f().with_rollout(None, None)
            .expect("spec.rollout", "found neither");
        f().with_rollout(Some(vec![100]), Some(10))
            .expect("spec.rollout", "found both");
        f().with_rollout(Some(vec![10, 10, 100]), None).expect(
            "spec.rollout.steps[1]",
            "strictly increasing: 10 follows 10",
        );
        f().with_rollout(Some(vec![50, 20, 100]), None)
            .expect("spec.rollout.steps[1]", "strictly increasing");
        f().with_rollout(Some(vec![10, 50]), None)
            .expect("spec.rollout.steps[1]", "last step must be 100, found 50");
        f().with_rollout(Some(vec![0, 100]), None)
            .expect("spec.rollout.steps[0]", "out of range 1-100");
        f().with_rollout(Some(vec![]), None)
            .expect("spec.rollout.steps", "empty");
        let too_many: Vec<u32> = (1..=100).chain([100]).collect();
        assert!(f()
            .with_rollout(Some(too_many), None)
            .problems()
            .iter()
            .any(|(_, m)| m.contains("at most 100")));
        f().with_rollout(Some((1..=100).collect()), None)
            .expect_valid();
        f().with_rollout(None, Some(0))
            .expect("spec.rollout.stepPercent", "out of range 1-100");
        f().with_rollout(None, Some(101))
            .expect("spec.rollout.stepPercent", "out of range 1-100");
        let day = Duration::from_secs(86_400);
        f().with_rollout(None, Some(10))
            .with(|s| {
                s.spec.rollout.as_mut().unwrap().interval =
                    HumanDuration(day + Duration::from_secs(1))
            })
            .expect("spec.rollout.interval", "longer than 24h");
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().interval = HumanDuration(day))
            .expect_valid();
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().drain_delay = Some(HumanDuration(day * 2)))
            .expect("spec.rollout.drainDelay", "longer than 24h");
        let secs = |n: u64| HumanDuration(Duration::from_secs(n));
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().progress_deadline = secs(0))
            .expect("spec.rollout.progressDeadline", "out of range 1s-24h");
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().progress_deadline = secs(86_401))
            .expect("spec.rollout.progressDeadline", "out of range 1s-24h");
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().progress_deadline = secs(1))
            .expect_valid();
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().gate_interval = secs(0))
            .expect("spec.rollout.gateInterval", "out of range 1s-1h");
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().gate_interval = secs(3601))
            .expect("spec.rollout.gateInterval", "out of range 1s-1h");
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().gate_interval = secs(3600))
            .expect_valid();
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().failure_threshold = 0)
            .expect("spec.rollout.failureThreshold", "out of range 1-100");
        f().with_rollout(None, Some(10))
            .with(|s| s.spec.rollout.as_mut().unwrap().failure_threshold = 101)
            .expect("spec.rollout.failureThreshold", "out of range 1-100");
    }

    #[test]
    fn change_windows_and_freezes() {
        use crate::spec::{ChangeWindow, Freeze, Weekday};
        let win = |days: Vec<Weekday>, start: &str, end: &str, tz: &str| {
            let w = ChangeWindow {
                days,
                start: start.into(),
                end: end.into(),
                time_zone: tz.into(),
            };
            move |s: &mut TrafficSplit| s.spec.rollout.as_mut().unwrap().windows = vec![w]
        };
        let f = || Fixture::valid().with_rollout(None, Some(10));
        f().with(win(vec![Weekday::Mon], "09:00", "17:00", "Asia/Tokyo"))
            .expect_valid();
        f().with(win(vec![Weekday::Fri], "22:00", "06:00", "UTC"))
            .expect_valid();
        f().with(win(vec![Weekday::Sat], "00:00", "24:00", "Europe/Berlin"))
            .expect_valid();
        f().with(win(vec![Weekday::Mon], "09:00", "17:00", "Asia/Tokio"))
            .expect(
                "spec.rollout.windows[0].timeZone",
                "unknown time zone 'Asia/Tokio'",
            );
        f().with(win(vec![Weekday::Mon], "9:00", "17:00", "UTC"))
            .expect("spec.rollout.windows[0].start", "not a time HH:MM");
        f().with(win(vec![Weekday::Mon], "09:00", "25:00", "UTC"))
            .expect("spec.rollout.windows[0].end", "not a time HH:MM");
        f().with(win(vec![Weekday::Mon], "09:00", "09:00", "UTC"))
            .expect("spec.rollout.windows[0].end", "end equals start");
        f().with(win(vec![], "09:00", "17:00", "UTC"))
            .expect("spec.rollout.windows[0].days", "days is empty");
        let freeze = |from: &str, to: &str| {
            let fr = Freeze {
                from: from.into(),
                to: to.into(),
            };
            move |s: &mut TrafficSplit| s.spec.rollout.as_mut().unwrap().freeze = vec![fr]
        };
        f().with(freeze("2026-12-24T00:00:00Z", "2026-12-27T00:00:00+09:00"))
            .expect_valid();
        f().with(freeze("2026-12-24", "2026-12-27T00:00:00Z"))
            .expect("spec.rollout.freeze[0].from", "not an RFC 3339 time");
        f().with(freeze("2026-12-27T00:00:00Z", "2026-12-24T00:00:00Z"))
            .expect("spec.rollout.freeze[0].to", "is not after from");
    }

    #[test]
    fn gates_need_rollout_and_unique_names() {
        Fixture::valid()
            .with_gate(alarm_gate("g"))
            .expect("spec.gates", "gates need a rollout block");
        let f = || Fixture::valid().with_rollout(None, Some(10));
        f().with_gate(alarm_gate("g"))
            .with_gate(alarm_gate("g"))
            .expect(
                "spec.gates[1].name",
                "duplicate gate name 'g' (first at index 0)",
            );
        f().with_gate(alarm_gate("Bad"))
            .expect("spec.gates[0].name", "gate name 'Bad' is invalid");
        f().with_gate(gate("g"))
            .expect("spec.gates[0]", "found none");
        f().with_gate(Gate {
            http: Some(http("http://x/", 200, Duration::from_secs(1))),
            ..alarm_gate("g")
        })
        .expect("spec.gates[0]", "found cloudwatchAlarm and http");
        f().with_gate(Gate {
            cloudwatch_alarm: Some(CloudwatchAlarmGate {
                alarm_names: vec![],
                on_insufficient_data: Default::default(),
            }),
            ..gate("g")
        })
        .expect(
            "spec.gates[0].cloudwatchAlarm.alarmNames",
            "alarmNames is empty",
        );
    }

    #[test]
    fn gates_backend_refs() {
        let f = || Fixture::valid().with_rollout(None, Some(10));
        let stable = |b: &str| Gate {
            ecs_stable: Some(BackendRef { backend: b.into() }),
            ..gate("g")
        };
        let health = |b: &str, p: u32| Gate {
            target_health: Some(TargetHealthGate {
                backend: b.into(),
                min_healthy_percent: p,
            }),
            ..gate("g")
        };
        f().with_gate(stable("fargate")).expect_valid();
        f().with_gate(stable("lambda")).expect(
            "spec.gates[0].ecsStable.backend",
            "'lambda' is not an ecs backend",
        );
        f().with_gate(stable("nope"))
            .expect("spec.gates[0].ecsStable.backend", "'nope' is not a backend");
        f().with_gate(health("fargate", 0)).expect_valid();
        f().with_gate(health("lambda", 100))
            .expect("spec.gates[0].targetHealth.backend", "not an ecs backend");
        f().with_gate(health("fargate", 101)).expect(
            "spec.gates[0].targetHealth.minHealthyPercent",
            "out of range 0-100",
        );
    }

    #[test]
    fn gates_prometheus_and_http() {
        let f = || Fixture::valid().with_rollout(None, Some(10));
        let p = |p: PrometheusGate| Gate {
            prometheus: Some(p),
            ..gate("g")
        };
        f().with_gate(p(prom(None, Some(0.01)))).expect_valid();
        f().with_gate(p(prom(Some(0.0), Some(1.0)))).expect_valid();
        f().with_gate(p(prom(None, None)))
            .expect("spec.gates[0].prometheus", "needs min, max or both");
        f().with_gate(p(prom(Some(2.0), Some(1.0)))).expect(
            "spec.gates[0].prometheus.min",
            "min 2 is greater than max 1",
        );
        f().with_gate(p(prom(None, Some(f64::NAN))))
            .expect("spec.gates[0].prometheus.max", "finite");
        f().with_gate(p(PrometheusGate {
            address: "prometheus:9090".into(),
            ..prom(None, Some(1.0))
        }))
        .expect("spec.gates[0].prometheus.address", "must start with http");
        f().with_gate(p(PrometheusGate {
            query: " ".into(),
            ..prom(None, Some(1.0))
        }))
        .expect("spec.gates[0].prometheus.query", "query is empty");
        f().with_gate(p(PrometheusGate {
            timeout: HumanDuration(Duration::from_millis(99)),
            ..prom(None, Some(1.0))
        }))
        .expect("spec.gates[0].prometheus.timeout", "out of range 100ms-60s");
        let h = |u: &str, s: u16, t: u64| Gate {
            http: Some(http(u, s, Duration::from_millis(t))),
            ..gate("g")
        };
        f().with_gate(h("https://x.example/healthz", 200, 100))
            .expect_valid();
        f().with_gate(h("https://x.example/healthz", 200, 60_000))
            .expect_valid();
        f().with_gate(h("ftp://x.example/", 200, 1000))
            .expect("spec.gates[0].http.url", "must start with http");
        f().with_gate(h("not a url", 200, 1000))
            .expect("spec.gates[0].http.url", "is not a URL");
        f().with_gate(h("http://x/", 99, 1000))
            .expect("spec.gates[0].http.expectStatus", "100-599");
        f().with_gate(h("http://x/", 600, 1000))
            .expect("spec.gates[0].http.expectStatus", "100-599");
        f().with_gate(h("http://x/", 200, 60_001))
            .expect("spec.gates[0].http.timeout", "out of range");
        for url in [
            "http://169.254.169.254/latest/meta-data/iam/",
            "http://169.254.170.2/v2/credentials",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://2852039166/",
        ] {
            f().with_gate(h(url, 200, 1000))
                .expect("spec.gates[0].http.url", "link-local");
        }
        f().with_gate(p(PrometheusGate {
            address: "http://169.254.169.254:9090".into(),
            ..prom(None, Some(1.0))
        }))
        .expect("spec.gates[0].prometheus.address", "link-local");
        // Loopback is a run-time decision (--allow-loopback-gates), not a document error.
        f().with_gate(h("http://127.0.0.1:8080/healthz", 200, 1000))
            .expect_valid();
        // Errors do not echo credentials or queries.
        let problems = f()
            .with_gate(h("ftp://u:s3cret@x.example/?token=t0k", 200, 1000))
            .problems();
        let text = format!("{problems:?}");
        assert!(!text.contains("s3cret") && !text.contains("t0k"), "{text}");
    }

    #[test]
    fn join_key_quotes_odd_keys() {
        assert_eq!(join_key("", "spec"), "spec");
        assert_eq!(join_key("spec.weights", "a-b_1"), "spec.weights.a-b_1");
        assert_eq!(join_key("spec.weights", "a.b"), "spec.weights[\"a.b\"]");
        assert_eq!(join_key("spec.weights", ""), "spec.weights[\"\"]");
    }
}
