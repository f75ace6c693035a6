"""How long GCE operations take, from published figures. Pure data (standard library only).

Used by the plans (expected durations in a dry run) and by the emulator's
``gce`` latency profile (:mod:`haplane.emulator.latency`), so both tell the
same story. Each figure says where it comes from; "estimate" means no
published figure was found.
"""

from __future__ import annotations

KINDS = (
    "instance_insert",
    "instance_delete",
    "instance_update",  # setMetadata, setLabels, add/deleteAccessConfig
    "instance_stop",
    "instance_start",
    "address",
    "firewall",
    "health_check",
    "target_pool",  # insert, delete, addInstance, removeInstance
    "forwarding_rule_insert",
    "forwarding_rule_delete",
    "default",  # anything else, and operations that fail at once
)

GCE_SECONDS: dict[str, float] = {
    # Time from insert to a reachable VM: ~23-25 s for small and mid-size VMs
    # (benchmark of ~5,000 GCE VMs, time to SSH, 2018); 41 s for a 2-CPU Debian VM in
    # Google's Cloud Performance Atlas (2017). We take 24 s.
    "instance_insert": 24.0,
    # No published figure found: an estimate (GCE shuts the guest down, then frees it).
    "instance_delete": 20.0,
    # Metadata/labels/access-config changes: "seconds", no published figure found; estimate 3 s.
    "instance_update": 3.0,
    # Stop waits for guest shutdown, start boots again: estimates, same order as insert.
    "instance_stop": 15.0,
    "instance_start": 20.0,
    # Addresses, firewalls, health checks, target pools: "a few seconds each"
    # (no published figure found), estimates.
    "address": 3.0,
    "firewall": 5.0,
    "health_check": 3.0,
    "target_pool": 4.0,
    # Load balancer creation and deletion: "about 20 minutes" to propagate (the seed: the
    # Kubernetes page "Set up High-Availability Kubernetes Masters").
    "forwarding_rule_insert": 1200.0,
    "forwarding_rule_delete": 1200.0,
    "default": 2.0,
}

assert set(GCE_SECONDS) == set(KINDS)
