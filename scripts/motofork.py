#!/usr/bin/env python3
"""A moto server factory for the test suite (scripts/test starts one per run).

Every integration test starts its own moto server, and a fresh `moto_server` spends about 1.8 s
of CPU importing moto and, on each service's first request, that service's backend (ECS alone
0.9 s): with ~130 servers a run, a fifth of the suite's CPU. This process imports moto and the
backends the tests use once, then forks a server per request from that warm state. A forked
server is the same moto, the same WSGI application and request handler as `moto_server`; only
the imports are shared.

The tests' boto3 worker (tests/support `Moto::py`, `Moto::cli`) is forked from here too: a new
Python that imports boto3 costs about 0.45 s of CPU, an `aws` process about 0.4 s, and each test
started one worker and, through the CLI, up to a dozen processes. The factory imports boto3 and
the AWS CLI and reads the models they use once (`warm_cli`, `warm_boto3`); a worker runs the CLI's
own driver in process (`aws_cli`). `worker` below is that worker, whichever way it runs.

Usage: motofork.py SOCKET [PARENT_PID]. Protocol, on the Unix socket: a client connects and sends one JSON line.
- A moto server: {"env": {NAME: VALUE}, "log": PATH}; the forked server binds 127.0.0.1:0, answers
  one JSON line {"port": N, "pid": P} and serves until the client closes the connection (or dies),
  then exits.
- A boto3 worker: {"kind": "worker", "endpoint": URL, "env": {NAME: VALUE}}; the forked worker sets
  the environment, answers {"pid": P}, then runs `worker` over the connection (snippet requests in,
  answers out, one JSON line each) and exits when the client closes it.
The factory exits when PARENT_PID (default: its parent) is gone (checked every second), so a killed test run leaves no
factory behind; a server's or a worker's life is its test's connection.

Usage: motofork.py --worker ENDPOINT: the same worker over stdin/stdout, in a Python of its own (the
tests' fallback when no factory runs). Its answers go to a private copy of stdout; a snippet's
prints go to stderr, so they cannot break the protocol.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import traceback

# What the tests and the controller call (see tests/support), by moto's name and by boto3's: their
# backends are imported, their Flask apps built and their boto3 models read before any fork.
SERVICES = {
    "route53": "route53",
    "ecs": "ecs",
    "elbv2": "elbv2",
    "cloudwatch": "cloudwatch",
    "apigateway": "apigateway",
    "apigatewayv2": "apigatewayv2",
    "applicationautoscaling": "application-autoscaling",
    "sts": "sts",
    "ec2": "ec2",  # the VPC and subnets of scripts/provision.py's scenarios
}


# The AWS CLI brings its own botocore and s3transfer (awscli/botocore, awscli/s3transfer) and, once
# imported, serves them under the top-level names `botocore` and `s3transfer` that boto3 and moto
# import too; an interpreter holds one module per name, so whichever came first would serve both.
# The worker keeps two sets instead and has the CLI's in sys.modules only while the CLI runs: boto3
# calls go through boto3's botocore, `aws_cli` through the CLI's, as in two separate processes.
_CLI_PACKAGES = ("botocore", "s3transfer")
# Loggers `aws --debug` sets up: restored after each call, so no call logs into the next.
_CLI_LOGGERS = ("", "awscli", "botocore", "s3transfer", "urllib3")
_cli = None


def _swap_cli_packages(modules: dict) -> dict:
    """Put `modules` in sys.modules in place of the botocore and s3transfer there; return those."""
    taken = {n: m for n, m in sys.modules.items() if n.split(".", 1)[0] in _CLI_PACKAGES}
    for name in taken:
        del sys.modules[name]
    sys.modules.update(modules)
    return taken


def cli_driver():
    """(awscli's `create_clidriver`, its own botocore and s3transfer modules, the AWS_DATA_PATH
    it sets on import): the CLI imported once, apart from boto3's modules."""
    global _cli
    if _cli is None:
        # boto3's botocore and s3transfer first: once the CLI is imported, a first `import botocore`
        # would find the CLI's.
        import boto3.s3.transfer  # noqa: F401

        data_path = os.environ.get("AWS_DATA_PATH")
        boto3s = _swap_cli_packages({})
        try:
            import awscli.clidriver
            import awscli.handlers  # noqa: F401 (every driver loads it: import it once, here)

            cli_data_path = os.environ["AWS_DATA_PATH"]
        finally:
            clis = _swap_cli_packages(boto3s)
            # Set for the CLI's calls only, as its own process would have it.
            if data_path is None:
                os.environ.pop("AWS_DATA_PATH", None)
            else:
                os.environ["AWS_DATA_PATH"] = data_path
        # Every driver's session makes a data loader that reads and parses the same model files
        # again (endpoints, the service's model, the list of services: about 0.07 s of CPU, two
        # thirds of a call). The sessions share one loader per search path instead, as the clients
        # of one `aws` process share its session's. A loader reads model data only (the CLI's
        # files, ~/.aws/models); credentials, settings and the config files are still read by each
        # call's own session.
        make_loader = clis["botocore.session"].create_loader
        loaders = {}

        def shared_loader(search_path_string=None):
            if search_path_string not in loaders:
                loaders[search_path_string] = make_loader(search_path_string)
            return loaders[search_path_string]

        clis["botocore.session"].create_loader = shared_loader
        _cli = (awscli.clidriver.create_clidriver, clis, cli_data_path)
    return _cli


