//! The HTTP server on a real socket, read with reqwest, and `trafficshift status` against it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use trafficshift::server::{serve, AppState};
use trafficshift::status::{BackendStatus, ConfigStatus, ControllerStatus, SplitStatus};
use trafficshift::status_cli::{self, Output, StatusOptions};

/// A running server; `stop` shuts it down and waits for `serve` to return.
struct Server {
    base: String,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<trafficshift::Result<()>>,
}

impl Server {
    async fn start(status: ControllerStatus) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let state = AppState::new();
        state.set_status(&status);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Server {
            base,
            state,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) -> trafficshift::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("serve returns within 10s of the shutdown signal")
            .expect("serve task did not panic")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

fn split(name: &str, state: &str) -> SplitStatus {
    SplitStatus {
        name: name.into(),
        record: format!("{name}.example.com. A"),
        hosted_zone: "example.com.".into(),
        state: state.into(),
        step: 1,
        steps: 2,
        backends: vec![BackendStatus {
            name: "a".into(),
            target_weight: 100,
            step_weight: 50,
            observed_weight: Some(50),
            ecs: None,
            traffic_share: None,
        }],
        first_seen: "2024-05-01T10:00:00Z".into(),
        ..SplitStatus::default()
    }
}

fn fixture() -> ControllerStatus {
    ControllerStatus {
        version: "0.1.0".into(),
        generated_at: "2024-05-01T10:05:00Z".into(),
        owner_id: "test".into(),
        dry_run: false,
        config: ConfigStatus {
            paths: vec!["/etc/trafficshift".into()],
            valid: true,
            errors: vec![],
            last_load: None,
        },
        splits: vec![split("api", "Progressing"), split("checkout", "RolledBack")],
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let server = Server::start(fixture()).await;
    let r = server.get("/healthz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "ok");

    let r = server.get("/readyz").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.expect("body"), "not ready");

    server.state.ready.store(true, Ordering::Relaxed);
    let r = server.get("/readyz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "ready");

    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn metrics_in_prometheus_text_format() {
    let server = Server::start(fixture()).await;
    let r = server.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content-type {ct}"
    );
    let body = r.text().await.expect("body");
    assert!(
        body.contains("# TYPE trafficshift_build_info gauge"),
        "{body}"
    );
    let build = body
        .lines()
        .find(|l| l.starts_with("trafficshift_build_info{"))
        .unwrap_or_else(|| panic!("no build_info series:\n{body}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    // A git checkout (where tests run) names the commit: hex digits, never empty.
    let rev = build
        .split("revision=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no revision label: {build}"));
    assert!(
        rev.len() >= 7 && rev.chars().all(|c| c.is_ascii_hexdigit()),
        "revision {rev:?} is not a git hash: {build}"
    );
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn status_whole_and_by_name() {
    let server = Server::start(fixture()).await;
    let r = server.get("/status").await;
    assert_eq!(r.status(), 200);
    let got: ControllerStatus = r.json().await.expect("status JSON");
    assert_eq!(got, fixture());

    // The controller replaces the status; the next request sees it.
    let mut changed = fixture();
    changed.splits[0].state = "Complete".into();
    server.state.set_status(&changed);
    let r = server.get("/status/api").await;
    assert_eq!(r.status(), 200);
    let got: SplitStatus = r.json().await.expect("split JSON");
    assert_eq!(got.name, "api");
    assert_eq!(got.state, "Complete");

    let r = server.get("/status/nope").await;
    assert_eq!(r.status(), 404);
    let err: serde_json::Value = r.json().await.expect("error JSON");
    assert_eq!(err["error"], "split \"nope\" not found");

    server.stop().await.expect("clean shutdown");
}

fn opts(endpoint: &str, name: Option<&str>, output: Output, exit_code: bool) -> StatusOptions {
    StatusOptions {
        endpoint: endpoint.into(),
        name: name.map(String::from),
        output,
        watch: false,
        exit_code,
    }
}

#[tokio::test]
async fn status_command_exit_codes() {
    let server = Server::start(fixture()).await;
    let b = server.base.clone();
    assert_eq!(
        status_cli::run(opts(&b, None, Output::Table, true))
            .await
            .expect("run"),
        1,
        "checkout is RolledBack"
    );
    assert_eq!(
        status_cli::run(opts(&b, None, Output::Table, false))
            .await
            .expect("run"),
        0,
        "without --exit-code"
    );
    assert_eq!(
        status_cli::run(opts(&b, Some("api"), Output::Json, true))
            .await
            .expect("run"),
        0
    );
    assert_eq!(
        status_cli::run(opts(&b, Some("checkout"), Output::Yaml, true))
            .await
            .expect("run"),
        1
    );
    let err = status_cli::run(opts(&b, Some("nope"), Output::Table, true))
        .await
        .expect_err("unknown split");
    assert!(
        err.to_string().contains("split \"nope\" not found"),
        "{err}"
    );

    let mut invalid = fixture();
    invalid.config.valid = false;
    server.state.set_status(&invalid);
    assert_eq!(
        status_cli::run(opts(&b, Some("api"), Output::Wide, true))
            .await
            .expect("run"),
        1,
        "invalid config"
    );

    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn status_command_reports_unreachable_controller() {
    let (_held, port) = crate::support::refusing_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = status_cli::run(opts(&endpoint, None, Output::Table, true))
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err, trafficshift::Error::Unreachable(_)),
        "unreachable must be told apart from unhealthy: {err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach trafficshift at {endpoint}/status: connection refused; is the controller running? use --endpoint"
        )
    );
}

#[tokio::test]
async fn status_command_reports_http_errors() {
    // A wrong path prefix: {base}/healthz/status is a 404.
    let server = Server::start(fixture()).await;
    let err = status_cli::run(opts(
        &format!("{}/healthz", server.base),
        None,
        Output::Table,
        false,
    ))
    .await
    .expect_err("not a status endpoint");
    assert!(
        err.to_string()
            .contains(&format!("{}/healthz/status answered 404", server.base)),
        "{err}"
    );
    server.stop().await.expect("clean shutdown");
}

/// Read from `stream` until the server closes it; how long that took, or None if it stayed open
/// past `deadline`.
async fn closed_within(stream: &mut tokio::net::TcpStream, deadline: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + deadline),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn clients_that_never_finish_their_headers_are_dropped() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(fixture()).await;
    let addr = server.base.trim_start_matches("http://").to_string();

    // Half a request, then silence (slowloris); and a connection that sends nothing at all.
    let mut partial = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");

    // 10 s is the bound; 2 s of slack for a loaded test machine.
    let deadline = Duration::from_secs(12);
    let (a, b) = tokio::join!(
        closed_within(&mut partial, deadline),
        closed_within(&mut silent, deadline)
    );
    assert!(
        a.is_some(),
        "a client that never finished its headers was still connected after {deadline:?}"
    );
    assert!(
        b.is_some(),
        "a client that sent nothing was still connected after {deadline:?}"
    );
    // The server itself is fine.
    assert_eq!(server.get("/healthz").await.status(), 200);
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn request_bodies_are_refused() {
    let server = Server::start(fixture()).await;
    let r = reqwest::Client::new()
        .get(format!("{}/status", server.base))
        .body("x".repeat(100))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 413);
    server.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait() {
    let server = Server::start(fixture()).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..trafficshift::server::MAX_CONNECTIONS {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    // Every slot is held by a silent client: a new request is not served...
    let blocked = reqwest::Client::new()
        .get(format!("{}/healthz", server.base))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        blocked.is_err(),
        "a request beyond the connection cap was served: {blocked:?}"
    );
    // ...until a slot frees up.
    drop(idle.pop());
    assert_eq!(server.get("/healthz").await.status(), 200);
    drop(idle);
    server.stop().await.expect("clean shutdown");
}

/// The binary's exit code for `args`.
fn exit_code(args: &[&str]) -> i32 {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trafficshift"))
        .args(args)
        .env_remove("TRAFFICSHIFT_ENDPOINT")
        .output()
        .expect("run trafficshift");
    out.status.code().expect("exited, not killed")
}

#[test]
fn usage_errors_exit_64_in_every_subcommand() {
    for args in [
        &["plan", "--no-such-flag"][..],
        &["plan"],
        &["run", "--config", "x.yaml", "--listen", "not-an-address"],
        &["run"],
        &["validate"],
        &["status", "-o", "xml"],
        &["schema", "extra"],
        &["no-such-command"],
        &[],
    ] {
        assert_eq!(exit_code(args), 64, "trafficshift {}", args.join(" "));
    }
    assert_eq!(exit_code(&["--help"]), 0);
    assert_eq!(exit_code(&["plan", "--help"]), 0);
    assert_eq!(exit_code(&["--version"]), 0);
}

#[tokio::test]
async fn status_exit_codes_tell_unreachable_from_unhealthy() {
    let (_held, port) = crate::support::refusing_port();
    let closed = format!("http://127.0.0.1:{port}");
    let server = Server::start(fixture()).await;
    let base = server.base.clone();
    let codes = tokio::task::spawn_blocking(move || {
        [
            exit_code(&["status", "--endpoint", &closed, "--exit-code"]),
            exit_code(&["status", "--endpoint", &closed]),
            exit_code(&["status", "--endpoint", &base, "--exit-code"]),
            exit_code(&["status", "--endpoint", &base, "--exit-code", "api"]),
        ]
    })
    .await
    .expect("join");
    assert_eq!(
        codes,
        [69, 69, 1, 0],
        "unreachable, unreachable, RolledBack split, healthy split"
    );
    server.stop().await.expect("clean shutdown");
}
