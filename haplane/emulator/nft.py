"""GCE firewall resources as nftables rules: pure functions from observed state to an nft script.

The namespaced network (:mod:`.netns`) loads what these return with ``nft -f -``
inside each VM's network namespace; nothing here runs a command.

GCE semantics kept (https://cloud.google.com/firewall/docs/firewalls):

- implied rules: ingress denied, egress allowed; replies to allowed traffic pass (stateful);
- only ``INGRESS`` rules that are not ``disabled`` apply; a rule applies to an instance when
  it has no ``targetTags`` or the instance carries one of them;
- sources: ``sourceRanges`` plus the internal IPs of instances carrying one of ``sourceTags``;
  an ingress rule with neither allows every source (0.0.0.0/0), as GCE defaults it;
- ``allowed`` / ``denied`` entries: ``IPProtocol`` (``tcp``, ``udp``, ``icmp``, ``sctp``,
  ``all`` or a protocol number) and ``ports`` ("2379", "8000-8080"; none: every port);
- the lowest ``priority`` wins; at equal priority a deny wins over an allow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

TABLE = "haplane_fw"
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
NAMED_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132, "esp": 50, "ah": 51}


@dataclass(frozen=True)
class Host:
    """What firewall matching needs to know about one instance."""

    ip: str
    tags: tuple[str, ...] = ()


def applies_to(rule: dict, host: Host) -> bool:
    if rule.get("disabled") or rule.get("direction", "INGRESS") != "INGRESS":
        return False
    targets = rule.get("targetTags") or []
    return not targets or bool(set(targets) & set(host.tags))


def sources(rule: dict, hosts: Iterable[Host]) -> list[str]:
    """Source CIDRs of an ingress rule: its ranges and the IPs of hosts carrying a source tag."""
    ranges = list(rule.get("sourceRanges") or [])
    tags = set(rule.get("sourceTags") or [])
    if not ranges and not tags:
        return ["0.0.0.0/0"]
    tagged = sorted({h.ip for h in hosts if tags & set(h.tags)})
    out = []
    for cidr in ranges + tagged:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == 4 and str(net) not in out:
            out.append(str(net))
    return out


def _protocol_match(entry: dict) -> str | None:
    """The nft match for one allowed/denied entry ('' = any protocol; None = nothing to match)."""
    proto = str(entry.get("IPProtocol", "")).lower()
    ports = [str(p) for p in entry.get("ports") or []]
    if proto == "all":
        return ""
    if proto.isdigit():
        number = int(proto)
        name = next((n for n, v in NAMED_PROTOCOLS.items() if v == number), None)
        proto = name or proto
    if proto in PORT_PROTOCOLS:
        if not ports:
            return f"meta l4proto {proto}"
        return f"{proto} dport {{ {', '.join(ports)} }}"
    if proto in NAMED_PROTOCOLS:
        return f"meta l4proto {proto}"
    if proto.isdigit():
        return f"meta l4proto {proto}"
    return None


def rule_lines(rule: dict, hosts: Iterable[Host]) -> list[str]:
    """The nft statements of one GCE firewall rule (already known to apply to the host)."""
    srcs = sources(rule, hosts)
    if not srcs:  # source tags that no running instance carries: the rule matches nothing
        return []
    verdict, entries = ("drop", rule["denied"]) if rule.get("denied") else ("accept", rule.get("allowed") or [])
    src = "" if srcs == ["0.0.0.0/0"] else f"ip saddr {{ {', '.join(srcs)} }} "
    lines = []
    for entry in entries:
        match = _protocol_match(entry)
        if match is None:
            continue
        lines.append(f"{src}{match} {verdict}".replace("  ", " ").strip())
    return lines


def vm_ruleset(host: Host, firewalls: Iterable[dict], hosts: Iterable[Host]) -> str:
    """The whole nft script for one VM: replaces its table atomically (``nft -f -``)."""
    hosts = list(hosts)
    ordered = sorted(
        (r for r in firewalls if applies_to(r, host)),
        key=lambda r: (int(r.get("priority", 1000)), 0 if r.get("denied") else 1, r.get("name", "")),
    )
    body = []
    for rule in ordered:
        lines = rule_lines(rule, hosts)
        if lines:
            body.append(f"    # {rule.get('name', '?')} (priority {int(rule.get('priority', 1000))})")
            body += [f"    {line}" for line in lines]
    return "\n".join(
        [
            f"table inet {TABLE}",  # create if missing, so that the delete below never fails
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "  chain ingress {",
            "    type filter hook input priority 0; policy drop;",
            "    ct state established,related accept",
            "    ct state invalid drop",
            '    iif "lo" accept',
            *body,
            "  }",
            "}",
            "",
        ]
    )


ROUTER_TABLE = "haplane_router"


def router_ruleset(
    cut: Iterable[str],
    nat: dict[str, str],
    lbs: dict[str, list[str]],
    lb_ports: Iterable[int],
    links: Iterable[tuple[str, str]] = (),
) -> str:
    """The router namespace's table: cut zones (subnets), cut links (pairs of addresses that no longer
    reach each other, either way: a partition inside the network), and the 1:1 NAT and load-balancer DNAT.

    ``nat``: external IP -> internal IP (an access config). ``lbs``: forwarding-rule IP -> the
    internal IPs of its healthy backends (none: the IP is not routed, a client is refused).
    """
    cut = sorted(cut)
    lines = [
        f"table ip {ROUTER_TABLE}",
        f"delete table ip {ROUTER_TABLE}",
        f"table ip {ROUTER_TABLE} {{",
        "  set cut {",
        "    type ipv4_addr; flags interval;",
        *([f"    elements = {{ {', '.join(cut)} }}"] if cut else []),
        "  }",
        "  chain forward {",
        "    type filter hook forward priority 0; policy accept;",
        "    ip saddr @cut drop",
        "    ip daddr @cut drop",
        *[f"    ip saddr {a} ip daddr {b} drop" for x, y in sorted(links) for a, b in ((x, y), (y, x))],
        "  }",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        "    ip daddr @cut drop",
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority -100; policy accept;",
    ]
    ports = ", ".join(str(p) for p in lb_ports)
    for ip, backends in sorted(lbs.items()):
        if not backends:
            continue
        if len(backends) == 1:
            lines.append(f"    ip daddr {ip} tcp dport {{ {ports} }} dnat to {backends[0]}")
        else:
            table = ", ".join(f"{i} : {b}" for i, b in enumerate(backends))
            lines.append(
                f"    ip daddr {ip} tcp dport {{ {ports} }} dnat to numgen inc mod {len(backends)} map {{ {table} }}"
            )
    for ext, internal in sorted(nat.items()):
        lines.append(f"    ip daddr {ext} dnat to {internal}")
    lines += ["  }", "}", ""]
    return "\n".join(lines)
