"""Prefect blocks: settings and credentials only (never a cluster's state)."""

from __future__ import annotations


def delete_block_document(name: str, block_type_slug: str) -> bool:
    """Delete a saved block document if it exists; returns whether it did."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.delete_block_document(client.read_block_document_by_name(name, block_type_slug).id)
        except ObjectNotFound:
            return False
    return True
