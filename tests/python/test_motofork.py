"""scripts/motofork.py: each forked server is a separate moto, takes its environment, and ends
with its client's connection; the factory ends with its parent. A forked boto3 worker runs the
tests' snippets and the real AWS CLI over HTTP against a moto, and ends with its connection; the
same worker runs on stdin/stdout in a Python of its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]


def wait_for(what, check, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


# One factory for the module's tests (each starts in about 3 s of CPU): every test forks servers
# and workers of its own from it, and none changes the factory; the test of the factory's own end
# starts one of its own.
@pytest.fixture(scope="module")
def factory():
    sock = os.path.join(tempfile.mkdtemp(), "f.sock")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "motofork.py"), sock])
    wait_for("the factory's socket", lambda: os.path.exists(sock))
    yield sock, proc
    proc.kill()
    proc.wait()


def fork(sock: str, env: dict | None = None):
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(sock)
    conn.sendall((json.dumps({"env": env or {}, "log": os.devnull}) + "\n").encode())
    answer = json.loads(conn.makefile().readline())
    return conn, answer["port"], answer["pid"]


def client(service: str, port: int):
    return boto3.client(service, endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def test_servers_are_separate_and_take_their_environment(factory):
    sock, _ = factory
    a, port_a, _ = fork(sock)
    b, port_b, _ = fork(sock, {"MOTO_ECS_SERVICE_RUNNING": "2"})
    assert port_a != port_b
    client("route53", port_a).create_hosted_zone(Name="only-a.example", CallerReference="a")
    assert [z["Name"] for z in client("route53", port_a).list_hosted_zones()["HostedZones"]] == ["only-a.example."]
    assert client("route53", port_b).list_hosted_zones()["HostedZones"] == []
    for port, running in [(port_a, 0), (port_b, 2)]:
        ecs = client("ecs", port)
        ecs.create_cluster(clusterName="c")
        ecs.register_task_definition(family="t", containerDefinitions=[{"name": "x", "image": "x", "memory": 128}])
        ecs.create_service(cluster="c", serviceName="s", taskDefinition="t", desiredCount=3)
        assert ecs.describe_services(cluster="c", services=["s"])["services"][0]["runningCount"] == running
    a.close()
    b.close()


def test_a_server_ends_with_its_connection(factory):
    sock, _ = factory
    conn, port, pid = fork(sock)
    client("sts", port).get_caller_identity()
    assert alive(pid)
    conn.close()
    wait_for("the server to exit", lambda: not alive(pid), 10)


def test_the_factory_ends_with_its_parent():
    sock = os.path.join(tempfile.mkdtemp(), "f.sock")
    # A shell that starts the factory in the background, naming itself as the parent to outlive,
    # and exits at once: the factory must not outlive it.
    out = subprocess.run(["sh", "-c", f'"{sys.executable}" "{ROOT}/scripts/motofork.py" "{sock}" $$ >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip())
    wait_for("the orphaned factory to exit", lambda: not alive(pid) or open(f"/proc/{pid}/stat").read().split()[2] == "Z", 30)


# What tests/support's Moto::aws_env gives a worker.
WORKER_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
              "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


class Worker:
    """A boto3 worker's end of the protocol: one JSON line out, one back."""

    def __init__(self, send, lines, close=None):
        self.send, self.lines, self.close = send, lines, close

    def ask(self, script: str, input=None) -> dict:
        self.send((json.dumps({"script": script, "input": input}) + "\n").encode())
        line = self.lines.readline()
        assert line, "the worker closed its end"
        return json.loads(line)

    def ok(self, script: str, input=None):
        answer = self.ask(script, input)
        assert "ok" in answer, answer.get("err")
        return answer["ok"]

    def cli(self, *args: str, env: dict | None = None) -> dict:
        return self.ok('out = aws_cli(input["args"], input["env"])', {"args": list(args), "env": env})


def fork_worker(sock: str, endpoint: str):
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(sock)
    conn.settimeout(120)
    env = dict(WORKER_ENV, AWS_ENDPOINT_URL=endpoint)
    conn.sendall((json.dumps({"kind": "worker", "endpoint": endpoint, "env": env}) + "\n").encode())
    lines = conn.makefile("rb")
    answer = json.loads(lines.readline())

    def close():
        # The socket closes when its file object closes too.
        lines.close()
        conn.close()

    return Worker(conn.sendall, lines, close), answer["pid"]


