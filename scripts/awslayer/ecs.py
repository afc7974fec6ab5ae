"""ECS services, their ALB targets and Application Auto Scaling as real AWS paces them.

moto sets runningCount = desiredCount the instant UpdateService returns and reports every target
healthy. Here each service keeps simulated tasks: a task starts `task_start` seconds after the one
before it (PENDING meanwhile), registers in the service's target groups as `initial` for
HealthyThreshold x Interval, then turns `healthy`; a task stopped by a scale-in or a finished
deployment drains for the deregistration delay. moto stays the record of desiredCount and the task
definition; the layer only decides what DescribeServices and DescribeTargetHealth report.
"""

from __future__ import annotations

import hashlib
import math
import threading
import xml.etree.ElementTree as ET

from .wire import UpstreamError, form_params, xml_dump, xml_ns, xml_text

NEVER = float("inf")
LONG_AGO = -1e9
ELB_NS = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"
ECS_TARGET = "AmazonEC2ContainerServiceV20141113"
AAS_TARGET = "AnyScaleFrontendService"


class Task:
    __slots__ = ("ip", "ready", "drain", "stop")

    def __init__(self, ip: str, ready: float):
        self.ip, self.ready, self.drain, self.stop = ip, ready, None, None

    def running(self, now):
        return self.ready <= now and (self.stop is None or self.stop > now)

    def pending(self, now):
        return self.ready > now and self.stop is None


class Deployment:
    def __init__(self, dep_id: str, task_definition: str, created: float):
        self.id, self.task_definition, self.created = dep_id, task_definition, created
        self.tasks: list[Task] = []
        self.rollout = "IN_PROGRESS"
        self.reason = f"ECS deployment {dep_id} in progress."
        self.updated = created


class Service:
    def __init__(self, arn: str, region: str):
        self.arn, self.region = arn, region
        parts = arn.split(":", 5)[-1].split("/")
        self.cluster, self.name = (parts[1], parts[2]) if len(parts) >= 3 else ("default", parts[-1])
        self.desired = 0
        self.deployments: list[Deployment] = []
        self.target_groups: list[tuple[str, int]] = []  # (arn, container port)
        self.next_slot = LONG_AGO
        self.failing_since: float | None = None
        self.short_since: float | None = None  # since when fewer tasks run than desired
        self.unhealthy = False
        self.n_tasks = 0
        self.n_deps = 0
        self.template: dict = {}

    @property
    def label(self) -> str:
        return f"{self.cluster}/{self.name}"


