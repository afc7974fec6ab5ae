//! The command line: `run`, `validate`, `plan`, `schema`, `status`. Each returns the process exit
//! code; `main` only maps errors to 1 and usage errors to 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::aws::connect::{connect_accounts, AwsOptions};
use crate::controller::{Controller, Options};
use crate::gates::{GateChecker, GateOptions};
use crate::reconcile::{self, Context, Report, Work};
use crate::server::{self, AppState};
use crate::spec::{load_paths, HumanDuration};
use crate::status_cli::{self, Output, StatusOptions};
use crate::telemetry::LogFormat;
use crate::weights::show;
use crate::{Error, Result};

/// Process exit codes. Usage errors follow sysexits.h so that no command confuses a typo with one
/// of its answers (`plan` uses 2 for "there are changes").
pub mod exit {
    /// Success; for `plan`, no changes.
    pub const OK: i32 = 0;
    /// An error (invalid document, AWS failure, a failed `--once` run); for `status --exit-code`,
    /// a shown split is unhealthy or the config is invalid.
    pub const FAILURE: i32 = 1;
    /// `plan`: the next reconcile would change Route53 or ECS.
    pub const CHANGES: i32 = 2;
    /// EX_USAGE: the command line is wrong (unknown flag, missing or bad argument).
    pub const USAGE: i32 = 64;
    /// EX_UNAVAILABLE: `status` could not get a status from the controller.
    pub const UNAVAILABLE: i32 = 69;
}

#[derive(Debug, Parser)]
#[command(
    name = "trafficshift",
    version,
    about = "Shift traffic between AWS backends through Route53 weighted records, capacity first."
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "TRAFFICSHIFT_LOG_FORMAT",
        value_enum,
        default_value = "plain",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter, RUST_LOG syntax (e.g. `info,trafficshift=debug`).
    #[arg(long, env = "TRAFFICSHIFT_LOG", default_value = "info", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Check documents without touching AWS (exit 0 valid, 1 invalid, 64 usage error).
    Validate {
        /// Files or directories of *.yaml / *.yml.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show the Route53 and ECS changes the next reconcile would make (exit 0 none, 2 changes, 1 error,
    /// 64 usage error).
    Plan(PlanArgs),
    /// Print the JSON Schema of the TrafficSplit document.
    Schema,
    /// Show the status of a running controller (exit 0, 1 unhealthy with --exit-code, 69 controller
    /// unreachable, 64 usage error).
    Status(StatusArgs),
    /// Skip the current hold (gates and capacity still apply); --full: go to the target in one
    /// step, capacity first. Written into the split's state TXT through Route53 (exit 0 written,
    /// 1 refused or failed).
    Promote(crate::control_cli::PromoteArgs),
    /// Go back to the rollout's start split now and stay there until `retry` or a new document.
    Abort(crate::control_cli::ControlArgs),
    /// Restart a rolled-back or aborted rollout from the current split.
    Retry(crate::control_cli::ControlArgs),
    /// Stop step progress (drift is still corrected) until `resume`.
    Pause(crate::control_cli::ControlArgs),
    /// Restart step progress after `pause`.
    Resume(crate::control_cli::ControlArgs),
    /// Emergency stop: write nothing for the split (no drift correction, no ECS) until `unsuspend`.
    Suspend(crate::control_cli::ControlArgs),
    /// End a `suspend`: the controller puts Route53 back to the rollout's split.
    Unsuspend(crate::control_cli::ControlArgs),
}

#[derive(Debug, Args)]
pub struct AwsArgs {
    /// Owner id written in the ownership TXT records; controllers with other ids never touch them.
    #[arg(long, env = "TRAFFICSHIFT_OWNER_ID", default_value = "trafficshift", value_parser = parse_owner)]
    pub owner_id: String,
    /// Route53 requests per second per AWS account (AWS allows 5 per account; each account a
    /// `spec.aws` role reaches gets its own budget).
    #[arg(long, env = "TRAFFICSHIFT_ROUTE53_RPS", default_value_t = 5.0)]
    pub route53_rps: f64,
}

