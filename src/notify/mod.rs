//! Webhook notifications of rollout events: `--notify URL` (repeatable).
//!
//! The controller hands every event it records to [`Notifier::emit`], which maps the event reason
//! to a notification kind (most reasons notify nobody), builds the payload facts and puts them on a
//! bounded per-sink queue with `try_send`: a reconcile never waits for a webhook. A task per sink
//! delivers with 3 tries, exponential backoff and a per-request timeout, so a dead endpoint delays
//! only its own queue; when a queue is full the notification is dropped and counted.
//!
//! Webhook URLs carry their credential in the path (Slack's are bearer secrets): they are never
//! logged, never in `/status`, and delivery errors are logged with the host only.
//!
//! A new sink is one file (its payload) and one [`Sink`] variant.

mod cloudevents;
mod slack;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use hmac::{Hmac, Mac};
use prometheus::IntCounterVec;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::reconcile::{GateRecord, Report};
use crate::spec::{fqdn, TrafficSplit, Weights};
use crate::status::{now_unix, now_unix_ms, rfc3339};

/// Notifications waiting per sink before new ones are dropped: a rollout makes a handful per
/// step, so this is hours of backlog for a slow endpoint.
pub const QUEUE: usize = 256;
/// Tries per notification (the first and two retries).
pub const TRIES: usize = 3;
/// One HTTP request, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// DriftCorrected notifies at most this often per split: a fight with a hand edit or another tool
/// would otherwise post every resync.
pub const DRIFT_EVERY: Duration = Duration::from_secs(600);
/// Header carrying `sha256=<hex HMAC-SHA256 of the body>` when `--notify-secret-file` is set.
pub const SIGNATURE_HEADER: &str = "X-Trafficshift-Signature";
/// The `outcome` label values of `trafficshift_notifications_total`.
pub const OUTCOMES: [&str; 3] = ["sent", "failed", "dropped"];

static NOTIFICATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "trafficshift_notifications_total",
            "Webhook notifications by outcome: sent, failed (after every try) or dropped (queue full).",
        ),
        &["outcome"],
    )
    .expect("valid metric");
    crate::metrics::METRICS
        .registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    for o in OUTCOMES {
        c.with_label_values(&[o]);
    }
    c
});

fn count(outcome: &str) {
    NOTIFICATIONS.with_label_values(&[outcome]).inc();
}

/// What happened, as webhook consumers see it: CloudEvents `type` is `dev.trafficshift.<Kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Kind {
    RolloutStarted,
    StepAdvanced,
    RolloutComplete,
    RolledBack,
    Aborted,
    Paused,
    Resumed,
    Suspended,
    Degraded,
    Conflict,
    ConfigInvalid,
    DriftCorrected,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RolloutStarted => "RolloutStarted",
            Kind::StepAdvanced => "StepAdvanced",
            Kind::RolloutComplete => "RolloutComplete",
            Kind::RolledBack => "RolledBack",
            Kind::Aborted => "Aborted",
            Kind::Paused => "Paused",
            Kind::Resumed => "Resumed",
            Kind::Suspended => "Suspended",
            Kind::Degraded => "Degraded",
            Kind::Conflict => "Conflict",
            Kind::ConfigInvalid => "ConfigInvalid",
            Kind::DriftCorrected => "DriftCorrected",
        }
    }

    fn warning(self) -> bool {
        matches!(
            self,
            Kind::RolledBack
                | Kind::Aborted
                | Kind::Suspended
                | Kind::Degraded
                | Kind::Conflict
                | Kind::ConfigInvalid
        )
    }
}

/// The notifications an event recorded with `reason` makes, given the split state the same cycle
/// reported (`Complete` after the last step). Reasons of control overrides (Aborted, Paused,
/// Resumed, Suspended) map by name, so they notify as soon as the controller records them.
pub fn kinds(reason: &str, state: Option<&str>) -> Vec<Kind> {
    match reason {
        "RolloutStarted" => vec![Kind::RolloutStarted],
        "StepAdvanced" if state == Some("Complete") => {
            vec![Kind::StepAdvanced, Kind::RolloutComplete]
        }
        "StepAdvanced" => vec![Kind::StepAdvanced],
        "RolloutComplete" => vec![Kind::RolloutComplete],
        "RolledBack" => vec![Kind::RolledBack],
        "Aborted" => vec![Kind::Aborted],
        "Paused" => vec![Kind::Paused],
        "Resumed" => vec![Kind::Resumed],
        "Suspended" => vec![Kind::Suspended],
        "Degraded" => vec![Kind::Degraded],
        // A failure that holds (onGateFailure: hold) leaves the split Degraded; one that rolls
        // back is reported by its RolledBack event.
        "GateFailed" | "ProgressDeadlineExceeded" | "RolloutFailed"
            if state == Some("Degraded") =>
        {
            vec![Kind::Degraded]
        }
        "Conflict" => vec![Kind::Conflict],
        "ConfigRejected" | "ConfigInvalid" => vec![Kind::ConfigInvalid],
        "DriftCorrected" => vec![Kind::DriftCorrected],
        _ => vec![],
    }
}