def aws_cli(args: list[str], env: dict[str, str | None] | None = None) -> dict:
    """`aws ARGS` run by the AWS CLI's own driver in this process: {"rc", "stdout", "stderr"}.

    As a separate `aws` process would run it: on the CLI's own botocore, with `env` over this
    process's environment for the call only (None removes a name), with a new driver (its session
    reads credentials and settings from the environment when it is made), and with its output
    captured, not written to our streams.
    """
    create_clidriver, clis, cli_data_path = cli_driver()
    saved_env, saved_argv = dict(os.environ), sys.argv
    saved_logs = [(log, log.level, list(log.handlers)) for log in map(logging.getLogger, _CLI_LOGGERS)]
    # The CLI looks sys.stdout up on every write (awscli.compat), text there and, for blobs, bytes
    # to sys.stdout.buffer: a text stream over a byte buffer takes both.
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="replace", write_through=True)
    boto3s = _swap_cli_packages(clis)
    try:
        os.environ["AWS_DATA_PATH"] = cli_data_path
        for name, value in (env or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        sys.argv = ["aws", *args]  # argparse names the program after it in usage errors
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = create_clidriver().main(list(args))
            except SystemExit as e:  # argparse refusing the arguments exits, as `aws` would
                rc = e.code
            if rc is None:
                rc = 0
            elif not isinstance(rc, int):
                print(rc, file=sys.stderr)
                rc = 1
    finally:
        # Modules the CLI imported on the way join its set.
        clis.update(_swap_cli_packages(boto3s))
        sys.argv = saved_argv
        for log, level, handlers in saved_logs:
            log.setLevel(level)
            log.handlers[:] = handlers
        os.environ.clear()
        os.environ.update(saved_env)
    out.flush()
    err.flush()
    return {
        "rc": rc,
        "stdout": out.buffer.getvalue().decode("utf-8", "replace"),
        "stderr": err.buffer.getvalue().decode("utf-8", "replace"),
    }


# One command a service the tests run with the CLI: what `warm_cli` runs.
CLI_WARMUP = [
    ["route53", "list-hosted-zones"],
    ["cloudwatch", "list-metrics"],
    ["elbv2", "describe-target-groups"],
    ["sts", "get-caller-identity"],
]


def warm_cli() -> None:
    """Run the CLI once a service, in the factory: the models, endpoints and rules a call reads
    are in the shared loader before any worker is forked (a worker's first call of a service would
    read them again: 0.1 to 0.2 s of CPU each). The calls go to a port that refuses at once."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        endpoint = "http://127.0.0.1:%d" % closed.getsockname()[1]
        env = {"AWS_ACCESS_KEY_ID": "warmup", "AWS_SECRET_ACCESS_KEY": "warmup", "AWS_SESSION_TOKEN": None,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard",
               "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
               "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        for args in CLI_WARMUP:
            aws_cli([*args, "--endpoint-url", endpoint], env)


def warm_boto3() -> None:
    """Make boto3's default session and a client a service, in the factory: a worker's `client`
    then finds the models and endpoints read (a worker's first client of a service read them
    again: 0.05 to 0.2 s of CPU each). Making a client sends nothing. The session is the factory's,
    made in scripts/test's environment as the tests are; `client` passes region, credentials and
    endpoint itself."""
    import boto3

    for service in SERVICES.values():
        boto3.client(service, region_name="us-east-1", endpoint_url="http://127.0.0.1:1",
                     aws_access_key_id="warmup", aws_secret_access_key="warmup")


def warm_moto() -> None:
    """What a moto server computes on its first request of a service and then keeps for its life,
    computed once here instead of in every forked server (a profile of the test suite's servers
    put about 40 % of their request handling there):
    - the botocore model moto parses requests and writes answers with (`get_service_model`, cached
      per process; ECS's alone is a 0.1 s parse);
    - the regions a backend of a new account is made for (botocore's endpoint and service data,
      cached by the session moto keeps for this);
    - the list of moto's service packages, which the dispatcher reads from disk on every request
      (150 directory checks each): computed once; the installed packages do not change while the
      factory runs, so every answer is the one the listing would give.
    """
    from moto import backends
    from moto.core.base_backend import AccountSpecificBackend
    from moto.core.utils import get_service_model

    session = AccountSpecificBackend.get_session()
    for service in SERVICES.values():
        get_service_model(service)
        for partition in session.get_available_partitions():
            session.get_available_regions(service, partition_name=partition)
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: iter(modules)


def worker(endpoint: str, requests, answer) -> None:
    """The tests' boto3 worker: runs snippets until `requests` (JSON lines) ends.

    A request is {"script": CODE, "input": JSON}. The snippet runs in a fresh namespace holding
    `json`, `sys`, `boto3`, `endpoint`, `input`, `out` (None), `client(name)` (a boto3 client for
    `endpoint`, cached) and `aws_cli(args, env)` (above), and assigns its answer to `out`.
    `answer` gets one JSON line: {"ok": out} (datetimes as strings) or {"err": the Python error,
    last line first}.
    """
    import boto3

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

    for line in requests:
        req = json.loads(line)
        ns = {"json": json, "sys": sys, "boto3": boto3, "endpoint": endpoint, "input": req["input"],
              "out": None, "aws_cli": aws_cli}
        ns["client"] = client_for(ns)
        try:
            exec(req["script"], ns)
            reply = {"ok": json.loads(json.dumps(ns["out"], default=str))}
        except BaseException:
            text = traceback.format_exc()
            reply = {"err": text.strip().splitlines()[-1] + "\n" + text}
        answer(json.dumps(reply) + "\n")


def worker_stdio(endpoint: str) -> None:
    """`worker` over stdin and a private copy of stdout (`--worker`)."""
    proto = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr

    def answer(line: str) -> None:
        proto.write(line)
        proto.flush()

    worker(endpoint, sys.stdin, answer)


def name_process(name: str) -> None:
    """Name this process for ps and process accounting (a fork keeps the factory's name)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def child(conn: socket.socket, app) -> None:
    """In the forked child: read the request, then be a moto server or a boto3 worker."""
    reader = conn.makefile("rb")
    req = json.loads(reader.readline() or b"{}")
    is_worker = req.get("kind") == "worker"
    name_process("motofork-worker" if is_worker else "motofork-moto")
    os.environ.update({k: str(v) for k, v in (req.get("env") or {}).items()})
    # Each child draws its own random numbers, as separate processes do.
    random.seed()
    if is_worker:
        sys.stdout = sys.stderr
        conn.sendall((json.dumps({"pid": os.getpid()}) + "\n").encode())
        worker(req["endpoint"], reader, lambda line: conn.sendall(line.encode()))
        os._exit(0)
    serve(conn, req, app)


def serve(conn: socket.socket, req: dict, app) -> None:
    """A moto server: bind, answer, serve until the client goes."""
    from moto.moto_api._internal import mock_random
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    log = os.open(req.get("log") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
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
    if sys.argv[1] == "--worker":
        worker_stdio(sys.argv[2])
        return
    path = sys.argv[1]
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    # The workers' imports, once (moto has imported boto3): the AWS CLI, apart from boto3's modules.
    warm_cli()
    warm_boto3()

    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True
    for service in SERVICES:
        app.app_instances[service] = create_backend_app(service)
    warm_moto()

    # What the factory holds (moto, boto3, the CLI, the models they read) lives as long as every
    # child: out of the collector's sight, a child's collections do not walk it again and again
    # (nor touch, and so copy, its pages).
    gc.freeze()
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
                    child(conn, app)
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
