"""GCE firewall resources -> nftables: what the namespaced network enforces (pure; no root needed)."""

from __future__ import annotations

import pytest

from haplane.emulator.nft import Host, applies_to, router_ruleset, sources, vm_ruleset
from tasks.kinds.firewall import check_source_ranges, firewall_rules, worker_egress

REPLICA_A = Host("10.9.1.5", ("c-master",))
REPLICA_B = Host("10.9.2.7", ("c-master",))
NODE = Host("10.9.1.9", ("c-node",))


def _gce(name: str, rule: dict, priority: int = 1000) -> dict:
    """A rule as haplane's flows create it, in the shape the emulator stores (GCE's JSON)."""
    body = {
        "name": name,
        "priority": priority,
        "direction": "INGRESS",
        "allowed": [{"IPProtocol": "tcp", "ports": rule["ports"]}],
    }
    for field, key in (("sourceRanges", "source_ranges"), ("sourceTags", "source_tags"), ("targetTags", "target_tags")):
        if rule[key]:
            body[field] = rule[key]
    return body


def _haplane_rules(operator: list[str]) -> list[dict]:
    return [_gce(n, r) for n, r in firewall_rules("c", ["0.0.0.0/0"], operator).items()]


def _lines(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines()]


def test_haplane_rules_admit_the_operator_and_replicas_at_etcd_and_everyone_at_the_api():
    script = vm_ruleset(REPLICA_A, _haplane_rules(["203.0.113.7/32"]), [REPLICA_A, REPLICA_B, NODE])
    lines = _lines(script)
    assert "type filter hook input priority 0; policy drop;" in lines  # GCE's implied deny-ingress
    assert "ct state established,related accept" in lines
    client = next(line for line in lines if "dport { 2379 }" in line)
    assert client == "ip saddr { 203.0.113.7/32, 10.9.1.5/32, 10.9.2.7/32 } tcp dport { 2379 } accept"
    peer = next(line for line in lines if "dport { 2380 }" in line)
    assert peer == "ip saddr { 10.9.1.5/32, 10.9.2.7/32 } tcp dport { 2380 } accept"  # not the node, not the operator
    api = next(line for line in lines if "6443" in line)
    assert api.startswith("ip saddr { 0.0.0.0/0,") and "35.191.0.0/16" in api and api.endswith("8080 } accept")


def test_rules_apply_only_to_their_target_tags():
    rules = _haplane_rules(["203.0.113.7/32"])
    assert all(applies_to(r, REPLICA_A) for r in rules)
    assert not any(applies_to(r, NODE) for r in rules)
    assert "dport" not in vm_ruleset(NODE, rules, [REPLICA_A, NODE])  # a node gets only the implied deny


def test_lower_priority_first_and_deny_wins_at_equal_priority():
    allow = {"name": "allow", "priority": 500, "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]}
    deny = {"name": "deny", "priority": 500, "denied": [{"IPProtocol": "all"}], "sourceRanges": ["198.51.100.0/24"]}
    late = {"name": "late", "priority": 2000, "allowed": [{"IPProtocol": "icmp"}]}
    lines = _lines(vm_ruleset(REPLICA_A, [late, allow, deny], [REPLICA_A]))
    body = [
        line for line in lines if line.endswith(("accept", "drop")) and "ct state" not in line and "iif" not in line
    ]
    assert body == ["ip saddr { 198.51.100.0/24 } drop", "tcp dport { 22 } accept", "meta l4proto icmp accept"]


@pytest.mark.parametrize(
    "rule, expected",
    [
        ({"sourceTags": ["nobody"]}, []),  # tags no instance carries match nothing
        ({}, ["0.0.0.0/0"]),  # an ingress rule without sources: GCE's default 0.0.0.0/0
        ({"sourceRanges": ["10.9.0.0/16", "10.9.0.0/16"], "sourceTags": ["c-node"]}, ["10.9.0.0/16", "10.9.1.9/32"]),
    ],
)
def test_sources(rule, expected):
    assert sources(rule, [REPLICA_A, NODE]) == expected


def test_disabled_and_egress_rules_do_not_apply():
    assert not applies_to({"disabled": True, "allowed": [{"IPProtocol": "all"}]}, REPLICA_A)
    assert not applies_to({"direction": "EGRESS", "allowed": [{"IPProtocol": "all"}]}, REPLICA_A)


def test_router_ruleset_cuts_zones_and_balances_over_healthy_backends_only():
    script = router_ruleset(
        ["10.9.3.0/24"], {"10.9.128.4": "10.9.1.5"}, {"10.9.160.2": ["10.9.1.5", "10.9.2.7"], "10.9.160.3": []}, [6443]
    )
    lines = _lines(script)
    assert "elements = { 10.9.3.0/24 }" in lines and "ip saddr @cut drop" in lines
    assert "ip daddr 10.9.128.4 dnat to 10.9.1.5" in lines
    assert "ip daddr 10.9.160.2 tcp dport { 6443 } dnat to numgen inc mod 2 map { 0 : 10.9.1.5, 1 : 10.9.2.7 }" in lines
    assert "10.9.160.3" not in script  # no healthy backend: not routed, the client is refused


def test_router_ruleset_cuts_links_both_ways():
    lines = _lines(router_ruleset([], {}, {}, [6443], links=[("10.9.1.5", "10.9.2.7")]))
    assert "ip saddr 10.9.1.5 ip daddr 10.9.2.7 drop" in lines and "ip saddr 10.9.2.7 ip daddr 10.9.1.5 drop" in lines
    assert not [line for line in _lines(router_ruleset([], {}, {}, [6443])) if "ip saddr 10." in line]


def test_operator_ranges_are_checked_and_the_default_is_this_workers_egress():
    with pytest.raises(ValueError, match=r"operator_ranges: '10.0.0.300/32' is not an IPv4 range.*203.0.113.7/32"):
        check_source_ranges(["10.0.0.300/32"], "operator_ranges")
    assert check_source_ranges(["203.0.113.7/32"], "operator_ranges") == ["203.0.113.7/32"]
    assert worker_egress("127.30.0.5") == "127.0.0.1"  # toward loopback the kernel picks 127.0.0.1
