//! `trafficshift status [NAME] --wait`: follow a controller's `/status` until the selected
//! splits are Complete (exit 0), one of them fails (exit 1 at once) or the timeout passes (124,
//! as `timeout(1)`), printing one line per change like `kubectl rollout status`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::status::{ControllerStatus, SplitStatus};
use crate::status_cli::{fetch, status_url, REQUEST_TIMEOUT};
use crate::{Error, Result};

/// Exit code when the timeout passes first, as `timeout(1)`.
pub const TIMED_OUT: i32 = 124;
/// States that end a wait with 1 at once. Matched by the names the controller reports, so a
/// state a newer controller adds (Aborted) needs nothing here but its name.
pub const FAILED_STATES: [&str; 6] = [
    "RolledBack",
    "Aborted",
    "Degraded",
    "Conflict",
    "Invalid",
    "ConfigInvalid",
];
/// How often `/status` is read.
const POLL: Duration = Duration::from_secs(2);

/// Options of `trafficshift status --wait`.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    pub endpoint: String,
    /// One split, or every split the controller manages.
    pub name: Option<String>,
    pub timeout: Duration,
}

/// Where a wait stands after one read of `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every selected split is Complete.
    Done,
    /// A selected split is in a failed state (or the config is invalid): its line.
    Failed(String),
    Waiting,
}

/// Judge one status. A split named on the command line that the controller does not show (yet:
/// a merge git-sync has not pulled) is waited for; with no name, an empty list is waited for.
pub fn verdict(status: &ControllerStatus, name: Option<&str>) -> Verdict {
    if !status.config.valid {
        return Verdict::Failed(format!(
            "the controller's config is invalid: {}",
            status.config.errors.join("; ")
        ));
    }
    let selected: Vec<&SplitStatus> = status
        .splits
        .iter()
        .filter(|s| name.is_none_or(|n| s.name == n))
        .collect();
    if let Some(bad) = selected
        .iter()
        .find(|s| FAILED_STATES.contains(&s.state.as_str()))
    {
        return Verdict::Failed(line(bad));
    }
    if !selected.is_empty() && selected.iter().all(|s| s.state == "Complete") {
        Verdict::Done
    } else {
        Verdict::Waiting
    }
}

/// One progress line of a split: state, step, weights and what it waits for.
pub fn line(s: &SplitStatus) -> String {
    let weights = s
        .backends
        .iter()
        .map(|b| format!("{}={}%", b.name, b.step_weight))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = format!(
        "split \"{}\": {} step {}/{} ({weights})",
        s.name, s.state, s.step, s.steps
    );
    if let Some(w) = s.waiting_for.as_deref().filter(|w| !w.is_empty()) {
        out.push_str(&format!(", waiting for {w}"));
    }
    if let Some(e) = s.last_error.as_deref().filter(|_| s.state != "Complete") {
        out.push_str(&format!(": {e}"));
    }
    out
}

/// Run the wait; returns the exit code (0, 1 or 124). A controller that cannot be reached is
/// retried until the timeout (it may be restarting), saying so once per outage.
pub async fn run(opts: WaitOptions) -> Result<i32> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("trafficshift/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT.min(opts.timeout.max(Duration::from_secs(1))))
        .build()
        .map_err(|e| Error::Http(format!("cannot build an HTTP client: {e}")))?;
    let url = status_url(&opts.endpoint)?;
    let deadline = Instant::now() + opts.timeout;
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut unreachable = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, fetch(&client, &url)).await;
        match read {
            Err(_) => {}
            Ok(Err(e)) => {
                if !unreachable {
                    println!("{e}; retrying until the timeout");
                    unreachable = true;
                }
            }
            Ok(Ok(status)) => {
                if unreachable {
                    println!("controller reachable again");
                    unreachable = false;
                }
                for s in status
                    .splits
                    .iter()
                    .filter(|s| opts.name.as_deref().is_none_or(|n| s.name == n))
                {
                    let l = line(s);
                    if shown.get(&s.name) != Some(&l) {
                        println!("{l}");
                        shown.insert(s.name.clone(), l);
                    }
                }
                match verdict(&status, opts.name.as_deref()) {
                    Verdict::Done => {
                        println!("{} complete", what(&opts));
                        return Ok(0);
                    }
                    Verdict::Failed(why) => {
                        eprintln!("error: {why}");
                        return Ok(1);
                    }
                    Verdict::Waiting => {
                        if let Some(n) = &opts.name {
                            if !shown.contains_key(n) && !shown.contains_key(&format!("?{n}")) {
                                println!("split \"{n}\" not shown by the controller yet");
                                shown.insert(format!("?{n}"), String::new());
                            }
                        }
                    }
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!(
                "error: timed out after {} waiting for {} to complete",
                humantime::format_duration(opts.timeout),
                what(&opts)
            );
            return Ok(TIMED_OUT);
        }
        tokio::time::sleep(POLL.min(left)).await;
    }
}

fn what(opts: &WaitOptions) -> String {
    match &opts.name {
        Some(n) => format!("split \"{n}\""),
        None => "every split".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ConfigStatus;

    fn split(name: &str, state: &str) -> SplitStatus {
        SplitStatus {
            name: name.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    fn status(splits: Vec<SplitStatus>) -> ControllerStatus {
        ControllerStatus {
            config: ConfigStatus {
                valid: true,
                ..Default::default()
            },
            splits,
            ..Default::default()
        }
    }

    #[test]
    fn every_selected_split_must_complete_and_any_failure_ends_at_once() {
        let s = status(vec![split("api", "Complete"), split("web", "Progressing")]);
        assert_eq!(verdict(&s, None), Verdict::Waiting);
        assert_eq!(verdict(&s, Some("api")), Verdict::Done);
        assert_eq!(verdict(&s, Some("web")), Verdict::Waiting);
        assert_eq!(verdict(&s, Some("new")), Verdict::Waiting, "not pulled yet");
        assert_eq!(verdict(&status(vec![]), None), Verdict::Waiting);
        for bad in ["RolledBack", "Aborted", "Degraded", "Conflict", "Invalid"] {
            let s = status(vec![split("api", "Complete"), split("web", bad)]);
            assert!(
                matches!(verdict(&s, None), Verdict::Failed(l) if l.contains(bad)),
                "{bad}"
            );
            assert_eq!(verdict(&s, Some("api")), Verdict::Done, "{bad} elsewhere");
        }
        for waiting in ["Paused", "Suspended", "Progressing", "Unknown"] {
            let s = status(vec![split("api", waiting)]);
            assert_eq!(verdict(&s, None), Verdict::Waiting, "{waiting}");
        }
        let mut s = status(vec![split("api", "Complete")]);
        s.config.valid = false;
        assert!(matches!(verdict(&s, None), Verdict::Failed(_)));
    }
}
