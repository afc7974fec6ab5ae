//! The Prometheus gate against a real Prometheus server (Debian's `prometheus` package).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use trafficshift::aws::{
    Alarms, AliasTarget, Aws, Change, Dns, Ecs, EcsService, RecordSet, Targets, Zone,
};
use trafficshift::gates::{GateChecker, GateOutcome};
use trafficshift::spec::{Gate, HumanDuration, OnNoData, PrometheusGate, TrafficSplit};
use trafficshift::{Error, Result};

const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// A Prometheus process that scrapes itself every second, killed on drop.
struct Prometheus {
    child: Child,
    address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("prometheus"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin/prometheus"))
        .chain(candidates)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no prometheus binary in /usr/bin or PATH: install Debian's prometheus package \
                 (scripts/bootstrap)"
            )
        })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Prometheus {
    fn start() -> Self {
        let binary = prometheus_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        // Two jobs scrape the same server, so `up` has two series.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             \x20 - job_name: self\n    static_configs:\n      - targets: ['{listen}']\n\
             \x20 - job_name: self-again\n    static_configs:\n      - targets: ['{listen}']\n"
        );
        let config_path = dir.path().join("prom.yml");
        std::fs::write(&config_path, config).expect("write prom.yml");
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create log");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Prometheus {
            child,
            address: format!("http://{listen}"),
            log,
            _dir: dir,
        }
    }

    /// Poll until `check` returns true, failing with Prometheus' log if it exits or the deadline
    /// passes.
    async fn wait_for<F, Fut>(&mut self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) while waiting for {what}:\n{}",
                    log_tail(&self.log)
                );
            }
            if check().await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {STARTUP_DEADLINE:?} waiting for {what}; prometheus log:\n{}",
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ready(&mut self) {
        let client = reqwest::Client::new();
        let ready_url = format!("{}/-/ready", self.address);
        self.wait_for("/-/ready to answer 200", || {
            let req = client
                .get(&ready_url)
                .timeout(Duration::from_secs(2))
                .send();
            async move { req.await.map(|r| r.status().is_success()).unwrap_or(false) }
        })
        .await;
        // Both scrape jobs must have a sample of `up` before the gate queries mean anything.
        let mut query_url =
            reqwest::Url::parse(&format!("{}/api/v1/query", self.address)).expect("query url");
        query_url
            .query_pairs_mut()
            .append_pair("query", "count(up == 1) == 2");
        self.wait_for("both series of `up` to have a sample", || {
            let req = client
                .get(query_url.clone())
                .timeout(Duration::from_secs(2))
                .send();
            async move {
                let Ok(resp) = req.await else { return false };
                let Ok(body) = resp.json::<serde_json::Value>().await else {
                    return false;
                };
                body["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            }
        })
        .await;
    }
}

// The Prometheus gate never touches AWS; these edges only complete the bundle.
struct Unused;

fn unused<T>() -> Result<T> {
    Err(Error::Other("not used by the prometheus gate".into()))
}

#[async_trait]
impl Dns for Unused {
    async fn find_zone(&self, _: &str) -> Result<Zone> {
        unused()
    }
    async fn list_all(&self, _: &str) -> Result<Vec<RecordSet>> {
        unused()
    }
    async fn list_from(&self, _: &str, _: &str) -> Result<Vec<RecordSet>> {
        unused()
    }
    async fn change(&self, _: &str, _: &str, _: &[Change]) -> Result<String> {
        unused()
    }
    async fn wait_insync(&self, _: &str, _: Duration) -> Result<()> {
        unused()
    }
}

#[async_trait]
impl Ecs for Unused {
    async fn describe(&self, _: &str, _: &[String]) -> Result<Vec<EcsService>> {
        unused()
    }
    async fn set_desired(&self, _: &str, _: &str, _: i32) -> Result<()> {
        unused()
    }
}

#[async_trait]
impl Targets for Unused {
    async fn api_gateway_domain(&self, _: &str) -> Result<AliasTarget> {
        unused()
    }
    async fn target_group_lb(&self, _: &str) -> Result<AliasTarget> {
        unused()
    }
    async fn target_health(&self, _: &str) -> Result<(u32, u32)> {
        unused()
    }
}

#[async_trait]
impl Alarms for Unused {
    async fn alarm_states(&self, _: &[String]) -> Result<Vec<(String, String)>> {
        unused()
    }
}

fn checker() -> GateChecker {
    let u = Arc::new(Unused);
    GateChecker::new(Aws {
        dns: u.clone(),
        ecs: u.clone(),
        targets: u.clone(),
        alarms: u,
    })
}

fn split() -> TrafficSplit {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "trafficshift.dev/v1alpha1",
        "kind": "TrafficSplit",
        "metadata": {"name": "api"},
        "spec": {
            "record": {"hostedZone": "example.com", "name": "api.example.com", "type": "A"},
            "backends": [{"name": "a", "target": {"cname": "a.example.com"}}],
            "weights": {"a": 100}
        }
    }))
    .expect("fixture split")
}

