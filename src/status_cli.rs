//! `trafficshift status`: read a running controller's `/status` and show it like kubectl does.

use std::io::Write;
use std::time::Duration;

use crate::status::{ControllerStatus, SplitStatus};
use crate::{Error, Result};

/// States that make `--exit-code` return 1.
const FAILING_STATES: [&str; 5] = ["Degraded", "RolledBack", "Aborted", "Conflict", "Invalid"];
/// How long one request to the controller may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Redraw period of `--watch`.
const WATCH_PERIOD: Duration = Duration::from_secs(2);
/// ANSI: clear the screen, cursor to the top left.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";
/// Longest NEXT cell in the narrow table; `-o wide` shows it whole.
const NEXT_WIDTH: usize = 32;

/// Output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// A table of splits, or a describe view of one split.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    Json,
    Yaml,
}

/// Options of `trafficshift status`.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// Base URL of the controller's HTTP server, e.g. `http://127.0.0.1:8080`.
    pub endpoint: String,
    /// Show one split (describe view) instead of all.
    pub name: Option<String>,
    pub output: Output,
    /// Redraw every 2 s until Ctrl-C.
    pub watch: bool,
    /// Return 1 when a shown split is Degraded, RolledBack, Aborted, Conflict or Invalid, or the config is
    /// invalid.
    pub exit_code: bool,
}

/// Run the command; returns the process exit code: 0, or 1 with `--exit-code` when a shown split
/// is unhealthy. When no status could be read from the controller the error is
/// `Error::Unreachable` (the caller exits 69: a monitor must tell "the controller is down" from "a
/// split is degraded"); other errors (unknown split, bad `--endpoint`) are for the caller to print
/// and exit 1.
pub async fn run(opts: StatusOptions) -> Result<i32> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("trafficshift/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| Error::Http(format!("cannot build an HTTP client: {e}")))?;
    let url = status_url(&opts.endpoint)?;

    if !opts.watch {
        let status = fetch(&client, &url).await?;
        let text = render(&status, &opts, crate::status::now_unix())?;
        print_flush(&text);
        return Ok(result_code(&status, &opts));
    }

    let mut last: Option<ControllerStatus> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let fetched = tokio::select! {
            r = fetch(&client, &url) => r,
            _ = &mut ctrl_c => break,
        };
        let now = crate::status::now_unix();
        let body = match fetched {
            Ok(status) => {
                let text = render(&status, &opts, now).unwrap_or_else(|e| format!("{e}\n"));
                last = Some(status);
                text
            }
            // Keep watching: the controller may be restarting.
            Err(e) => format!("{e}\n"),
        };
        let header = format!(
            "Every {}s: trafficshift status {}    {}\n\n",
            WATCH_PERIOD.as_secs(),
            opts.name.as_deref().unwrap_or(""),
            crate::status::rfc3339(now)
        );
        print_flush(&format!("{CLEAR_SCREEN}{header}{body}"));
        tokio::select! {
            _ = tokio::time::sleep(WATCH_PERIOD) => {}
            _ = &mut ctrl_c => break,
        }
    }
    Ok(last
        .map(|s| result_code(&s, &opts))
        .unwrap_or(crate::cli::exit::UNAVAILABLE))
}

fn print_flush(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn result_code(status: &ControllerStatus, opts: &StatusOptions) -> i32 {
    if opts.exit_code {
        exit_code(status, opts.name.as_deref())
    } else {
        0
    }
}

/// 1 when the config is invalid or a selected split (all when `name` is None) is Degraded,
/// RolledBack, Aborted, Conflict or Invalid; else 0.
pub fn exit_code(status: &ControllerStatus, name: Option<&str>) -> i32 {
    let bad_split = status
        .splits
        .iter()
        .filter(|s| name.is_none_or(|n| s.name == n))
        .any(|s| FAILING_STATES.contains(&s.state.as_str()));
    i32::from(!status.config.valid || bad_split)
}

/// `{endpoint}/status`; an endpoint without a scheme is taken as http.
pub(crate) fn status_url(endpoint: &str) -> Result<reqwest::Url> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    let full = if endpoint.contains("://") {
        format!("{endpoint}/status")
    } else {
        format!("http://{endpoint}/status")
    };
    reqwest::Url::parse(&full).map_err(|e| {
        Error::Http(format!(
            "invalid --endpoint {:?}: {e}",
            crate::sanitize::redact_url(endpoint)
        ))
    })
}

