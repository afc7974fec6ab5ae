"""Fixtures: one moto server per session, a fault proxy per test, boto3 clients for either."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
VENV_BIN = ROOT / ".venv" / "bin"


def tool(name: str) -> str:
    local = VENV_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found in .venv/bin or on PATH: run scripts/bootstrap")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, what: str, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {seconds}s waiting for {what} at {url}: {exc}")
            time.sleep(0.1)


def stop(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    for _ in range(3):
        port = free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen([tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/moto-api/", "moto_server", 30)
        except BaseException:
            stop(proc)
            if proc.returncode is not None and proc.returncode != 0:
                continue
            raise
        yield url
        stop(proc)
        return
    pytest.fail(f"moto_server would not start; log: {log.read_text()[-2000:]}")


class Proxy:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def control(self, path: str, payload: dict | None = None):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(f"{self.url}/__proxy/{path}", data=data, method="GET" if data is None else "POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict:
        return self.control("stats")

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def start_proxy(moto_url, tmp_path):
    procs = []

    def start(*args: str) -> Proxy:
        log = tmp_path / f"proxy-{len(procs)}.jsonl"
        cmd = [sys.executable, str(SCRIPTS / "faultproxy.py"), "--listen", "127.0.0.1:0", "--upstream", moto_url,
               "--log", str(log), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        if not line:
            stop(proc)
            pytest.fail(f"faultproxy printed no port line; stderr: {proc.stderr.read()}")
        return Proxy(proc, json.loads(line)["port"], log)

    yield start
    for proc in procs:
        stop(proc)


@pytest.fixture
def client():
    def make(service: str, endpoint: str, **config):
        return boto3.client(
            service,
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=15, **config),
        )

    return make


@pytest.fixture
def unique():
    return uuid.uuid4().hex[:8]


@pytest.fixture
def env_for_scripts():
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env
