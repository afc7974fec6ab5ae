"""scripts/motofork.py: each forked server is a separate moto, takes its environment, and ends
with its client's connection; the factory ends with its parent."""

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


@pytest.fixture
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
