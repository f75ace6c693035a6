"""PKI tasks: the cluster's CAs (a Prefect block, their keys in Secret Manager) and each replica's
certificates and keys.

No task here returns key material: the CAs' certificates go into the ``<cluster>-pki`` block and
their keys into Secret Manager, readable by the workers' account only (:mod:`tasks.keys`, the one
writer of both); a replica's certificates into its instance metadata and its private keys into
Secret Manager, one secret per key readable by the replica's VM service account only
(:mod:`haplane.cloud.secretstore`); the metadata names the versions to read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from prefect import get_run_logger
from pydantic import SecretStr

from blocks.pki import OPERATOR, SERVICE_ACCOUNT, SNAPSHOT, ClusterPKI, cas_keys
from blocks.store import delete_pki, read_pki
from haplane.cloud import snapshots as snap
from haplane.cloud.etcd import EtcdTLS
from haplane.cloud.gce import Gce, Instance, OpRef
from haplane.cloud.pki import (
    CertKey,
    ClusterCAs,
    Lifetimes,
    begin_ca_rotation,
    create_cluster_cas,
    finish_ca_rotation,
    issue_replica_certs,
    node_tls,
    rotate_service_account_key,
    service_account_tls,
    switch_cas,
)
from haplane.cloud.secretstore import SecretStore, service_account_email
from haplane.core.ownership import check_key_recipient
from haplane.core.topology import ClusterNames
from haplane.node.spec import (
    APISERVER_KEY,
    SECRET_SUFFIXES,
    SECRETS_KEY,
    SNAPSHOT_KEY_SECRET,
    ApiServerSpec,
    EtcdSpec,
    NodeSpec,
    RestoreSpec,
)
from tasks.keys import KeysUnreadable, changed_keys, ensure_keys, read_keys, save_pki, store_for
from tasks.steps import Change, checkpoint, probe


def load_cas(cluster: str, connection: str | None = None, names: tuple[str, ...] | None = None) -> ClusterCAs | None:
    """The cluster's CAs with their keys (read from Secret Manager with the connection's
    credentials), inside a task only: never return or log them. None: the cluster has no PKI block.
    ``names``: read only these keys (the others are empty placeholders); None: all of them."""
    block = read_pki(cluster)
    if block is None:
        return None
    return block.to_cas(read_keys(block, store_for(connection) if block.key_versions else None, names))


def load_certs(cluster: str) -> ClusterCAs | None:
    """The cluster's CA certificates alone (their keys are empty placeholders: nothing can be signed)."""
    block = read_pki(cluster)
    return block.to_cas({}) if block is not None else None


def read_cas(
    cluster: str, connection: str | None = None, names: tuple[str, ...] | None = None
) -> tuple[ClusterCAs | None, str | None]:
    """The cluster's CAs (with the keys ``names``, None: all), or None and why they could not be read
    (absent, or unreadable)."""
    name = ClusterNames(cluster).pki_block
    try:
        cas = load_cas(cluster, connection, names)
    except KeysUnreadable as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure to read it is "unknown", never "no PKI"
        # the type only: a message could quote the block's content
        return None, f"the PKI block {name} could not be read ({type(exc).__name__})"
    return (cas, None) if cas is not None else (None, f"the PKI block {name} does not exist")


def operator_tls(cluster: str, connection: str | None = None) -> EtcdTLS | None:
    """The operator's etcd client credentials, for use inside a task (never return them)."""
    cas = load_cas(cluster, connection)
    return EtcdTLS.from_cas(cas) if cas else None


def snapshot_key(cluster: str, connection: str | None = None, create: bool = True) -> str:
    """The cluster's snapshot key (base64), read from Secret Manager. Made with the cluster's PKI; a
    cluster from before that gets it once, under the cluster lock (:func:`tasks.keys.ensure_keys`, which
    re-reads first: two first snapshots at once make one key). Only for use inside a task; never return it."""
    block = read_pki(cluster)
    if block is None:
        raise snap.SnapshotError(f"cluster {cluster!r} has no PKI block {ClusterNames(cluster).pki_block!r}")
    store = store_for(connection)
    keys = read_keys(block, store, names=(SNAPSHOT,))
    if SNAPSHOT not in keys:
        if not create:
            raise snap.SnapshotError(
                f"cluster {cluster!r} has no snapshot key in block {ClusterNames(cluster).pki_block!r}: "
                "it has never been snapshotted, so there is nothing to restore"
            )
        ensure_keys(cluster, connection)
        keys = read_keys(read_pki(cluster), store, names=(SNAPSHOT,))
    return keys[SNAPSHOT].get_secret_value()