#[derive(Debug, Args)]
pub struct GateArgs {
    /// Let HTTP and Prometheus gates call loopback addresses (127.0.0.0/8, ::1, localhost): for
    /// tests and local demos only. Link-local addresses (instance metadata) are always refused.
    #[arg(long, env = "TRAFFICSHIFT_ALLOW_LOOPBACK_GATES")]
    pub allow_loopback_gates: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file or directory; repeatable (env: comma-separated).
    #[arg(
        long = "config",
        env = "TRAFFICSHIFT_CONFIG",
        value_delimiter = ',',
        required = true
    )]
    pub config: Vec<PathBuf>,
    /// Address of the metrics/health/status HTTP server.
    #[arg(long, env = "TRAFFICSHIFT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Full resync period: every split is re-read and reconciled at least this often.
    #[arg(long, env = "TRAFFICSHIFT_RESYNC", default_value = "60s")]
    pub resync: HumanDuration,
    /// Log the plan, write nothing.
    #[arg(long, env = "TRAFFICSHIFT_DRY_RUN")]
    pub dry_run: bool,
    /// Reconcile everything once and exit (non-zero if anything failed).
    #[arg(long, env = "TRAFFICSHIFT_ONCE")]
    pub once: bool,
    /// Webhook told about rollout events: a Slack incoming-webhook URL gets a Slack message, any
    /// other URL a CloudEvents 1.0 JSON event. Repeatable (env: comma-separated). The URLs are
    /// secrets: they are never logged.
    #[arg(
        long = "notify",
        env = "TRAFFICSHIFT_NOTIFY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub notify: Vec<String>,
    /// File holding the key of the `X-Trafficshift-Signature: sha256=<hex>` header (HMAC-SHA256
    /// of the body) sent with every notification.
    #[arg(long, env = "TRAFFICSHIFT_NOTIFY_SECRET_FILE")]
    pub notify_secret_file: Option<PathBuf>,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub gates: GateArgs,
    /// How often request counts are read from CloudWatch; 0s turns the traffic share off. CloudWatch
    /// has a new datapoint once a minute, so the default is also the useful floor; hidden, for
    /// tests (a faster poll, or none where AWS calls are counted).
    #[arg(
        long,
        env = "TRAFFICSHIFT_TRAFFIC_POLL_INTERVAL",
        default_value = "60s",
        hide = true
    )]
    pub traffic_poll_interval: HumanDuration,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Files or directories of *.yaml / *.yml.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Also call HTTP and Prometheus gates (by default `plan` leaves them unchecked, so a plan
    /// shows no step that needs them).
    #[arg(long, env = "TRAFFICSHIFT_PLAN_WITH_GATES")]
    pub with_gates: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub gates: GateArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show one split in detail.
    pub name: Option<String>,
    /// Base URL of the controller.
    #[arg(
        long,
        env = "TRAFFICSHIFT_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    pub endpoint: String,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        env = "TRAFFICSHIFT_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub output: OutputArg,
    /// Redraw every 2 s.
    #[arg(long, env = "TRAFFICSHIFT_WATCH")]
    pub watch: bool,
    /// Exit 1 when a split is Degraded, RolledBack, Aborted, Conflict or Invalid, or the config is invalid
    /// (69 when the controller cannot be reached, with or without this flag).
    #[arg(long, env = "TRAFFICSHIFT_EXIT_CODE")]
    pub exit_code: bool,
    /// Wait until every selected split is Complete (exit 0); exit 1 at once when one becomes
    /// RolledBack, Aborted, Degraded, Conflict or Invalid, 124 at `--timeout`. Prints one line
    /// per change; an unreachable controller is retried until the timeout.
    #[arg(long, env = "TRAFFICSHIFT_WAIT", conflicts_with = "watch")]
    pub wait: bool,
    /// How long `--wait` waits (e.g. `30m`, `90s`).
    #[arg(long, env = "TRAFFICSHIFT_WAIT_TIMEOUT", default_value = "30m")]
    pub timeout: HumanDuration,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputArg {
    Table,
    Wide,
    Json,
    Yaml,
}

fn parse_owner(s: &str) -> std::result::Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(
            "owner id must be 1-63 characters of [A-Za-z0-9._-] (it is stored in a TXT record)"
                .into(),
        )
    }
}

