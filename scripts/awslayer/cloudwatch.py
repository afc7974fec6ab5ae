"""CloudWatch as the real service answers: a new alarm has no data yet, an ALB publishes no
5xx datapoints at all (not zeros) while nothing fails, and GetMetricData refuses more than 500
queries in one call or a period that is not 1, 5, 10, 30 or a multiple of 60 seconds (moto
accepts both)."""

from __future__ import annotations

import json
import re
import threading
import xml.etree.ElementTree as ET

from .wire import Tagged, cbor_dumps, cbor_loads, form_params, xml_dump, xml_ns, xml_text

ALB_5XX = re.compile(r"^HTTPCode_(Target|ELB)_(5XX|50\d)_Count$")
INITIAL_REASON = "Unchecked: Initial alarm creation"
MAX_QUERIES = 500
QUERY_NS = "http://monitoring.amazonaws.com/doc/2010-08-01/"


def error_answer(ctx, code: str, message: str, status: int = 400):
    """(status, headers, body) of a CloudWatch client error in the request's protocol."""
    headers = {"x-amzn-RequestId": "layer-refusal"}
    if ctx.protocol == "cbor":
        headers.update({"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"})
        return status, headers, cbor_dumps({"__type": code, "message": message})
    if ctx.protocol.startswith("json"):
        headers.update({"Content-Type": "application/x-amz-json-1.0", "x-amzn-ErrorType": code,
                        "x-amzn-query-error": f"{code};Sender"})
        return status, headers, json.dumps({"__type": code, "message": message}).encode()
    headers["Content-Type"] = "text/xml"
    body = (f'<?xml version="1.0"?>\n<ErrorResponse xmlns="{QUERY_NS}"><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>{message}</Message></Error>"
            "<RequestId>layer-refusal</RequestId></ErrorResponse>")
    return status, headers, body.encode()


