"""The cluster's static endpoint IP (a regional address): reserve-address, release-address."""

from __future__ import annotations

from haplane.cloud.gce import OpRef
from haplane.core.steps import StepKind
from haplane.core.topology import ClusterNames
from tasks.kinds import Kind, gce
from tasks.kinds._owned import described, ours_to_delete, refuse_look_alike
from tasks.steps import Change, checkpoint


@checkpoint
def submit_reserve_address(change: Change, step: str, region: str, address: str | None = None) -> OpRef | None:
    """Reserve the cluster's static endpoint IP (``address`` promotes an ephemeral IP in use)."""
    gce, names = change.gce(), ClusterNames(change.cluster)
    if refuse_look_alike(change, "address", names.address, region):
        found = gce.get_address(region, names.address)
        if address and found.address != address:
            raise RuntimeError(f"address {names.address} already holds {found.address}, not {address}")
        return None
    return gce.insert_address(
        region, names.address, address=address, rid=change.rid(step), description=described(change, "endpoint IP")
    )


@checkpoint
def submit_release_address(change: Change, step: str, region: str) -> OpRef | None:
    gce, names = change.gce(), ClusterNames(change.cluster)
    if not ours_to_delete(change, "address", names.address, region):
        return None
    return gce.delete_address(region, names.address, rid=change.rid(step))


KINDS = (
    Kind(
        StepKind.RESERVE_ADDRESS,
        submit=gce(submit_reserve_address, lambda run, a: (a["region"],)),
        produced=lambda run, s, a: {"ip": run.change.gce().get_address(a["region"], run.names.address).address},
    ),
    Kind(StepKind.RELEASE_ADDRESS, submit=gce(submit_release_address, lambda run, a: (a["region"],))),
)
