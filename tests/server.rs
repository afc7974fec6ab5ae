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
        *state.status.write().await = status;
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
    assert!(
        body.contains("trafficshift_build_info{version=\""),
        "{body}"
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
    server.state.status.write().await.splits[0].state = "Complete".into();
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

    server.state.status.write().await.config.valid = false;
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
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = status_cli::run(opts(&endpoint, None, Output::Table, true))
        .await
        .expect_err("nothing listens");
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