/// One notification: the facts every sink renders its payload from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(skip)]
    pub kind: Kind,
    /// Unique per notification (CloudEvents `id`).
    #[serde(skip)]
    pub id: String,
    /// RFC 3339.
    #[serde(skip)]
    pub time: String,
    pub split: String,
    /// `name TYPE` of the weighted record, e.g. `api.example.com. A`.
    pub record: String,
    pub hosted_zone: String,
    pub state: Option<String>,
    /// Weights Route53 showed before this cycle (None before the first one).
    pub from: Option<Weights>,
    /// Weights after it (for RolloutStarted: the rollout's target).
    pub to: Option<Weights>,
    pub step: usize,
    pub steps: usize,
    /// The failing gate, for RolledBack and Degraded.
    pub gate: Option<String>,
    pub message: String,
    /// Who asked for it, for control overrides (abort, pause, ...): an IAM identity.
    pub actor: Option<String>,
}

impl Notification {
    /// `report`: the cycle that recorded the event; `before`: the cycle before it.
    pub fn new(
        kind: Kind,
        split: &TrafficSplit,
        report: Option<&Report>,
        before: Option<&Report>,
        gates: &std::collections::BTreeMap<String, GateRecord>,
        message: &str,
    ) -> Notification {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let gate = matches!(kind, Kind::RolledBack | Kind::Degraded)
            .then(|| {
                gates
                    .iter()
                    .find(|(_, r)| r.passing == Some(false))
                    .map(|(g, _)| g.clone())
            })
            .flatten();
        Notification {
            kind,
            id: format!("{}-{}-{seq}", split.name(), now_unix_ms()),
            time: rfc3339(now_unix()),
            split: split.name().to_string(),
            record: format!(
                "{} {}",
                fqdn(&split.spec.record.name),
                split.spec.record.record_type.as_str()
            ),
            hosted_zone: split.spec.record.hosted_zone.clone(),
            state: report.map(|r| r.state.as_str().to_string()),
            // A cycle's `observed` is what Route53 shows after its write: the previous cycle's
            // is what this one started from.
            from: before.and_then(|r| r.observed.clone()),
            to: report.map(|r| {
                if kind == Kind::RolloutStarted {
                    r.target.clone()
                } else {
                    r.step_weights.clone()
                }
            }),
            step: report.map_or(0, |r| r.step),
            steps: report.map_or_else(|| split.spec.steps().len(), |r| r.steps),
            gate,
            message: message.to_string(),
            // Who asked, when an on-call override (`trafficshift abort` ...) made this happen.
            actor: matches!(
                kind,
                Kind::Aborted | Kind::Paused | Kind::Resumed | Kind::Suspended
            )
            .then(|| {
                report
                    .and_then(|r| r.control.as_ref())
                    .map(|o| o.actor.clone())
            })
            .flatten(),
        }
    }
}

/// Where notifications go. The payload is chosen by the URL.
#[derive(Clone)]
pub enum Sink {
    /// A Slack incoming webhook (`https://hooks.slack.com/...`).
    Slack(reqwest::Url),
    /// Anything else: a CloudEvents 1.0 structured-mode JSON event.
    CloudEvents(reqwest::Url),
}

impl Sink {
    pub fn parse(url: &str) -> Result<Sink, String> {
        let u = reqwest::Url::parse(url.trim())
            .map_err(|e| format!("a --notify URL is not a URL ({e})"))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(format!(
                "a --notify URL must be http(s)://host/...; found scheme {} on host {}",
                u.scheme(),
                u.host_str().unwrap_or("-")
            ));
        }
        Ok(if u.host_str() == Some("hooks.slack.com") {
            Sink::Slack(u)
        } else {
            Sink::CloudEvents(u)
        })
    }

    fn url(&self) -> &reqwest::Url {
        match self {
            Sink::Slack(u) | Sink::CloudEvents(u) => u,
        }
    }

    /// The host only: what logs may show of a webhook URL.
    pub fn redacted(&self) -> String {
        let u = self.url();
        format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("-"))
    }

    /// Content type and body.
    pub fn payload(&self, n: &Notification, source: &str) -> (&'static str, Vec<u8>) {
        let (ct, v) = match self {
            Sink::Slack(_) => ("application/json", slack::payload(n)),
            Sink::CloudEvents(_) => (cloudevents::CONTENT_TYPE, cloudevents::payload(n, source)),
        };
        (ct, serde_json::to_vec(&v).unwrap_or_default())
    }
}