@probe(task_run_name="{step}")
def ensure_cluster_pki(
    cluster: str, step: str = "pki", leaf_minutes: int | None = None, connection: str | None = None
) -> str:
    """Create the cluster CA, the etcd CA, the service-account and the snapshot keys once (keys in
    Secret Manager, certificates in the block); later runs keep the saved ones. Returns the block name.
    ``leaf_minutes``: every leaf lasts this many minutes (None: ``Lifetimes.leaf_days``)."""
    name, lifetimes = ClusterNames(cluster).pki_block, Lifetimes(leaf_minutes=leaf_minutes)
    made: list[bool] = []

    def update(block, keys):
        if block is not None:
            return None
        made.append(True)
        cas = create_cluster_cas(cluster, lifetimes=lifetimes)
        return ClusterPKI.public_fields(cas), {**cas_keys(cas), SNAPSHOT: SecretStr(snap.new_key())}

    save_pki(cluster, store_for(connection), update)
    if made:
        get_run_logger().info(
            "the cluster CA, the etcd CA, the service-account and snapshot keys of %s are in "
            "Secret Manager, their certificates in block %s (leaf certificates last %s)",
            cluster,
            name,
            lifetimes.leaf_text,
        )
    ensure_keys(cluster, connection)
    return name


@checkpoint(retries=0)
def rotate_service_account(change: Change, step: str) -> str:
    """A new service-account signing key (a new version of its secret; the one it replaced is
    destroyed); the old public key stays accepted. Checkpointed: a resumed run does not rotate twice.
    Returns the new key's id (public)."""
    ensure_keys(change.cluster, change.connection)
    kids: list[str] = []

    def update(block, keys):
        old = block.to_cas(keys).service_account
        new = rotate_service_account_key(old)
        kids[:] = [old.kid, new.kid]
        return (
            {
                "service_account_key_created": new.created,
                "service_account_previous_public_keys": list(new.previous_public_pems),
            },
            {SERVICE_ACCOUNT: new.key_pem},
        )

    save_pki(change.cluster, store_for(change.connection), update)
    get_run_logger().info(
        "service-account key %s replaces %s (still accepted until the next rotation)", kids[1], kids[0]
    )
    return kids[1]


@checkpoint
def submit_deliver_service_account(change: Change, step: str, zone: str, name: str) -> OpRef | None:
    """Write the cluster's current service-account keys into a replica's metadata (the API server
    picks them up: the stand-in re-reads its key files, the startup script restarts kube-apiserver)."""
    cas = load_cas(change.cluster, change.connection)
    if cas is None or cas.service_account is None:
        raise RuntimeError(
            f"cluster {change.cluster} has no service-account key in block {ClusterNames(change.cluster).pki_block!r}"
        )
    get_run_logger().info("delivering service-account key %s to %s", cas.service_account.kid, name)
    gce = change.gce()
    vm = gce.get_instance(zone, name)
    if vm is None:
        raise RuntimeError(f"VM {name} in {zone} does not exist; cannot deliver keys to it")
    refs = json.loads(vm.metadata.get(SECRETS_KEY) or "{}")
    spec = _keys_to_secrets(change, gce, vm, NodeSpec(None, None, service_account_tls(cas.service_account), refs))
    return gce.set_metadata(zone, name, spec.to_metadata(), rid=change.rid(step))


def _keys_to_secrets(change: Change, gce: Gce, vm: Instance, spec: NodeSpec) -> NodeSpec:
    """``spec`` with its private keys moved into Secret Manager (readable by the VM's service
    account alone) and replaced by the names of the versions to read. A VM created before
    replicas had service accounts cannot read secrets: it keeps its keys in metadata, as before.
    The snapshot key of a restore goes the same way."""
    keys = {s: pem for s, pem in spec.tls.items() if s in SECRET_SUFFIXES}
    if spec.snapshot_key:
        keys[SNAPSHOT_KEY_SECRET] = spec.snapshot_key
    if not vm.service_accounts:
        get_run_logger().warning(
            "%s has no service account: its private keys stay in its instance metadata "
            "(replace the replica to move them to Secret Manager)",
            vm.name,
        )
        return spec
    store = SecretStore.for_gce(gce)
    refs = dict(spec.secret_refs)
    for suffix, pem in keys.items():
        refs[suffix] = store.put(change.cluster, vm.name, suffix, pem, reader=vm.service_accounts[0])
    public = {s: pem for s, pem in spec.tls.items() if s not in keys}
    return dataclasses.replace(spec, tls=public, secret_refs=refs, snapshot_key=None)