pub async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Validate { paths } => Ok(validate(&paths)),
        Command::Schema => {
            let s = serde_json::to_string_pretty(&crate::spec::schema::json_schema())
                .map_err(|e| Error::Other(e.to_string()))?;
            println!("{s}");
            Ok(0)
        }
        Command::Plan(a) => plan(a).await,
        Command::Status(a) if a.wait => {
            crate::status_wait::run(crate::status_wait::WaitOptions {
                endpoint: a.endpoint,
                name: a.name,
                timeout: a.timeout.get(),
            })
            .await
        }
        Command::Status(a) => {
            let result = status_cli::run(StatusOptions {
                endpoint: a.endpoint,
                name: a.name,
                output: match a.output {
                    OutputArg::Table => Output::Table,
                    OutputArg::Wide => Output::Wide,
                    OutputArg::Json => Output::Json,
                    OutputArg::Yaml => Output::Yaml,
                },
                watch: a.watch,
                exit_code: a.exit_code,
            })
            .await;
            match result {
                Err(e @ Error::Unreachable(_)) => {
                    eprintln!("error: {e}");
                    Ok(exit::UNAVAILABLE)
                }
                other => other,
            }
        }
        Command::Run(a) => run_controller(a).await,
        Command::Promote(a) => {
            use crate::overrides::Action;
            let action = if a.full {
                Action::PromoteFull
            } else {
                Action::Promote
            };
            crate::control_cli::run(action, a.control).await
        }
        Command::Abort(a) => crate::control_cli::run(crate::overrides::Action::Abort, a).await,
        Command::Retry(a) => crate::control_cli::run(crate::overrides::Action::Retry, a).await,
        Command::Pause(a) => crate::control_cli::run(crate::overrides::Action::Pause, a).await,
        Command::Resume(a) => crate::control_cli::run(crate::overrides::Action::Resume, a).await,
        Command::Suspend(a) => crate::control_cli::run(crate::overrides::Action::Suspend, a).await,
        Command::Unsuspend(a) => {
            crate::control_cli::run(crate::overrides::Action::Unsuspend, a).await
        }
    }
}

fn validate(paths: &[PathBuf]) -> i32 {
    let loaded = load_paths(paths);
    for e in &loaded.errors {
        eprintln!("{e}");
    }
    if !loaded.errors.is_empty() {
        eprintln!(
            "{} problem(s) in {} file(s)",
            loaded.errors.len(),
            loaded.files.len()
        );
        return 1;
    }
    if loaded.docs.is_empty() {
        eprintln!(
            "no TrafficSplit documents found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return 1;
    }
    for d in &loaded.docs {
        println!(
            "{}:{}: split {} valid (generation {})",
            d.file.display(),
            d.line,
            d.split.name(),
            d.hash
        );
    }
    0
}

fn aws_options(a: &AwsArgs) -> AwsOptions {
    AwsOptions {
        route53_rps: a.route53_rps,
        ..AwsOptions::default()
    }
}

/// Human-readable diff of one split's plan, as a reviewer reads it in a pull request.
pub fn render_plan(name: &str, r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "split {name}: {} step {}/{}",
        r.state.as_str(),
        r.step,
        r.steps
    );
    let _ = writeln!(
        s,
        "  weights: observed {} -> {} (target {})",
        r.observed
            .as_ref()
            .map(show)
            .unwrap_or_else(|| "none".into()),
        show(&r.step_weights),
        show(&r.target)
    );
    for c in &r.route53 {
        let rec = &c.change.record;
        let sign = match c.change.action {
            crate::aws::ChangeAction::Create => "+",
            crate::aws::ChangeAction::Delete => "-",
            crate::aws::ChangeAction::Upsert => "~",
        };
        let target = rec
            .alias
            .as_ref()
            .map(|a| format!("alias {}", a.dns_name))
            .unwrap_or_else(|| rec.values.join(" "));
        let _ = writeln!(
            s,
            "  {sign} route53 {:?} {} {} set={} weight={} {}  # {}",
            c.change.action,
            rec.name,
            rec.rtype,
            rec.set_identifier.as_deref().unwrap_or("-"),
            rec.weight
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into()),
            target,
            c.why
        );
    }
    for c in &r.ecs_changes {
        let _ = writeln!(
            s,
            "  ~ ecs {}/{} desiredCount {} -> {}",
            c.cluster, c.service, c.from, c.to
        );
    }
    for c in &r.autoscaling {
        let _ = writeln!(
            s,
            "  ~ application-autoscaling {}/{} min/max {}/{} -> {}/{}",
            c.cluster, c.service, c.from.min, c.from.max, c.to.min, c.to.max
        );
    }
    if !r.has_changes() {
        let _ = writeln!(s, "  no changes");
    }
    if let Some(w) = &r.waiting_for {
        let _ = writeln!(s, "  waiting for: {w}");
    }
    s
}