/// Never shows the URL.
impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sink({})", self.redacted())
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` keyed by `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

pub struct Config {
    pub urls: Vec<String>,
    /// Key of the signature header; None sends no signature.
    pub secret: Option<Vec<u8>>,
    /// CloudEvents `source`, e.g. `/trafficshift/<owner id>`.
    pub source: String,
}

/// Handle the controller keeps; cheap to clone. The default sends nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    queues: Vec<mpsc::Sender<Notification>>,
    /// Last DriftCorrected notification per split.
    drift: Arc<Mutex<HashMap<String, Instant>>>,
    /// Splits whose Degraded was notified and not left since: every failing check records an
    /// event, the webhook hears of the state once.
    degraded: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Notifier({} sink(s))", self.queues.len())
    }
}

impl Notifier {
    /// Check the URLs and start one delivery task per sink (in the current tokio runtime).
    pub fn start(cfg: Config) -> Result<Notifier, String> {
        LazyLock::force(&NOTIFICATIONS);
        let sinks = cfg
            .urls
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| Sink::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if sinks.is_empty() {
            // No client: building one loads and parses the system's trusted roots.
            return Ok(Notifier::default());
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            // A redirect would send the body (and signature) somewhere the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the notification HTTP client: {e}"))?;
        let secret = cfg.secret.map(Arc::new);
        let source: Arc<str> = cfg.source.into();
        let mut queues = Vec::new();
        for sink in sinks {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push(tx);
            tracing::info!(sink = %sink.redacted(), "notifications enabled");
            tokio::spawn(deliver_all(
                sink,
                rx,
                client.clone(),
                secret.clone(),
                source.clone(),
            ));
        }
        Ok(Notifier {
            queues,
            ..Notifier::default()
        })
    }

    pub fn enabled(&self) -> bool {
        !self.queues.is_empty()
    }

    /// Called for every event the controller records. Never waits.
    pub fn emit(
        &self,
        reason: &str,
        message: &str,
        split: &TrafficSplit,
        report: Option<&Report>,
        before: Option<&Report>,
        gates: &std::collections::BTreeMap<String, GateRecord>,
    ) {
        if !self.enabled() {
            return;
        }
        let state = report.map(|r| r.state.as_str());
        for kind in kinds(reason, state) {
            if kind == Kind::DriftCorrected && !self.admit_drift(split.name(), Instant::now()) {
                continue;
            }
            if !self.admit_degraded(split.name(), kind, state) {
                continue;
            }
            self.enqueue(Notification::new(
                kind, split, report, before, gates, message,
            ));
        }
    }

    /// DriftCorrected at most once per split per [`DRIFT_EVERY`].
    fn admit_drift(&self, split: &str, now: Instant) -> bool {
        let mut last = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(split) {
            Some(t) if now.saturating_duration_since(*t) < DRIFT_EVERY => false,
            _ => {
                last.insert(split.to_string(), now);
                true
            }
        }
    }

    /// Degraded once per stay in that state.
    fn admit_degraded(&self, split: &str, kind: Kind, state: Option<&str>) -> bool {
        let mut seen = self.degraded.lock().unwrap_or_else(|e| e.into_inner());
        if state != Some("Degraded") {
            seen.remove(split);
        }
        kind != Kind::Degraded || seen.insert(split.to_string())
    }

    pub fn enqueue(&self, n: Notification) {
        for q in &self.queues {
            if q.try_send(n.clone()).is_err() {
                count("dropped");
                warn!(split = %n.split, kind = n.kind.as_str(), "notification dropped: the webhook queue is full (the endpoint is slow or down)");
            }
        }
    }
}

async fn deliver_all(
    sink: Sink,
    mut rx: mpsc::Receiver<Notification>,
    client: reqwest::Client,
    secret: Option<Arc<Vec<u8>>>,
    source: Arc<str>,
) {
    while let Some(n) = rx.recv().await {
        let (ct, body) = sink.payload(&n, &source);
        let sig = secret.as_ref().map(|s| signature(s, &body));
        let send = || async {
            let mut req = client
                .post(sink.url().clone())
                .header(reqwest::header::CONTENT_TYPE, ct)
                .body(body.clone());
            if let Some(sig) = &sig {
                req = req.header(SIGNATURE_HEADER, sig);
            }
            let resp = req.send().await.map_err(|e| e.without_url().to_string())?;
            let status = resp.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {status}"))
            }
        };
        let result = send
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(500))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .with_max_times(TRIES - 1),
            )
            .sleep(tokio::time::sleep)
            .notify(|e, d| debug!(sink = %sink.redacted(), kind = n.kind.as_str(), retry_in = ?d, "notification failed, retrying: {e}"))
            .await;
        match result {
            Ok(()) => count("sent"),
            Err(e) => {
                count("failed");
                warn!(sink = %sink.redacted(), split = %n.split, kind = n.kind.as_str(), "notification not delivered after {TRIES} tries: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_kinds() {
        // (recorded reason, state reported by the same cycle, notifications)
        let table: [(&str, Option<&str>, &[Kind]); 12] = [
            (
                "RolloutStarted",
                Some("Progressing"),
                &[Kind::RolloutStarted],
            ),
            ("StepAdvanced", Some("Progressing"), &[Kind::StepAdvanced]),
            (
                "StepAdvanced",
                Some("Complete"),
                &[Kind::StepAdvanced, Kind::RolloutComplete],
            ),
            ("RolledBack", Some("RolledBack"), &[Kind::RolledBack]),
            ("GateFailed", Some("RolledBack"), &[]),
            ("GateFailed", Some("Degraded"), &[Kind::Degraded]),
            ("Aborted", None, &[Kind::Aborted]),
            ("Suspended", None, &[Kind::Suspended]),
            ("Conflict", None, &[Kind::Conflict]),
            ("ConfigRejected", None, &[Kind::ConfigInvalid]),
            ("DriftCorrected", Some("Complete"), &[Kind::DriftCorrected]),
            ("StateInvalid", None, &[]),
        ];
        for (reason, state, want) in table {
            assert_eq!(kinds(reason, state), want, "{reason} {state:?}");
        }
    }

    #[test]
    fn signature_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sinks_by_url_and_urls_never_shown() {
        let s = Sink::parse("https://hooks.slack.com/services/T0/B0/SECRETTOKEN").unwrap();
        assert!(matches!(s, Sink::Slack(_)));
        assert_eq!(s.redacted(), "https://hooks.slack.com/…");
        assert!(!format!("{s:?}").contains("SECRET"));
        let s = Sink::parse("http://127.0.0.1:9/hook?token=SECRET").unwrap();
        assert!(matches!(s, Sink::CloudEvents(_)));
        assert!(!format!("{s:?}").contains("SECRET"));
        assert!(Sink::parse("ftp://example.com/x").is_err());
        assert!(Sink::parse("not a url").is_err());
    }

    #[tokio::test]
    async fn drift_notifies_once_per_split_per_ten_minutes() {
        let n = Notifier::default();
        let t = Instant::now();
        assert!(n.admit_drift("api", t));
        assert!(!n.admit_drift("api", t + Duration::from_secs(599)));
        assert!(
            n.admit_drift("web", t + Duration::from_secs(1)),
            "per split"
        );
        assert!(n.admit_drift("api", t + Duration::from_secs(600)));
    }

    #[test]
    fn degraded_notifies_once_per_stay() {
        let n = Notifier::default();
        let d = Some("Degraded");
        assert!(n.admit_degraded("api", Kind::Degraded, d));
        assert!(
            !n.admit_degraded("api", Kind::Degraded, d),
            "second failing check"
        );
        assert!(n.admit_degraded("web", Kind::Degraded, d), "per split");
        assert!(n.admit_degraded("api", Kind::StepAdvanced, Some("Progressing")));
        assert!(n.admit_degraded("api", Kind::Degraded, d), "degraded again");
    }

    #[tokio::test]
    async fn a_dead_endpoint_never_blocks_emit() {
        // A listener that accepts and never answers: every request hangs until its timeout.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = l.accept().await {
                conns.push(c);
            }
        });
        let n = Notifier::start(Config {
            urls: vec![format!("http://{addr}/hook")],
            secret: None,
            source: "/trafficshift/test".into(),
        })
        .unwrap();
        let split = TrafficSplit::test().with_steps(&[50, 100], 10);
        let dropped = || NOTIFICATIONS.with_label_values(&["dropped"]).get();
        let before = dropped();
        let started = std::time::Instant::now();
        // More than the queue holds: the rest are dropped, and none of it waits.
        for _ in 0..QUEUE + 50 {
            n.emit(
                "StepAdvanced",
                "step 1/2",
                &split,
                None,
                None,
                &Default::default(),
            );
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "emit waited {:?}",
            started.elapsed()
        );
        assert!(dropped() - before >= 49, "dropped {}", dropped() - before);
    }
}