pub(crate) async fn fetch(
    client: &reqwest::Client,
    url: &reqwest::Url,
) -> Result<ControllerStatus> {
    let shown = crate::sanitize::redact_url(url.as_str());
    let resp = client.get(url.clone()).send().await.map_err(|e| {
        Error::Unreachable(format!(
            "cannot reach trafficshift at {shown}: {}; is the controller running? use --endpoint",
            reason(&e)
        ))
    })?;
    let code = resp.status();
    if !code.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let body = crate::sanitize::clean(body.trim(), 200);
        return Err(Error::Unreachable(format!(
            "{shown} answered {code}: {body}"
        )));
    }
    resp.json::<ControllerStatus>().await.map_err(|e| {
        Error::Unreachable(format!(
            "{shown} did not answer a trafficshift status ({}); is --endpoint the controller's HTTP address?",
            crate::gates::root_cause(&e)
        ))
    })
}

/// Why a request failed, in a few words: "connection refused", "timed out after 10s", or the
/// innermost error.
fn reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("timed out after {}s", REQUEST_TIMEOUT.as_secs());
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return "connection refused".into();
            }
        }
        cur = err.source();
    }
    crate::gates::root_cause(e)
}

/// The text to print for `status` (whole or one split) in the chosen format.
pub fn render(status: &ControllerStatus, opts: &StatusOptions, now_unix: u64) -> Result<String> {
    let split =
        match &opts.name {
            None => None,
            Some(name) => Some(status.splits.iter().find(|s| &s.name == name).ok_or_else(
                || {
                    let known: Vec<&str> = status.splits.iter().map(|s| s.name.as_str()).collect();
                    let known = if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    };
                    Error::NotFound(format!(
                        "split {name:?} not found at {}; configured splits: {known}",
                        opts.endpoint
                    ))
                },
            )?),
        };
    let to_json = |r: serde_json::Result<String>| {
        r.map(|s| s + "\n")
            .map_err(|e| Error::Other(format!("cannot encode status as JSON: {e}")))
    };
    let to_yaml = |r: std::result::Result<String, serde_saphyr::ser::Error>| {
        r.map_err(|e| Error::Other(format!("cannot encode status as YAML: {e}")))
    };
    match (opts.output, split) {
        (Output::Json, None) => to_json(serde_json::to_string_pretty(status)),
        (Output::Json, Some(s)) => to_json(serde_json::to_string_pretty(s)),
        (Output::Yaml, None) => to_yaml(serde_saphyr::to_string(status)),
        (Output::Yaml, Some(s)) => to_yaml(serde_saphyr::to_string(s)),
        (Output::Table | Output::Wide, Some(s)) => Ok(render_describe(s, now_unix)),
        (Output::Table, None) => Ok(table_view(status, now_unix, false)),
        (Output::Wide, None) => Ok(table_view(status, now_unix, true)),
    }
}

/// The kubectl-style table of every split, with config problems under it.
pub fn render_table(s: &ControllerStatus, now_unix: u64) -> String {
    table_view(s, now_unix, false)
}

/// `render_table` with the ZONE, GENERATION, LAST-RECONCILE and ERROR columns and NEXT in full.
pub fn render_wide(s: &ControllerStatus, now_unix: u64) -> String {
    table_view(s, now_unix, true)
}

