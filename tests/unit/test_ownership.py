"""Ownership rules: what create and delete may touch (names owned on a cluster are tests/test_ownership.py)."""

from __future__ import annotations

import pytest

from haplane.ownership import OwnershipError, SpecWhere, check_create, check_delete
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
