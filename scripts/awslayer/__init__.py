"""The realistic AWS layer of faultproxy.py: what real AWS does and moto does not.

Every behaviour is off unless its flag (or `--realistic`) turns it on; with all of them off the
proxy forwards exactly as before and makes no call of its own. See faultproxy.py's docstring for
the flags and control endpoints.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.parse

from .cloudwatch import CloudWatch
from .ecs import EcsModel
from .route53 import Route53
from .wire import Upstream

# name -> (flag, type, realistic default, help). None = off.
SETTINGS = {
    "task_start": ("--task-start", float, 30.0, "seconds between ECS task starts (runningCount follows desiredCount)"),
    "failing_services": ("--failing-service", "list", None, "CLUSTER/SERVICE whose tasks never reach RUNNING"),
    "circuit_breaker": ("--circuit-breaker", float, 300.0, "seconds until a failing deployment's rolloutState is FAILED"),
    "target_health": ("--target-health", bool, True, "DescribeTargetHealth follows the service's tasks"),
    "health_check_seconds": (
        "--health-check-seconds", float, None, "seconds a new target stays initial (default HealthyThreshold x Interval)"
    ),
    "deregistration_delay": (
        "--deregistration-delay", float, None, "seconds a stopped task drains (default: the target group's attribute)"
    ),
    "unhealthy_services": ("--unhealthy-service", "list", None, "CLUSTER/SERVICE whose targets turn unhealthy"),
    "change_pending": ("--change-pending", float, 30.0, "seconds a Route53 change stays PENDING"),
    "route53_validate": ("--route53-validate", bool, True, "refuse change batches real Route53 refuses"),
    "route53_rps": ("--route53-rps", float, 5.0, "account-wide Route53 requests per second (Throttling above)"),
    "prior_request_rate": (
        "--prior-request-rate", float, None, "probability of PriorRequestNotComplete per ChangeResourceRecordSets"
    ),
    "alarm_insufficient_data": (
        "--alarm-insufficient-data", float, 60.0, "seconds a new alarm stays INSUFFICIENT_DATA (<0: until released)"
    ),
    "alb_5xx_absent": ("--alb-5xx-absent", bool, True, "drop zero datapoints of ALB 5xx metrics"),
    "autoscaling": ("--autoscaling", bool, True, "Application Auto Scaling moves ECS desiredCount"),
    "autoscaling_interval": ("--autoscaling-interval", float, None, "seconds between autoscaling evaluations (1)"),
}


def _parse_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def _parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def env_name(name: str) -> str:
    """FAULTPROXY_ and the flag: --task-start -> FAULTPROXY_TASK_START."""
    return "FAULTPROXY_" + SETTINGS[name][0][2:].upper().replace("-", "_")


def add_arguments(parser):
    g = parser.add_argument_group("realistic AWS layer (all off by default)")
    g.add_argument(
        "--realistic",
        action="store_true",
        default=_parse_bool(os.environ.get("FAULTPROXY_REALISTIC", "")),
        help="turn on every behaviour below at real-AWS defaults; individual flags still override",
    )
    for name, (flag, kind, _, help_text) in SETTINGS.items():
        env = os.environ.get(env_name(name))
        if kind is bool:
            g.add_argument(flag, dest=name, nargs="?", const=True, type=_parse_bool,
                           default=None if env is None else _parse_bool(env), help=f"{help_text} [{env_name(name)}]")
        elif kind == "list":
            g.add_argument(flag, dest=name, action="append", type=str, default=None if env is None else [env],
                           help=f"{help_text}; repeatable or comma-separated [{env_name(name)}]")
        else:
            g.add_argument(flag, dest=name, type=kind, default=None if env is None else kind(env),
                           help=f"{help_text} [{env_name(name)}]")


class Settings:
    def __init__(self, args=None):
        realistic = bool(getattr(args, "realistic", False))
        for name, (_, kind, default, _) in SETTINGS.items():
            value = getattr(args, name, None) if args is not None else None
            if kind == "list":
                value = [x for v in (value or []) for x in _parse_list(v)]
            elif value is None and realistic:
                value = default
            setattr(self, name, value)
        self.realistic = realistic
        self.target_health = bool(self.target_health) or self.health_check_seconds is not None
        self.route53_validate = bool(self.route53_validate)
        self.alb_5xx_absent = bool(self.alb_5xx_absent)
        self.autoscaling = bool(self.autoscaling)
        self.prior_request_rate = self.prior_request_rate or 0.0
        self.autoscaling_interval = self.autoscaling_interval or 1.0

    def as_dict(self) -> dict:
        out = {name: getattr(self, name) for name in SETTINGS}
        out["realistic"] = self.realistic
        return out

    def update(self, changes: dict):
        for key, value in changes.items():
            if key not in SETTINGS and key != "realistic":
                raise ValueError(f"unknown setting {key!r}")
            kind = bool if key == "realistic" else SETTINGS[key][1]
            if kind is bool:
                value = _parse_bool(value)
            elif kind == "list":
                value = _parse_list(value)
            elif value is not None:
                value = float(value)
                if value < 0 and key != "alarm_insufficient_data":
                    raise ValueError(f"{key} must be >= 0")
            if key == "prior_request_rate" and not 0 <= (value or 0) <= 1:
                raise ValueError("prior_request_rate must be within [0, 1]")
            if key == "realistic" and value:
                # As at start-up: every behaviour not set explicitly takes its real-AWS default.
                for name, (_, kind, default, _) in SETTINGS.items():
                    if name not in changes and default is not None and getattr(self, name) in (None, False):
                        setattr(self, name, default)
            setattr(self, key, value if not (key == "prior_request_rate" and value is None) else 0.0)

    @property
    def ecs(self) -> bool:
        return (
            self.task_start is not None
            or self.target_health
            or self.autoscaling
            or bool(self.failing_services)
            or bool(self.unhealthy_services)
        )

    @property
    def route53(self) -> bool:
        return bool(self.route53_rps) or self.route53_validate or self.change_pending is not None or bool(
            self.prior_request_rate
        )

    @property
    def active(self) -> bool:
        return self.ecs or self.route53 or self.alarm_insufficient_data is not None or self.alb_5xx_absent


CRED = re.compile(r"Credential=([^/,]+)/\d{8}/([^/]+)/")


class Ctx:
    """One request as the layer sees it."""

    def __init__(self, service, operation, method, path, headers, body, protocol, entry):
        self.service, self.operation, self.method, self.path = service, operation, method, path
        self.query = urllib.parse.urlsplit(path).query
        self.headers, self.body, self.protocol, self.entry = headers, body, protocol, entry
        m = CRED.search(headers.get("Authorization", "") or "")
        self.akid, self.region = (m.group(1), m.group(2)) if m else ("testing", "us-east-1")

    def json_body(self) -> dict:
        return json.loads(self.body or b"{}")


class Layer:
    def __init__(self, settings: Settings, upstream, seed_fn, note_fn):
        self.settings = settings
        self.upstream = Upstream(upstream)
        self.seed = seed_fn
        self._note = note_fn
        self.mono0, self.wall0, self.offset = time.monotonic(), time.time(), 0.0
        self.lock = threading.Lock()
        self.refusals: list[dict] = []
        self.seen_regions: dict[str, str] = {}
        self.last_error = None
        self.ecs = EcsModel(self)
        self.r53 = Route53(self)
        self.cw = CloudWatch(self)
        self.stop = threading.Event()
        threading.Thread(target=self.ecs.autoscaler, args=(self.stop,), daemon=True, name="autoscaler").start()

    # --- clock ----------------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the layer started, plus any POST /__proxy/clock advance."""
        return time.monotonic() - self.mono0 + self.offset

    def epoch(self, t: float) -> float:
        return round(max(self.wall0 + t, self.wall0 - 86400), 3)

    def advance(self, seconds: float):
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self.lock:
            self.offset += seconds
        self.ecs.wake.set()

    def regions(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.seen_regions.items()) or [("us-east-1", "testing")]

    def akid(self, region: str) -> str:
        return self.seen_regions.get(region, "testing")

    def note(self, entry: dict):
        t = time.time()
        entry = dict(
            {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"},
            layer_time=round(self.now(), 3),
            **entry,
        )
        self._note(entry)

    # --- hooks ----------------------------------------------------------------------------------

    def context(self, service, operation, method, path, headers, body, protocol, entry) -> Ctx | None:
        if not (self.settings.active or self.r53.prior_request_budget):
            return None
        ctx = Ctx(service, operation, method, path, headers, body, protocol, entry)
        if service in ("ecs", "application-autoscaling", "elbv2"):
            with self.lock:
                self.seen_regions[ctx.region] = ctx.akid
        return ctx

    def before(self, ctx: Ctx, roll: float):
        """None to forward; else (status, headers, body) already answered by the layer."""
        s = self.settings
        try:
            if ctx.service == "route53" and (s.route53 or self.r53.prior_request_budget):
                answer = self.r53.before(ctx, roll)
                if answer is not None:
                    status, headers, body, fault, reason = answer
                    ctx.entry["status"] = status
                    ctx.entry["error_code"] = re.search(rb"<Code>([^<]+)</Code>", body).group(1).decode()
                    if fault:
                        ctx.entry["fault"] = fault
                    if reason:
                        self.refuse(ctx, reason)
                    self.capacity(ctx)
                    return status, headers, body
            if ctx.service == "route53":
                self.capacity(ctx)
            elif ctx.service == "ecs" and s.ecs:
                self.ecs.before(ctx)
            elif ctx.service == "cloudwatch":
                answer = self.cw.before(ctx)
                if answer is not None:
                    status, headers, body, code, reason = answer
                    ctx.entry["status"] = status
                    ctx.entry["error_code"] = code
                    self.refuse(ctx, reason)
                    return status, headers, body
        except Exception as exc:  # noqa: BLE001 - the layer must never break forwarding
            self.last_error = f"{ctx.service}.{ctx.operation} before: {exc!r}"
        return None

    def capacity(self, ctx: Ctx):
        if ctx.operation == "ChangeResourceRecordSets" and self.settings.ecs:
            ctx.entry["layer_time"] = round(self.now(), 3)
            ctx.entry["capacity"] = self.ecs.snapshot()

    def refuse(self, ctx: Ctx, reason: str):
        ctx.entry["refused"] = reason
        with self.lock:
            self.refusals.append(
                {
                    "time": ctx.entry.get("time"),
                    "layer_time": round(self.now(), 3),
                    "service": ctx.service,
                    "operation": ctx.operation,
                    "path": ctx.path,
                    "reason": reason,
                    "body": ctx.body.decode("utf-8", "replace"),
                }
            )

    def after(self, ctx: Ctx, status: int, data: bytes) -> bytes:
        if status != 200:
            return data
        s = self.settings
        try:
            out = None
            if ctx.service == "route53" and s.route53:
                out = self.r53.after(ctx, data)
            elif ctx.service == "ecs" and s.ecs and ctx.operation in ("DescribeServices", "UpdateService", "CreateService"):
                doc = json.loads(data)
                if self.ecs.after(ctx, doc):
                    out = json.dumps(doc).encode()
            elif ctx.service == "elbv2" and ctx.operation == "DescribeTargetHealth" and s.target_health:
                out = self.ecs.target_health(ctx, data)
            elif ctx.service == "cloudwatch":
                out = self.cw.after(ctx, data)
            elif ctx.service == "application-autoscaling" and ctx.operation in (
                "RegisterScalableTarget",
                "PutScalingPolicy",
                "DeregisterScalableTarget",
            ):
                self.ecs.wake.set()
            return data if out is None else out
        except Exception as exc:  # noqa: BLE001 - the layer must never break forwarding
            self.last_error = f"{ctx.service}.{ctx.operation} after: {exc!r}"
            return data

    # --- control endpoints ------------------------------------------------------------------------

    def stats(self) -> dict:
        with self.lock:
            refusals = list(self.refusals)
        return {"clock": self.clock(), "refusals": refusals}

    def clock(self) -> dict:
        return {"now": round(self.now(), 3), "wall": round(time.time(), 3), "offset": self.offset}

    def reset(self):
        with self.lock:
            self.refusals = []

    def control(self, method: str, path: str, payload: dict | None):
        """Answer /__proxy/<path> for the layer; None when the path is not the layer's."""
        if path == "layer" and method == "GET":
            return {"settings": self.settings.as_dict(), "clock": self.clock(), "last_error": self.last_error}
        if path == "refusals" and method == "GET":
            return {"refusals": self.stats()["refusals"]}
        if path == "clock" and method == "GET":
            return self.clock()
        if path == "clock" and method == "POST":
            self.advance(float(payload.get("advance", 0)))
            return self.clock()
        if path == "ecs" and method == "GET":
            with self.ecs.lock:
                scaling = json.loads(json.dumps(self.ecs.scaling))
                loads = dict(self.ecs.loads)
            return {"clock": self.clock(), "services": self.ecs.snapshot(), "autoscaling": scaling, "loads": loads}
        if path == "ecs" and method == "POST":
            self.ecs.set_mode(_req(payload, "cluster"), _req(payload, "service"), _req(payload, "mode"))
            return {"services": self.ecs.snapshot()}
        if path == "load" and method == "POST":
            self.ecs.set_load(_req(payload, "cluster"), _req(payload, "service"), float(_req(payload, "load")))
            return {"loads": dict(self.ecs.loads)}
        if path == "route53" and method == "POST":
            n = int(payload.get("prior_request_not_complete", 0))
            with self.r53.lock:
                self.r53.prior_request_budget += n
                out = {"prior_request_not_complete": self.r53.prior_request_budget}
                if "refuse_names" in payload:
                    self.r53.refuse_names = {str(x).rstrip(".").lower() for x in payload["refuse_names"]}
                    out["refuse_names"] = sorted(self.r53.refuse_names)
                return out
        if path == "alarms" and method == "GET":
            return {"alarms": self.cw.state()}
        if path == "alarms" and method == "POST":
            name = _req(payload, "name")
            if payload.get("release"):
                self.cw.hold(name, False)
            else:
                self.cw.hold(name, bool(payload.get("hold", True)))
            return {"alarms": self.cw.state()}
        return None


def _req(payload: dict | None, key: str):
    if not payload or payload.get(key) in (None, ""):
        raise ValueError(f"missing {key!r}")
    return payload[key]
