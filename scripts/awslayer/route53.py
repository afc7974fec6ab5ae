"""Route53 as the real service answers: PENDING changes, account-wide throttling, and the change
batches it refuses although moto accepts them."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

from .wire import UpstreamError, xml_dump, xml_error, xml_ns, xml_text

NS = "https://route53.amazonaws.com/doc/2013-04-01/"
CLOUDFRONT_ZONE = "Z2FDTNDATAQYW2"


def fqdn(name: str) -> str:
    n = (name or "").replace("\\052", "*").lower()
    return n if n.endswith(".") else n + "."


def _rrset(el: ET.Element, ns: str) -> dict:
    """The fields of one ResourceRecordSet that identify it and that a DELETE must match."""
    alias = el.find(f"{ns}AliasTarget")
    weight = xml_text(el, "Weight", ns)
    ttl = xml_text(el, "TTL", ns)
    return {
        "name": fqdn(xml_text(el, "Name", ns, "")),
        "type": (xml_text(el, "Type", ns, "") or "").upper(),
        "set_id": xml_text(el, "SetIdentifier", ns),
        "weight": None if weight is None else int(weight),
        "ttl": None if ttl is None else int(ttl),
        "values": sorted(v.text or "" for v in el.iter(f"{ns}Value")),
        "alias": None
        if alias is None
        else (
            (xml_text(alias, "HostedZoneId", ns, "") or "").split("/")[-1],
            fqdn(xml_text(alias, "DNSName", ns, "")),
            (xml_text(alias, "EvaluateTargetHealth", ns, "false") or "false").lower() == "true",
        ),
        "health_check": xml_text(el, "HealthCheckId", ns),
        "region": xml_text(el, "Region", ns),
        "failover": xml_text(el, "Failover", ns),
        "multivalue": xml_text(el, "MultiValueAnswer", ns),
    }


def _describe(r: dict) -> str:
    out = f"[name='{r['name']}', type='{r['type']}'"
    if r["set_id"] is not None:
        out += f", set-identifier='{r['set_id']}'"
    return out + "]"


class Route53:
    def __init__(self, layer):
        self.layer = layer
        self.lock = threading.Lock()
        self.tokens = None
        self.refilled = 0.0
        self.changes: dict[str, float] = {}
        self.n_changes = 0
        self.prior_request_budget = 0
        # Record names a test makes Route53 refuse (POST /__proxy/route53 {"refuse_names": [..]}):
        # any batch changing one of them is an InvalidChangeBatch, as an invalid record would be.
        self.refuse_names: set[str] = set()
        self.zone_names: dict[str, str] = {}

    @property
    def s(self):
        return self.layer.settings

    # --- throttling ---------------------------------------------------------------------------------

    def _take_token(self) -> bool:
        rps = self.s.route53_rps
        if not rps:
            return True
        now = time.monotonic()
        with self.lock:
            if self.tokens is None:
                self.tokens, self.refilled = float(rps), now
            self.tokens = min(float(rps), self.tokens + (now - self.refilled) * rps)
            self.refilled = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False

    def before(self, ctx, roll: float):
        """None to forward, or (status, headers, body, fault, reason) to answer without moto."""
        if not self._take_token():
            st, h, b = xml_error("Throttling", "Rate exceeded", NS)
            return st, h, b, "rate-limit", None
        if ctx.operation != "ChangeResourceRecordSets":
            return None
        with self.lock:
            budget = self.prior_request_budget > 0
            if budget:
                self.prior_request_budget -= 1
        if budget or roll < self.s.prior_request_rate:
            st, h, b = xml_error(
                "PriorRequestNotComplete",
                "The request was rejected because Route 53 was still processing a prior request.",
                NS,
            )
            return st, h, b, "prior-request-not-complete", None
        if not self.s.route53_validate:
            return None
        refusal = self.validate(ctx)
        if refusal is None:
            return None
        code, message = refusal
        st, h, b = xml_error(code, message, NS)
        return st, h, b, None, f"{code}: {message}"

    # --- validation ---------------------------------------------------------------------------------

    def validate(self, ctx) -> tuple[str, str] | None:
        try:
            root = ET.fromstring(ctx.body)
        except ET.ParseError:
            return None
        ns = xml_ns(root)
        zone_id = urllib.parse.urlsplit(ctx.path).path.rstrip("/").split("/")[-2]
        changes = []
        for i, change in enumerate(root.iter(f"{ns}Change"), start=1):
            rrs = change.find(f"{ns}ResourceRecordSet")
            if rrs is None:
                continue
            try:
                r = _rrset(rrs, ns)
            except ValueError:
                continue
            action = (xml_text(change, "Action", ns, "") or "").upper()
            if r["weight"] is not None and not 0 <= r["weight"] <= 255:
                bound = "less than or equal to 255" if r["weight"] > 255 else "greater than or equal to 0"
                return (
                    "InvalidInput",
                    f"1 validation error detected: Value '{r['weight']}' at "
                    f"'changeBatch.changes.{i}.member.resourceRecordSet.weight' failed to satisfy constraint: "
                    f"Member must have value {bound}",
                )
            changes.append((action, r))
        errors = []
        for action, r in changes:
            if action != "DELETE" and r["alias"] and r["alias"][0] == CLOUDFRONT_ZONE and r["alias"][2]:
                errors.append(
                    f"Tried to create an alias that targets {r['alias'][1]}, type {r['type']} in zone "
                    f"{CLOUDFRONT_ZONE}, but EvaluateTargetHealth is not supported for CloudFront distributions"
                )
        names = sorted({r["name"] for _, r in changes})
        with self.lock:
            refused = sorted(n for n in names if n.rstrip(".").lower() in self.refuse_names)
        for n in refused:
            errors.append(f"Tried to change resource record set {n} but the test made it invalid (refuse_names)")
        try:
            existing = {n: self._records_at(ctx, zone_id, n) for n in names}
            zone_name = self._zone_name(ctx, zone_id)
        except (UpstreamError, OSError, ET.ParseError, ValueError):
            return None  # moto will answer for a zone it does not know
        # Route53 checks each change against the zone as the batch has changed it so far.
        for action, r in changes:
            here = existing[r["name"]]
            key = (r["type"], r["set_id"])
            current = next((x for x in here if (x["type"], x["set_id"]) == key), None)
            if action == "DELETE":
                if current is None:
                    errors.append(f"Tried to delete resource record set {_describe(r)} but it was not found")
                elif {k: v for k, v in current.items()} != r:
                    errors.append(
                        f"Tried to delete resource record set {_describe(r)} but the values provided do not "
                        "match the current values"
                    )
                else:
                    here.remove(current)
                continue
            if action == "CREATE" and current is not None:
                errors.append(f"Tried to create resource record set {_describe(r)} but it already exists")
                continue
            others = [x for x in here if x["type"] != r["type"]]
            if r["type"] == "CNAME" and others:
                errors.append(
                    f"RRSet of type CNAME with DNS name {r['name']} is not permitted as it conflicts with other "
                    f"records with the same DNS name in zone {zone_name}"
                )
                continue
            if r["type"] != "CNAME" and any(x["type"] == "CNAME" for x in others):
                errors.append(
                    f"RRSet of type {r['type']} with DNS name {r['name']} is not permitted because a conflicting "
                    f"RRSet of type CNAME with the same DNS name already exists in zone {zone_name}"
                )
                continue
            if current is not None:
                here.remove(current)
            here.append(r)
        if errors:
            return "InvalidChangeBatch", "[" + ", ".join(errors) + "]"
        return None

    def _records_at(self, ctx, zone_id: str, name: str) -> list[dict]:
        q = urllib.parse.urlencode({"name": name, "maxitems": "300"})
        root = self.layer.upstream.get("route53", f"/2013-04-01/hostedzone/{zone_id}/rrset?{q}", "us-east-1", ctx.akid)
        ns = xml_ns(root)
        out = []
        for el in root.iter(f"{ns}ResourceRecordSet"):
            r = _rrset(el, ns)
            if r["name"] == name:
                out.append(r)
        return out

    def _zone_name(self, ctx, zone_id: str) -> str:
        if zone_id not in self.zone_names:
            root = self.layer.upstream.get("route53", f"/2013-04-01/hostedzone/{zone_id}", "us-east-1", ctx.akid)
            self.zone_names[zone_id] = fqdn(xml_text(root, "HostedZone/Name", xml_ns(root), ""))
        return self.zone_names[zone_id]

    # --- PENDING changes ----------------------------------------------------------------------------

    def after(self, ctx, data: bytes) -> bytes | None:
        if self.s.change_pending is None or ctx.operation not in ("ChangeResourceRecordSets", "GetChange"):
            return None
        root = ET.fromstring(data)
        ns = xml_ns(root)
        info = root.find(f"{ns}ChangeInfo")
        if info is None:
            return None
        id_el, status_el = info.find(f"{ns}Id"), info.find(f"{ns}Status")
        if id_el is None or status_el is None:
            return None
        now = self.layer.now()
        with self.lock:
            if ctx.operation == "ChangeResourceRecordSets":
                # moto answers every change with the same id; real ids are unique.
                self.n_changes += 1
                digest = hashlib.sha256(f"{self.layer.seed()}:change:{self.n_changes}".encode()).hexdigest()
                change_id = "C" + digest[:20].upper()
                id_el.text = f"/change/{change_id}"
                self.changes[change_id] = now
                ctx.entry["change_id"] = change_id
            else:
                change_id = (id_el.text or "").split("/")[-1]
            submitted = self.changes.get(change_id)
        if submitted is None:
            return None
        status_el.text = "PENDING" if now < submitted + self.s.change_pending else "INSYNC"
        return xml_dump(root)