@checkpoint
def submit_reissue_leaves(change: Change, step: str, zone: str, name: str, endpoint_ip: str) -> OpRef | None:
    """New key pairs and certificates for one replica, with the same SANs, delivered to it (keys
    to Secret Manager, certificates and version names to metadata); the VM reloads etcd and its
    API server on them. Checkpointed per replica: a resumed rotation does not redo a replica."""
    gce = change.gce()
    vm = gce.get_instance(zone, name)
    if vm is None:
        raise RuntimeError(f"VM {name} in {zone} does not exist; cannot re-issue its certificates")
    if load_certs(change.cluster) is None:
        raise RuntimeError(f"cluster {change.cluster} has no PKI block {ClusterNames(change.cluster).pki_block!r}")
    ensure_keys(change.cluster, change.connection)  # a cluster from before service-account keys gets one
    cas = load_cas(change.cluster, change.connection)
    api = ApiServerSpec.from_json(vm.metadata[APISERVER_KEY]) if vm.metadata.get(APISERVER_KEY) else ApiServerSpec()
    certs = issue_replica_certs(
        cas,
        hostname=name,
        internal_ip=vm.internal_ip,
        endpoint_ip=endpoint_ip,
        service_cidr=api.service_cluster_ip_range,
    )
    refs = json.loads(vm.metadata.get(SECRETS_KEY) or "{}")
    spec = _keys_to_secrets(change, gce, vm, NodeSpec(None, None, node_tls(cas, certs), refs))
    get_run_logger().info(
        "re-issued the certificates of %s (API server until %s)",
        name,
        certs.apiserver.certificate.not_valid_after_utc.isoformat(),
    )
    return gce.set_metadata(zone, name, spec.to_metadata(), rid=change.rid(step))


@probe(task_run_name="{step}")
def wait_serving_new_certs(change: Change, zone: str, name: str, step: str, timeout: float = 120.0) -> None:
    """Until the replica's etcd and API server present the certificates now in its metadata."""
    import ssl
    import time

    from haplane.node.spec import APISERVER_PORT, ETCD_CLIENT_PORT, TLS_PREFIX

    vm = change.gce().get_instance(zone, name)
    cas = load_cas(change.cluster, change.connection)
    if vm is None or cas is None:
        raise RuntimeError(f"VM {name} in {zone} or the cluster's PKI block is gone")
    etcd_ctx = EtcdTLS.from_cas(cas).ssl_context()  # etcd asks for a client certificate
    api_ctx = ssl.create_default_context(cadata=cas.ca_bundle())
    for ctx in (etcd_ctx, api_ctx):
        ctx.check_hostname = False  # the chain is verified; the IP is in the SANs anyway
    wanted = {
        ETCD_CLIENT_PORT: _der(vm.metadata[TLS_PREFIX + "etcd-server-cert"]),
        APISERVER_PORT: _der(vm.metadata[TLS_PREFIX + "apiserver-cert"]),
    }
    contexts = {ETCD_CLIENT_PORT: etcd_ctx, APISERVER_PORT: api_ctx}
    deadline = time.monotonic() + timeout
    served: dict[int, bytes | None] = {}
    while time.monotonic() < deadline:
        served = {port: _served_der(vm.internal_ip, port, contexts[port]) for port in wanted}
        if served == wanted:
            return
        time.sleep(0.5)
    stale = [str(p) for p in wanted if served.get(p) != wanted[p]]
    raise TimeoutError(
        f"{name} does not serve its new certificate on port(s) {', '.join(stale)} after "
        f"{timeout:.0f} s; its processes were not restarted on the new files (check the VM's logs)"
    )


def _der(pem: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)


def _served_der(ip: str, port: int, ctx) -> bytes | None:
    import socket
    import ssl

    try:
        with socket.create_connection((ip, port), timeout=2) as raw, ctx.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


