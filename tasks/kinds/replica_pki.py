"""A replica's certificates and keys (rotate-certificates): reissue-leaves and wait-serving (new leaves,
then until the replica serves them), deliver-trust and wait-trust (the CAs it trusts during a CA
rotation, then until its etcd runs on them), deliver-service-account (the service-account keys)."""

from __future__ import annotations

from haplane.core.steps import StepKind
from tasks.kinds import Kind, gce
from tasks.pki import (
    submit_deliver_service_account,
    submit_deliver_trust,
    submit_reissue_leaves,
    wait_etcd_trust,
    wait_serving_new_certs,
)

KINDS = (
    Kind(
        StepKind.REISSUE_LEAVES,
        submit=gce(submit_reissue_leaves, lambda run, a: (a["zone"], a["name"], a["endpoint_ip"])),
    ),
    Kind(
        StepKind.WAIT_SERVING,
        act=lambda run, s, a: wait_serving_new_certs(run.change, a["zone"], a["name"], step=s.id),
    ),
    Kind(
        StepKind.DELIVER_TRUST,
        submit=gce(submit_deliver_trust, lambda run, a: (a["zone"], a["name"], a["drop_previous"])),
    ),
    Kind(
        StepKind.WAIT_TRUST,
        act=lambda run, s, a: wait_etcd_trust(run.change, a["zone"], a["name"], dropped=a["dropped"], step=s.id),
    ),
    Kind(
        StepKind.DELIVER_SERVICE_ACCOUNT,
        submit=gce(submit_deliver_service_account, lambda run, a: (a["zone"], a["name"])),
    ),
)
