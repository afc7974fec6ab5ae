//! The long-running loop: load documents, reconcile the splits that are due, choose requeues
//! (one error policy, jittered exponential backoff per split, reset on success, periodic resync
//! always), publish status and metrics.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::error::Invalid;
use crate::metrics::METRICS;
use crate::reconcile::{self, Context, GateRecord, Report, Work};
use crate::rollout::{Note, SplitState};
use crate::server::{split_json, AppState, StatusJson};
use crate::spec::{fqdn, DocCache, Loaded, SplitDoc, TrafficSplit};
use crate::status::{
    now_unix, now_unix_ms, rfc3339, BackendStatus, Condition, ConfigStatus, ControllerStatus,
    EcsStatus, Event, GateStatus, SplitStatus,
};
use crate::Error;

pub const MAX_EVENTS: usize = 20;
/// Longest event message kept: events are shown by `status` and logged, and may quote remote text.
const EVENT_MAX: usize = 1024;

/// How long a shutdown waits for an in-flight reconcile before abandoning it.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Options {
    pub paths: Vec<PathBuf>,
    pub resync: Duration,
    pub owner: String,
    pub dry_run: bool,
    pub once: bool,
    /// Webhooks told about the events recorded (`--notify`); the default tells nobody.
    pub notify: crate::notify::Notifier,
}

/// Everything the controller remembers about one split. Only conveniences live here: what must
/// survive a restart is in Route53.
struct Managed {
    doc: SplitDoc,
    /// The current document for this split was rejected; the last good one is still in force.
    rejected: Option<String>,
    gates: BTreeMap<String, GateRecord>,
    next_due: Instant,
    backoff: Option<Box<dyn Iterator<Item = Duration> + Send>>,
    last: Option<Report>,
    last_error: Option<Error>,
    last_reconcile: Option<u64>,
    last_success: Option<u64>,
    first_seen: u64,
    events: VecDeque<Event>,
    conditions: Vec<Condition>,
    state: &'static str,
    notify: crate::notify::Notifier,
    /// This split's `/status` JSON as last published, and the traffic measurement it shows.
    /// Cleared by every change of the fields above it shows, so a publish serializes only the
    /// splits that changed.
    status_json: Option<(Option<u64>, Bytes)>,
}

impl Managed {
    fn new(doc: SplitDoc, notify: crate::notify::Notifier) -> Self {
        Managed {
            doc,
            rejected: None,
            gates: BTreeMap::new(),
            next_due: Instant::now(),
            backoff: None,
            last: None,
            last_error: None,
            last_reconcile: None,
            last_success: None,
            first_seen: now_unix(),
            events: VecDeque::new(),
            conditions: Vec::new(),
            state: "Progressing",
            notify,
            status_json: None,
        }
    }

    fn event(&mut self, warning: bool, reason: &str, message: String) {
        self.event_of(warning, reason, message, None);
    }

    /// An event of the cycle that produced `report` (else of the last one), also sent to the
    /// webhooks.
    fn event_of(&mut self, warning: bool, reason: &str, message: String, report: Option<&Report>) {
        let message = self.record(warning, reason, message);
        let before = self.last.as_ref();
        let report = report.or(before);
        self.notify.emit(
            reason,
            &message,
            &self.doc.split,
            report,
            before,
            &self.gates,
        );
    }

