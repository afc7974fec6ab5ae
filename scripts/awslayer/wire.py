"""Wire formats the layer reads and rewrites: CBOR (boto3's CloudWatch), awsQuery/rest-xml, awsJson,
and a small client for the layer's own calls to moto."""

from __future__ import annotations

import http.client
import json
import struct
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as ET


class Tagged:
    """A CBOR tagged value (tag 1 = epoch timestamp), kept so it is written back unchanged."""

    def __init__(self, tag: int, value):
        self.tag, self.value = tag, value

    def __repr__(self):
        return f"Tagged({self.tag}, {self.value!r})"


_BREAK = object()


def cbor_loads(data: bytes):
    value, _ = _cbor_item(data, 0)
    return value


def _cbor_len(data: bytes, pos: int, info: int) -> tuple[int | None, int]:
    if info < 24:
        return info, pos
    if info == 31:
        return None, pos
    size = {24: 1, 25: 2, 26: 4, 27: 8}[info]
    return int.from_bytes(data[pos : pos + size], "big"), pos + size


def _cbor_item(data: bytes, pos: int):
    head = data[pos]
    pos += 1
    major, info = head >> 5, head & 0x1F
    if major == 7:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info in (22, 23):
            return None, pos
        if info == 25:
            return _half(data[pos : pos + 2]), pos + 2
        if info == 26:
            return struct.unpack(">f", data[pos : pos + 4])[0], pos + 4
        if info == 27:
            return struct.unpack(">d", data[pos : pos + 8])[0], pos + 8
        if info == 31:
            return _BREAK, pos
        return None, pos
    n, pos = _cbor_len(data, pos, info)
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major in (2, 3):
        if n is None:
            parts = []
            while True:
                part, pos = _cbor_item(data, pos)
                if part is _BREAK:
                    break
                parts.append(part)
            return (b"" if major == 2 else "").join(parts), pos
        raw = data[pos : pos + n]
        return (raw if major == 2 else raw.decode("utf-8")), pos + n
    if major == 4:
        out = []
        while n is None or len(out) < n:
            item, pos = _cbor_item(data, pos)
            if item is _BREAK:
                break
            out.append(item)
        return out, pos
    if major == 5:
        out = {}
        while n is None or len(out) < n:
            key, pos = _cbor_item(data, pos)
            if key is _BREAK:
                break
            out[key], pos = _cbor_item(data, pos)
        return out, pos
    if major == 6:
        value, pos = _cbor_item(data, pos)
        return Tagged(n, value), pos
    raise ValueError(f"bad CBOR major type {major}")


def _half(b: bytes) -> float:
    h = int.from_bytes(b, "big")
    exp, frac = (h >> 10) & 0x1F, h & 0x3FF
    if exp == 0:
        val = frac * 2.0**-24
    elif exp == 31:
        val = float("inf") if frac == 0 else float("nan")
    else:
        val = (1 + frac / 1024) * 2.0 ** (exp - 15)
    return -val if h & 0x8000 else val


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("CBOR integer too large")


def cbor_dumps(value) -> bytes:
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        return _cbor_head(0, value) if value >= 0 else _cbor_head(1, -1 - value)
    if isinstance(value, float):
        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, bytes):
        return _cbor_head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return _cbor_head(3, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        return _cbor_head(4, len(value)) + b"".join(cbor_dumps(v) for v in value)
    if isinstance(value, dict):
        return _cbor_head(5, len(value)) + b"".join(cbor_dumps(k) + cbor_dumps(v) for k, v in value.items())
    if isinstance(value, Tagged):
        return _cbor_head(6, value.tag) + cbor_dumps(value.value)
    raise TypeError(f"cannot encode {type(value)} as CBOR")


# --- XML -------------------------------------------------------------------------------------------


def xml_ns(root: ET.Element) -> str:
    return root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def xml_text(el: ET.Element | None, path: str, ns: str, default=None):
    if el is None:
        return default
    found = el.find("/".join(ns + p for p in path.split("/")))
    return default if found is None or found.text is None else found.text


_XML_LOCK = threading.Lock()


def xml_dump(root: ET.Element) -> bytes:
    """Serialise with the document's namespace as the default one, as AWS writes it (no ns0: prefixes).

    ElementTree keeps one global prefix map, so registering and writing happen under one lock.
    """
    ns = xml_ns(root)
    with _XML_LOCK:
        if ns:
            ET.register_namespace("", ns[1:-1])
        text = ET.tostring(root, encoding="unicode")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + text.encode()


def form_params(body: bytes, query: str = "") -> dict[str, str]:
    params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
    try:
        params.update({k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()})
    except ValueError:
        pass
    return params


def xml_error(code: str, message: str, ns: str, status: int = 400) -> tuple[int, dict, bytes]:
    request_id = str(uuid.uuid4())
    sender = "Sender" if status < 500 else "Receiver"
    body = (
        f'<?xml version="1.0"?>\n<ErrorResponse xmlns="{ns}"><Error><Type>{sender}</Type>'
        f"<Code>{code}</Code><Message>{_esc(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()
    return status, {"Content-Type": "text/xml", "x-amzn-RequestId": request_id}, body


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- the layer's own calls to moto -------------------------------------------------------------------


class Upstream:
    """Signed-looking requests from the layer itself; moto reads service, region and account from them."""

    def __init__(self, parsed: urllib.parse.SplitResult, timeout: float = 30.0):
        self.parsed, self.timeout = parsed, timeout

    def _auth(self, signing: str, region: str, akid: str) -> str:
        return (
            f"AWS4-HMAC-SHA256 Credential={akid}/20260101/{region}/{signing}/aws4_request, "
            "SignedHeaders=host, Signature=0"
        )

    def request(self, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.parsed.hostname, self.parsed.port or 80, timeout=self.timeout)
        try:
            headers = dict(headers, **{"Content-Length": str(len(body))})
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def json(self, signing: str, target: str, payload: dict, region: str, akid: str) -> dict:
        status, data = self.request(
            "POST",
            "/",
            json.dumps(payload).encode(),
            {
                "X-Amz-Target": target,
                "Content-Type": "application/x-amz-json-1.1",
                "Authorization": self._auth(signing, region, akid),
            },
        )
        out = json.loads(data or b"{}")
        if status != 200:
            raise UpstreamError(f"{target}: HTTP {status}: {out}")
        return out

    def query(self, signing: str, params: dict, region: str, akid: str) -> ET.Element:
        status, data = self.request(
            "POST",
            "/",
            urllib.parse.urlencode(params).encode(),
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": self._auth(signing, region, akid),
            },
        )
        if status != 200:
            raise UpstreamError(f"{params.get('Action')}: HTTP {status}: {data[:300]!r}")
        return ET.fromstring(data)

    def get(self, signing: str, path: str, region: str, akid: str) -> ET.Element:
        status, data = self.request("GET", path, b"", {"Authorization": self._auth(signing, region, akid)})
        if status != 200:
            raise UpstreamError(f"GET {path}: HTTP {status}: {data[:300]!r}")
        return ET.fromstring(data)


class UpstreamError(Exception):
    pass
