"""The NetworkPolicy rules that scripts/check-manifests and scripts/check-chart both hold the
rendered objects to (issue 13, section 6). Judged from the rendered object, not the template:

  - it selects the controller's pods and restricts both directions;
  - ingress reaches only the listen port (TCP);
  - egress allows exactly DNS (53 UDP and TCP), 443, the configured gate ports and the EKS Pod
    Identity agent (TCP 80 to its two /32 and /128 addresses), plus any extra CIDRs;
  - no egress peer reaches instance metadata: a rule without `to` is refused, and every ipBlock
    whose range holds 169.254.169.254 (or fd00:ec2::254) must list it under `except`.
"""
import ipaddress

METADATA = [ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")]
POD_IDENTITY = {ipaddress.ip_network("169.254.170.23/32"), ipaddress.ip_network("fd00:ec2::23/128")}


def _reaches_metadata(peer):
    """True when this egress peer may reach an instance metadata address."""
    block = peer.get("ipBlock")
    if block is None:
        # namespaceSelector / podSelector peers select pods, never a node-local address.
        return False
    net = ipaddress.ip_network(block["cidr"], strict=False)
    excepted = [ipaddress.ip_network(e, strict=False) for e in block.get("except", [])]
    return any(ip in net and not any(ip in e for e in excepted) for ip in METADATA)


def check(np, pod_labels, listen_port, gate_ports=(), extra_cidrs=(), pod_identity=True):
    """Problems found in NetworkPolicy `np` (a list of strings; empty when it holds)."""
    out = []
    spec = np.get("spec", {})
    sel = spec.get("podSelector", {}).get("matchLabels", {})
    if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
        out.append(f"podSelector {sel} does not select the controller pods {pod_labels}")
    if sorted(spec.get("policyTypes", [])) != ["Egress", "Ingress"]:
        out.append(f"policyTypes {spec.get('policyTypes')}, want Ingress and Egress")
    ingress = spec.get("ingress", [])
    if not ingress:
        out.append("no ingress rule: the probes and Prometheus could not reach the listen port")
    for r in ingress:
        if r.get("ports") != [{"port": listen_port, "protocol": "TCP"}]:
            out.append(f"ingress rule {r} opens more than TCP {listen_port}")
    allowed = set()
    cidrs_any_port = []
    for r in spec.get("egress", []):
        peers = r.get("to")
        if not peers:
            out.append(f"egress rule {r} has no `to`: it reaches every address, instance metadata included")
            continue
        for p in peers:
            if _reaches_metadata(p):
                out.append(f"egress peer {p} reaches instance metadata (169.254.169.254 / fd00:ec2::254)")
        ports = r.get("ports")
        if not ports:
            bad = [p for p in peers if "ipBlock" not in p]
            if bad:
                out.append(f"egress rule without ports reaches pods {bad} on every port")
            cidrs_any_port += [p["ipBlock"]["cidr"] for p in peers if "ipBlock" in p]
            continue
        nets = {ipaddress.ip_network(p["ipBlock"]["cidr"]) for p in peers if "ipBlock" in p}
        for port in ports:
            key = (port.get("port"), port.get("protocol", "TCP"))
            if key == (80, "TCP") and nets and nets <= POD_IDENTITY and len(nets) == len(peers):
                key = ("pod-identity", "TCP")
            allowed.add(key)
    want = {(53, "UDP"), (53, "TCP"), (443, "TCP")} | {(p, "TCP") for p in gate_ports}
    if pod_identity:
        want.add(("pod-identity", "TCP"))
    if allowed != want:
        out.append(f"egress ports {sorted(map(str, allowed))}, want {sorted(map(str, want))}")
    if sorted(cidrs_any_port) != sorted(extra_cidrs):
        out.append(f"egress on every port to {cidrs_any_port}, want exactly {list(extra_cidrs)}")
    return out