    /// An event for the status and the log only.
    fn record(&mut self, warning: bool, reason: &str, message: String) -> String {
        self.status_json = None;
        let message = crate::sanitize::clean(&message, EVENT_MAX);
        if warning {
            warn!(split = self.doc.split.name(), reason, "{message}");
        } else {
            info!(split = self.doc.split.name(), reason, "{message}");
        }
        self.events.push_back(Event {
            time: rfc3339(now_unix()),
            type_: if warning { "Warning" } else { "Normal" }.into(),
            reason: reason.into(),
            message: message.clone(),
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
        message
    }

    fn backoff_delay(&mut self) -> Duration {
        let it = self.backoff.get_or_insert_with(|| {
            Box::new(
                ExponentialBuilder::default()
                    .with_jitter()
                    .with_min_delay(Duration::from_secs(1))
                    .with_max_delay(Duration::from_secs(300))
                    .without_max_times()
                    .build(),
            )
        });
        it.next().unwrap_or(Duration::from_secs(300))
    }
}

pub struct Controller {
    ctx: Arc<Context>,
    opts: Options,
    app: AppState,
    splits: BTreeMap<String, Managed>,
    config_errors: Vec<Invalid>,
    last_load: Option<u64>,
    first_cycle_done: bool,
    /// Parsed documents per file: a file event parses only the files it names.
    docs: DocCache,
}

/// How often a split in motion is looked at: often enough to notice stability and gates, a few
/// times per hold interval.
fn poll_interval(doc: &SplitDoc, resync: Duration) -> Duration {
    let third = doc.split.spec.interval() / 3;
    third
        .clamp(Duration::from_secs(1), Duration::from_secs(10))
        // Gates run on their own clock; a short gateInterval must not wait for a slow poll.
        .min(doc.split.spec.gate_interval().max(Duration::from_secs(1)))
        .min(resync)
}

impl Controller {
    pub fn new(ctx: Arc<Context>, opts: Options, app: AppState) -> Self {
        Controller {
            ctx,
            opts,
            app,
            splits: BTreeMap::new(),
            config_errors: Vec::new(),
            last_load: None,
            first_cycle_done: false,
            docs: DocCache::default(),
        }
    }

    /// Re-read every config path. Bad documents change nothing: their split keeps its last good
    /// version and reports why.
    pub fn reload(&mut self) {
        let loaded = self.docs.load_all(&self.opts.paths);
        self.apply_loaded(loaded);
    }

    /// Re-read only the files a watch event named; the others come from the cache.
    pub fn reload_files(&mut self, files: &[PathBuf]) {
        let loaded = self.docs.load_changed(&self.opts.paths, files);
        self.apply_loaded(loaded);
    }

    fn apply_loaded(&mut self, loaded: Loaded) {
        self.last_load = Some(now_unix());
        METRICS.config_last_reload.set(now_unix() as f64);
        let valid = loaded.errors.is_empty();
        METRICS.config_valid.set(i64::from(valid));
        METRICS
            .config_reloads
            .with_label_values(&[if valid { "success" } else { "error" }])
            .inc();
        for e in &loaded.errors {
            warn!(error = %e, "document rejected; the last good version stays in force");
        }
        // The traffic poller measures the same documents.
        self.ctx
            .traffic
            .set_splits(loaded.docs.iter().map(|d| d.split.clone()).collect());

        let mut seen = BTreeMap::new();
        for doc in loaded.docs {
            seen.insert(doc.split.name().to_string(), ());
            let name = doc.split.name().to_string();
            let account = self.ctx.account_of(&doc.split);
            crate::traffic::split_info(
                &doc.split,
                &self.ctx.owner,
                account.as_deref().unwrap_or(""),
            );
            match self.splits.get_mut(&name) {
                Some(m) => {
                    if m.rejected.take().is_some() || m.doc.hash != doc.hash {
                        m.status_json = None;
                    }
                    if m.doc.hash != doc.hash {
                        METRICS.init_split(&name, &gate_names(&doc.split));
                        info!(split = %name, from = %m.doc.hash, to = %doc.hash, "document changed");
                        m.doc = doc;
                        m.next_due = Instant::now();
                        m.backoff = None;
                    }
                }
                None => {
                    METRICS.init_split(&name, &gate_names(&doc.split));
                    info!(split = %name, file = %doc.file.display(), "managing split");
                    let notify = self.opts.notify.clone();
                    self.splits.insert(name, Managed::new(doc, notify));
                }
            }
        }

        // A split whose file now fails to load keeps its last good document; one whose file
        // loaded fine without it (or is gone) is no longer managed.
        let bad_files: Vec<&PathBuf> = loaded.errors.iter().map(|e| &e.pos.file).collect();
        let mut removed = Vec::new();
        for (name, m) in self.splits.iter_mut() {
            if seen.contains_key(name) {
                continue;
            }
            let errs: Vec<String> = loaded
                .errors
                .iter()
                .filter(|e| e.pos.file == m.doc.file)
                .map(|e| e.to_string())
                .collect();
            if bad_files.contains(&&m.doc.file) {
                let msg = errs.join("; ");
                if m.rejected.as_deref() != Some(msg.as_str()) {
                    m.status_json = None;
                    m.rejected = Some(msg.clone());
                    m.event(
                        true,
                        "ConfigRejected",
                        format!(
                            "document rejected, keeping generation {}: {msg}",
                            m.doc.hash
                        ),
                    );
                }
            } else {
                removed.push(name.clone());
            }
        }
        for name in removed {
            if let Some(m) = self.splits.remove(&name) {
                warn!(split = %name, record = %m.doc.split.spec.record.name, "split removed from the config: no longer managed; its Route53 records and ECS counts are left as they are");
                METRICS.forget_split(&name);
            }
        }
        self.config_errors = loaded.errors;
    }

    /// Reconcile the splits that are due. Returns whether all of them succeeded.
    pub async fn run_due(&mut self) -> bool {
        let now_i = Instant::now();
        let work: Vec<Work> = self
            .splits
            .values()
            .filter(|m| m.next_due <= now_i)
            .map(|m| Work {
                doc: m.doc.clone(),
                gates: m.gates.clone(),
            })
            .collect();
        if work.is_empty() {
            return true;
        }
        let started = std::time::Instant::now();
        let outcomes = reconcile::cycle(&self.ctx, work, now_unix_ms(), true).await;
        let elapsed = started.elapsed().as_secs_f64();
        let mut all_ok = true;
        for o in outcomes {
            let Some(m) = self.splits.get_mut(&o.name) else {
                continue;
            };
            m.status_json = None;
            let now = now_unix();
            METRICS.splits.update(&o.name, |s| {
                for (g, r) in &o.gates {
                    // A check ran this cycle if the record moved; it failed if it says so.
                    let checked = m.gates.get(g).is_none_or(|b| {
                        b.last_check != r.last_check
                            || b.consecutive_failures != r.consecutive_failures
                    });
                    if checked && r.last_check.is_some() && r.passing == Some(false) {
                        s.count_gate_failure(g);
                    }
                }
                s.observe_duration(elapsed);
                s.count_reconcile(o.result.is_ok());
                match &o.result {
                    Ok(_) => s.last_success = Some(now as f64),
                    Err(e) => s.count_error(e.kind()),
                }
            });
            m.gates = o.gates;
            m.last_reconcile = Some(now);
            match o.result {
                Ok(report) => {
                    m.last_success = Some(now);
                    m.last_error = None;
                    m.backoff = None;
                    record_report(m, &report, self.ctx.dry_run);
                    m.next_due = Instant::now() + requeue(&m.doc, &report, self.opts.resync, now);
                    m.last = Some(report);
                }
                Err(e) => {
                    all_ok = false;
                    let delay = if e.is_retryable() {
                        m.backoff_delay()
                    } else {
                        // Conflicts and rejected requests are not hammered: retry at resync.
                        m.backoff_delay().max(self.opts.resync)
                    };
                    let msg = e.to_string();
                    let reason = match e {
                        Error::Conflict(_) => "Conflict",
                        _ => "ReconcileFailed",
                    };
                    if m.last_error.as_ref().map(|x| x.to_string()) != Some(msg.clone()) {
                        m.event(true, reason, msg.clone());
                    }
                    error!(split = %o.name, kind = e.kind(), retry_in = ?delay, "reconcile failed: {msg}");
                    m.state = if matches!(e, Error::Conflict(_)) {
                        "Conflict"
                    } else {
                        m.state
                    };
                    m.last_error = Some(e);
                    m.next_due = Instant::now() + delay;
                }
            }
            if m.rejected.is_some() {
                m.state = "Invalid";
            }
            update_conditions(m);
            publish_metrics(&o.name, m);
        }
        all_ok
    }

    /// The status snapshot served on `/status`.
    pub fn status(&self) -> ControllerStatus {
        ControllerStatus {
            splits: self
                .splits
                .values()
                .map(|m| split_status(m, &self.ctx.traffic))
                .collect(),
            ..self.status_head()
        }
    }

    /// The status without its splits.
    fn status_head(&self) -> ControllerStatus {
        ControllerStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            generated_at: rfc3339(now_unix()),
            owner_id: self.ctx.owner.clone(),
            dry_run: self.ctx.dry_run,
            config: ConfigStatus {
                paths: self
                    .opts
                    .paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
                valid: self.config_errors.is_empty(),
                errors: self.config_errors.iter().map(|e| e.to_string()).collect(),
                last_load: self.last_load.map(rfc3339),
            },
            splits: Vec::new(),
        }
    }

    /// Serve the current status: each split serialized on its own, and only when it changed
    /// since the last publish (tens of MB at 10,000 splits, most of them at rest).
    fn publish(&mut self) {
        let traffic = &self.ctx.traffic;
        let mut splits = Vec::with_capacity(self.splits.len());
        for (name, m) in self.splits.iter_mut() {
            let measured = traffic.measured_at(name);
            let json = match &m.status_json {
                Some((at, json)) if *at == measured => Some(json.clone()),
                _ => {
                    let json = split_json(&split_status(m, traffic));
                    m.status_json = json.clone().map(|j| (measured, j));
                    json
                }
            };
            splits.extend(json.map(|j| (name.clone(), j)));
        }
        let head = self.status_head();
        self.app.publish(StatusJson::from_parts(&head, splits));
    }

    /// Run until `shutdown` flips to true. With `once`, one cycle over every split.
    pub async fn run(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
        mut reload_rx: mpsc::Receiver<()>,
        mut watcher: Option<crate::watch::Watcher>,
    ) -> bool {
        self.reload();
        if let Some(w) = watcher.as_mut() {
            w.rewatch(&self.opts.paths);
        }
        let mut next_resync = Instant::now() + self.opts.resync;
        loop {
            let (ok, stop) = {
                let cycle = self.run_due();
                tokio::pin!(cycle);
                tokio::select! {
                    ok = &mut cycle => (ok, false),
                    _ = shutdown.changed() => {
                        // Drain: let the in-flight AWS calls finish, within a bound.
                        info!("shutdown requested: finishing the in-flight reconcile (at most {DRAIN_GRACE:?})");
                        match tokio::time::timeout(DRAIN_GRACE, &mut cycle).await {
                            Ok(ok) => (ok, true),
                            Err(_) => {
                                warn!("in-flight reconcile abandoned after {DRAIN_GRACE:?}; the next start re-reads live state");
                                (false, true)
                            }
                        }
                    }
                }
            };
            if stop {
                self.publish();
                return true;
            }
            if !self.first_cycle_done {
                self.first_cycle_done = true;
                self.app.ready.store(true, Ordering::SeqCst);
            }
            self.publish();
            if self.opts.once {
                return ok && self.config_errors.is_empty();
            }
            let wake = self
                .splits
                .values()
                .map(|m| m.next_due)
                .min()
                .unwrap_or(next_resync)
                .min(next_resync);
            tokio::select! {
                _ = shutdown.changed() => {
                    info!("shutting down");
                    return true;
                }
                Some(()) = reload_rx.recv() => {
                    let changed = watcher.as_ref().map(|w| w.take()).unwrap_or_default();
                    if changed.all || changed.files.is_empty() {
                        self.reload();
                        if let Some(w) = watcher.as_mut() { w.rewatch(&self.opts.paths); }
                    } else {
                        // Only files changed: the directories and symlinks watched are the same.
                        let files: Vec<PathBuf> = changed.files.into_iter().collect();
                        self.reload_files(&files);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= next_resync {
                        // Fallback for lost watch events, and the periodic full resync.
                        self.reload();
                        if let Some(w) = watcher.as_mut() { w.rewatch(&self.opts.paths); }
                        for m in self.splits.values_mut() {
                            m.next_due = m.next_due.min(Instant::now());
                        }
                        next_resync = Instant::now() + self.opts.resync;
                    }
                }
            }
        }
    }
}

/// When to look at a split again. A split at rest waits for the shared resync tick (so every
/// resting split of a zone is read in the same listing pass); one in motion is polled sooner.
fn requeue(doc: &SplitDoc, r: &Report, resync: Duration, now: u64) -> Duration {
    // Past the next shared tick: the tick itself makes the split due.
    let mut d = resync * 2;
    match r.state {
        SplitState::Progressing | SplitState::Degraded | SplitState::Paused => {
            d = d.min(poll_interval(doc, resync));
        }
        _ => {}
    }
    if r.waiting_for.is_some() {
        d = d.min(poll_interval(doc, resync));
    }
    if let Some(until) = r.drain_until {
        d = d.min(Duration::from_secs(until.saturating_sub(now) + 1));
        if r.pending_change.is_some() {
            // The drain counts from INSYNC, which only a later cycle's GetChange sees.
            d = d.min(poll_interval(doc, resync));
        }
    }
    if let Some(at) = r.next_step_at {
        d = d.min(Duration::from_secs(at.saturating_sub(now)).max(Duration::from_millis(200)));
    }
    if !r.applied && r.has_changes() {
        // Dry-run or a partial apply: look again at the normal pace, not faster.
        d = d.min(resync);
    }
    d
}

fn record_report(m: &mut Managed, r: &Report, dry_run: bool) {
    let notes: Vec<Note> = r.notes.clone();
    for n in notes {
        if r.applied || n.reason == "GateFailed" {
            m.event_of(n.warning, n.reason, n.message, Some(r));
        } else if dry_run {
            // Not applied: nothing to tell the webhooks.
            m.record(
                n.warning,
                n.reason,
                format!("dry-run, not applied: {}", n.message),
            );
        }
    }
    if r.applied && (r.drift_corrected || r.rolled_back) {
        METRICS.splits.update(m.doc.split.name(), |s| {
            if r.drift_corrected {
                s.count_drift_correction();
            }
            if r.rolled_back {
                s.count_rollback();
            }
        });
    }
    if dry_run && r.has_changes() {
        for c in &r.route53 {
            info!(split = m.doc.split.name(), record = %c.change.record.name, set_id = c.change.record.set_identifier.as_deref().unwrap_or("-"), action = ?c.change.action, reason = %c.why, "dry-run: would change Route53");
        }
        for c in &r.ecs_changes {
            info!(split = m.doc.split.name(), cluster = %c.cluster, service = %c.service, from = c.from, to = c.to, "dry-run: would set ECS desiredCount");
        }
        for c in &r.autoscaling {
            info!(split = m.doc.split.name(), cluster = %c.cluster, service = %c.service, from_min = c.from.min, from_max = c.from.max, to_min = c.to.min, to_max = c.to.max, "dry-run: would set scalable target bounds");
        }
    }
    if let Some(n) = crate::overrides::transition_note(m.state, r.state, r.control.as_ref()) {
        // Of this cycle: its report carries the override (the actor) and the new state.
        m.event_of(n.warning, n.reason, n.message, Some(r));
    }
    m.state = r.state.as_str();
}

fn set_condition(m: &mut Managed, type_: &str, status: bool, reason: &str, message: String) {
    let status_s = if status { "True" } else { "False" }.to_string();
    let now = rfc3339(now_unix());
    let gen = m.doc.hash.clone();
    match m.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status_s {
                c.last_transition_time = now;
            }
            c.status = status_s;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = gen;
        }
        None => m.conditions.push(Condition {
            type_: type_.into(),
            status: status_s,
            reason: reason.into(),
            message,
            last_transition_time: now,
            observed_generation: gen,
        }),
    }
}