fn table_view(s: &ControllerStatus, now: u64, wide: bool) -> String {
    let mut out = String::new();
    if s.splits.is_empty() {
        out.push_str("No splits configured.\n");
    } else {
        let mut headers = vec![
            "SPLIT", "RECORD", "STATE", "STEP", "WEIGHTS", "TRAFFIC", "TARGET", "GATES", "DRIFT",
            "NEXT", "AGE",
        ];
        if wide {
            headers.extend(["ZONE", "GENERATION", "LAST-RECONCILE", "ERROR"]);
        }
        let rows: Vec<Vec<String>> = s
            .splits
            .iter()
            .map(|sp| {
                let next = next_cell(sp, now);
                let mut row = vec![
                    sp.name.clone(),
                    sp.record.clone(),
                    sp.state.clone(),
                    step_cell(sp),
                    weights_cell(sp, |b| b.observed_weight),
                    traffic_cell(sp),
                    weights_cell(sp, |b| Some(b.target_weight)),
                    gates_cell(sp),
                    percent(sp.drift),
                    if wide {
                        next
                    } else {
                        truncate(&next, NEXT_WIDTH)
                    },
                    age(Some(&sp.first_seen), now),
                ];
                if wide {
                    row.extend([
                        sp.hosted_zone.clone(),
                        truncate(&sp.observed_generation, 12),
                        ago(sp.last_reconcile.as_deref(), now),
                        sp.last_error.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                row
            })
            .collect();
        out.push_str(&table(&headers, &rows, ""));
    }
    if s.dry_run {
        out.push_str("\ncontroller is in dry-run mode: nothing is written to AWS\n");
    }
    if !s.config.valid || !s.config.errors.is_empty() {
        out.push('\n');
        out.push_str(&config_footer(&s.config.errors));
    }
    out
}

fn config_footer(errors: &[String]) -> String {
    match errors {
        [] => "config: invalid\n".into(),
        [one] => format!("config: 1 error: {}\n", clean(one)),
        many => {
            let mut out = format!("config: {} errors:\n", many.len());
            for e in many {
                out.push_str(&format!("  {}\n", clean(e)));
            }
            out
        }
    }
}

/// The kubectl-describe view of one split.
pub fn render_describe(s: &SplitStatus, now_unix: u64) -> String {
    let now = now_unix;
    let mut out = String::new();
    let kv = |out: &mut String, label: &str, value: &str| {
        out.push_str(&format!("{:<17}{}\n", format!("{label}:"), clean(value)));
    };
    kv(&mut out, "Name", &s.name);
    kv(&mut out, "Record", &s.record);
    kv(&mut out, "Zone", &s.hosted_zone);
    kv(&mut out, "State", &s.state);
    kv(&mut out, "Generation", or_none(&s.observed_generation));
    kv(&mut out, "Step", &step_cell(s));
    kv(&mut out, "Progress", &percent(s.progress));
    kv(&mut out, "Drift", &percent(s.drift));

    let backends: Vec<Vec<String>> = s
        .backends
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.target_weight.to_string(),
                b.step_weight.to_string(),
                opt(b.observed_weight),
                b.traffic_share
                    .map(|v| format!("{:.0}", v * 100.0))
                    .unwrap_or_else(|| "?".into()),
                opt(b.ecs.as_ref().map(|e| e.desired)),
                opt(b.ecs.as_ref().map(|e| e.running)),
            ]
        })
        .collect();
    section(
        &mut out,
        "Backends",
        &[
            "NAME",
            "TARGET",
            "STEP",
            "OBSERVED",
            "TRAFFIC",
            "ECS-DESIRED",
            "ECS-RUNNING",
        ],
        &backends,
    );

    let gates: Vec<Vec<String>> = s
        .gates
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                match g.passing {
                    Some(true) => "True".into(),
                    Some(false) => "False".into(),
                    None => "Unknown".into(),
                },
                g.consecutive_failures.to_string(),
                g.value.map(format_value).unwrap_or_else(|| "-".into()),
                age(g.last_check.as_deref(), now),
                g.message.clone(),
            ]
        })
        .collect();
    section(
        &mut out,
        "Gates",
        &[
            "NAME",
            "PASSING",
            "FAILURES",
            "VALUE",
            "LAST-CHECK",
            "MESSAGE",
        ],
        &gates,
    );

    let conditions: Vec<Vec<String>> = s
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                age(Some(&c.last_transition_time), now),
                c.message.clone(),
            ]
        })
        .collect();
    section(
        &mut out,
        "Conditions",
        &["TYPE", "STATUS", "REASON", "LAST-TRANSITION", "MESSAGE"],
        &conditions,
    );

    let next = match s.next_step_at.as_deref() {
        Some(at) => match parse_time(at) {
            Some(t) if t > now => format!("in {} ({at})", human_duration(t - now)),
            Some(_) => format!("due ({at})"),
            None => at.to_string(),
        },
        None => "<none>".into(),
    };
    kv(&mut out, "Next step", &next);
    kv(
        &mut out,
        "Waiting for",
        s.waiting_for.as_deref().unwrap_or("<none>"),
    );
    if let Some(o) = &s.override_ {
        let why = if o.reason.is_empty() { "-" } else { &o.reason };
        let done = if o.done { ", done" } else { "" };
        kv(
            &mut out,
            "Override",
            &clean(&format!(
                "{} by {} at {} ({why}){done}",
                o.action, o.actor, o.at
            )),
        );
    }
    kv(
        &mut out,
        "Last reconcile",
        &when(s.last_reconcile.as_deref(), now),
    );
    kv(
        &mut out,
        "Last success",
        &when(s.last_success.as_deref(), now),
    );
    kv(
        &mut out,
        "Last error",
        s.last_error.as_deref().unwrap_or("<none>"),
    );

    // Stored newest last, which is the order kubectl shows them in.
    let events: Vec<Vec<String>> = s
        .events
        .iter()
        .map(|e| {
            vec![
                e.type_.clone(),
                e.reason.clone(),
                age(Some(&e.time), now),
                e.message.clone(),
            ]
        })
        .collect();
    section(
        &mut out,
        "Events",
        &["TYPE", "REASON", "AGE", "MESSAGE"],
        &events,
    );
    out
}

