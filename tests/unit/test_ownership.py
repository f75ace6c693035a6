"""Ownership rules: what create and delete may touch (names owned on a cluster are tests/test_ownership.py)."""

from __future__ import annotations

import pytest

from haplane.core.ownership import OwnershipError, SpecWhere, check_create, check_delete
from haplane.testing import REGION

CREATE_CASES = [
    # (spec found, GCE resources found without a spec, refused with)
    (None, [], None),
    (SpecWhere(REGION, "p"), [], None),  # resumed create
    (SpecWhere(REGION, None), [], None),  # spec from before the project was recorded
    (SpecWhere("us-central1", "p"), [], "already exists in region 'us-central1' of project 'p'"),
    (SpecWhere(REGION, "q"), [], "already exists in region 'europe-west1' of project 'q'"),
    (None, ["firewall c-etcd-peer"], "already has resources named for a cluster 'c'.*firewall c-etcd-peer"),
]


OURS = {"haplane-cluster": "c", "haplane-uid": "u1", "haplane-change": "create-1"}


ADOPT_CASES = [
    # (labels of the VM found under the planned name, the cluster's uid, refused with)
    (OURS, "u1", None),  # made by an earlier run of this change: resumed
    ({k: v for k, v in OURS.items() if k != "haplane-uid"}, None, None),  # a cluster from before uids
    ({"haplane-cluster": "c"}, "u1", "uid '\\(none\\)' \\(expected 'u1'\\), change '\\(none\\)'"),
    ({**OURS, "haplane-uid": "u2"}, "u1", "uid 'u2' \\(expected 'u1'\\)"),
    ({**OURS, "haplane-change": "add-2"}, "u1", "change 'add-2' \\(expected 'create-1'\\)"),  # another change's
    ({**OURS, "haplane-cluster": "d"}, "u1", "cluster 'd' \\(expected 'c'\\)"),
    ({}, None, "cluster '\\(none\\)'"),
]


@pytest.mark.parametrize("labels,uid,refused", ADOPT_CASES)
def test_a_create_step_adopts_only_the_vm_its_own_change_made(labels, uid, refused):
    from haplane.core.ownership import NotOurs, check_adoptable

    if refused is None:
        check_adoptable("c-master-1", "z", labels, "c", uid, "create-1")
        return
    with pytest.raises(NotOurs, match=f"VM c-master-1 in z has the name this change planned.*{refused}.*not adopted"):
        check_adoptable("c-master-1", "z", labels, "c", uid, "create-1")


@pytest.mark.parametrize(
    "accounts,refused",
    [
        (("own@p.iam.gserviceaccount.com",), False),
        (("mallory@p.iam.gserviceaccount.com",), True),
        (("own@p.iam.gserviceaccount.com", "mallory@p.iam.gserviceaccount.com"), True),
        ((), True),  # no account at all: keys would go into metadata any reader of the VM sees
    ],
)
def test_keys_go_only_to_a_vm_running_as_the_replicas_own_account(accounts, refused):
    from haplane.core.ownership import NotOurs, check_key_recipient

    if not refused:
        check_key_recipient("c-master-1", accounts, "own@p.iam.gserviceaccount.com")
        return
    with pytest.raises(NotOurs, match="not the replica's own own@p.*no certificate was issued and no key granted"):
        check_key_recipient("c-master-1", accounts, "own@p.iam.gserviceaccount.com")


@pytest.mark.parametrize("spec,found,refused", CREATE_CASES)
def test_check_create(spec, found, refused):
    if refused is None:
        check_create("c", REGION, "p", spec, found)
    else:
        with pytest.raises(OwnershipError, match=refused):
            check_create("c", REGION, "p", spec, found)


DELETE_CASES = [
    # (spec, GCE shows, gone=, refused with)
    (SpecWhere(REGION, "p"), ["VM c-master-1"], False, None),
    (SpecWhere(REGION, "p"), [], True, None),
    (SpecWhere(REGION, "p"), [], False, "shows nothing of cluster 'c'.*gone=true"),
    (SpecWhere(REGION, "q"), ["VM c-master-1"], False, "lives in project 'q' but the connection points at"),
    (SpecWhere(REGION, "q"), [], True, "lives in project 'q'"),  # gone= does not skip the project check
]


@pytest.mark.parametrize("spec,found,gone,refused", DELETE_CASES)
def test_check_delete(spec, found, gone, refused):
    if refused is None:
        check_delete("c", "p", spec, found, gone)
    else:
        with pytest.raises(OwnershipError, match=refused):
            check_delete("c", "p", spec, found, gone)


AUTOMATIONS = [
    # (an automation's JSON document, names cluster "prod")
    ({"name": "x", "tags": ["cluster:prod"], "trigger": {}, "actions": []}, True),
    (
        {
            "name": "x",
            "tags": [],
            "trigger": {"match": {"prefect.resource.id": "haplane.cluster.prod.replica.*"}},
            "actions": [],
        },
        True,
    ),
    ({"name": "x", "trigger": {"match": {"prefect.resource.id": "haplane.cluster.prod"}}, "actions": []}, True),
    ({"name": "x", "trigger": {"match_related": [{"haplane.cluster": "prod"}]}, "actions": []}, True),
    ({"name": "x", "trigger": {}, "actions": [{"type": "run-deployment", "parameters": {"cluster": "prod"}}]}, True),
    # another cluster whose name begins with this one's, a template, the global automation, free text
    (
        {
            "name": "haplane-prod-a-watch",
            "tags": ["cluster:prod-a"],
            "trigger": {"match": {"prefect.resource.id": "haplane.cluster.prod-a.*"}},
            "actions": [],
        },
        False,
    ),
    (
        {
            "name": "haplane-health-check-on-request",
            "trigger": {"match": {"prefect.resource.id": "haplane.cluster.*"}},
            "actions": [{"parameters": {"cluster": {"template": "{{ event.resource['haplane.cluster'] }}"}}}],
        },
        False,
    ),
    ({"name": "haplane.cluster.prod", "description": "watches haplane.cluster.prod", "trigger": {}}, False),
]


@pytest.mark.parametrize("doc,names", AUTOMATIONS)
def test_an_automation_names_a_cluster_by_tag_resource_label_or_parameter_never_by_name_prefix(doc, names):
    from deployments.clusters import names_cluster

    assert names_cluster(doc, "prod") is names
