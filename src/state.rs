//! Rollout state kept in Route53 next to the records it governs: the TXT record
//! `_trafficshift.<record name>`, written in the same atomic change batch as the weights, so a
//! restart on any node resumes exactly where the last committed write left off.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::spec::Weights;

pub const HERITAGE: &str = "trafficshift";

/// The longest owner id (`--owner-id`); it is stored in every state TXT.
pub const MAX_OWNER_LEN: usize = 63;

/// The bounds of an Application Auto Scaling scalable target of an ECS service's desired count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalableTarget {
    pub min: i32,
    pub max: i32,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Progressing,
    Complete,
    RolledBack,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Complete => "complete",
            Phase::RolledBack => "rolledback",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "progressing" => Phase::Progressing,
            "complete" => Phase::Complete,
            "rolledback" => Phase::RolledBack,
            _ => return None,
        })
    }
}

/// A backend's recent high-water share, kept until `until` so ECS does not scale below what DNS
/// caches may still send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub share: u32,
    pub until: u64,
}

/// The persisted rollout state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutState {
    pub owner: String,
    pub split: String,
    /// Hash of what defines the rollout (weights, steps, backend names): a new value starts a new
    /// rollout from `current`.
    pub generation: String,
    pub phase: Phase,
    /// Steps applied so far (0 = the start split).
    pub step: usize,
    /// Unix time the current step was applied.
    pub since: u64,
    /// The split when this rollout began.
    pub start: Weights,
    /// The split trafficshift applied last (what Route53 must show).
    pub current: Weights,
    /// ECS backends still draining after their weight dropped.
    pub drains: BTreeMap<String, Drain>,
    /// Unix time the current step started waiting for the ECS capacity trafficshift asked for
    /// (TXT key `capwait`, written only while set; older TXTs have none). Kept here so
    /// `rollout.progressDeadline` counts from the first wait even across restarts.
    pub capacity_since: Option<u64>,
    /// Autoscaled ECS backends whose scalable-target bounds trafficshift raised: the user's own
    /// bounds, restored when the share falls back. TXT key `aas` (`name:min:max;...`), written
    /// only when not empty; TXTs without it decode to none.
    pub autoscaling: BTreeMap<String, ScalableTarget>,
    /// Writes of this record so far. Each write carries a new value, so the fenced write (DELETE
    /// of the exact value read + CREATE) never re-creates a value seen before, even when nothing
    /// else in the state changed. Absent (0) in TXTs written before fencing.
    pub rev: u64,
    /// Backends removed from the document whose weighted record is still in the set, with the
    /// Unix time their drain ends and the record may be deleted (TXT key `retire`,
    /// `name@until;...`, written only when not empty; older TXTs have none). Kept here so a
    /// restart neither forgets a retirement nor restarts its drain.
    pub retiring: BTreeMap<String, u64>,
    /// The latest on-call override (`trafficshift abort` ...), TXT keys `ovr*`, written only
    /// while there is one; older TXTs have none.
    pub control: Option<crate::overrides::Override>,
}

/// `a:1;b:99`, appended to `out`.
fn push_weights(out: &mut String, w: &Weights) {
    for (i, (k, v)) in w.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(k);
        out.push(':');
        push_decimal(out, u64::from(*v));
    }
}

/// `n` in decimal, appended to `out`: what `write!(out, "{n}")` writes, without the formatting
/// machinery (every cycle encodes every split's state and hashes its generation).
pub(crate) fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
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

