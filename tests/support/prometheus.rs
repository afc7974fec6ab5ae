//! A real Prometheus server for tests (Debian's `prometheus` package), scraping itself every
//! second under two jobs so that `up` has two series. Killed on drop.
//!
//! Not part of `support/mod.rs` (other test files need not build it): include it with
//! `#[path = "support/prometheus.rs"] mod prometheus;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long Prometheus gets to answer /-/ready and to have scraped both jobs.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// A Prometheus process that scrapes itself every second, killed on drop.
pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/usr/bin/prometheus`, else the first `prometheus` on PATH; panics (never skips) when missing.
pub fn prometheus_binary() -> PathBuf {
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

/// A free 127.0.0.1 port (released before use; good enough for tests).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Prometheus {
    /// Start the server on a free port; call `ready` (or `ready_blocking`) before querying it.
    pub fn start() -> Self {
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
    pub async fn wait_for<F, Fut>(&mut self, what: &str, mut check: F)
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

    /// Wait until the server is ready and both scrape jobs have a sample of `up`.
    pub async fn ready(&mut self) {
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

    /// `ready` for synchronous tests (runs its own small runtime).
    pub fn ready_blocking(&mut self) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(self.ready());
    }
}