@checkpoint(retries=0)
def renew_operator_cert(change: Change, step: str) -> str:
    """A new etcd client certificate for the operator in the cluster's block, its key a new version
    of its secret (the one it replaced is destroyed; etcd trusts any certificate of its CA, so
    nothing is delivered). Returns its expiry (public)."""
    from haplane.cloud.pki import issue_operator

    issued: list[CertKey] = []

    def update(block, keys):
        cas = block.to_cas(keys)
        issued[:] = [issue_operator(cas.etcd_ca, lifetime=cas.lifetimes.leaf)]
        return {"operator_cert": issued[0].cert_pem}, {OPERATOR: issued[0].key_pem}

    save_pki(change.cluster, store_for(change.connection), update)
    expiry = issued[0].certificate.not_valid_after_utc.isoformat()
    get_run_logger().info("renewed the operator's etcd client certificate (until %s)", expiry)
    return expiry


@probe(task_run_name="certificate inventory of {cluster}")
def certificate_inventory(cluster: str, zones: list[str], connection: str | None) -> list[dict[str, str]]:
    """Every certificate of the cluster (CAs and operator from its block, each replica's leaves
    from its metadata) and the service-account key's age, as rows without any key material."""
    import datetime as dt

    from blocks.cluster import resolve_gce
    from haplane.cloud.gce import GceZoneUnavailable
    from haplane.cloud.pki import ca_rotation_infos, describe
    from haplane.core.topology import LABEL_CLUSTER
    from haplane.node.spec import TLS_PREFIX

    cas = load_cas(cluster, connection)
    if cas is None:
        raise RuntimeError(
            f"cluster {cluster} has no PKI block {ClusterNames(cluster).pki_block!r}: its certificates are unknown"
        )
    now = dt.datetime.now(dt.UTC)
    infos = [cas.ca.info(), cas.etcd_ca.info(), cas.operator.info(), *ca_rotation_infos(cas)]
    gce, unseen = resolve_gce(connection), []
    for zone in zones:
        try:
            vms = gce.list_instances([zone], labels={LABEL_CLUSTER: cluster})
        except GceZoneUnavailable:  # unknown, not absent: said in the inventory, looked at again next check
            unseen.append(zone)
            continue
        for vm in vms:
            for key, pem in sorted(vm.metadata.items()):
                if key.startswith(TLS_PREFIX) and key.endswith("-cert"):
                    infos.append(describe(pem, f"{vm.name}/{key[len(TLS_PREFIX) : -len('-cert')]}"))
    rows = [
        {
            "certificate": i.role,
            "subject": i.subject,
            "expires": i.not_after.strftime("%Y-%m-%d %H:%M UTC"),
            "days left": f"{(i.not_after - now).total_seconds() / 86400:.1f}",
            "not_after": i.not_after.isoformat(),
        }
        for i in infos
    ]
    rows += [
        {
            "certificate": f"replicas in {zone}",
            "subject": "unknown: the zone's API does not answer",
            "expires": "unknown",
            "days left": "-",
            "not_after": "",
        }
        for zone in unseen
    ]
    sa = cas.service_account
    rows.append(
        {
            "certificate": "service-account key",
            "subject": f"kid {sa.kid}" if sa else "(none yet)",
            "expires": "never (rotated by rotate-certificates)",
            "days left": f"age {sa.age(now).total_seconds() / 86400:.1f} days" if sa else "-",
            "not_after": "",
        }
    )
    return rows


@probe(task_run_name="{step}")
def delete_cluster_pki(cluster: str, step: str = "pki") -> None:
    delete_pki(cluster)


