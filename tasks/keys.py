"""The cluster's own private keys in Secret Manager, and the one writer of its PKI block.

Each private key of the cluster (:data:`blocks.pki.KEY_NAMES`: the cluster CA's, the etcd CA's,
the operator's etcd client key, the service-account signing key, the snapshot key, and during a
CA rotation the other CAs' keys) is one secret of the cluster's project, ``<cluster>-cluster-<key>-key``,
labelled with the cluster, whose IAM policy lets the workers' service account alone read it. The
PKI block (:class:`blocks.pki.ClusterPKI`) holds certificates and the version of each secret to read.

Reading: :func:`read_keys` reads the versions the block names, when a step needs them; a secret
that is missing, destroyed or not readable is a :class:`KeysUnreadable` refusal naming it.

Writing: :func:`save_pki` is the only way the block is saved. It takes the cluster lock, re-reads
the block and its keys just before writing, lets the caller decide on that fresh view, adds a
version for each key that changed (read back and compared), saves the block through the
secret-scrubbing wrapper, then destroys the versions it replaced (and any a killed run added but
never used). A key is never in the block, a result, a log line or an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydantic import SecretStr

from blocks.pki import LEGACY_FIELDS, SERVICE_ACCOUNT, SNAPSHOT, ClusterPKI
from blocks.store import read_pki, write_pki
from haplane.cloud.locks import cluster_lock
from haplane.cloud.secretstore import LABEL_CLUSTER, SecretStore, SecretUnreadable
from haplane.core.topology import ClusterNames

LABEL_KEY = "haplane-key"
# what an update decides on a fresh view: new field values, and keys by name (None: the key goes)
Update = tuple[dict, dict[str, SecretStr | None]]


class KeysUnreadable(RuntimeError):
    """A key of the cluster could not be read; nothing was changed. The message names the secret and what
    to do, and holds no key."""


def key_secret_id(cluster: str, name: str) -> str:
    """The secret holding the cluster's key ``name``."""
    return f"{cluster}-cluster-{name}-key"


def store_for(connection: str | None) -> SecretStore:
    """Secret Manager of the cluster's project, as the workers (the connection's credentials)."""
    from blocks.cluster import resolve_gce

    return SecretStore.for_gce(resolve_gce(connection))


def read_keys(
    block: ClusterPKI, store: SecretStore | None, names: tuple[str, ...] | None = None
) -> dict[str, SecretStr]:
    """The cluster's keys by name (those in ``names``, or all): inline ones of a document not yet
    migrated, the others read from the versions the block names."""
    keys = {n: k for n, k in block.legacy_keys().items() if names is None or n in names}
    for name, version in sorted(block.key_versions.items()):
        if names is not None and name not in names:
            continue
        if store is None:
            raise KeysUnreadable(
                f"the {name} key of cluster {block.cluster} is in Secret Manager and no connection was given to read it"
            )
        try:
            keys[name] = SecretStr(store.read(version))
        except SecretUnreadable as exc:
            raise KeysUnreadable(
                f"cannot read the {name} key of cluster {block.cluster}: {exc}. Nothing was changed. Block "
                f"{ClusterNames(block.cluster).pki_block} names version {version}; make that version readable by the workers' "
                f"account again (restore the secret, or fix its IAM policy or the workers' credentials), then run "
                f"again"
            ) from None
    return keys