class EcsModel:
    def __init__(self, layer):
        self.layer = layer
        self.lock = threading.RLock()
        self.services: dict[str, Service] = {}
        self.tg_owner: dict[str, str] = {}
        self.tg_info: dict[str, dict] = {}
        self.modes: dict[str, dict] = {}  # "cluster/service" -> {"failing": bool, "unhealthy": bool}
        self.loads: dict[str, float] = {}
        self.scaling: dict[str, dict] = {}  # last autoscaling view per "cluster/service"
        self.last_scan: dict[str, float] = {}
        self.wake = threading.Event()

    # --- settings --------------------------------------------------------------------------------

    @property
    def s(self):
        return self.layer.settings

    def _task_start(self) -> float:
        return self.s.task_start or 0.0

    def _circuit_breaker(self) -> float:
        return self.s.circuit_breaker if self.s.circuit_breaker is not None else 300.0

    def _dep_id(self, svc: Service, n: int) -> str:
        digest = hashlib.sha256(f"{self.layer.seed()}:{svc.arn}:deployment:{n}".encode()).digest()
        return f"ecs-svc/{int.from_bytes(digest[:8], 'big') % 10**19:019d}"

    def _ip(self, svc: Service) -> str:
        svc.n_tasks += 1
        digest = hashlib.sha256(f"{self.layer.seed()}:{svc.arn}".encode()).digest()
        n = svc.n_tasks
        return f"10.{digest[0]}.{(digest[1] + n // 250) % 256}.{n % 250 + 1}"

    def set_mode(self, cluster: str, service: str, mode: str):
        if mode not in ("failing", "normal", "unhealthy", "healthy"):
            raise ValueError("mode must be failing, normal, unhealthy or healthy")
        label = f"{cluster}/{service}"
        now = self.layer.now()
        with self.lock:
            m = self.modes.setdefault(label, {})
            if mode in ("failing", "normal"):
                m["failing"] = mode == "failing"
            else:
                m["unhealthy"] = mode == "unhealthy"
            for svc in self.services.values():
                if svc.label == label:
                    self._apply_mode(svc, now)
                    self._advance(svc, now)

    def _apply_mode(self, svc: Service, now: float):
        # POST /__proxy/ecs overrides the flags for its service.
        m = self.modes.get(svc.label) or {}
        failing = m["failing"] if "failing" in m else svc.label in self.s.failing_services
        svc.unhealthy = m["unhealthy"] if "unhealthy" in m else svc.label in self.s.unhealthy_services
        if failing and svc.failing_since is None:
            svc.failing_since = now
            for dep in svc.deployments:
                for t in dep.tasks:
                    if t.pending(now):
                        t.ready = NEVER
        elif not failing and svc.failing_since is not None:
            svc.failing_since = None
            svc.next_slot = now
            for dep in svc.deployments:
                for t in dep.tasks:
                    if t.ready == NEVER and t.stop is None:
                        svc.next_slot += self._task_start()
                        t.ready = svc.next_slot

    # --- observing moto --------------------------------------------------------------------------

    def observe(self, raw: dict, region: str, created: bool = False) -> Service | None:
        """Fold one service as moto returned it into the model; returns the model's service."""
        arn = raw.get("serviceArn")
        if not arn:
            return None
        now = self.layer.now()
        with self.lock:
            svc = self.services.get(arn)
            first = svc is None
            if first:
                svc = self.services[arn] = Service(arn, region)
            svc.template = raw.get("deployments", [{}])[0] if raw.get("deployments") else {}
            tgs = [
                (lb["targetGroupArn"], int(lb.get("containerPort") or 80))
                for lb in raw.get("loadBalancers") or []
                if lb.get("targetGroupArn")
            ]
            svc.target_groups = tgs
            for tg, _ in tgs:
                self.tg_owner[tg] = arn
            svc.desired = int(raw.get("desiredCount") or 0)
            td = raw.get("taskDefinition", "")
            if first:
                self._apply_mode(svc, now)
                dep = Deployment(self._dep_id(svc, 0), td, now if created else LONG_AGO)
                svc.deployments = [dep]
                if not created:
                    # Already there before the layer saw it: its tasks started long ago.
                    dep.tasks = [Task(self._ip(svc), LONG_AGO) for _ in range(svc.desired)]
                    self._complete(dep, now)
            elif svc.deployments[0].task_definition != td and td:
                svc.n_deps += 1
                dep = Deployment(self._dep_id(svc, svc.n_deps), td, now)
                svc.deployments.insert(0, dep)
            self._advance(svc, now)
            return svc

    def ensure_known(self, region: str, akid: str, cluster: str, service: str):
        """Before an UpdateService through the layer, learn the service's state from before it."""
        with self.lock:
            for svc in self.services.values():
                if svc.name == service.split("/")[-1] and svc.cluster == (cluster or "default").split("/")[-1]:
                    return
        try:
            out = self.layer.upstream.json(
                "ecs", f"{ECS_TARGET}.DescribeServices", {"cluster": cluster, "services": [service]}, region, akid
            )
        except (UpstreamError, OSError, ValueError):
            return
        for raw in out.get("services", []):
            self.observe(raw, region)

    # --- the simulation ----------------------------------------------------------------------------

    def _delay(self, svc: Service) -> float:
        if self.s.deregistration_delay is not None:
            return self.s.deregistration_delay
        if not svc.target_groups:
            return 0.0
        return max(self._tg(svc.region, tg)["deregistration_delay"] for tg, _ in svc.target_groups)

    def _health_time(self, svc: Service, tg: str) -> float:
        if self.s.health_check_seconds is not None:
            return self.s.health_check_seconds
        return self._tg(svc.region, tg)["health_time"]

    def _tg(self, region: str, arn: str) -> dict:
        info = self.tg_info.get(arn)
        if info is not None:
            return info
        info = {"health_time": 150.0, "deregistration_delay": 300.0}
        akid = self.layer.akid(region)
        try:
            root = self.layer.upstream.query(
                "elasticloadbalancing",
                {"Action": "DescribeTargetGroups", "Version": "2015-12-01", "TargetGroupArns.member.1": arn},
                region,
                akid,
            )
            ns = xml_ns(root)
            member = root.find(f".//{ns}TargetGroups/{ns}member")
            threshold = int(xml_text(member, "HealthyThresholdCount", ns, "5"))
            interval = int(xml_text(member, "HealthCheckIntervalSeconds", ns, "30"))
            info["health_time"] = float(threshold * interval)
            root = self.layer.upstream.query(
                "elasticloadbalancing",
                {"Action": "DescribeTargetGroupAttributes", "Version": "2015-12-01", "TargetGroupArn": arn},
                region,
                akid,
            )
            for attr in root.iter(f"{ns}member"):
                if xml_text(attr, "Key", ns) == "deregistration_delay.timeout_seconds":
                    info["deregistration_delay"] = float(xml_text(attr, "Value", ns, "300"))
        except (UpstreamError, OSError, ValueError, ET.ParseError):
            pass
        self.tg_info[arn] = info
        return info

    def _launch(self, svc: Service, dep: Deployment, now: float):
        if svc.failing_since is not None:
            ready = NEVER
        else:
            svc.next_slot = max(now, svc.next_slot) + self._task_start()
            ready = svc.next_slot
        dep.tasks.append(Task(self._ip(svc), ready))

    def _stop(self, svc: Service, task: Task, now: float):
        if task.pending(now):
            task.stop = now
            return
        task.drain = now
        task.stop = now + self._delay(svc)

    def _complete(self, dep: Deployment, now: float):
        dep.rollout, dep.reason, dep.updated = "COMPLETED", f"ECS deployment {dep.id} completed.", now

    def _advance(self, svc: Service, now: float):
        self._apply_mode(svc, now)  # flags may have changed through POST /__proxy/config
        primary = svc.deployments[0]
        live = [t for t in primary.tasks if t.stop is None]
        for _ in range(svc.desired - len(live)):
            self._launch(svc, primary, now)
        if len(live) > svc.desired:
            # ECS stops tasks that are not running yet first, then the newest.
            order = sorted(live, key=lambda t: (not t.pending(now), -t.ready))
            for t in order[: len(live) - svc.desired]:
                self._stop(svc, t, now)
            pending_ready = [t.ready for d in svc.deployments for t in d.tasks if t.pending(now) and t.ready != NEVER]
            svc.next_slot = max(pending_ready, default=now)
        for t in primary.tasks:
            if t.ready == NEVER and svc.failing_since is None and t.stop is None:
                svc.next_slot = max(now, svc.next_slot) + self._task_start()
                t.ready = svc.next_slot
        running = sum(1 for t in primary.tasks if t.running(now) and t.drain is None)
        if running >= svc.desired:
            svc.short_since = None
        elif svc.short_since is None:
            svc.short_since = now
        if svc.failing_since is not None and svc.short_since is not None and primary.rollout == "COMPLETED":
            # Tasks keep failing to start: ECS is deploying again, and its circuit breaker watches.
            primary.rollout, primary.updated = "IN_PROGRESS", now
            primary.reason = f"ECS deployment {primary.id} in progress."
        if primary.rollout == "IN_PROGRESS":
            if running >= svc.desired:
                # The new deployment is serving since its desired-th task ran: the old ones drain from then,
                # however late the layer is asked.
                ready = sorted(t.ready for t in primary.tasks if t.running(now) and t.drain is None)
                at = max([primary.created] + ready[svc.desired - 1 : svc.desired])
                for old in svc.deployments[1:]:
                    for t in old.tasks:
                        if t.stop is None:
                            self._stop(svc, t, at)
                # Steady (COMPLETED) once the last old task has stopped.
                done = max([at] + [t.stop for old in svc.deployments[1:] for t in old.tasks])
                if now >= done:
                    self._complete(primary, done)
            elif svc.failing_since is not None:
                start = max(primary.created, svc.failing_since, svc.short_since)
                if now >= start + self._circuit_breaker():
                    primary.rollout = "FAILED"
                    primary.reason = "ECS deployment circuit breaker: tasks failed to start."
                    primary.updated = start + self._circuit_breaker()
        for dep in svc.deployments:
            dep.tasks = [t for t in dep.tasks if t.stop is None or t.stop > now]
        svc.deployments = [svc.deployments[0]] + [d for d in svc.deployments[1:] if d.tasks]

    # --- what the layer serves ---------------------------------------------------------------------

    def counts(self, svc: Service, now: float) -> dict:
        running = sum(1 for d in svc.deployments for t in d.tasks if t.running(now))
        pending = sum(1 for d in svc.deployments for t in d.tasks if t.pending(now))
        return {"desired": svc.desired, "running": running, "pending": pending}

    def render_service(self, raw: dict, svc: Service, now: float):
        c = self.counts(svc, now)
        raw["runningCount"], raw["pendingCount"] = c["running"], c["pending"]
        deps = []
        for i, dep in enumerate(svc.deployments):
            d = {k: v for k, v in svc.template.items() if k not in ("createdAt", "updatedAt")}
            d.update(
                id=dep.id,
                status="PRIMARY" if i == 0 else "ACTIVE",
                taskDefinition=dep.task_definition,
                desiredCount=svc.desired if i == 0 else sum(1 for t in dep.tasks if t.drain is None),
                runningCount=sum(1 for t in dep.tasks if t.running(now)),
                pendingCount=sum(1 for t in dep.tasks if t.pending(now)),
                failedTasks=0,
                rolloutState=dep.rollout,
                rolloutStateReason=dep.reason,
                createdAt=self.layer.epoch(dep.created),
                updatedAt=self.layer.epoch(dep.updated),
            )
            deps.append(d)
        raw["deployments"] = deps

    def targets(self, svc: Service, tg: str, now: float) -> list[tuple[str, int, str]]:
        port = dict(svc.target_groups).get(tg, 80)
        health_time = self._health_time(svc, tg)
        out = []
        for dep in svc.deployments:
            for t in dep.tasks:
                if not t.running(now):
                    continue
                if t.drain is not None:
                    state = "draining"
                elif now < t.ready + health_time:
                    state = "initial"
                else:
                    state = "unhealthy" if svc.unhealthy else "healthy"
                out.append((t.ip, port, state))
        return out

    def snapshot(self) -> dict:
        """Per service: what DescribeServices and DescribeTargetHealth would answer right now."""
        now = self.layer.now()
        out = {}
        with self.lock:
            for svc in self.services.values():
                self._advance(svc, now)
                c = self.counts(svc, now)
                c["deployments"] = len(svc.deployments)
                c["rollout_state"] = svc.deployments[0].rollout
                c["failing"] = svc.failing_since is not None
                tgs = {}
                for tg, _ in svc.target_groups:
                    states = {"healthy": 0, "initial": 0, "draining": 0, "unhealthy": 0}
                    for _, _, st in self.targets(svc, tg, now):
                        states[st] += 1
                    tgs[tg] = states
                c["target_groups"] = tgs
                out[svc.label] = c
        return out

    # --- hooks ---------------------------------------------------------------------------------------

    def before(self, ctx):
        if ctx.service == "ecs" and ctx.operation == "UpdateService":
            try:
                req = ctx.json_body()
            except ValueError:
                return None
            self.ensure_known(ctx.region, ctx.akid, req.get("cluster", "default"), req.get("service", ""))
        return None

    def after(self, ctx, doc):
        """Rewrite moto's ECS answers in place (doc is the parsed JSON)."""
        now = self.layer.now()
        if ctx.operation == "DescribeServices":
            for raw in doc.get("services", []):
                svc = self.observe(raw, ctx.region)
                if svc:
                    self.render_service(raw, svc, now)
            return True
        if ctx.operation in ("UpdateService", "CreateService") and isinstance(doc.get("service"), dict):
            svc = self.observe(doc["service"], ctx.region, created=ctx.operation == "CreateService")
            if svc and ctx.operation == "UpdateService" and _force(ctx):
                with self.lock:
                    svc.n_deps += 1
                    td = svc.deployments[0].task_definition
                    svc.deployments.insert(0, Deployment(self._dep_id(svc, svc.n_deps), td, now))
                    self._advance(svc, now)
            if svc:
                self.render_service(doc["service"], svc, now)
            return True
        return False

    def target_health(self, ctx, data: bytes) -> bytes | None:
        params = form_params(ctx.body, ctx.query)
        tg = params.get("TargetGroupArn", "")
        with self.lock:
            owner = self.tg_owner.get(tg)
        if owner is None:
            self._discover(ctx.region, ctx.akid)
            with self.lock:
                owner = self.tg_owner.get(tg)
        if owner is None:
            return None
        root = ET.fromstring(data)
        ns = xml_ns(root)
        holder = root.find(f".//{ns}TargetHealthDescriptions")
        if holder is None:
            return None
        wanted = {v for k, v in params.items() if k.startswith("Targets.member.") and k.endswith(".Id")}
        now = self.layer.now()
        with self.lock:
            svc = self.services[owner]
            self._advance(svc, now)
            targets = self.targets(svc, tg, now)
        for child in list(holder):
            holder.remove(child)
        for ip, port, state in targets:
            if wanted and ip not in wanted:
                continue
            m = ET.SubElement(holder, f"{ns}member")
            ET.SubElement(m, f"{ns}HealthCheckPort").text = str(port)
            target = ET.SubElement(m, f"{ns}Target")
            ET.SubElement(target, f"{ns}Id").text = ip
            ET.SubElement(target, f"{ns}Port").text = str(port)
            th = ET.SubElement(m, f"{ns}TargetHealth")
            ET.SubElement(th, f"{ns}State").text = state
            reason = {
                "initial": ("Elb.RegistrationInProgress", "Target registration is in progress"),
                "draining": ("Target.DeregistrationInProgress", "Target deregistration is in progress"),
                "unhealthy": ("Target.ResponseCodeMismatch", "Health checks failed with these codes: [502]"),
            }.get(state)
            if reason:
                ET.SubElement(th, f"{ns}Reason").text = reason[0]
                ET.SubElement(th, f"{ns}Description").text = reason[1]
        return xml_dump(root)

    def _discover(self, region: str, akid: str):
        """Learn target group owners from every ECS service in moto (at most once a second)."""
        now = self.layer.now()
        if now - self.last_scan.get(region, -10.0) < 1.0:
            return
        self.last_scan[region] = now
        up = self.layer.upstream
        try:
            clusters = up.json("ecs", f"{ECS_TARGET}.ListClusters", {}, region, akid).get("clusterArns", [])
            for cluster in clusters:
                arns = up.json("ecs", f"{ECS_TARGET}.ListServices", {"cluster": cluster}, region, akid).get(
                    "serviceArns", []
                )
                for i in range(0, len(arns), 10):
                    out = up.json(
                        "ecs", f"{ECS_TARGET}.DescribeServices", {"cluster": cluster, "services": arns[i : i + 10]},
                        region, akid,
                    )
                    for raw in out.get("services", []):
                        if raw.get("loadBalancers"):
                            self.observe(raw, region)
        except (UpstreamError, OSError, ValueError):
            pass

    # --- Application Auto Scaling ------------------------------------------------------------------

    def set_load(self, cluster: str, service: str, load: float):
        with self.lock:
            self.loads[f"{cluster}/{service}"] = float(load)
        self.wake.set()

    def autoscale_once(self, region: str, akid: str):
        up = self.layer.upstream
        targets = up.json(
            "application-autoscaling", f"{AAS_TARGET}.DescribeScalableTargets", {"ServiceNamespace": "ecs"}, region, akid
        ).get("ScalableTargets", [])
        policies = up.json(
            "application-autoscaling", f"{AAS_TARGET}.DescribeScalingPolicies", {"ServiceNamespace": "ecs"}, region, akid
        ).get("ScalingPolicies", [])
        target_value = {}
        for p in policies:
            cfg = p.get("TargetTrackingScalingPolicyConfiguration") or {}
            if p.get("ScalableDimension") == "ecs:service:DesiredCount" and cfg.get("TargetValue"):
                target_value[p["ResourceId"]] = float(cfg["TargetValue"])
        for t in targets:
            if t.get("ScalableDimension") != "ecs:service:DesiredCount":
                continue
            parts = t["ResourceId"].split("/")
            if len(parts) != 3:
                continue
            cluster, service = parts[1], parts[2]
            label = f"{cluster}/{service}"
            lo, hi = int(t.get("MinCapacity", 0)), int(t.get("MaxCapacity", 0))
            out = up.json(
                "ecs", f"{ECS_TARGET}.DescribeServices", {"cluster": cluster, "services": [service]}, region, akid
            )
            if not out.get("services"):
                continue
            raw = out["services"][0]
            self.observe(raw, region)
            current = int(raw.get("desiredCount") or 0)
            with self.lock:
                load = self.loads.get(label)
            tv = target_value.get(t["ResourceId"])
            want = math.ceil(load / tv) if load is not None and tv else current
            want = max(lo, min(hi, want))
            with self.lock:
                self.scaling[label] = {"min": lo, "max": hi, "target_value": tv, "load": load, "desired": want}
            if want != current:
                res = up.json(
                    "ecs", f"{ECS_TARGET}.UpdateService",
                    {"cluster": cluster, "service": service, "desiredCount": want}, region, akid,
                )
                self.observe(res.get("service", {}), region)
                self.layer.note(
                    {
                        "service": "layer",
                        "operation": "autoscaling.SetDesiredCount",
                        "cluster": cluster,
                        "ecs_service": service,
                        "from": current,
                        "to": want,
                        "load": load,
                        "min": lo,
                        "max": hi,
                    }
                )

    def autoscaler(self, stop: threading.Event):
        while not stop.is_set():
            self.wake.wait(self.s.autoscaling_interval)
            self.wake.clear()
            if not self.s.autoscaling:
                continue
            for region, akid in self.layer.regions():
                try:
                    self.autoscale_once(region, akid)
                except (UpstreamError, OSError, ValueError, KeyError) as exc:
                    self.layer.last_error = f"autoscaling: {exc}"


def _force(ctx) -> bool:
    try:
        return bool(ctx.json_body().get("forceNewDeployment"))
    except ValueError:
        return False