impl RolloutState {
    /// The TXT payload, `key=value` pairs joined by commas.
    pub fn encode(&self) -> String {
        // One buffer: every cycle encodes every split's state to compare it with its TXT.
        let mut out = String::with_capacity(256);
        for (key, value) in [
            ("heritage=", HERITAGE),
            (",owner=", &self.owner),
            (",split=", &self.split),
            (",gen=", &self.generation),
            (",phase=", self.phase.as_str()),
        ] {
            out.push_str(key);
            out.push_str(value);
        }
        out.push_str(",step=");
        push_decimal(&mut out, self.step as u64);
        out.push_str(",since=");
        push_decimal(&mut out, self.since);
        out.push_str(",start=");
        push_weights(&mut out, &self.start);
        out.push_str(",cur=");
        push_weights(&mut out, &self.current);
        out.push_str(",drain=");
        for (i, (k, d)) in self.drains.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            out.push_str(k);
            out.push(':');
            push_decimal(&mut out, u64::from(d.share));
            out.push('@');
            push_decimal(&mut out, d.until);
        }
        out.push_str(",rev=");
        push_decimal(&mut out, self.rev);
        for (i, (k, b)) in self.autoscaling.iter().enumerate() {
            let sep = if i == 0 { ",aas=" } else { ";" };
            let _ = write!(out, "{sep}{k}:{}:{}", b.min, b.max);
        }
        if let Some(t) = self.capacity_since {
            let _ = write!(out, ",capwait={t}");
        }
        for (i, (k, t)) in self.retiring.iter().enumerate() {
            let sep = if i == 0 { ",retire=" } else { ";" };
            let _ = write!(out, "{sep}{k}@{t}");
        }
        out.push_str(&crate::overrides::encode(self.control.as_ref()));
        out
    }

    /// Parse a TXT payload; None if it is not ours or is malformed.
    pub fn decode(payload: &str) -> Option<RolloutState> {
        Self::decode_checked(payload).ok()
    }

    /// Parse a TXT payload, saying what is wrong when it cannot be read. Any input is accepted:
    /// the record is remote state that anyone with Route53 access can edit.
    pub fn decode_checked(payload: &str) -> Result<RolloutState, String> {
        Payload::parse(payload).decode()
    }

    /// Owner id only, for records written by another controller or a newer format.
    pub fn owner_of(payload: &str) -> Option<&str> {
        Payload::parse(payload).owner()
    }
}

/// A TXT payload split at its commas once: every cycle reads every split's TXT for its owner and
/// then its state, and one scan serves both.
#[derive(Debug)]
pub struct Payload<'a> {
    len: usize,
    /// Trimmed `key=value` pairs, for `decode`.
    fields: Fields<'a>,
    /// The first part that is not `key=value`.
    malformed: Option<&'a str>,
    /// Whether an untrimmed `heritage=trafficshift` is present, and the last untrimmed `owner=`
    /// (how `owner_of` has always read a payload: a record of another format still names its
    /// owner).
    heritage: bool,
    owner: Option<&'a str>,
}

impl<'a> Payload<'a> {
    pub fn parse(payload: &'a str) -> Self {
        let mut fields = Vec::with_capacity(16);
        let (mut malformed, mut heritage, mut owner) = (None, false, None);
        for part in payload.split(',') {
            match part.split_once('=') {
                Some((k, v)) => {
                    match (k, v) {
                        ("heritage", HERITAGE) => heritage = true,
                        ("owner", v) => owner = Some(v),
                        _ => {}
                    }
                    fields.push((k.trim(), v.trim()));
                }
                None => {
                    malformed.get_or_insert(part);
                }
            }
        }
        Payload {
            len: payload.len(),
            fields: Fields(fields),
            malformed,
            heritage,
            owner,
        }
    }

