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
    /// One long-lived boto3 process that runs every `py` snippet and `cli` call: a new Python per
    /// snippet cost about 0.2 s of CPU (interpreter and boto3 import), an `aws` process 0.5 s.
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
    /// (a boto3 client pointed at moto), `endpoint`, `json`, `sys`, `boto3` and `aws_cli` (what
    /// `cli` runs); the snippet assigns its answer to `out`, which comes back as JSON. Panics with
    /// the Python error on failure.
    pub fn py(&self, script: &str, input: Value) -> Value {
        self.try_py(script, input)
            .unwrap_or_else(|e| panic!("python snippet failed: {e}"))
    }

    /// `py` that returns the error text instead of panicking. Snippets run one at a time in this
    /// moto's boto3 worker (`scripts/motofork.py` `worker`), each in a fresh namespace.
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

    /// `aws ARGS --endpoint-url <this moto> --output json`: the AWS CLI's own driver (awscli's
    /// `create_clidriver().main`, on the CLI's own botocore) run in this moto's boto3 worker
    /// rather than as a process of its own, with the environment of `aws_env`. Its JSON answer,
    /// `Null` when it prints nothing. Panics when the command fails.
    pub fn cli(&self, args: &[&str]) -> Value {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("aws {args:?} failed: {e}"))
    }

    /// `cli` that returns the CLI's error output when it exits non-zero.
    pub fn try_cli(&self, args: &[&str]) -> Result<Value, String> {
        self.try_cli_with_env(args, &[])
    }

    /// `try_cli` with the environment changed for this call only: `(NAME, Some(value))` sets a
    /// variable, `(NAME, None)` removes it. The CLI reads credentials and settings from it as a
    /// new `aws` process would. Panics when the CLI could not run at all: a missing tool fails.
    pub fn try_cli_with_env(
        &self,
        args: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Result<Value, String> {
        const SCRIPT: &str = r#"out = aws_cli(input["args"], input["env"])"#;
        let mut argv = args.to_vec();
        argv.extend(["--endpoint-url", &self.endpoint, "--output", "json"]);
        let env: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.map_or(Value::Null, Value::from)))
            .collect();
        let run = self
            .try_py(SCRIPT, serde_json::json!({"args": argv, "env": env}))
            .unwrap_or_else(|e| panic!("the AWS CLI did not run (aws {args:?}): {e}"));
        let text = |key: &str| run[key].as_str().unwrap_or_default().to_string();
        match run["rc"].as_i64() {
            Some(0) => {}
            Some(_) => return Err(text("stderr")),
            None => panic!("the AWS CLI gave no exit code (aws {args:?}): {run}"),
        }
        let stdout = text("stdout");
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("aws {args:?} printed no JSON ({e}): {stdout}")))
    }
}

/// The boto3 worker of one moto (`scripts/motofork.py` `worker`): a Python with boto3 imported that
/// runs snippets sent as JSON lines and answers each with one JSON line. Forked from the moto
/// factory when one runs (`TRAFFICSHIFT_MOTO_FORK`), the imports already done; else a Python of its
/// own (`motofork.py --worker`), speaking on its stdin and stdout.
struct PyWorker {
    process: PyWorkerProcess,
    requests: Box<dyn Write + Send>,
    answers: std::io::BufReader<Box<dyn Read + Send>>,
}

enum PyWorkerProcess {
    Spawned(Child),
    /// The forked worker lives while this connection is open.
    Forked(std::os::unix::net::UnixStream),
}

impl PyWorker {
    fn start(endpoint: &str, env: &[(String, String)]) -> Result<PyWorker, String> {
        // As for moto: a factory that is gone costs time, not the test.
        if let Some(sock) = std::env::var_os("TRAFFICSHIFT_MOTO_FORK") {
            match PyWorker::fork(Path::new(&sock), endpoint, env) {
                Ok(w) => return Ok(w),
                Err(e) => eprintln!("{e}; starting a boto3 worker of its own instead"),
            }
        }
        PyWorker::spawn(endpoint, env)
    }