@checkpoint
def submit_configure_replica(
    change: Change,
    step: str,
    zone: str,
    name: str,
    endpoint_ip: str,
    etcd: EtcdSpec,
    apiserver: ApiServerSpec,
    restore: RestoreSpec | None = None,
) -> OpRef | None:
    """Issue the replica's certificates and write them with its etcd and API-server settings into
    its metadata; the VM starts what the metadata describes. With ``restore``, its etcd starts from
    that snapshot (the key that opens it goes into the metadata too, never into a result)."""
    gce = change.gce()
    vm = gce.get_instance(zone, name)
    if vm is None:
        raise RuntimeError(f"VM {name} in {zone} does not exist; cannot configure it")
    # a VM not running as the replica's own account is not ours: no key goes to it (before any key is read)
    check_key_recipient(name, vm.service_accounts, service_account_email(gce.project, name))
    if load_certs(change.cluster) is None:
        raise RuntimeError(f"cluster {change.cluster} has no PKI block {ClusterNames(change.cluster).pki_block!r}")
    ensure_keys(change.cluster, change.connection)  # a cluster from before service-account keys gets one
    cas = load_cas(change.cluster, change.connection)
    certs = issue_replica_certs(
        cas,
        hostname=name,
        internal_ip=vm.internal_ip,
        endpoint_ip=endpoint_ip,
        service_cidr=apiserver.service_cluster_ip_range,
    )
    key = None
    if restore is not None:
        key = snapshot_key(change.cluster, change.connection, create=False)
    spec = _keys_to_secrets(
        change,
        gce,
        vm,
        NodeSpec(etcd=etcd, apiserver=apiserver, tls=node_tls(cas, certs), restore=restore, snapshot_key=key),
    )
    get_run_logger().info(
        "configuring %s: etcd member %s (%s), certificates for %s and %s",
        name,
        etcd.name,
        etcd.initial_cluster_state,
        vm.internal_ip,
        endpoint_ip,
    )
    return gce.set_metadata(zone, name, spec.to_metadata(), rid=change.rid(step))


# ---------------------------------------------------------------- CA rotation (rotate-certificates' plan)


def _save_cas(change: Change, decide: Callable[[ClusterCAs], ClusterCAs | None]) -> ClusterCAs:
    """Save the CAs ``decide`` makes of the ones saved now (re-read under the cluster lock; None:
    nothing to do): certificates in the block, each changed key a new version of its secret (the
    version it replaced destroyed), a CA key no longer kept deleted. Returns the CAs as saved
    (certificates only)."""

    def update(block, keys):
        cas = block.to_cas(keys)
        new = decide(cas)
        if new is None:
            return None
        return ClusterPKI.public_fields(new), changed_keys(keys, cas_keys(new))

    saved = save_pki(change.cluster, store_for(change.connection), update)
    return saved.to_cas({})


def _ca_rows(cas: ClusterCAs) -> dict[str, str]:
    """Public facts of the CAs (what a CA-rotation step returns and logs)."""
    return {
        c.role if where == "" else f"{where}/{c.role}": f"{c.certificate.subject.rfc4514_string()} serial "
        f"{format(c.certificate.serial_number, 'x')[:12]}"
        for where, c in (
            ("", cas.ca),
            ("", cas.etcd_ca),
            ("next", cas.next_ca),
            ("next", cas.next_etcd_ca),
            ("previous", cas.previous_ca),
            ("previous", cas.previous_etcd_ca),
        )
        if c is not None
    }


@checkpoint(retries=0)
def start_ca_rotation(change: Change, step: str) -> dict[str, str]:
    """Phase 1 of a CA rotation: new cluster and etcd CAs in the block, beside the current ones
    (trusted by every replica once delivered, signing nothing yet). A resumed change finds them
    there and keeps them. Returns the CAs' subjects and serials (public)."""
    began: list[bool] = []

    def decide(cas: ClusterCAs) -> ClusterCAs | None:
        if cas.ca_rotation == change.change_id:
            return None
        began.append(True)
        return begin_ca_rotation(cas, change.change_id)  # refuses while another CA rotation is under way

    cas = _save_cas(change, decide)
    if began:
        get_run_logger().info(
            "new cluster and etcd CAs in block %s, trusted beside the current ones until the rotation switches to them",
            ClusterNames(change.cluster).pki_block,
        )
    return _ca_rows(cas)


@checkpoint(retries=0)
def switch_to_new_cas(change: Change, step: str) -> dict[str, str]:
    """Phase 2: the new CAs sign from now on; the old ones (and their keys) stay until the end."""
    switched: list[bool] = []

    def decide(cas: ClusterCAs) -> ClusterCAs | None:
        if cas.ca_rotation != change.change_id:
            raise RuntimeError(
                f"block {ClusterNames(change.cluster).pki_block} has no CA rotation of change "
                f"{change.change_id!r} (it has {cas.ca_rotation!r}); nothing was switched"
            )
        if cas.ca_phase != "trusting":
            return None
        switched.append(True)
        return switch_cas(cas)

    cas = _save_cas(change, decide)
    if switched:
        get_run_logger().info(
            "the new CAs of %s sign from now on; the old ones stay trusted until every replica has new leaves",
            change.cluster,
        )
    return _ca_rows(cas)