def save_pki(
    cluster: str, store: SecretStore, update: Callable[[ClusterPKI | None, Mapping[str, SecretStr]], Update | None]
) -> ClusterPKI | None:
    """The one writer of block ``<cluster>-pki``: under the cluster lock, re-read the block and its
    keys, ``update(block, keys)`` decides (None: nothing to do), then write (see the module's
    docstring). Returns the block as saved (or as found when nothing was done)."""
    with cluster_lock(cluster):
        block = read_pki(cluster)
        keys = read_keys(block, store) if block is not None else {}
        decided = update(block, keys)
        if decided is None:
            return block
        fields, new_keys = decided
        versions = dict(block.key_versions) if block is not None else {}
        reader = store.workers_account() if any(v is not None for v in new_keys.values()) else ""
        for name, pem in sorted(new_keys.items()):
            if pem is None:
                versions.pop(name, None)
                continue
            sid = key_secret_id(cluster, name)
            version = store.add(
                sid, {LABEL_CLUSTER: cluster.lower()[:63], LABEL_KEY: name}, pem.get_secret_value(), reader
            )
            if store.read(version) != pem.get_secret_value():  # checked before the block names it
                raise RuntimeError(
                    f"secret {sid} reads back other than what was written; block {ClusterNames(cluster).pki_block} "
                    "still names the version before: nothing was changed"
                )
            versions[name] = version
        cleared = {LEGACY_FIELDS[name]: None for name in new_keys}
        if block is None:
            saved = ClusterPKI(**fields, key_versions=versions)
        else:
            saved = block.model_copy(update={**fields, **cleared, "key_versions": versions})
        write_pki(saved, overwrite=block is not None)
        for name in new_keys:  # what this save replaced, and what a killed earlier attempt left unused
            sid = key_secret_id(cluster, name)
            if name in versions:
                store.destroy_versions(sid, keep=versions[name])
            else:
                store.delete(store.name(sid))
        return saved


def changed_keys(old: Mapping[str, SecretStr], new: Mapping[str, SecretStr | None]) -> dict[str, SecretStr | None]:
    """The entries of ``new`` that differ from ``old`` (a key added, replaced, or gone: None)."""
    out: dict[str, SecretStr | None] = {}
    for name, key in new.items():
        if key is None or not key.get_secret_value():
            if name in old:
                out[name] = None
        elif name not in old or old[name].get_secret_value() != key.get_secret_value():
            out[name] = key
    return out


def ensure_keys(cluster: str, connection: str | None) -> list[str]:
    """Make the cluster's keys complete and out of the block, once, under the cluster lock: keys a
    document saved before this version holds inline are moved to Secret Manager, checked, then
    removed from the block; a missing service-account or snapshot key is made. Every key is read
    first: one that cannot be read is a refusal before anything changes. Resumable: a killed run
    left the block as it was (or done), and the next run does what is left. Returns the key names
    written (none: nothing to do)."""
    import haplane.cloud.snapshots as snap
    from haplane.cloud.pki import new_service_account_key

    written: list[str] = []

    def update(block: ClusterPKI | None, keys: Mapping[str, SecretStr]) -> Update | None:
        if block is None:
            return None
        moved: dict[str, SecretStr | None] = dict(block.legacy_keys())
        fields: dict = {}
        if SERVICE_ACCOUNT not in keys:
            sa = new_service_account_key()
            moved[SERVICE_ACCOUNT] = sa.key_pem
            fields = {
                "service_account_key_created": sa.created,
                "service_account_previous_public_keys": list(sa.previous_public_pems),
            }
        if SNAPSHOT not in keys:
            moved[SNAPSHOT] = SecretStr(snap.new_key())
        written[:] = sorted(moved)
        return (fields, moved) if moved else None

    save_pki(cluster, store_for(connection), update)
    return written


def check_keys(cluster: str, connection: str | None) -> tuple[str, ...]:
    """Read every key of the cluster, changing nothing: :class:`KeysUnreadable` if one cannot be read (a
    refusal before any call). Returns the keys :func:`ensure_keys` would write (inline ones to move to
    Secret Manager, a missing service-account or snapshot key to make): a plan's ``complete-keys`` step."""
    block = read_pki(cluster)
    if block is None:
        return ()
    keys = read_keys(block, store_for(connection) if block.key_versions else None)
    return tuple(sorted(set(block.legacy_keys()) | {n for n in (SERVICE_ACCOUNT, SNAPSHOT) if n not in keys}))
