"""upgrade-cluster's run forms: the deployments' parameter schemas (what the UI's forms show) offer
exactly the releases haplane offers. The upgrade on real etcd: tests/test_upgrade.py."""

from __future__ import annotations


def test_the_forms_offer_the_versions_the_image_has():
    """The UI's run forms (the deployments' parameter schemas) offer exactly the offered releases."""
    from prefect.utilities.callables import parameter_schema

    from flows.create_cluster import create_cluster
    from flows.upgrade_cluster import upgrade_cluster
    from haplane.core.versions import ETCD_RELEASES, KUBERNETES_RELEASES

    for flow in (create_cluster, upgrade_cluster):
        props = parameter_schema(flow.fn).model_dump()["properties"]
        for name, table in (("etcd_version", ETCD_RELEASES), ("kubernetes_version", KUBERNETES_RELEASES)):
            enums = [s["enum"] for s in [props[name], *props[name].get("anyOf", [])] if "enum" in s]
            assert enums == [list(table)], (flow.name, name, props[name])