fn update_conditions(m: &mut Managed) {
    let state = m.state;
    let err = m.last_error.as_ref().map(|e| e.to_string());
    let waiting = m
        .last
        .as_ref()
        .and_then(|r| r.waiting_for.clone())
        .unwrap_or_default();
    let in_sync = m
        .last
        .as_ref()
        .is_some_and(|r| r.route53.is_empty() || r.applied);
    let (ready, reason, msg) = if let Some(e) = &err {
        (
            false,
            if state == "Conflict" {
                "Conflict"
            } else {
                "ReconcileError"
            },
            e.clone(),
        )
    } else if in_sync {
        (
            true,
            "InSync",
            "Route53 and ECS match the current step".to_string(),
        )
    } else {
        (false, "Pending", waiting.clone())
    };
    set_condition(m, "Ready", ready, reason, msg);
    let (prog, reason) = match state {
        "Progressing" if waiting.starts_with("capacity") || waiting.contains("ECS") => {
            (true, "WaitingForCapacity")
        }
        "Progressing" if waiting.contains("gates") => (true, "WaitingForGates"),
        "Progressing" if waiting.starts_with("waiting for window") => (true, "WaitingForWindow"),
        "Progressing" if waiting.starts_with("waiting for the change freeze") => {
            (true, "ChangeFreeze")
        }
        "Progressing" if waiting.contains("interval") => (true, "HoldInterval"),
        "Progressing" => (true, "Advancing"),
        "Complete" => (false, "RolloutComplete"),
        "RolledBack" => (false, "RolledBack"),
        "Paused" => (false, "Paused"),
        "Degraded" => (false, "GateFailing"),
        _ => (false, state),
    };
    set_condition(m, "Progressing", prog, reason, waiting.clone());
    let degraded =
        matches!(state, "Degraded" | "RolledBack" | "Conflict" | "Invalid") || err.is_some();
    let (reason, msg) = match state {
        "Degraded" if waiting.starts_with("capacity") => {
            ("ProgressDeadlineExceeded", waiting.clone())
        }
        "Degraded" => ("GateFailing", waiting.clone()),
        "RolledBack" => (
            "RolledBack",
            "a gate failed or capacity did not serve in time (see events); rolled back to the start split until the document changes".into(),
        ),
        "Conflict" => ("Conflict", err.clone().unwrap_or_default()),
        "Invalid" => ("InvalidDocument", m.rejected.clone().unwrap_or_default()),
        _ if err.is_some() => ("ReconcileError", err.clone().unwrap_or_default()),
        _ => ("Healthy", String::new()),
    };
    set_condition(m, "Degraded", degraded, reason, msg);
    let by_spec = m.doc.split.spec.rollout.as_ref().is_some_and(|r| r.paused);
    let paused = by_spec || matches!(state, "Paused" | "Suspended");
    set_condition(
        m,
        "Paused",
        paused,
        match (by_spec, state) {
            (_, "Suspended") => "Suspended",
            (true, _) => "PausedBySpec",
            (false, "Paused") => "PausedByOverride",
            _ => "NotPaused",
        },
        String::new(),
    );
}