def check_worker(w: Worker, endpoint: str, port: int):
    """What tests/support relies on, for either way of running the worker."""
    # The snippet namespace.
    assert w.ok('out = [endpoint, input, sorted(k for k in ("json", "sys", "boto3", "client", "aws_cli") if k in globals())]',
                {"a": 1}) == [endpoint, {"a": 1}, ["aws_cli", "boto3", "client", "json", "sys"]]
    # boto3 talks HTTP to the endpoint: what the worker created, another process reads back.
    zone = w.ok('out = client("route53").create_hosted_zone(Name=input, CallerReference=input)["HostedZone"]["Id"]',
                "worked.example")
    assert [z["Id"] for z in client("route53", port).list_hosted_zones()["HostedZones"]] == [zone]
    # A snippet's error comes back as its last line first, and the worker carries on.
    err = w.ask('raise ValueError("boom")')["err"]
    assert err.splitlines()[0] == "ValueError: boom"
    # The AWS CLI: its JSON on stdout (nothing of it reaches the protocol), rc 0.
    r = w.cli("route53", "list-hosted-zones", "--endpoint-url", endpoint, "--output", "json")
    assert r["rc"] == 0, r["stderr"]
    assert [z["Id"] for z in json.loads(r["stdout"])["HostedZones"]] == [zone]
    # An error exit: the CLI's code and message, as `aws` prints it.
    r = w.cli("route53", "get-hosted-zone", "--id", "NOSUCHZONE", "--endpoint-url", endpoint)
    assert r["rc"] != 0 and r["stdout"] == ""
    assert "An error occurred (NoSuchHostedZone) when calling the GetHostedZone operation" in r["stderr"], r["stderr"]
    r = w.cli("route53", "get-hosted-zone", "--endpoint-url", endpoint)
    assert r["rc"] != 0 and "aws: error: the following arguments are required: --id" in r["stderr"], r["stderr"]
    # The environment of a call: credentials removed for it alone, then back.
    r = w.cli("sts", "get-caller-identity", "--endpoint-url", endpoint,
              env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
                   "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    assert r["rc"] != 0 and "Unable to locate credentials" in r["stderr"], r["stderr"]
    r = w.cli("sts", "get-caller-identity", "--endpoint-url", endpoint, "--output", "json")
    assert r["rc"] == 0 and json.loads(r["stdout"])["Account"] == "123456789012", r["stderr"]
    assert w.ok('import os; out = {k: os.environ.get(k) for k in input}', list(WORKER_ENV)) == WORKER_ENV
    # The CLI runs on its own botocore, as the `aws` command does ("aws-cli/V Python/V OS botocore/V"),
    # and boto3 keeps its own.
    r = w.cli("--version")
    real = subprocess.run([str(ROOT / ".venv" / "bin" / "aws"), "--version"], capture_output=True, text=True, check=True)
    assert r["rc"] == 0 and (r["stdout"] + r["stderr"]).strip() == (real.stdout + real.stderr).strip()
    import botocore
    assert w.ok("import botocore; out = botocore.__version__") == botocore.__version__


@pytest.fixture
def moto_port(factory):
    sock, _ = factory
    conn, port, _ = fork(sock)
    yield port
    conn.close()


def test_a_forked_worker_runs_snippets_and_the_aws_cli_against_a_server(factory, moto_port):
    sock, _ = factory
    endpoint = f"http://127.0.0.1:{moto_port}"
    w, _ = fork_worker(sock, endpoint)
    check_worker(w, endpoint, moto_port)
    # The factory imported moto, which hooks into botocore: it must mock nothing in a worker.
    assert w.ok("from moto.core.models import botocore_stubber; out = botocore_stubber.enabled") is False
    w.close()


def test_a_worker_ends_with_its_connection(factory, moto_port):
    sock, _ = factory
    w, pid = fork_worker(sock, f"http://127.0.0.1:{moto_port}")
    assert w.ok("out = 1") == 1
    assert alive(pid)
    w.close()
    wait_for("the worker to exit", lambda: not alive(pid), 10)


def test_the_worker_on_stdin_and_stdout_is_the_same_worker(factory, moto_port):
    endpoint = f"http://127.0.0.1:{moto_port}"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "motofork.py"), "--worker", endpoint],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=dict(os.environ, **WORKER_ENV, AWS_ENDPOINT_URL=endpoint))

    def send(data: bytes):
        proc.stdin.write(data)
        proc.stdin.flush()

    try:
        check_worker(Worker(send, proc.stdout), endpoint, moto_port)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_warm_moto_gives_the_answers_moto_would_compute():
    """The factory's warm_moto: the cached list of moto's service packages is the list moto's own
    function reads from disk (a new iterator each call, as the generator was), and the models and
    regions it reads ahead are the ones a server would load."""
    import importlib.util

    from moto import backends
    from moto.core.utils import get_service_model

    spec = importlib.util.spec_from_file_location("motofork", ROOT / "scripts" / "motofork.py")
    motofork = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(motofork)
    original = backends.list_of_moto_modules
    fresh = list(original())
    try:
        motofork.warm_moto()
        assert backends.list_of_moto_modules is not original
        assert list(backends.list_of_moto_modules()) == fresh
        assert list(backends.list_of_moto_modules()) == fresh
        assert {"route53", "ecs", "elbv2", "apigateway", "ec2"} <= set(fresh)
        assert get_service_model.cache_info().currsize >= len(motofork.SERVICES)
        assert get_service_model("ecs").service_name == "ecs"
    finally:
        backends.list_of_moto_modules = original