async fn plan(a: PlanArgs) -> Result<i32> {
    let loaded = load_paths(&a.paths);
    if !loaded.errors.is_empty() {
        for e in &loaded.errors {
            eprintln!("{e}");
        }
        return Ok(1);
    }
    let accounts = Arc::new(connect_accounts(&aws_options(&a.aws)).await);
    let aws = accounts.default_aws();
    let mut ctx = Context::new(aws.clone(), a.aws.owner_id.clone(), true);
    ctx.accounts = Some(accounts);
    ctx.gates = GateChecker::with_options(
        aws,
        GateOptions {
            allow_loopback: a.gates.allow_loopback_gates,
            remote: a.with_gates,
        },
    );
    let work = loaded
        .docs
        .into_iter()
        .map(|doc| Work {
            doc,
            gates: Default::default(),
        })
        .collect();
    let outcomes = reconcile::cycle(&ctx, work, crate::status::now_unix_ms(), false).await;
    let mut code = 0;
    for o in outcomes {
        match o.result {
            Ok(r) => {
                print!("{}", render_plan(&o.name, &r));
                if r.has_changes() && code == exit::OK {
                    code = exit::CHANGES;
                }
            }
            Err(e) => {
                println!("split {}: error: {e}", o.name);
                code = exit::FAILURE;
            }
        }
    }
    Ok(code)
}

async fn run_controller(a: RunArgs) -> Result<i32> {
    let accounts = Arc::new(connect_accounts(&aws_options(&a.aws)).await);
    let aws = accounts.default_aws();
    let mut ctx = Context::new(aws.clone(), a.aws.owner_id.clone(), a.dry_run);
    ctx.accounts = Some(accounts);
    ctx.gates = GateChecker::with_options(
        aws,
        GateOptions {
            allow_loopback: a.gates.allow_loopback_gates,
            remote: true,
        },
    )
    .with_traffic(ctx.traffic.clone());
    let ctx = Arc::new(ctx);
    let app = AppState::new();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let poll_traffic = !a.once && !a.traffic_poll_interval.get().is_zero();
    if let Some(accounts) = ctx.accounts.clone().filter(|_| poll_traffic) {
        // The reconciler's registry: a cross-account split's share is read in its role's account.
        let poller = crate::traffic::poll::Poller::new(accounts, ctx.traffic.clone());
        tokio::spawn(crate::traffic::poll::run(
            poller,
            a.traffic_poll_interval.get().max(Duration::from_secs(1)),
            shutdown_rx.clone(),
        ));
    }

    // First signal: drain (not ready, finish or abandon the in-flight call, exit 0). Second: exit now.
    {
        let ready = app.ready.clone();
        tokio::spawn(async move {
            wait_signal().await;
            info!("signal received: draining (a second signal exits at once)");
            ready.store(false, Ordering::SeqCst);
            let _ = shutdown_tx.send(true);
            wait_signal().await;
            warn!("second signal: exiting now");
            std::process::exit(130);
        });
    }

    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| Error::Other(format!("cannot listen on {}: {e}", a.listen)))?;
    info!(listen = %listener.local_addr().map(|x| x.to_string()).unwrap_or_default(), owner = %a.aws.owner_id, dry_run = a.dry_run, "trafficshift {}", env!("CARGO_PKG_VERSION"));
    // The server outlives the drain so probes see /readyz turn 503 before the listener closes.
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, app.clone(), async move {
        let _ = stopped_rx.await;
    }));

    let (reload_tx, reload_rx) = mpsc::channel(1);
    let watcher = if a.once {
        None
    } else {
        match crate::watch::Watcher::start(&a.config, reload_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                error!(error = %e, "file watching unavailable; relying on --resync");
                None
            }
        }
    };
    let notify = crate::notify::Notifier::start(crate::notify::Config {
        urls: a.notify.clone(),
        secret: match &a.notify_secret_file {
            Some(p) => Some(read_secret(p)?),
            None => None,
        },
        source: format!("/trafficshift/{}", a.aws.owner_id),
    })
    .map_err(Error::Other)?;
    let opts = Options {
        paths: a.config.clone(),
        resync: a.resync.get().max(Duration::from_secs(1)),
        owner: a.aws.owner_id.clone(),
        dry_run: a.dry_run,
        once: a.once,
        notify,
    };
    let mut controller = Controller::new(ctx, opts, app.clone());
    let ok = controller.run(shutdown_rx, reload_rx, watcher).await;
    if !a.once {
        // Probes see /readyz 503 for a moment even when the drain itself was instant.
        tokio::time::sleep(server::NOT_READY_LINGER).await;
    }
    let _ = stopped_tx.send(());
    if a.once {
        server.abort();
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    info!("stopped");
    Ok(if ok { 0 } else { 1 })
}

/// The signing key: the file's bytes without a trailing newline (as `echo` or a Secret leaves it).
fn read_secret(path: &std::path::Path) -> Result<Vec<u8>> {
    let mut key = std::fs::read(path).map_err(|e| {
        Error::Other(format!(
            "cannot read --notify-secret-file {}: {e}",
            path.display()
        ))
    })?;
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    if key.is_empty() {
        return Err(Error::Other(format!(
            "--notify-secret-file {} is empty",
            path.display()
        )));
    }
    Ok(key)
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