fn publish_metrics(name: &str, m: &Managed) {
    METRICS.splits.update(name, |s| {
        s.set_state(m.state);
        for (g, r) in &m.gates {
            let gate = s.gate(g);
            gate.passing = Some(i64::from(r.passing == Some(true)));
            gate.consecutive_failures = Some(i64::from(r.consecutive_failures));
            // Absent until a check measures something: a gate without a value has nothing to plot.
            gate.value = r.value.filter(|v| v.is_finite());
        }
        let Some(r) = &m.last else { return };
        for b in &m.doc.split.spec.backends {
            let bn = b.name.as_str();
            let series = s.backend(bn);
            series.target_weight = Some(f64::from(*r.target.get(bn).unwrap_or(&0)) / 100.0);
            series.step_weight = Some(f64::from(*r.step_weights.get(bn).unwrap_or(&0)) / 100.0);
            series.observed_weight = r
                .observed
                .as_ref()
                .map(|o| f64::from(*o.get(bn).unwrap_or(&0)) / 100.0);
            if let Some(e) = r.ecs.get(bn) {
                let desired = r
                    .ecs_changes
                    .iter()
                    .find(|c| c.backend == bn && r.applied)
                    .map(|c| c.to)
                    .unwrap_or(e.desired);
                series.ecs_desired = Some(i64::from(desired));
                series.ecs_running = Some(i64::from(e.running));
            }
        }
        s.drift = Some(r.drift);
        s.progress = Some(r.progress);
        s.step = Some(r.step as i64);
        s.steps = Some(r.steps as i64);
    });
}