    /// The owner of a payload trafficshift wrote (`heritage=trafficshift`), whatever its format.
    pub fn owner(&self) -> Option<&'a str> {
        self.owner.filter(|_| self.heritage)
    }

    /// The state the payload holds, or what is wrong with it.
    pub fn decode(&self) -> Result<RolloutState, String> {
        if self.len > MAX_PAYLOAD_CHARS {
            return Err(format!(
                "{} characters, more than a TXT value holds",
                self.len
            ));
        }
        if let Some(part) = self.malformed {
            return Err(format!("{:?} is not key=value", cut(part)));
        }
        let kv = &self.fields;
        if kv.get("heritage") != Some(HERITAGE) {
            return Err(format!("heritage is not {HERITAGE}"));
        }
        let get = |k: &str| kv.get(k).ok_or_else(|| format!("no {k}="));
        let bad = |k: &str, v: &str| format!("{k}={:?} is malformed", cut(v));
        let drains = match kv.get("drain").unwrap_or("") {
            "" => BTreeMap::new(),
            s => s
                .split(';')
                .map(|e| {
                    let (k, rest) = e.split_once(':')?;
                    let (share, until) = rest.split_once('@')?;
                    Some((
                        k.to_string(),
                        Drain {
                            share: share.parse().ok()?,
                            until: until.parse().ok()?,
                        },
                    ))
                })
                .collect::<Option<_>>()
                .ok_or_else(|| bad("drain", s))?,
        };
        let autoscaling = match kv.get("aas").unwrap_or("") {
            "" => BTreeMap::new(),
            s => s
                .split(';')
                .map(|e| {
                    let mut it = e.splitn(3, ':');
                    let (k, min, max) = (it.next()?, it.next()?, it.next()?);
                    Some((
                        k.to_string(),
                        ScalableTarget {
                            min: min.parse().ok()?,
                            max: max.parse().ok()?,
                        },
                    ))
                })
                .collect::<Option<_>>()
                .ok_or_else(|| bad("aas", s))?,
        };
        let retiring = match kv.get("retire").unwrap_or("") {
            "" => BTreeMap::new(),
            s => s
                .split(';')
                .map(|e| {
                    let (k, until) = e.split_once('@')?;
                    Some((k.to_string(), until.parse().ok()?))
                })
                .collect::<Option<_>>()
                .ok_or_else(|| bad("retire", s))?,
        };
        let phase = get("phase")?;
        let (step, since, start, cur) = (get("step")?, get("since")?, get("start")?, get("cur")?);
        Ok(RolloutState {
            owner: get("owner")?.to_string(),
            split: get("split")?.to_string(),
            generation: get("gen")?.to_string(),
            phase: Phase::parse(phase).ok_or_else(|| format!("unknown phase {:?}", cut(phase)))?,
            step: step.parse().map_err(|_| bad("step", step))?,
            since: since.parse().map_err(|_| bad("since", since))?,
            start: parse_weights(start).ok_or_else(|| bad("start", start))?,
            current: parse_weights(cur).ok_or_else(|| bad("cur", cur))?,
            drains,
            rev: match kv.get("rev") {
                Some(v) => v.parse().map_err(|_| bad("rev", v))?,
                None => 0,
            },
            capacity_since: match kv.get("capwait") {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| bad("capwait", v))?),
            },
            autoscaling,
            retiring,
            control: crate::overrides::decode(kv)?,
        })
    }
}
/// The `key=value` fields of a TXT payload, in order; a key given twice reads as its last value.
/// A payload has about a dozen keys and every cycle decodes every split's: a scan of a vector
/// costs less than building a map each time.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Fields<'a> {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        Fields(iter.into_iter().collect())
    }
}

/// Route53's limit on one TXT record value: quotes and separating spaces included.
pub const MAX_TXT_VALUE_CHARS: usize = 4000;

/// The longest payload whose TXT value fits (each 255-character string adds two quotes and a
/// space).
const MAX_PAYLOAD_CHARS: usize = MAX_TXT_VALUE_CHARS;

/// At most 40 characters of remote input, for messages.
fn cut(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}

/// Length of the TXT value `to_txt_values` makes of a payload.
pub fn txt_value_len(payload: &str) -> usize {
    let chunks = payload.len().div_ceil(255).max(1);
    payload.len() + 3 * chunks - 1
}

/// TXT record values are quoted strings of at most 255 characters each.
pub fn to_txt_values(payload: &str) -> Vec<String> {
    let chunks: Vec<String> = payload
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    vec![chunks.join(" ")]
}

/// Join the quoted strings of TXT values back into the payload.
pub fn from_txt_values(values: &[String]) -> String {
    match quoted_runs(values) {
        Some(runs) => runs.collect(),
        None => txt_chars(values).collect(),
    }
}

