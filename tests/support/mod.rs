//! Shared harness of the integration tests: a private moto server per test, a real boto3 client to
//! set up and read back AWS state, unique names, and polling with a deadline.
//!
//! Use it from a test file with `mod support;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub mod controller;

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `<repo>/.venv/bin/<tool>` when the venv exists, else `fallback` from PATH.
pub fn venv_tool(tool: &str, fallback: &str) -> PathBuf {
    let p = repo().join(".venv/bin").join(tool);
    if p.exists() {
        p
    } else {
        PathBuf::from(fallback)
    }
}

/// The Python that has boto3 (and moto).
pub fn python() -> PathBuf {
    venv_tool("python", "python3")
}

/// Whether this run judges the controller against the realistic AWS layer
/// (`TRAFFICSHIFT_TEST_AWS=realistic`, as `scripts/test` sets for its realistic-mode step): ECS
/// tasks start one a second, new ALB targets stay `initial`, Route53 changes stay PENDING, Route53
/// throttles above its account rate, alarms start in INSUFFICIENT_DATA, Application Auto Scaling
/// moves counts on its own. Otherwise the layer only checks what real Route53 would refuse.
pub fn realistic() -> bool {
    std::env::var("TRAFFICSHIFT_TEST_AWS").is_ok_and(|v| v == "realistic")
}

/// The layer's flags in realistic mode: every real-AWS behaviour on, with delays short enough for
/// CI (each still far from moto's zero). Route53 keeps a rate above the controllers' test setting
/// of 50/s only where a test says so; here the account allows 10/s.
pub const REALISTIC_FLAGS: &[&str] = &[
    "--realistic",
    "--task-start",
    "1",
    "--health-check-seconds",
    "2",
    "--deregistration-delay",
    "3",
    "--change-pending",
    "2",
    "--alarm-insufficient-data",
    "2",
    "--circuit-breaker",
    "20",
    "--route53-rps",
    "10",
];

/// A moto server on a free local port, killed when dropped.
pub struct Moto {
    /// `http://127.0.0.1:PORT`: moto itself. Read results back here (what AWS holds); give the
    /// controller `aws()` instead.
    pub endpoint: String,
    server: MotoProcess,
    log: PathBuf,
    /// The AWS layer in front of moto that the controller talks to, started on first use.
    layer: std::sync::OnceLock<controller::FaultProxy>,
    /// One long-lived boto3 process that runs every `py` snippet: a new Python per snippet cost
    /// about 0.2 s of CPU (interpreter and boto3 import), most of the suite's client-side CPU.
    py_worker: std::sync::Mutex<Option<PyWorker>>,
}

impl Moto {
    /// Start moto with default settings.
    pub fn start() -> Moto {
        Moto::start_with_env(&[])
    }