fn split_status(m: &Managed, traffic: &crate::traffic::Store) -> SplitStatus {
    let split = &m.doc.split;
    let r = m.last.as_ref();
    let measured = traffic.get(split.name());
    SplitStatus {
        name: split.name().into(),
        record: format!(
            "{} {}",
            fqdn(&split.spec.record.name),
            split.spec.record.record_type.as_str()
        ),
        hosted_zone: split.spec.record.hosted_zone.clone(),
        state: m.state.into(),
        conditions: m.conditions.clone(),
        step: r.map(|r| r.step).unwrap_or(0),
        steps: r
            .map(|r| r.steps)
            .unwrap_or_else(|| split.spec.steps().len()),
        progress: r.map(|r| r.progress).unwrap_or(0.0),
        drift: r.map(|r| r.drift).unwrap_or(0.0),
        backends: split
            .spec
            .backends
            .iter()
            .map(|b| BackendStatus {
                name: b.name.clone(),
                target_weight: *split.spec.weights.get(&b.name).unwrap_or(&0),
                step_weight: r
                    .and_then(|r| r.step_weights.get(&b.name).copied())
                    .unwrap_or(0),
                observed_weight: r
                    .and_then(|r| r.observed.as_ref())
                    .and_then(|o| o.get(&b.name).copied()),
                ecs: r.and_then(|r| r.ecs.get(&b.name)).map(|s| EcsStatus {
                    desired: s.desired,
                    running: s.running,
                    stable: s.is_stable(),
                }),
                traffic_share: measured
                    .as_ref()
                    .and_then(|t| t.backends.get(&b.name))
                    .and_then(|t| t.share),
            })
            .collect(),
        gates: split
            .spec
            .gates
            .iter()
            .map(|g| {
                let rec = m.gates.get(&g.name).cloned().unwrap_or_default();
                GateStatus {
                    name: g.name.clone(),
                    passing: rec.passing,
                    consecutive_failures: rec.consecutive_failures,
                    value: rec.value,
                    message: rec.message,
                    last_check: rec.last_check.map(rfc3339),
                }
            })
            .collect(),
        next_step_at: r.and_then(|r| r.next_step_at).map(rfc3339),
        waiting_for: r.and_then(|r| r.waiting_for.clone()),
        last_reconcile: m.last_reconcile.map(rfc3339),
        last_success: m.last_success.map(rfc3339),
        last_error: m.last_error.as_ref().map(|e| e.to_string()),
        observed_generation: m.doc.hash.clone(),
        first_seen: rfc3339(m.first_seen),
        events: m.events.iter().cloned().collect(),
        override_: r
            .and_then(|r| r.control.as_ref())
            .map(|o| crate::status::OverrideStatus {
                action: o.action.as_str().into(),
                actor: o.actor.clone(),
                at: rfc3339(o.at),
                reason: o.reason.clone(),
                done: o.done,
            }),
    }
}

/// The gate names of a split: the `gate` label values its metrics carry.
fn gate_names(split: &TrafficSplit) -> Vec<String> {
    split.spec.gates.iter().map(|g| g.name.clone()).collect()
}