/// Whether TXT values hold exactly `payload` (`from_txt_values(values) == payload` without
/// building the string: every cycle compares every split's TXT with its state).
pub fn txt_holds(values: &[String], payload: &str) -> bool {
    let Some(runs) = quoted_runs(values) else {
        return txt_chars(values).eq(payload.chars());
    };
    let mut rest = payload;
    for run in runs {
        match rest.strip_prefix(run) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// The runs of text inside quotes, whole, when no value holds a backslash (what trafficshift
/// writes); then they are exactly what `txt_chars` yields, without going char by char.
fn quoted_runs(values: &[String]) -> Option<impl Iterator<Item = &str>> {
    (!values.iter().any(|v| v.contains('\\')))
        .then(|| values.iter().flat_map(|v| v.split('"').skip(1).step_by(2)))
}

/// The payload's characters: what is inside the quotes, backslash escapes resolved.
fn txt_chars(values: &[String]) -> impl Iterator<Item = char> + '_ {
    values.iter().flat_map(|v| {
        let (mut in_quote, mut escaped) = (false, false);
        v.chars()
            .filter_map(move |ch| match (in_quote, escaped, ch) {
                (true, true, c) => {
                    escaped = false;
                    Some(c)
                }
                (true, false, '\\') => {
                    escaped = true;
                    None
                }
                (_, false, '"') => {
                    in_quote = !in_quote;
                    None
                }
                (true, false, c) => Some(c),
                (false, _, _) => None,
            })
    })
}

/// Name of the ownership/state TXT record for a record name (both fully qualified).
pub fn txt_name(record_name: &str) -> String {
    format!("_trafficshift.{record_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RolloutState {
        RolloutState {
            owner: "prod-eu".into(),
            split: "api".into(),
            generation: "abc123def456".into(),
            phase: Phase::Progressing,
            step: 2,
            since: 1_764_000_000,
            start: [("fargate".to_string(), 0), ("lambda".to_string(), 100)].into(),
            current: [("fargate".to_string(), 25), ("lambda".to_string(), 75)].into(),
            drains: [(
                "fargate".to_string(),
                Drain {
                    share: 50,
                    until: 1_764_000_120,
                },
            )]
            .into(),
            capacity_since: None,
            autoscaling: BTreeMap::new(),
            rev: 7,
            retiring: BTreeMap::new(),
            control: None,
        }
    }

    #[test]
    fn autoscaling_bounds_round_trip_and_are_optional() {
        let mut s = RolloutState { rev: 0, ..sample() };
        // Without bounds the payload has no `aas` key, and a TXT without one still reads.
        assert!(!s.encode().contains("aas="), "{}", s.encode());
        let old = "heritage=trafficshift,owner=prod-eu,split=api,gen=abc123def456,phase=progressing,step=2,since=1764000000,start=fargate:0;lambda:100,cur=fargate:25;lambda:75,drain=fargate:50@1764000120";
        assert_eq!(RolloutState::decode(old), Some(s.clone()));
        s.autoscaling
            .insert("fargate".into(), ScalableTarget { min: 1, max: 10 });
        s.autoscaling
            .insert("web".into(), ScalableTarget { min: 0, max: 4 });
        assert!(
            s.encode().ends_with(",aas=fargate:1:10;web:0:4"),
            "{}",
            s.encode()
        );
        let back = RolloutState::decode(&from_txt_values(&to_txt_values(&s.encode())));
        assert_eq!(back, Some(s));
        assert_eq!(
            RolloutState::decode(&format!("{old},aas=fargate:1")),
            None,
            "a malformed value is not ours to guess"
        );
    }

    /// Every released TXT format still decodes, and the format with retirements round-trips.
    #[test]
    fn released_and_retiring_fixtures_decode() {
        for line in include_str!("../tests/fixtures/state-v1.txt").lines() {
            let s = RolloutState::decode_checked(&from_txt_values(&[line.to_string()]))
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(s.retiring.is_empty(), "v1 has no retirements");
            assert!(!s.encode().contains("retire="), "no key while none");
        }
        let v2: Vec<RolloutState> = include_str!("../tests/fixtures/state-v2-retire.txt")
            .lines()
            .map(|l| {
                RolloutState::decode_checked(&from_txt_values(&[l.to_string()]))
                    .unwrap_or_else(|e| panic!("{l}: {e}"))
            })
            .collect();
        assert_eq!(v2.len(), 2);
        assert_eq!(v2[0].retiring, BTreeMap::new());
        assert_eq!(v2[0].current.get("lambda"), Some(&0));
        assert_eq!(
            v2[1].retiring,
            [("lambda".to_string(), 1_764_000_700)].into()
        );
        for s in v2 {
            assert_eq!(RolloutState::decode(&s.encode()), Some(s));
        }
        let old = sample().encode();
        assert_eq!(
            RolloutState::decode(&format!("{old},retire=lambda@soon")),
            None,
            "a malformed value is not ours to guess"
        );
    }

    #[test]
    fn round_trips_through_txt() {
        let s = sample();
        let values = to_txt_values(&s.encode());
        assert!(values[0].starts_with("\"heritage=trafficshift,"));
        let back = RolloutState::decode(&from_txt_values(&values)).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn capacity_wait_is_an_optional_key() {
        // A TXT written before `capwait` existed (this exact text) still decodes.
        let old = "heritage=trafficshift,owner=prod-eu,split=api,gen=abc123def456,phase=progressing,step=2,since=1764000000,start=fargate:0;lambda:100,cur=fargate:25;lambda:75,drain=fargate:50@1764000120";
        let mut s = RolloutState { rev: 0, ..sample() };
        assert_eq!(RolloutState::decode(old), Some(s.clone()));
        assert_eq!(s.encode(), format!("{old},rev=0"), "no key while no wait");
        s.capacity_since = Some(1_764_000_030);
        assert_eq!(s.encode(), format!("{old},rev=0,capwait=1764000030"));
        assert_eq!(RolloutState::decode(&s.encode()), Some(s));
        assert_eq!(
            RolloutState::decode(&format!("{old},capwait=soon")),
            None,
            "a malformed value is not ours to guess"
        );
    }

    #[test]
    fn long_payloads_are_split_into_255_char_strings() {
        let mut s = sample();
        for i in 0..40 {
            s.current.insert(format!("backend-number-{i}"), 0);
        }
        let values = to_txt_values(&s.encode());
        assert!(values[0]
            .split("\" \"")
            .all(|p| p.trim_matches('"').len() <= 255));
        assert_eq!(RolloutState::decode(&from_txt_values(&values)).unwrap(), s);
    }

    proptest::proptest! {
        /// The whole-run reading of unescaped values is the char-by-char one.
        #[test]
        fn quoted_runs_read_like_chars(values in proptest::collection::vec("[a-z\"\\\\ ,=]{0,12}", 0..4)) {
            let slow: String = txt_chars(&values).collect();
            proptest::prop_assert_eq!(&from_txt_values(&values), &slow);
            proptest::prop_assert!(txt_holds(&values, &slow));
            let longer = format!("{slow}x");
            proptest::prop_assert!(!txt_holds(&values, &longer));
        }
    }

    #[test]
    fn foreign_txt_is_not_ours() {
        assert_eq!(RolloutState::decode("v=spf1 -all"), None);
        assert_eq!(
            RolloutState::owner_of("heritage=external-dns,owner=x"),
            None
        );
        assert_eq!(
            RolloutState::owner_of("heritage=trafficshift,owner=other,split=x"),
            Some("other")
        );
    }

    #[test]
    fn the_encoding_is_the_released_text() {
        // What every release since fencing wrote for this state, byte for byte: a change here
        // would make every controller rewrite every TXT once after an upgrade.
        assert_eq!(
            sample().encode(),
            "heritage=trafficshift,owner=prod-eu,split=api,gen=abc123def456,phase=progressing,\
             step=2,since=1764000000,start=fargate:0;lambda:100,cur=fargate:25;lambda:75,\
             drain=fargate:50@1764000120,rev=7"
        );
    }

    proptest::proptest! {
        #[test]
        fn push_decimal_writes_what_display_writes(n in proptest::num::u64::ANY) {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            proptest::prop_assert_eq!(s, format!("x{n}"));
        }
    }

    #[test]
    fn one_scan_names_the_owner_of_a_payload_it_cannot_decode() {
        // A newer or damaged format still names its owner (classify then reports the state as
        // unreadable instead of calling the record foreign), and the decode error is the first
        // part that is not key=value.
        let p = Payload::parse("heritage=trafficshift,owner=a,junk,owner=b,split=x");
        assert_eq!(
            p.owner(),
            Some("b"),
            "the last owner= counts, like decode's fields"
        );
        assert_eq!(p.decode(), Err("\"junk\" is not key=value".to_string()));
        // The owner is read untrimmed, the state trimmed: as before the single scan.
        let spaced = sample().encode().replacen("heritage=", " heritage=", 1);
        assert_eq!(Payload::parse(&spaced).owner(), None);
        assert_eq!(Payload::parse(&spaced).decode(), Ok(sample()));
        let ok = sample().encode();
        let p = Payload::parse(&ok);
        assert_eq!(p.owner(), Some(sample().owner.as_str()));
        assert_eq!(p.decode(), Ok(sample()));
    }
}