    fn spawn(endpoint: &str, env: &[(String, String)]) -> Result<PyWorker, String> {
        let mut child = Command::new(python())
            .arg(repo().join("scripts/motofork.py"))
            .args(["--worker", endpoint])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python().display()))?;
        let requests = Box::new(child.stdin.take().ok_or("no stdin")?);
        let answers: Box<dyn Read + Send> = Box::new(child.stdout.take().ok_or("no stdout")?);
        Ok(PyWorker {
            process: PyWorkerProcess::Spawned(child),
            requests,
            answers: std::io::BufReader::new(answers),
        })
    }

    fn fork(sock: &Path, endpoint: &str, env: &[(String, String)]) -> Result<PyWorker, String> {
        let env: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let req = serde_json::json!({"kind": "worker", "endpoint": endpoint, "env": env});
        let (conn, answer) = factory_request(sock, &req)?;
        if answer["pid"].as_u64().is_none() {
            return Err(format!("moto factory said: {answer}"));
        }
        let clone = || {
            conn.try_clone()
                .map_err(|e| format!("boto3 worker connection: {e}"))
        };
        let requests = Box::new(clone()?);
        let answers: Box<dyn Read + Send> = Box::new(clone()?);
        Ok(PyWorker {
            process: PyWorkerProcess::Forked(conn),
            requests,
            answers: std::io::BufReader::new(answers),
        })
    }

    /// Outer error: the worker is gone. Inner: the snippet's answer or its Python error.
    fn run(&mut self, script: &str, input: &Value) -> Result<Result<Value, String>, String> {
        use std::io::BufRead;
        let req = serde_json::json!({"script": script, "input": input});
        writeln!(self.requests, "{req}")
            .and_then(|()| self.requests.flush())
            .map_err(|e| format!("boto3 worker gone: {e}"))?;
        let mut line = String::new();
        let n = self
            .answers
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
        match &mut self.process {
            PyWorkerProcess::Spawned(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            // The worker exits when its connection closes.
            PyWorkerProcess::Forked(conn) => {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
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
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("moto-{}-f{n}.log", std::process::id()));
        let env: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let (conn, answer) = factory_request(sock, &serde_json::json!({"env": env, "log": log}))?;
        let (Some(port), Some(pid)) = (answer["port"].as_u64(), answer["pid"].as_u64()) else {
            return Err(format!("moto factory said: {answer}"));
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

/// One request to the moto factory on `sock` (`scripts/motofork.py`): the connection, whose life
/// is the forked process's, and the factory's one-line JSON answer.
fn factory_request(
    sock: &Path,
    req: &Value,
) -> Result<(std::os::unix::net::UnixStream, Value), String> {
    let mut conn = std::os::unix::net::UnixStream::connect(sock)
        .map_err(|e| format!("moto factory {}: {e}", sock.display()))?;
    writeln!(conn, "{req}").map_err(|e| format!("moto factory: {e}"))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    // Byte by byte up to the newline: a buffered reader could take what a worker says next.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        match conn.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                return Err(format!("moto factory closed the connection after {text:?}"));
            }
            Err(e) => return Err(format!("moto factory did not answer: {e}")),
        }
    }
    let _ = conn.set_read_timeout(None);
    let answer = serde_json::from_slice(&line).map_err(|e| {
        let text = String::from_utf8_lossy(&line);
        format!("moto factory said ({e}): {text:?}")
    })?;
    Ok((conn, answer))
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

/// A 127.0.0.1 port that refuses connections for as long as the returned socket lives: bound and
/// never listening, so no other process (a moto, a worker, another test) can take it, as it can a
/// port bound and released. `(socket, port)`: keep the socket until the test is done with the port.
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let port = held.local_addr().expect("bound").port();
    (held, port)
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
