#!/usr/bin/env python3
"""Fault-injecting HTTP reverse proxy for AWS APIs served by moto.

Sits between an AWS SDK and `moto_server`, recognises the service and operation of every request
and, with a configurable probability, answers it with a fault in that service's own wire format
(throttling, 500, 503), delays it, or drops the connection. Faults are injected *before* the
request is forwarded, so a failed write never reached moto; `--post-write-faults` forwards a write
first and then loses the response (the change happened, the client sees an error), which is what
idempotency tests need.

Stdlib only. Usage:

    faultproxy.py --listen 127.0.0.1:0 --upstream http://127.0.0.1:5000 --seed 7 \
        --fault-rate 0.2 --faults throttle,500,503,delay,drop --log /tmp/proxy.jsonl

The first stdout line is `{"port": N}`. Control endpoints (never faulted, never forwarded):

    GET  /__proxy/stats   counts per service.operation and per fault, and the current config
    POST /__proxy/config  JSON: fault_rate, faults, max_delay, post_write_fault_rate, post_write_next,
                          post_write_kinds, only, seed (post_write_next N: the next N writes that
                          `only` admits lose their answer, whatever the rate: one chosen write)
    POST /__proxy/reset   zero the counters (and the per-operation sequence used for determinism)

Realistic AWS layer (scripts/awslayer/, same process). Every behaviour is off unless its flag, its
FAULTPROXY_<NAME> env var or POST /__proxy/config {"<name>": value} turns it on; `--realistic`
(FAULTPROXY_REALISTIC=1) turns all of them on at real-AWS defaults, and each flag still overrides:

    --task-start S              ECS runningCount follows desiredCount one task per S seconds, pendingCount
                                in between; a new task definition is a second deployment (PRIMARY + ACTIVE)
                                whose old tasks drain once the new ones run                      [realistic 30]
    --failing-service C/S       that service's tasks never reach RUNNING (POST /__proxy/ecs mode=failing)
    --circuit-breaker S         ... and its primary deployment's rolloutState is FAILED after S  [300]
    --target-health             DescribeTargetHealth lists the service's running tasks: `initial` for
                                HealthyThreshold x Interval of the target group, then `healthy`; a stopped
                                task is `draining` for the deregistration delay                  [on]
    --health-check-seconds S    `initial` lasts S instead of HealthyThreshold x Interval
    --deregistration-delay S    draining lasts S instead of deregistration_delay.timeout_seconds
    --unhealthy-service C/S     that service's targets turn `unhealthy` (POST /__proxy/ecs mode=unhealthy)
    --change-pending S          Route53 changes get unique ids and GetChange says PENDING for S  [30]
    --route53-validate          refuse (InvalidChangeBatch / InvalidInput, never forwarded) what Route53
                                refuses and moto accepts: Weight > 255, EvaluateTargetHealth on a CloudFront
                                alias, a DELETE that does not match exactly, a CREATE of an existing record,
                                a CNAME beside other types                                       [on]
    --route53-rps N             account-wide Route53 rate; above it `Throttling` (HTTP 400)      [5]
    --prior-request-rate P      PriorRequestNotComplete on a share P of ChangeResourceRecordSets
                                (or POST /__proxy/route53 {"prior_request_not_complete": N}: the next N)
    --alarm-insufficient-data S a new alarm reports INSUFFICIENT_DATA for S seconds (<0: until released
                                by POST /__proxy/alarms {"name", "release": true} or SetAlarmState) [60]
    --alb-5xx-absent            ALB 5xx metrics have no datapoints (not zeros) when nothing failed [on]
    --autoscaling               an ECS scalable target with a target-tracking policy moves desiredCount
                                within [MinCapacity, MaxCapacity]: clamp(ceil(load / TargetValue)), load
                                from POST /__proxy/load {"cluster","service","load"}             [on]
    --autoscaling-interval S    seconds between autoscaling evaluations                          [1]

    GET  /__proxy/ecs        layer clock, per service desired/running/pending/deployments/rollout_state
                             and per target group healthy/initial/draining/unhealthy; autoscaling view
    POST /__proxy/ecs        {"cluster","service","mode": failing|normal|unhealthy|healthy}
    GET  /__proxy/refusals   every refused change (also in /__proxy/stats "refusals")
    GET  /__proxy/layer      settings, clock, last internal error;  GET|POST /__proxy/clock {"advance": S}
    GET  /__proxy/alarms     alarms the layer holds in INSUFFICIENT_DATA

Log: a refused request has "refused": "<Code>: <message>"; every ChangeResourceRecordSets entry has
"capacity" (what the layer served at that moment, per CLUSTER/SERVICE) and "layer_time"; an
autoscaling write is a line with service "layer", operation "autoscaling.SetDesiredCount".

`--route53-fencing` is `--route53-validate` with change batches checked and forwarded one at a time,
so a DELETE of a value another writer has just replaced fails as it does on Route53 (moto does not
enforce it, and checking then forwarding two batches at once would let both through).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import http.client
import http.server
import json
import random
import re
import socket
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awslayer  # noqa: E402 - the realistic layer lives beside this script

FAULT_KINDS = ("throttle", "500", "503", "delay", "drop")
POST_WRITE_KINDS = ("drop", "500", "503")

# Writes whose request bodies are logged and that `--post-write-faults` applies to.
WRITE_OPS = {
    ("route53", "ChangeResourceRecordSets"),
    ("ecs", "UpdateService"),
    ("application-autoscaling", "RegisterScalableTarget"),
}

# Headers that belong to one hop and must not be copied across the proxy.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}

# SigV4 signing names to the names this proxy reports.
SIGNING_NAMES = {
    "route53": "route53",
    "ecs": "ecs",
    "elasticloadbalancing": "elbv2",
    "monitoring": "cloudwatch",
    "apigateway": "apigateway",
    "sts": "sts",
    "ec2": "ec2",
    "application-autoscaling": "application-autoscaling",
}

# X-Amz-Target prefixes (awsJson) to service names, for requests without a usable signature.
TARGET_PREFIXES = {
    "AmazonEC2ContainerServiceV20141113": "ecs",
    "GraniteServiceVersion20100801": "cloudwatch",
    "AnyScaleFrontendService": "application-autoscaling",
}

ROUTE53_ROUTES = [
    ("POST", r"/2013-04-01/hostedzone/[^/]+/rrset/?", "ChangeResourceRecordSets"),
    ("GET", r"/2013-04-01/hostedzone/[^/]+/rrset/?", "ListResourceRecordSets"),
    ("GET", r"/2013-04-01/change/[^/]+", "GetChange"),
    ("GET", r"/2013-04-01/hostedzonesbyname/?", "ListHostedZonesByName"),
    ("GET", r"/2013-04-01/hostedzonecount/?", "GetHostedZoneCount"),
    ("GET", r"/2013-04-01/hostedzone/[^/]+", "GetHostedZone"),
    ("DELETE", r"/2013-04-01/hostedzone/[^/]+", "DeleteHostedZone"),
    ("GET", r"/2013-04-01/hostedzone/?", "ListHostedZones"),
    ("POST", r"/2013-04-01/hostedzone/?", "CreateHostedZone"),
    ("POST", r"/2013-04-01/tags/hostedzone/[^/]+", "ChangeTagsForResource"),
    ("GET", r"/2013-04-01/tags/hostedzone/[^/]+", "ListTagsForResource"),
    ("GET", r"/2013-04-01/healthcheck/?", "ListHealthChecks"),
    ("POST", r"/2013-04-01/healthcheck/?", "CreateHealthCheck"),
]

APIGW_ROUTES = [
    ("GET", r"/domainnames/?", "GetDomainNames"),
    ("POST", r"/domainnames/?", "CreateDomainName"),
    ("GET", r"/domainnames/[^/]+/basepathmappings/?", "GetBasePathMappings"),
    ("POST", r"/domainnames/[^/]+/basepathmappings/?", "CreateBasePathMapping"),
    ("GET", r"/domainnames/[^/]+", "GetDomainName"),
    ("DELETE", r"/domainnames/[^/]+", "DeleteDomainName"),
    ("GET", r"/restapis/?", "GetRestApis"),
    ("POST", r"/restapis/?", "CreateRestApi"),
    ("GET", r"/restapis/[^/]+", "GetRestApi"),
    ("GET", r"/v2/domainnames/?", "GetDomainNames"),
    ("POST", r"/v2/domainnames/?", "CreateDomainName"),
    ("GET", r"/v2/domainnames/[^/]+/apimappings/?", "GetApiMappings"),
    ("GET", r"/v2/domainnames/[^/]+", "GetDomainName"),
]

CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/[^/]+/([^/]+)/aws4_request")
CBOR_PATH = re.compile(r"^/service/([^/]+)/operation/([^/?]+)")


def identify(method: str, path: str, headers, body: bytes) -> tuple[str, str]:
    """Return (service, operation) for a request; "unknown" parts when unrecognised."""
    url = urllib.parse.urlsplit(path)
    route = url.path
    service = None
    m = CREDENTIAL_SCOPE.search(headers.get("Authorization", "") or "")
    if m:
        service = SIGNING_NAMES.get(m.group(1), m.group(1))
    target = headers.get("X-Amz-Target", "") or ""
    if service is None and target:
        service = TARGET_PREFIXES.get(target.split(".", 1)[0])
    if service is None:
        if route.startswith("/2013-04-01/"):
            service = "route53"
        elif route.startswith(("/domainnames", "/restapis", "/v2/")):
            service = "apigateway"
    service = service or "unknown"
    # API Gateway v1 and v2 share the signing name; the path tells them apart.
    if service == "apigateway" and route.startswith("/v2/"):
        service = "apigatewayv2"

    if target:
        return service, target.rsplit(".", 1)[-1]
    m = CBOR_PATH.match(route)
    if m:
        return service, m.group(2)
    if service == "route53":
        return service, _match_routes(ROUTE53_ROUTES, method, route)
    if service in ("apigateway", "apigatewayv2"):
        return service, _match_routes(APIGW_ROUTES, method, route)
    action = _query_action(url.query, headers, body)
    if action:
        return service, action
    return service, f"{method} {route}"


def _match_routes(routes, method: str, route: str) -> str:
    for want_method, pattern, name in routes:
        if method == want_method and re.fullmatch(pattern, route):
            return name
    return f"{method} {route}"


def _query_action(query: str, headers, body: bytes) -> str | None:
    params = urllib.parse.parse_qs(query)
    ctype = (headers.get("Content-Type", "") or "").lower()
    if body and ("x-www-form-urlencoded" in ctype or not ctype):
        try:
            params.update(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
        except ValueError:
            pass
    action = params.get("Action")
    return action[0] if action else None


def protocol_of(service: str, headers, path: str) -> str:
    """Wire protocol used by the request, which decides the error format."""
    if CBOR_PATH.match(urllib.parse.urlsplit(path).path) or (
        headers.get("Smithy-Protocol", "") or ""
    ).startswith("rpc-v2-cbor"):
        return "cbor"
    if headers.get("X-Amz-Target"):
        ctype = headers.get("Content-Type", "") or ""
        return "json1.0" if ctype.endswith("1.0") else "json1.1"
    if service == "route53":
        return "rest-xml"
    if service in ("apigateway", "apigatewayv2"):
        return "rest-json"
    return "query"


# Error codes per (fault, service) where the service uses its own modeled name.
def error_code(fault: str, service: str, operation: str) -> tuple[int, str, str]:
    """Return (HTTP status, error code, message) for an injected fault."""
    if fault == "throttle":
        if service == "route53":
            if operation == "ChangeResourceRecordSets":
                return 400, "PriorRequestNotComplete", "The request was rejected because Route 53 was still processing a prior request."
            return 400, "Throttling", "Rate exceeded"
        if service == "ecs":
            return 400, "ThrottlingException", "Rate exceeded"
        if service in ("apigateway", "apigatewayv2"):
            return 429, "TooManyRequestsException", "Too Many Requests"
        return 400, "Throttling", "Rate exceeded"
    if fault == "500":
        if service == "ecs":
            return 500, "ServerException", "Internal server error"
        if service in ("apigateway", "apigatewayv2"):
            return 500, "InternalFailure", "Internal server error"
        return 500, "InternalFailure", "We encountered an internal error. Please try again."
    if fault == "503":
        if service in ("apigateway", "apigatewayv2"):
            return 503, "ServiceUnavailableException", "Service Unavailable"
        return 503, "ServiceUnavailable", "Service is unable to handle request."
    raise ValueError(f"no error response for fault {fault}")


def _cbor_text(s: str) -> bytes:
    data = s.encode()
    n = len(data)
    if n < 24:
        head = bytes([0x60 | n])
    elif n < 256:
        head = bytes([0x78, n])
    else:
        head = bytes([0x79]) + n.to_bytes(2, "big")
    return head + data


def error_response(fault: str, service: str, operation: str, protocol: str):
    """Build (status, headers, body) for an injected error in the service's wire format."""
    status, code, message = error_code(fault, service, operation)
    request_id = str(uuid.uuid4())
    sender = "Sender" if status < 500 else "Receiver"
    headers = {"x-amzn-RequestId": request_id}
    if protocol in ("json1.0", "json1.1"):
        headers["Content-Type"] = f"application/x-amz-{protocol.replace('json', 'json-')}"
        headers["x-amzn-ErrorType"] = code
        if service == "cloudwatch":
            # CloudWatch is awsQueryCompatible: SDKs take the query-style code from this header.
            headers["x-amzn-query-error"] = f"{code};{sender}"
        body = json.dumps({"__type": code, "message": message}).encode()
    elif protocol == "rest-json":
        headers["Content-Type"] = "application/json"
        headers["x-amzn-ErrorType"] = code
        body = json.dumps({"message": message}).encode()
    elif protocol == "cbor":
        headers["Content-Type"] = "application/cbor"
        headers["smithy-protocol"] = "rpc-v2-cbor"
        body = bytes([0xA2]) + _cbor_text("__type") + _cbor_text(code) + _cbor_text("message") + _cbor_text(message)
    else:
        # rest-xml (Route53) and awsQuery (ELBv2, CloudWatch) share the ErrorResponse shape.
        ns = {
            "route53": "https://route53.amazonaws.com/doc/2013-04-01/",
            "elbv2": "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/",
            "cloudwatch": "http://monitoring.amazonaws.com/doc/2010-08-01/",
        }.get(service)
        xmlns = f' xmlns="{ns}"' if ns else ""
        headers["Content-Type"] = "text/xml"
        body = (
            f'<?xml version="1.0"?>\n<ErrorResponse{xmlns}><Error><Type>{sender}</Type>'
            f"<Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
    return status, headers, body


class Config:
    """Mutable proxy settings, shared by all handler threads."""

    def __init__(self, args):
        self.fault_rate = args.fault_rate
        self.faults = list(args.faults)
        self.max_delay = args.max_delay
        self.post_write_fault_rate = args.post_write_faults
        self.post_write_kinds = list(args.post_write_kinds)
        self.post_write_next = 0
        self.only = list(args.only)
        self.seed = args.seed
        self.route53_fencing = getattr(args, "route53_fencing", False)

    def as_dict(self):
        return {
            "fault_rate": self.fault_rate,
            "faults": self.faults,
            "max_delay": self.max_delay,
            "post_write_fault_rate": self.post_write_fault_rate,
            "post_write_kinds": self.post_write_kinds,
            "post_write_next": self.post_write_next,
            "only": self.only,
            "seed": self.seed,
        }

    def update(self, changes: dict):
        for key, value in changes.items():
            if key in ("fault_rate", "post_write_fault_rate", "max_delay"):
                value = float(value)
                if key != "max_delay" and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{key} must be within [0, 1]")
                if value < 0:
                    raise ValueError(f"{key} must be >= 0")
            elif key == "faults":
                value = _kinds(value, FAULT_KINDS)
            elif key == "post_write_next":
                value = int(value)
                if value < 0:
                    raise ValueError("post_write_next must be >= 0")
            elif key == "post_write_kinds":
                value = _kinds(value, POST_WRITE_KINDS)
            elif key == "only":
                value = _list(value)
            elif key == "seed":
                value = None if value is None else int(value)
            else:
                raise ValueError(f"unknown setting {key!r}; known: {sorted(self.as_dict())}")
            setattr(self, key, value)

    def applies_to(self, service: str, operation: str) -> bool:
        if not self.only:
            return True
        return service in self.only or f"{service}.{operation}" in self.only


def _list(value) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _kinds(value, allowed) -> list[str]:
    kinds = _list(value)
    bad = [k for k in kinds if k not in allowed]
    if bad:
        raise ValueError(f"unknown fault kind(s) {bad}; choose from {list(allowed)}")
    return kinds


class State:
    """Counters, the log file and the per-operation sequence numbers behind the seeded draws."""

    def __init__(self, config: Config, log_path: str | None):
        self.config = config
        self.lock = threading.Lock()
        # Held across a fenced batch's check and its forwarding.
        self.write_lock = threading.Lock()
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None
        self.reset()

    def reset(self):
        with self.lock:
            self.total = 0
            self.by_op: dict[str, dict] = {}
            self.by_fault: dict[str, int] = {}
            self.seq: dict[str, int] = {}

    def draw(self, key: str) -> random.Random:
        """A generator for the n-th request of one operation.

        Keyed by operation and its own sequence number, so the fault schedule of an operation does
        not depend on how concurrent requests to other operations interleave.
        """
        with self.lock:
            n = self.seq.get(key, 0)
            self.seq[key] = n + 1
        if self.config.seed is None:
            return random.Random()
        digest = hashlib.sha256(f"{self.config.seed}:{key}:{n}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def record(self, entry: dict):
        key = f"{entry['service']}.{entry['operation']}"
        with self.lock:
            self.total += 1
            op = self.by_op.setdefault(key, {"requests": 0, "faults": {}, "status": {}})
            op["requests"] += 1
            fault = entry.get("fault")
            if fault:
                op["faults"][fault] = op["faults"].get(fault, 0) + 1
                self.by_fault[fault] = self.by_fault.get(fault, 0) + 1
            status = str(entry.get("status"))
            op["status"][status] = op["status"].get(status, 0) + 1
            if self.log:
                self.log.write(json.dumps(entry, sort_keys=True) + "\n")
                self.log.flush()

    def note(self, entry: dict):
        """A log line for something the layer did itself; not a request, so not counted."""
        with self.lock:
            if self.log:
                self.log.write(json.dumps(entry, sort_keys=True) + "\n")
                self.log.flush()

    def stats(self) -> dict:
        with self.lock:
            return {
                "requests": self.total,
                "by_operation": json.loads(json.dumps(self.by_op)),
                "by_fault": dict(self.by_fault),
                "config": self.config.as_dict(),
            }


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faultproxy"
    state: State
    layer: awslayer.Layer
    upstream: urllib.parse.SplitResult
    upstream_timeout = 60.0

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass  # the JSONL log is the record; stderr stays quiet

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_PATCH(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding", "") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length", "0") or "0")
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: dict, body: bytes):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self):
        # No status line at all: the client sees the connection close mid-request.
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _control(self, body: bytes) -> bool:
        path = urllib.parse.urlsplit(self.path).path
        if not path.startswith("/__proxy/"):
            return False
        state = self.state
        try:
            layer_out = None
            if path == "/__proxy/stats" and self.command == "GET":
                out = state.stats()
                out.update(self.layer.stats())
            elif path == "/__proxy/config" and self.command == "GET":
                out = state.config.as_dict()
            elif path == "/__proxy/config" and self.command == "POST":
                changes = json.loads(body or b"{}")
                known = awslayer.SETTINGS.keys() | {"realistic"}
                layer_changes = {k: v for k, v in changes.items() if k in known}
                with state.lock:
                    state.config.update({k: v for k, v in changes.items() if k not in known})
                    self.layer.settings.update(layer_changes)
                out = state.config.as_dict()
                if layer_changes:
                    out = dict(out, layer=self.layer.settings.as_dict())
            elif path == "/__proxy/reset" and self.command == "POST":
                state.reset()
                self.layer.reset()
                out = {"reset": True}
            elif (
                layer_out := self.layer.control(
                    self.command, path[len("/__proxy/") :], json.loads(body or b"{}") if self.command == "POST" else None
                )
            ) is not None:
                out = layer_out
            else:
                self._send(404, {"Content-Type": "application/json"}, b'{"error":"unknown control path"}')
                return True
        except (ValueError, TypeError) as exc:
            self._send(400, {"Content-Type": "application/json"}, json.dumps({"error": str(exc)}).encode())
            return True
        self._send(200, {"Content-Type": "application/json"}, json.dumps(out).encode())
        return True

    def _forward(self, body: bytes):
        up = self.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port or 80, timeout=self.upstream_timeout)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            return resp.status, out, data
        finally:
            conn.close()

    def _handle(self):
        started = time.time()
        body = self._read_body()
        if self._control(body):
            return
        state, cfg = self.state, self.state.config
        service, operation = identify(self.command, self.path, self.headers, body)
        is_write = (service, operation) in WRITE_OPS
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f".{int(started % 1 * 1000):03d}Z",
            "service": service,
            "operation": operation,
            "method": self.command,
            "path": self.path,
            "fault": None,
            "upstream_status": None,
            "status": None,
        }
        if is_write:
            entry["body"] = body.decode("utf-8", "replace")
        ctx = self.layer.context(
            service, operation, self.command, self.path, self.headers, body,
            protocol_of(service, self.headers, self.path), entry,
        )

        rng = state.draw(f"{service}.{operation}")
        # Draw every value up front so the schedule is the same whatever the config mix.
        roll, pick, delay_roll, post_roll, post_pick, layer_roll = (rng.random() for _ in range(6))
        fault = None
        if cfg.applies_to(service, operation) and cfg.faults and roll < cfg.fault_rate:
            fault = cfg.faults[int(pick * len(cfg.faults)) % len(cfg.faults)]
        post_fault = None
        if (
            fault is None
            and is_write
            and cfg.post_write_kinds
            and cfg.applies_to(service, operation)
            and post_roll < cfg.post_write_fault_rate
        ):
            post_fault = cfg.post_write_kinds[int(post_pick * len(cfg.post_write_kinds)) % len(cfg.post_write_kinds)]
        if fault is None and post_fault is None and is_write and cfg.post_write_kinds and cfg.applies_to(service, operation):
            with state.lock:
                chosen = cfg.post_write_next > 0
                if chosen:
                    cfg.post_write_next -= 1
            if chosen:
                post_fault = cfg.post_write_kinds[0]

        recorded = False

        def finish():
            # Record before answering, so a client that has its answer also sees it in stats/log.
            nonlocal recorded
            entry["duration_seconds"] = round(time.time() - started, 3)
            state.record(entry)
            recorded = True

        try:
            if fault == "delay":
                entry["fault"] = "delay"
                entry["delay_seconds"] = round(delay_roll * cfg.max_delay, 3)
                time.sleep(entry["delay_seconds"])
            elif fault == "drop":
                entry["fault"] = "drop"
                finish()
                self._drop()
                return
            elif fault is not None:
                entry["fault"] = fault
                status, headers, payload = error_response(
                    fault, service, operation, protocol_of(service, self.headers, self.path)
                )
                entry["status"] = status
                entry["error_code"] = error_code(fault, service, operation)[1]
                finish()
                self._send(status, headers, payload)
                return

            # Route53 applies a batch atomically: with --route53-fencing its check against the zone
            # and its write happen under one lock, so no other batch lands in between.
            atomic = (
                cfg.route53_fencing
                and ctx is not None
                and (service, operation) == ("route53", "ChangeResourceRecordSets")
            )
            if atomic:
                state.write_lock.acquire()
            try:
                if ctx is not None:
                    answer = self.layer.before(ctx, layer_roll)
                    if answer is not None:
                        finish()
                        self._send(*answer)
                        return
                try:
                    status, headers, data = self._forward(body)
                except (OSError, http.client.HTTPException, ET.ParseError) as exc:
                    entry["error"] = f"upstream: {exc}"
                    entry["status"] = 502
                    finish()
                    self._send(502, {"Content-Type": "text/plain"}, f"faultproxy: upstream failed: {exc}".encode())
                    return
            finally:
                if atomic:
                    state.write_lock.release()
            entry["upstream_status"] = status
            if ctx is not None:
                # Even a response about to be lost updates what the layer knows (the write happened).
                data = self.layer.after(ctx, status, data)

            if post_fault == "drop":
                entry["fault"] = "post-write-drop"
                finish()
                self._drop()
                return
            if post_fault is not None:
                entry["fault"] = f"post-write-{post_fault}"
                e_status, e_headers, e_body = error_response(
                    post_fault, service, operation, protocol_of(service, self.headers, self.path)
                )
                entry["status"] = e_status
                entry["error_code"] = error_code(post_fault, service, operation)[1]
                finish()
                self._send(e_status, e_headers, e_body)
                return

            entry["status"] = status
            finish()
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            if not recorded:
                entry.setdefault("error", "handler failed before answering")
                finish()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (port 0 = any free port)")
    p.add_argument("--upstream", required=True, help="moto server URL, e.g. http://127.0.0.1:5000")
    p.add_argument("--seed", type=int, default=None, help="make the fault schedule deterministic")
    p.add_argument("--fault-rate", type=float, default=0.2, help="probability [0, 1] of a fault per request")
    p.add_argument(
        "--faults",
        type=lambda s: _kinds(s, FAULT_KINDS),
        default=list(FAULT_KINDS),
        help=f"comma-separated fault kinds to choose from: {','.join(FAULT_KINDS)}",
    )
    p.add_argument("--max-delay", type=float, default=3.0, help="upper bound of the 'delay' fault, seconds")
    p.add_argument(
        "--post-write-faults",
        type=float,
        default=0.0,
        metavar="RATE",
        help="probability that a write (ChangeResourceRecordSets, UpdateService) is forwarded and its "
        "response then lost",
    )
    p.add_argument(
        "--post-write-kinds",
        type=lambda s: _kinds(s, POST_WRITE_KINDS),
        default=["drop"],
        help="what a post-write fault returns: drop (default), 500, 503",
    )
    p.add_argument(
        "--only",
        type=_list,
        default=[],
        help="limit faults to these services or service.operation names (comma-separated)",
    )
    p.add_argument("--log", default=None, help="append one JSON line per request to this file")
    awslayer.add_arguments(p)
    p.add_argument(
        "--route53-fencing",
        action="store_true",
        help="--route53-validate, with each change batch checked and forwarded atomically (one at a time)",
    )
    args = p.parse_args(argv)
    for name in ("fault_rate", "post_write_faults"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be within [0, 1]")
    up = urllib.parse.urlsplit(args.upstream)
    if up.scheme != "http" or not up.hostname:
        p.error("--upstream must be an http://host:port URL")
    args.upstream_parsed = up
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        p.error("--listen must be host:port")
    args.listen_addr = (host, int(port))
    if args.route53_fencing:
        args.route53_validate = True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    state = State(Config(args), args.log)
    layer = awslayer.Layer(
        awslayer.Settings(args), args.upstream_parsed, seed_fn=lambda: state.config.seed, note_fn=state.note
    )
    handler = type(
        "BoundHandler", (Handler,), {"state": state, "layer": layer, "upstream": args.upstream_parsed}
    )
    server = http.server.ThreadingHTTPServer(args.listen_addr, handler)
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