fn section(out: &mut String, label: &str, headers: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        out.push_str(&format!("{:<17}<none>\n", format!("{label}:")));
    } else {
        out.push_str(&format!("{label}:\n"));
        out.push_str(&table(headers, rows, "  "));
    }
}

/// Left-aligned columns, three spaces apart, widths from the content; no trailing spaces.
fn table(headers: &[&str], rows: &[Vec<String>], indent: &str) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = indent.to_string();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One line, no control characters: messages come from AWS and Prometheus, and an escape
/// sequence must not reach the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn step_cell(s: &SplitStatus) -> String {
    if s.steps == 0 {
        "-".into()
    } else {
        format!("{}/{}", s.step, s.steps)
    }
}

fn weights_cell(
    s: &SplitStatus,
    weight: impl Fn(&crate::status::BackendStatus) -> Option<u32>,
) -> String {
    if s.backends.is_empty() {
        return "-".into();
    }
    s.backends
        .iter()
        .map(|b| format!("{}={}", b.name, opt(weight(b))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Measured shares in percent, next to the weights; "?" where CloudWatch has no data.
fn traffic_cell(s: &SplitStatus) -> String {
    if s.backends.is_empty() {
        return "-".into();
    }
    s.backends
        .iter()
        .map(|b| match b.traffic_share {
            Some(v) => format!("{}={:.0}", b.name, v * 100.0),
            None => format!("{}=?", b.name),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn gates_cell(s: &SplitStatus) -> String {
    if s.gates.is_empty() {
        return "-".into();
    }
    let passing = s.gates.iter().filter(|g| g.passing == Some(true)).count();
    format!("{passing}/{}", s.gates.len())
}

/// When the next step is due, or what the split waits for.
fn next_cell(s: &SplitStatus, now: u64) -> String {
    if let Some(t) = s.next_step_at.as_deref().and_then(parse_time) {
        if t > now {
            return format!("in {}", human_duration(t - now));
        }
    }
    s.waiting_for.clone().unwrap_or_else(|| "-".into())
}

fn percent(ratio: f64) -> String {
    format!("{:.0}%", ratio * 100.0)
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        // Enough digits for error ratios, without float noise.
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "<none>"
    } else {
        s
    }
}

fn parse_time(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

/// kubectl-style age of an RFC 3339 time: `45s`, `5m`, `3h`, `2d`; `-` when absent.
fn age(since: Option<&str>, now: u64) -> String {
    match since.and_then(parse_time) {
        Some(t) => human_duration(now.saturating_sub(t)),
        None => "-".into(),
    }
}

/// Age with "ago", or `-`.
fn ago(since: Option<&str>, now: u64) -> String {
    match since.and_then(parse_time) {
        Some(t) => format!("{} ago", human_duration(now.saturating_sub(t))),
        None => "-".into(),
    }
}

/// "12s ago (2024-05-01T10:00:00Z)" or "<none>".
fn when(at: Option<&str>, now: u64) -> String {
    match at {
        Some(at) => match parse_time(at) {
            Some(t) => format!("{} ago ({at})", human_duration(now.saturating_sub(t))),
            None => at.to_string(),
        },
        None => "<none>".into(),
    }
}

/// Kubernetes' `duration.HumanDuration`: two units while the larger one is small, one after.
pub fn human_duration(secs: u64) -> String {
    let minutes = secs / 60;
    let hours = secs / 3600;
    let days = hours / 24;
    let years = days / 365;
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        }
    } else {
        format!("{years}y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{
        rfc3339, BackendStatus, Condition, ConfigStatus, EcsStatus, Event, GateStatus,
    };

    const NOW: u64 = 1_700_000_000;

    fn at(secs_ago: u64) -> String {
        rfc3339(NOW - secs_ago)
    }

    fn backend(name: &str, target: u32, step: u32, observed: Option<u32>) -> BackendStatus {
        BackendStatus {
            name: name.into(),
            target_weight: target,
            step_weight: step,
            observed_weight: observed,
            ecs: None,
            traffic_share: None,
        }
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str, ago: u64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: at(ago),
            observed_generation: "3f2a9c1b7d4e".into(),
        }
    }

    fn event(type_: &str, reason: &str, message: &str, ago: u64) -> Event {
        Event {
            time: at(ago),
            type_: type_.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn progressing() -> SplitStatus {
        let mut fargate = backend("fargate", 100, 25, Some(25));
        fargate.ecs = Some(EcsStatus {
            desired: 5,
            running: 5,
            stable: true,
        });
        SplitStatus {
            name: "api".into(),
            record: "api.example.com. A".into(),
            hosted_zone: "example.com.".into(),
            state: "Progressing".into(),
            conditions: vec![
                condition("Ready", "True", "InSync", "Route53 matches step 2", 300),
                condition("Progressing", "True", "StepAdvanced", "step 2 of 4", 130),
            ],
            step: 2,
            steps: 4,
            progress: 0.25,
            drift: 0.0,
            backends: vec![
                BackendStatus {
                    traffic_share: Some(0.716),
                    ..backend("lambda", 0, 75, Some(75))
                },
                BackendStatus {
                    traffic_share: Some(0.284),
                    ..fargate
                },
            ],
            gates: vec![
                GateStatus {
                    name: "alarms".into(),
                    passing: Some(true),
                    consecutive_failures: 0,
                    value: None,
                    message: "api-fargate-5xx is OK".into(),
                    last_check: Some(at(15)),
                },
                GateStatus {
                    name: "error-ratio".into(),
                    passing: Some(false),
                    consecutive_failures: 1,
                    value: Some(0.0123456),
                    message: "value 0.0123456 is above max 0.01".into(),
                    last_check: Some(at(15)),
                },
            ],
            next_step_at: Some(rfc3339(NOW + 130)),
            waiting_for: Some("interval".into()),
            last_reconcile: Some(at(15)),
            last_success: Some(at(15)),
            last_error: None,
            observed_generation: "3f2a9c1b7d4e".into(),
            first_seen: at(3 * 3600 + 5 * 60),
            override_: None,
            events: vec![
                event(
                    "Normal",
                    "StepAdvanced",
                    "step 1 of 4: lambda=88 fargate=12",
                    700,
                ),
                event(
                    "Normal",
                    "StepAdvanced",
                    "step 2 of 4: lambda=75 fargate=25",
                    130,
                ),
            ],
        }
    }

    fn rolled_back() -> SplitStatus {
        SplitStatus {
            name: "checkout".into(),
            record: "checkout.example.com. CNAME".into(),
            hosted_zone: "example.com.".into(),
            state: "RolledBack".into(),
            conditions: vec![condition(
                "Degraded",
                "True",
                "GateFailed",
                "gate http failed 3 times:\nGET https://checkout/healthz: 503",
                60,
            )],
            step: 0,
            steps: 5,
            progress: 0.0,
            drift: 0.1,
            backends: vec![
                backend("old", 0, 100, Some(90)),
                backend("new", 100, 0, None),
            ],
            gates: vec![],
            next_step_at: None,
            waiting_for: Some("a new document (rolled back after gate http failed)".into()),
            last_reconcile: Some(at(5)),
            last_success: Some(at(5)),
            last_error: Some("route53 ChangeResourceRecordSets: Throttling".into()),
            observed_generation: "9e8d".into(),
            first_seen: at(2 * 86400 + 3600),
            override_: None,
            events: vec![event(
                "Warning",
                "RolledBack",
                "gate http failed 3 times",
                60,
            )],
        }
    }

    fn fixture() -> ControllerStatus {
        ControllerStatus {
            version: "0.1.0".into(),
            generated_at: at(0),
            owner_id: "prod".into(),
            dry_run: false,
            config: ConfigStatus {
                paths: vec!["/etc/trafficshift".into()],
                valid: true,
                errors: vec![],
                last_load: Some(at(600)),
            },
            splits: vec![progressing(), rolled_back()],
        }
    }

    #[test]
    fn table_lists_every_split() {
        let want = "\
SPLIT      RECORD                        STATE         STEP   WEIGHTS                TRAFFIC                TARGET                 GATES   DRIFT   NEXT                               AGE
api        api.example.com. A            Progressing   2/4    lambda=75 fargate=25   lambda=72 fargate=28   lambda=0 fargate=100   1/2     0%      in 2m10s                           3h5m
checkout   checkout.example.com. CNAME   RolledBack    0/5    old=90 new=-           old=? new=?            old=0 new=100          -       10%     a new document (rolled back aft…   2d1h
";
        assert_eq!(render_table(&fixture(), NOW), want);
    }

    #[test]
    fn table_shows_config_errors_under_it() {
        let mut s = fixture();
        s.config.valid = false;
        s.config.errors = vec!["splits/api.yaml:4:3: unknown field `wieghts`".into()];
        let out = render_table(&s, NOW);
        assert!(
            out.ends_with("\nconfig: 1 error: splits/api.yaml:4:3: unknown field `wieghts`\n"),
            "{out}"
        );
        s.config
            .errors
            .push("splits/b.yaml:1:1: missing field `spec`".into());
        let out = render_table(&s, NOW);
        assert!(
            out.ends_with(
                "config: 2 errors:\n  splits/api.yaml:4:3: unknown field `wieghts`\n  splits/b.yaml:1:1: missing field `spec`\n"
            ),
            "{out}"
        );
        s.splits.clear();
        assert!(render_table(&s, NOW).starts_with("No splits configured.\n"));
    }

    #[test]
    fn wide_table_adds_columns() {
        let out = render_wide(&fixture(), NOW);
        let header = out.lines().next().unwrap_or_default();
        assert!(
            header.ends_with("AGE    ZONE           GENERATION     LAST-RECONCILE   ERROR"),
            "{header}"
        );
        assert!(
            out.contains("a new document (rolled back after gate http failed)"),
            "{out}"
        );
        assert!(
            out.contains("route53 ChangeResourceRecordSets: Throttling"),
            "{out}"
        );
        assert!(out.contains("3f2a9c1b7d4e"), "{out}");
    }

    #[test]
    fn describe_shows_everything_about_a_split() {
        let out = render_describe(&progressing(), NOW);
        let want = "\
Name:            api
Record:          api.example.com. A
Zone:            example.com.
State:           Progressing
Generation:      3f2a9c1b7d4e
Step:            2/4
Progress:        25%
Drift:           0%
Backends:
  NAME      TARGET   STEP   OBSERVED   TRAFFIC   ECS-DESIRED   ECS-RUNNING
  lambda    0        75     75         72        -             -
  fargate   100      25     25         28        5             5
Gates:
  NAME          PASSING   FAILURES   VALUE    LAST-CHECK   MESSAGE
  alarms        True      0          -        15s          api-fargate-5xx is OK
  error-ratio   False     1          0.0123   15s          value 0.0123456 is above max 0.01
Conditions:
  TYPE          STATUS   REASON         LAST-TRANSITION   MESSAGE
  Ready         True     InSync         5m                Route53 matches step 2
  Progressing   True     StepAdvanced   2m10s             step 2 of 4
Next step:       in 2m10s (2023-11-14T22:15:30Z)
Waiting for:     interval
Last reconcile:  15s ago (2023-11-14T22:13:05Z)
Last success:    15s ago (2023-11-14T22:13:05Z)
Last error:      <none>
Events:
  TYPE     REASON         AGE     MESSAGE
  Normal   StepAdvanced   11m     step 1 of 4: lambda=88 fargate=12
  Normal   StepAdvanced   2m10s   step 2 of 4: lambda=75 fargate=25
";
        assert_eq!(out, want);
    }

    #[test]
    fn describe_of_rolled_back_split() {
        let out = render_describe(&rolled_back(), NOW);
        assert!(out.contains("State:           RolledBack\n"), "{out}");
        assert!(out.contains("Gates:           <none>\n"), "{out}");
        assert!(out.contains("Next step:       <none>\n"), "{out}");
        assert!(
            out.contains("Last error:      route53 ChangeResourceRecordSets: Throttling\n"),
            "{out}"
        );
        // The newline inside the condition message must not break the table.
        assert!(
            out.contains("gate http failed 3 times: GET https://checkout/healthz: 503\n"),
            "{out}"
        );
        assert!(out.contains("  new    100      0      -"), "{out}");
    }

    #[test]
    fn exit_code_flags_failing_splits_and_invalid_config() {
        let s = fixture();
        assert_eq!(exit_code(&s, None), 1, "checkout is RolledBack");
        assert_eq!(exit_code(&s, Some("api")), 0);
        assert_eq!(exit_code(&s, Some("checkout")), 1);
        for state in ["Degraded", "Conflict", "Invalid"] {
            let mut s = fixture();
            s.splits[0].state = state.into();
            assert_eq!(exit_code(&s, Some("api")), 1, "{state}");
        }
        for state in ["Progressing", "Complete", "Paused"] {
            let mut s = fixture();
            s.splits[1].state = state.into();
            assert_eq!(exit_code(&s, None), 0, "{state}");
        }
        let mut s = fixture();
        s.config.valid = false;
        assert_eq!(exit_code(&s, Some("api")), 1, "invalid config");
    }

    fn opts(name: Option<&str>, output: Output) -> StatusOptions {
        StatusOptions {
            endpoint: "http://127.0.0.1:8080".into(),
            name: name.map(String::from),
            output,
            watch: false,
            exit_code: true,
        }
    }

    #[test]
    fn render_picks_view_and_format() {
        let s = fixture();
        let json = render(&s, &opts(None, Output::Json), NOW).expect("json");
        let back: ControllerStatus = serde_json::from_str(&json).expect("parses back");
        assert_eq!(back, s);
        let json = render(&s, &opts(Some("api"), Output::Json), NOW).expect("json");
        let back: SplitStatus = serde_json::from_str(&json).expect("parses back");
        assert_eq!(back, progressing());
        let yaml = render(&s, &opts(Some("checkout"), Output::Yaml), NOW).expect("yaml");
        let back: SplitStatus = serde_saphyr::from_str(&yaml).expect("parses back");
        assert_eq!(back, rolled_back());
        let out = render(&s, &opts(Some("api"), Output::Table), NOW).expect("describe");
        assert!(out.starts_with("Name:            api\n"), "{out}");
        let err = render(&s, &opts(Some("nope"), Output::Table), NOW).expect_err("unknown split");
        assert_eq!(
            err.to_string(),
            "split \"nope\" not found at http://127.0.0.1:8080; configured splits: api, checkout"
        );
    }

    #[test]
    fn status_url_accepts_bare_host_and_prefix() {
        let url = |e: &str| {
            status_url(e)
                .map(|u| u.to_string())
                .unwrap_or_else(|e| e.to_string())
        };
        assert_eq!(url("http://127.0.0.1:8080"), "http://127.0.0.1:8080/status");
        assert_eq!(url("localhost:8080/"), "http://localhost:8080/status");
        assert_eq!(
            url("http://proxy/api/v1/x/proxy/"),
            "http://proxy/api/v1/x/proxy/status"
        );
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        let mut s = progressing();
        s.gates[0].message = "bad\x1b[2Jthing".into();
        let out = render_describe(&s, NOW);
        assert!(!out.contains('\x1b'), "{out:?}");
    }

    #[test]
    fn kubernetes_style_durations() {
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (130, "2m10s"),
            (300, "5m"),
            (3600, "60m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 300, "3h5m"),
            (30 * 3600, "30h"),
            (2 * 86400, "2d"),
            (2 * 86400 + 3600, "2d1h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }
}