fn gate(address: &str, query: &str, max: Option<f64>, on_no_data: OnNoData) -> Gate {
    Gate {
        name: "prom".into(),
        cloudwatch_alarm: None,
        ecs_stable: None,
        target_health: None,
        prometheus: Some(PrometheusGate {
            address: address.into(),
            query: query.into(),
            max,
            min: None,
            on_no_data,
            timeout: HumanDuration(Duration::from_secs(5)),
        }),
        http: None,
    }
}

async fn check(address: &str, query: &str, max: Option<f64>, on_no_data: OnNoData) -> GateOutcome {
    checker()
        .check(&split(), &gate(address, query, max, on_no_data))
        .await
}

#[tokio::test]
async fn prometheus_gate_against_real_prometheus() {
    let mut prom = Prometheus::start();
    prom.ready().await;
    let addr = prom.address.clone();

    let o = check(&addr, "max(up)", Some(1.5), OnNoData::Fail).await;
    assert!(o.passing, "max(up) <= 1.5 should pass: {o:?}");
    assert_eq!(o.value, Some(1.0));

    let o = check(&addr, "sum(up)", Some(1.5), OnNoData::Fail).await;
    assert!(!o.passing, "sum(up) = 2 is above 1.5: {o:?}");
    assert_eq!(o.value, Some(2.0));
    assert!(
        o.message.contains("value 2 is above max 1.5"),
        "{}",
        o.message
    );

    // A scalar result works like a one-sample vector.
    let o = check(&addr, "scalar(sum(up))", Some(3.0), OnNoData::Fail).await;
    assert!(o.passing, "{o:?}");
    assert_eq!(o.value, Some(2.0));

    let o = check(&addr, "absent_metric_xyz", Some(1.0), OnNoData::Fail).await;
    assert!(!o.passing, "{o:?}");
    assert!(o.message.contains("no data"), "{}", o.message);

    let o = check(&addr, "absent_metric_xyz", Some(1.0), OnNoData::Pass).await;
    assert!(o.passing, "{o:?}");
    assert!(o.message.contains("no data"), "{}", o.message);

    let o = check(&addr, "up", Some(1.5), OnNoData::Fail).await;
    assert!(!o.passing, "{o:?}");
    assert!(
        o.message
            .contains("query returned 2 series; aggregate it to one"),
        "{}",
        o.message
    );

    // A PromQL syntax error is Prometheus' 400 answer, reported with its message.
    let o = check(&addr, "sum(up", Some(1.0), OnNoData::Fail).await;
    assert!(!o.passing, "{o:?}");
    assert!(o.message.contains("bad_data"), "{}", o.message);

    // The same query with a label matcher needing URL encoding.
    let o = check(
        &addr,
        r#"sum(up{job=~"self.*"}) / 2"#,
        Some(1.0),
        OnNoData::Fail,
    )
    .await;
    assert!(o.passing, "{o:?}");
    assert_eq!(o.value, Some(1.0));
}

#[tokio::test]
async fn prometheus_gate_unreachable_address_fails() {
    // Nothing listens on a port that was just free.
    let addr = format!("http://127.0.0.1:{}", free_port());
    let o = check(&addr, "max(up)", Some(1.5), OnNoData::Pass).await;
    assert!(!o.passing, "{o:?}");
    assert!(o.message.contains("connection failed"), "{}", o.message);
    assert!(
        o.message.to_lowercase().contains("connection refused"),
        "{}",
        o.message
    );
}

#[test]
fn prometheus_binary_is_installed() {
    // Fails rather than skips: a missing binary must not make the gate untested in CI.
    let _ = prometheus_binary();
}