class CloudWatch:
    def __init__(self, layer):
        self.layer = layer
        self.lock = threading.Lock()
        self.alarms: dict[str, dict] = {}  # name -> {"seen": t, "hold": bool, "released": bool}

    @property
    def s(self):
        return self.layer.settings

    def hold(self, name: str, hold: bool):
        with self.lock:
            a = self.alarms.setdefault(name, {"seen": self.layer.now(), "hold": False, "released": False})
            a["hold"], a["released"] = hold, not hold

    def insufficient(self, name: str, now: float) -> bool:
        with self.lock:
            a = self.alarms.get(name)
            if a is None:
                a = self.alarms[name] = {"seen": now, "hold": False, "released": False}
            if a["released"]:
                return False
            if a["hold"]:
                return True
        limit = self.s.alarm_insufficient_data
        return limit is not None and (limit < 0 or now < a["seen"] + limit)

    def state(self) -> dict:
        now = self.layer.now()
        with self.lock:
            names = list(self.alarms)
        return {n: ("INSUFFICIENT_DATA" if self.insufficient(n, now) else "moto") for n in names}

    # --- requests -----------------------------------------------------------------------------------

    def _request(self, ctx) -> dict:
        if ctx.protocol == "cbor":
            try:
                return cbor_loads(ctx.body) if ctx.body else {}
            except (ValueError, IndexError, KeyError):
                return {}
        if ctx.protocol.startswith("json"):
            try:
                return json.loads(ctx.body or b"{}")
            except ValueError:
                return {}
        return form_params(ctx.body, ctx.query)

    def _metric_data_problem(self, ctx) -> tuple[str, str] | None:
        """What real GetMetricData refuses in this request, as (code, message)."""
        req = self._request(ctx)
        periods = []
        if ctx.protocol == "cbor" or ctx.protocol.startswith("json"):
            queries = req.get("MetricDataQueries") or []
            periods = [(q.get("MetricStat") or {}).get("Period") for q in queries]
            count = len(queries)
        else:
            count = 0
            while f"MetricDataQueries.member.{count + 1}.Id" in req:
                count += 1
                periods.append(req.get(f"MetricDataQueries.member.{count}.MetricStat.Period"))
        if count > MAX_QUERIES:
            return "ValidationError", (
                f"The collection MetricDataQueries must not have a size greater than {MAX_QUERIES}.")
        for p in periods:
            if p is None:
                continue
            p = int(p)
            if p not in (1, 5, 10, 30) and (p <= 0 or p % 60):
                return "InvalidParameterValue", f"The parameter Period must be 1, 5, 10, 30 or a multiple of 60, got {p}."
        return None

    def before(self, ctx):
        """None to forward, or (status, headers, body, code, reason) to refuse as CloudWatch would."""
        if ctx.operation == "GetMetricData":
            problem = self._metric_data_problem(ctx)
            if problem is None:
                return None
            code, message = problem
            status, headers, body = error_answer(ctx, code, message)
            return status, headers, body, code, f"{code}: {message}"
        if ctx.operation in ("PutMetricAlarm", "SetAlarmState", "DeleteAlarms"):
            req = self._request(ctx)
            name = req.get("AlarmName")
            now = self.layer.now()
            with self.lock:
                if ctx.operation == "PutMetricAlarm" and name and name not in self.alarms:
                    self.alarms[name] = {"seen": now, "hold": False, "released": False}
                elif ctx.operation == "SetAlarmState" and name in self.alarms:
                    # Someone decided the state: the alarm has evaluated.
                    self.alarms[name]["released"] = True
                elif ctx.operation == "DeleteAlarms":
                    names = req.get("AlarmNames") or [v for k, v in req.items() if k.startswith("AlarmNames.member.")]
                    for n in names:
                        self.alarms.pop(n, None)
        return None

    # --- responses ----------------------------------------------------------------------------------

    def after(self, ctx, data: bytes) -> bytes | None:
        alarms = ctx.operation == "DescribeAlarms" and self.s.alarm_insufficient_data is not None
        metrics = ctx.operation in ("GetMetricData", "GetMetricStatistics") and self.s.alb_5xx_absent
        if not (alarms or metrics) or not data:
            return None
        if ctx.protocol in ("cbor",) or ctx.protocol.startswith("json"):
            cbor = ctx.protocol == "cbor"
            doc = cbor_loads(data) if cbor else json.loads(data)
            changed = self._rewrite_doc(ctx, doc)
            if not changed:
                return None
            return cbor_dumps(doc) if cbor else json.dumps(doc).encode()
        root = ET.fromstring(data)
        if not self._rewrite_xml(ctx, root):
            return None
        return xml_dump(root)

    def _is_5xx(self, stat: dict | None) -> bool:
        metric = (stat or {}).get("Metric") or {}
        return metric.get("Namespace") == "AWS/ApplicationELB" and bool(ALB_5XX.match(metric.get("MetricName", "")))

    def _rewrite_doc(self, ctx, doc: dict) -> bool:
        now = self.layer.now()
        changed = False
        if ctx.operation == "DescribeAlarms":
            for alarm in doc.get("MetricAlarms", []) + doc.get("CompositeAlarms", []):
                if self.insufficient(alarm.get("AlarmName", ""), now):
                    alarm["StateValue"], alarm["StateReason"] = "INSUFFICIENT_DATA", INITIAL_REASON
                    changed = True
            return changed
        req = self._request(ctx)
        if ctx.operation == "GetMetricStatistics":
            if not self._is_5xx({"Metric": req}):
                return False
            points = doc.get("Datapoints", [])
            doc["Datapoints"] = [p for p in points if any(p.get(k) for k in ("Sum", "Average", "Maximum", "SampleCount"))]
            return len(points) != len(doc["Datapoints"])
        ids = {q.get("Id") for q in req.get("MetricDataQueries", []) if self._is_5xx(q.get("MetricStat"))}
        for result in doc.get("MetricDataResults", []):
            if result.get("Id") in ids:
                pairs = [(t, v) for t, v in zip(result.get("Timestamps", []), result.get("Values", [])) if v]
                if len(pairs) != len(result.get("Values", [])):
                    changed = True
                result["Timestamps"] = [t for t, _ in pairs]
                result["Values"] = [v for _, v in pairs]
        return changed

    def _rewrite_xml(self, ctx, root: ET.Element) -> bool:
        ns = xml_ns(root)
        now = self.layer.now()
        changed = False
        if ctx.operation == "DescribeAlarms":
            for alarm in root.iter(f"{ns}member"):
                name = xml_text(alarm, "AlarmName", ns)
                state = alarm.find(f"{ns}StateValue")
                if name is None or state is None or not self.insufficient(name, now):
                    continue
                state.text = "INSUFFICIENT_DATA"
                reason = alarm.find(f"{ns}StateReason")
                if reason is not None:
                    reason.text = INITIAL_REASON
                changed = True
            return changed
        params = form_params(ctx.body, ctx.query)
        if ctx.operation == "GetMetricStatistics":
            if not self._is_5xx({"Metric": params}):
                return False
            holder = root.find(f".//{ns}Datapoints")
            for p in list(holder if holder is not None else []):
                vals = [xml_text(p, k, ns) for k in ("Sum", "Average", "Maximum", "SampleCount")]
                if not any(v is not None and float(v) != 0 for v in vals):
                    holder.remove(p)
                    changed = True
            return changed
        ids = set()
        n = 1
        while f"MetricDataQueries.member.{n}.Id" in params:
            p = f"MetricDataQueries.member.{n}.MetricStat.Metric."
            metric = {"Namespace": params.get(p + "Namespace"), "MetricName": params.get(p + "MetricName", "")}
            if self._is_5xx({"Metric": metric}):
                ids.add(params[f"MetricDataQueries.member.{n}.Id"])
            n += 1
        for result in root.iter(f"{ns}member"):
            if xml_text(result, "Id", ns) not in ids:
                continue
            ts, vs = result.find(f"{ns}Timestamps"), result.find(f"{ns}Values")
            if ts is None or vs is None:
                continue
            for t, v in list(zip(list(ts), list(vs))):
                if float(v.text or 0) == 0:
                    ts.remove(t)
                    vs.remove(v)
                    changed = True
        return changed


__all__ = ["CloudWatch", "Tagged"]