@checkpoint(retries=0)
def finish_ca_rotation_task(change: Change, step: str) -> dict[str, str]:
    """The end: no replica trusts the old CAs any more; their certificates and private keys are
    deleted from the block and Secret Manager (the only places they were kept)."""
    finished: list[bool] = []

    def decide(cas: ClusterCAs) -> ClusterCAs | None:
        if cas.ca_rotation is None:
            return None
        if cas.ca_rotation != change.change_id:
            raise RuntimeError(f"the CA rotation under way is change {cas.ca_rotation!r}, not {change.change_id!r}")
        finished.append(True)
        return finish_ca_rotation(cas)

    cas = _save_cas(change, decide)
    if finished:
        get_run_logger().info(
            "the old CAs of %s and their keys are deleted; the CA rotation is complete", change.cluster
        )
    return _ca_rows(cas)


@checkpoint
def submit_deliver_trust(change: Change, step: str, zone: str, name: str, drop_previous: bool) -> OpRef | None:
    """Write the CAs a replica trusts (``ca.crt``, ``etcd-ca.crt``) into its metadata: during a CA
    rotation both CAs; with ``drop_previous``, the new ones alone. The replica restarts etcd and
    its API server on them; its certificates and keys are not touched."""
    cas = load_certs(change.cluster)
    if cas is None:
        raise RuntimeError(f"cluster {change.cluster} has no PKI block {ClusterNames(change.cluster).pki_block!r}")
    tls = {"ca": cas.ca_bundle(drop_previous=drop_previous), "etcd-ca": cas.etcd_ca_bundle(drop_previous=drop_previous)}
    count = tls["etcd-ca"].count("BEGIN CERTIFICATE")
    get_run_logger().info(
        "%s trusts %d etcd CA(s) and %d cluster CA(s) from now", name, count, tls["ca"].count("BEGIN CERTIFICATE")
    )
    return change.gce().set_metadata(zone, name, NodeSpec(None, None, tls).to_metadata(), rid=change.rid(step))


@probe(task_run_name="{step}")
def wait_etcd_trust(change: Change, zone: str, name: str, dropped: bool, step: str, timeout: float = 120.0) -> None:
    """Until the replica's etcd accepts a client certificate of the new etcd CA and, once the old CA
    is ``dropped``, refuses one of the old CA: proof that it runs on the trust bundle just
    delivered. The probe certificates are issued here, in memory, for this check alone. (A resumed
    rotation runs this again in a later phase: "new" is the next CA before the switch and the
    current one after; once the old CA is deleted there is nothing left to refuse.)"""
    import datetime as dt
    import time

    import httpx

    from haplane.cloud.pki import issue
    from haplane.node.spec import client_url

    cas = load_cas(change.cluster, change.connection)
    vm = change.gce().get_instance(zone, name)
    if cas is None or vm is None:
        raise RuntimeError(f"VM {name} in {zone} or the cluster's PKI block is gone")
    new = cas.next_etcd_ca or cas.etcd_ca
    old = cas.etcd_ca if cas.ca_phase == "trusting" else cas.previous_etcd_ca

    def context(ca):
        leaf = issue(
            ca, role="trust-probe", common_name="haplane-trust-probe", client=True, lifetime=dt.timedelta(minutes=10)
        )
        return EtcdTLS(ca_pem=cas.etcd_ca_bundle(), cert_pem=leaf.cert_pem, key_pem=leaf.key_pem).ssl_context()

    def accepts(ctx) -> bool:
        try:
            with httpx.Client(verify=ctx, timeout=2.0) as http:
                return http.post(f"{client_url(vm.internal_ip)}/v3/maintenance/status", json={}).status_code == 200
        except httpx.HTTPError:
            return False

    good = context(new)
    bad = context(old) if dropped and old is not None else None
    deadline, seen = time.monotonic() + timeout, (False, None)
    while time.monotonic() < deadline:
        seen = (accepts(good), accepts(bad) if bad is not None else None)
        if seen[0] and not seen[1]:
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"{name}'s etcd did not take up its new trust bundle within {timeout:.0f} s (a client of "
        f"the new etcd CA accepted: {seen[0]}"
        + (f"; a client of the old etcd CA refused: {not seen[1]}" if bad is not None else "")
        + ")"
    )
