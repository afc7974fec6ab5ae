#!/usr/bin/env python3
"""A moto server factory for the test suite (scripts/test starts one per run).

Every integration test starts its own moto server, and a fresh `moto_server` spends about 1.8 s
of CPU importing moto and, on each service's first request, that service's backend (ECS alone
0.9 s): with ~130 servers a run, a fifth of the suite's CPU. This process imports moto and the
backends the tests use once, then forks a server per request from that warm state. A forked
server is the same moto, the same WSGI application and request handler as `moto_server`; only
the imports are shared.

Usage: motofork.py SOCKET [PARENT_PID]. Protocol, on the Unix socket: a client connects and sends one JSON line
{"env": {NAME: VALUE}, "log": PATH}; the forked server binds 127.0.0.1:0, answers one JSON line
{"port": N, "pid": P} and serves until the client closes the connection (or dies), then exits.
The factory exits when PARENT_PID (default: its parent) is gone (checked every second), so a killed test run leaves no
factory behind; a server's life is its test's connection.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
import threading

# What the tests and the controller call (see tests/support): their backends are imported and
# their Flask apps built before any fork.
SERVICES = [
    "route53",
    "ecs",
    "elbv2",
    "cloudwatch",
    "apigateway",
    "apigatewayv2",
    "applicationautoscaling",
    "sts",
]


def serve(conn: socket.socket, app) -> None:
    """In the forked child: read the request, bind, answer, serve until the client goes."""
    from moto.moto_api._internal import mock_random
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    reader = conn.makefile("rb")
    req = json.loads(reader.readline() or b"{}")
    log = os.open(req.get("log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.update({k: str(v) for k, v in (req.get("env") or {}).items()})
    # Each server draws its own ids, as separate moto_server processes do.
    random.seed()
    mock_random.seed()
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    port = server.socket.getsockname()[1]
    os.environ["MOTO_PORT"] = str(port)
    print(f"moto (forked by motofork.py) serving on 127.0.0.1:{port}", flush=True)

    def until_client_goes() -> None:
        try:
            while conn.recv(4096):
                pass
        finally:
            os._exit(0)

    conn.sendall((json.dumps({"port": port, "pid": os.getpid()}) + "\n").encode())
    threading.Thread(target=until_client_goes, daemon=True).start()
    server.serve_forever()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def main() -> None:
    path = sys.argv[1]
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    for service in SERVICES:
        app.app_instances[service] = create_backend_app(service)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked servers reap themselves
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parent = int(sys.argv[2]) if len(sys.argv) > 2 else os.getppid()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(1.0)
    print(f"motofork: {len(SERVICES)} backends imported, listening on {path}", flush=True)
    try:
        while alive(parent):
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(None)
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                try:
                    serve(conn, app)
                finally:
                    os._exit(1)
            conn.close()
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    main()