    /// Start moto with extra environment for the server process, e.g.
    /// `[("MOTO_ECS_SERVICE_RUNNING", "0")]`. moto reads such settings when a resource is created.
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let mut last = String::new();
        // The port is picked by binding :0 and released before moto binds it; another process can
        // take it in between, so a failed start is retried with a new port.
        for _ in 0..3 {
            match Moto::try_start(env) {
                Ok(m) => return m,
                Err(e) => last = e,
            }
        }
        panic!("moto_server did not start: {last}");
    }

    fn try_start(env: &[(&str, &str)]) -> Result<Moto, String> {
        // A factory that is gone (or not up yet) costs time, not the test.
        let forked = std::env::var_os("TRAFFICSHIFT_MOTO_FORK")
            .map(|sock| MotoProcess::fork(Path::new(&sock), env))
            .and_then(|r| {
                r.map_err(|e| eprintln!("{e}; starting moto_server instead"))
                    .ok()
            });
        let (server, port, log) = match forked {
            Some(f) => f,
            None => MotoProcess::spawn(env)?,
        };
        let mut moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            server,
            log,
            layer: std::sync::OnceLock::new(),
            py_worker: std::sync::Mutex::new(None),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_ok(addr, "/moto-api/") {
                return Ok(moto);
            }
            if let Some(status) = moto.server.exited() {
                return Err(format!(
                    "moto_server exited ({status}): {}",
                    moto.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto_server not answering GET /moto-api/ on port {port} after 30 s: {}",
                    moto.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The endpoint the controller under test talks to: `scripts/faultproxy.py` in front of this
    /// moto, which refuses what real Route53 refuses (the test fails on drop if it refused
    /// anything) and, in realistic mode, behaves like real AWS with short delays.
    pub fn aws(&self) -> &str {
        &self
            .layer
            .get_or_init(|| controller::FaultProxy::start(&self.endpoint, 1, 0.0, "500", &[]))
            .endpoint
    }

    /// The layer behind `aws()`, once started.
    pub fn layer(&self) -> Option<&controller::FaultProxy> {
        self.layer.get()
    }

    /// The last lines moto wrote, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Environment for a process (the trafficshift binary, the aws CLI) that should talk to this
    /// moto: pass it to `Command::envs`. The test process's own environment is never changed.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A config loader pointing at this moto with fixed test credentials.
    pub fn loader(&self) -> aws_config::ConfigLoader {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_route53::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
    }

    /// The real AWS edge of trafficshift, pointed at this moto.
    pub async fn connect(&self) -> trafficshift::aws::Aws {
        let opts = trafficshift::aws::connect::AwsOptions {
            route53_rps: 50.0,
            ..Default::default()
        };
        self.connect_with(&opts).await
    }

    /// `connect` with explicit options.
    pub async fn connect_with(
        &self,
        opts: &trafficshift::aws::connect::AwsOptions,
    ) -> trafficshift::aws::Aws {
        trafficshift::aws::connect::connect_with(opts, self.loader()).await
    }

    /// Call one boto3 client method and return its response as JSON (datetimes as strings,
    /// ResponseMetadata removed). Panics with the Python error on failure.
    ///
    /// `moto.boto3_json("route53", "list_resource_record_sets", json!({"HostedZoneId": id}))`
    pub fn boto3_json(&self, service: &str, method: &str, kwargs: Value) -> Value {
        self.try_boto3_json(service, method, kwargs)
            .unwrap_or_else(|e| panic!("boto3 {service}.{method} failed: {e}"))
    }

    /// `boto3_json` that returns the error text (e.g. to check a resource is gone).
    pub fn try_boto3_json(
        &self,
        service: &str,
        method: &str,
        kwargs: Value,
    ) -> Result<Value, String> {
        const SCRIPT: &str = r#"
r = getattr(client(input["service"]), input["method"])(**input["kwargs"])
r.pop("ResponseMetadata", None)
out = r
"#;
        self.try_py(
            SCRIPT,
            serde_json::json!({"service": service, "method": method, "kwargs": kwargs}),
        )
    }

    /// Run a Python snippet against this moto. In scope: `input` (the JSON given), `client(name)`
    /// (a boto3 client pointed at moto), `endpoint`; the snippet assigns its answer to `out`,
    /// which comes back as JSON. Panics with the Python error on failure.
    pub fn py(&self, script: &str, input: Value) -> Value {
        self.try_py(script, input)
            .unwrap_or_else(|e| panic!("python snippet failed: {e}"))
    }

    /// `py` that returns the error text instead of panicking. Snippets run one at a time in this
    /// moto's boto3 worker, each in a fresh namespace.
    pub fn try_py(&self, script: &str, input: Value) -> Result<Value, String> {
        let mut guard = self.py_worker.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(PyWorker::start(&self.endpoint, &self.aws_env())?);
        }
        let worker = guard.as_mut().expect("started above");
        match worker.run(script, &input) {
            Ok(answer) => answer,
            Err(broken) => {
                // The worker died (a snippet exited or crashed it): the next call starts a new one.
                *guard = None;
                Err(broken)
            }
        }
    }
}

/// A Python process with boto3 imported that runs snippets sent as JSON lines on its stdin and
/// answers each with one JSON line on a private copy of its stdout (a snippet's own prints go to
/// stderr, so they cannot break the protocol).
struct PyWorker {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl PyWorker {
    const PROGRAM: &'static str = r#"
import json, os, sys, traceback, boto3
endpoint = sys.argv[1]
proto = os.fdopen(os.dup(1), "w")
sys.stdout = sys.stderr
clients = {}
def client_for(ns):
    # A snippet may point later clients elsewhere by assigning `endpoint` (e.g. at the layer).
    def client(name):
        key = (name, ns["endpoint"])
        if key not in clients:
            clients[key] = boto3.client(name, endpoint_url=ns["endpoint"], region_name="us-east-1",
                                        aws_access_key_id="testing", aws_secret_access_key="testing")
        return clients[key]
    return client
for line in sys.stdin:
    req = json.loads(line)
    ns = {"json": json, "sys": sys, "boto3": boto3, "endpoint": endpoint,
          "input": req["input"], "out": None}
    ns["client"] = client_for(ns)
    try:
        exec(req["script"], ns)
        answer = {"ok": json.loads(json.dumps(ns["out"], default=str))}
    except BaseException as e:
        text = traceback.format_exc()
        answer = {"err": text.strip().splitlines()[-1] + "\n" + text}
    proto.write(json.dumps(answer) + "\n")
    proto.flush()
"#;

    fn start(endpoint: &str, env: &[(String, String)]) -> Result<PyWorker, String> {
        let mut child = Command::new(python())
            .args(["-c", Self::PROGRAM, endpoint])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python().display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(PyWorker {
            child,
            stdin,
            stdout,
        })
    }

    /// Outer error: the worker is gone. Inner: the snippet's answer or its Python error.
    fn run(&mut self, script: &str, input: &Value) -> Result<Result<Value, String>, String> {
        use std::io::BufRead;
        let req = serde_json::json!({"script": script, "input": input});
        writeln!(self.stdin, "{req}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("boto3 worker gone: {e}"))?;
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("boto3 worker gone: {e}"))?;
        if n == 0 {
            return Err("boto3 worker exited".into());
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("boto3 worker said ({e}): {line}"))?;
        Ok(match v.get("err").and_then(Value::as_str) {
            Some(err) => Err(err.to_string()),
            None => Ok(v["ok"].clone()),
        })
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A moto server process: a `moto_server` of its own, or one forked by `scripts/motofork.py`
/// (scripts/test runs one and names its socket in `TRAFFICSHIFT_MOTO_FORK`): the same server
/// without importing moto again for every test.
enum MotoProcess {
    Spawned(Child),
    /// The forked server lives while this connection is open.
    Forked {
        pid: u32,
        conn: std::os::unix::net::UnixStream,
    },
}

impl MotoProcess {
    /// A new `moto_server` on a port picked here.
    fn spawn(env: &[(&str, &str)]) -> Result<(MotoProcess, u16, PathBuf), String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let log = std::env::temp_dir().join(format!("moto-{}-{port}.log", std::process::id()));
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let bin = venv_tool("moto_server", "moto_server");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        Ok((MotoProcess::Spawned(child), port, log))
    }

    /// A server forked by the factory listening on `sock`; it binds its own port.
    fn fork(sock: &Path, env: &[(&str, &str)]) -> Result<(MotoProcess, u16, PathBuf), String> {
        use std::io::BufRead;
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("moto-{}-f{n}.log", std::process::id()));
        let mut conn = std::os::unix::net::UnixStream::connect(sock)
            .map_err(|e| format!("moto factory {}: {e}", sock.display()))?;
        let env: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let req = serde_json::json!({"env": env, "log": log});
        writeln!(conn, "{req}").map_err(|e| format!("moto factory: {e}"))?;
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let mut line = String::new();
        std::io::BufReader::new(&conn)
            .read_line(&mut line)
            .map_err(|e| format!("moto factory did not answer: {e}"))?;
        let _ = conn.set_read_timeout(None);
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| format!("moto factory said ({e}): {line:?}"))?;
        let (Some(port), Some(pid)) = (v["port"].as_u64(), v["pid"].as_u64()) else {
            return Err(format!("moto factory said: {line:?}"));
        };
        Ok((
            MotoProcess::Forked {
                pid: pid as u32,
                conn,
            },
            port as u16,
            log,
        ))
    }

    /// How the server ended, if it has.
    fn exited(&mut self) -> Option<String> {
        match self {
            MotoProcess::Spawned(child) => child.try_wait().ok().flatten().map(|s| s.to_string()),
            MotoProcess::Forked { pid, .. } => (!Path::new(&format!("/proc/{pid}")).exists())
                .then(|| format!("forked server {pid} is gone")),
        }
    }

    fn stop(&mut self) {
        match self {
            MotoProcess::Spawned(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            // The server exits as soon as its connection closes.
            MotoProcess::Forked { conn, .. } => {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// One HTTP/1.0 GET; true on a 200 answer.
fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// A name no other test (or earlier run) uses: `prefix` plus process id, a counter and the time,
/// lower-case letters, digits and dashes only.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{}", std::process::id(), t % 1_000_000_000)
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `deadline` saying what was
/// awaited.
pub async fn eventually<F, Fut, T>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
