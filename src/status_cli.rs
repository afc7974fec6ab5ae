//! `trafficshift status`: read a running controller's `/status` and show it like kubectl does.

use std::io::Write;
use std::time::Duration;

use crate::status::{ControllerStatus, SplitStatus};
use crate::{Error, Result};

/// States that make `--exit-code` return 1.
const FAILING_STATES: [&str; 4] = ["Degraded", "RolledBack", "Conflict", "Invalid"];
/// How long one request to the controller may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// Return 1 when a shown split is Degraded, RolledBack, Conflict or Invalid, or the config is
    /// invalid.
    pub exit_code: bool,
}

/// Run the command; returns the process exit code. Errors (unreachable controller, unknown split)
/// are for the caller to print and exit 1.
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
    Ok(last.map(|s| result_code(&s, &opts)).unwrap_or(1))
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
/// RolledBack, Conflict or Invalid; else 0.
pub fn exit_code(status: &ControllerStatus, name: Option<&str>) -> i32 {
    let bad_split = status
        .splits
        .iter()
        .filter(|s| name.is_none_or(|n| s.name == n))
        .any(|s| FAILING_STATES.contains(&s.state.as_str()));
    i32::from(!status.config.valid || bad_split)
}

/// `{endpoint}/status`; an endpoint without a scheme is taken as http.
fn status_url(endpoint: &str) -> Result<reqwest::Url> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    let full = if endpoint.contains("://") {
        format!("{endpoint}/status")
    } else {
        format!("http://{endpoint}/status")
    };
    reqwest::Url::parse(&full)
        .map_err(|e| Error::Http(format!("invalid --endpoint {endpoint:?}: {e}")))
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<ControllerStatus> {
    let resp = client.get(url.clone()).send().await.map_err(|e| {
        Error::Http(format!(
            "cannot reach trafficshift at {url}: {}; is the controller running? use --endpoint",
            reason(&e)
        ))
    })?;
    let code = resp.status();
    if !code.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.trim().chars().take(200).collect();
        return Err(Error::Http(format!("{url} answered {code}: {body}")));
    }
    resp.json::<ControllerStatus>().await.map_err(|e| {
        Error::Http(format!(
            "{url} did not answer a trafficshift status ({}); is --endpoint the controller's HTTP address?",
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
            "SPLIT", "RECORD", "STATE", "STEP", "WEIGHTS", "TARGET", "GATES", "DRIFT", "NEXT",
            "AGE",
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
