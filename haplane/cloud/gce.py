"""The Compute Engine adapter: the real ``google.cloud.compute_v1`` clients, typed and resumable.

* Every mutating call is a *submit*: it uses the ``*_unary`` method, carries a
  caller-supplied ``request_id`` (GCE ignores a repeat of a completed request)
  and returns an :class:`OpRef` — the operation's name and scope, which a
  checkpoint can keep so that a crashed run resumes the same wait.
* :meth:`Gce.wait` polls with our own ``*OperationsClient`` built with the same
  endpoint (``ExtendedOperation.result()`` would poll the public endpoint, whatever
  endpoint the client was built with: docs/design.md, fact 1).
* Reads return frozen dataclasses that never carry private-key metadata values.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.cloud import compute_v1

from haplane import settings
from haplane.core.scrub import call_carrying_secrets
from haplane.node.spec import public_metadata

REQUEST_NAMESPACE = uuid.UUID("6f1c8a52-4d0e-4b59-9a57-0c8e2f0a7d11")
ACCESS_CONFIG_NAME = "external-nat"
TRANSIENT = (gexc.ServiceUnavailable, gexc.TooManyRequests, gexc.InternalServerError)
LONG_POLL_S = 120.0  # GCE's operations.wait answers after at most 2 minutes, DONE or not


def read_retry() -> retries.Retry:
    """Reads retry transient errors (429, 500, 503) for ``HAPLANE_GCE_READ_RETRY_S`` seconds (30), not
    the client library's 600 s: a zone whose API is down must surface as an error a flow can report,
    not as a ten-minute hang."""
    return retries.Retry(
        initial=0.5,
        maximum=5.0,
        multiplier=2.0,
        timeout=settings.gce_read_retry_s(),
        predicate=retries.if_exception_type(*TRANSIENT),
    )


class GceZoneUnavailable(RuntimeError):
    """A zone's API does not answer: the cluster cannot be observed there, so nothing is changed."""

    def __init__(self, zone: str, cause: Exception) -> None:
        super().__init__(
            f"GCE zone {zone} does not answer ({cause}); the cluster's replicas there cannot be "
            f"seen, so nothing was changed: run this again when the zone's API is back"
        )
        self.zone = zone


NIC = "nic0"


def request_id(*parts: str) -> str:
    """A deterministic GCE requestId for one logical step (``cluster, change, step``)."""
    return str(uuid.uuid5(REQUEST_NAMESPACE, "/".join(parts)))


class GceOperationError(RuntimeError):
    """A GCE operation finished with an error."""

    def __init__(self, op: OpRef, code: str, message: str) -> None:
        super().__init__(f"GCE operation {op.name} ({op.kind} on {op.target or op.location}) failed: {code}: {message}")
        self.op, self.code, self.message = op, code, message


class GceTimeout(TimeoutError):
    """An operation not DONE within the wait's bound. It was sent once and may still finish: a run of the
    same change waits on it again (its checkpoint holds the operation's name), it does not send it again."""

    def __init__(self, op: OpRef, waited: float, last_error: str | None = None, bound: str = "") -> None:
        seen = f"; its status could not be read (last poll: {last_error})" if last_error else ""
        super().__init__(
            f"GCE operation {op.name} ({op.kind} on {op.target or op.location}) still not DONE "
            f"after {waited:.0f} s{bound}{seen}. It was not sent again: run the flow again with the "
            f"same change_id to resume waiting on this operation"
        )
        self.op, self.waited, self.last_error = op, waited, last_error


@dataclass(frozen=True)
class OpRef:
    """A submitted operation: enough to wait for it later, from another process."""

    name: str
    scope: Literal["zone", "region", "global"]
    location: str | None = None
    kind: str = ""
    target: str = ""
    done: bool = False


@dataclass(frozen=True)
class Instance:
    name: str
    zone: str
    status: str
    internal_ip: str
    external_ip: str | None
    labels: dict[str, str]
    metadata: dict[str, str]  # private keys redacted
    metadata_fingerprint: str
    self_link: str
    id: str
    service_accounts: tuple[str, ...] = ()  # emails of the VM's service accounts


@dataclass(frozen=True)
class Address:
    name: str
    region: str
    address: str
    status: str
    users: tuple[str, ...]
    self_link: str


@dataclass(frozen=True)
class TargetPool:
    name: str
    region: str
    instances: tuple[str, ...]
    health_checks: tuple[str, ...]
    self_link: str


@dataclass(frozen=True)
class ForwardingRule:
    name: str
    region: str
    ip: str
    target: str
    self_link: str


@dataclass(frozen=True)
class Firewall:
    name: str
    source_ranges: tuple[str, ...]
    source_tags: tuple[str, ...]
    target_tags: tuple[str, ...]
    ports: tuple[str, ...]
    self_link: str


def _status_name(value: Any, enum: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def token_credentials(token: str) -> Any:
    """Credentials that send ``token`` as the bearer token: the emulator's workers' token
    (``HAPLANE_GCE_TOKEN``, or a connection block's ``token``), which its Secret Manager requires."""
    from google.oauth2.credentials import Credentials

    return Credentials(token=token.strip())


@dataclass
class Gce:
    """Compute Engine for one project, real or emulated (``endpoint``)."""

    project: str
    endpoint: str | None = None
    credentials: Any = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, project: str | None = None, endpoint: str | None = None, credentials: Any = None) -> Gce:
        """Endpoint and project from arguments, else ``HAPLANE_GCE_ENDPOINT`` / ``HAPLANE_PROJECT``.

        No endpoint means real GCE with the given credentials or application default credentials.
        """
        project = project or settings.project()
        if not project:
            raise ValueError("no GCE project: pass project=... or set HAPLANE_PROJECT")
        endpoint = endpoint or settings.gce_endpoint()
        if credentials is None and endpoint and settings.gce_token():
            credentials = token_credentials(settings.gce_token())
        return cls(project=project, endpoint=endpoint, credentials=credentials)

    def _client(self, cls: type) -> Any:
        name = cls.__name__
        if name not in self._clients:
            kwargs: dict[str, Any] = {}
            if self.endpoint:
                from google.auth.credentials import AnonymousCredentials

                kwargs["client_options"] = {"api_endpoint": self.endpoint}
                kwargs["credentials"] = self.credentials or AnonymousCredentials()
            elif self.credentials is not None:
                kwargs["credentials"] = self.credentials
            self._clients[name] = cls(**kwargs)
        return self._clients[name]

    @property
    def instances(self) -> compute_v1.InstancesClient:
        return self._client(compute_v1.InstancesClient)

    @property
    def addresses(self) -> compute_v1.AddressesClient:
        return self._client(compute_v1.AddressesClient)

    @property
    def target_pools(self) -> compute_v1.TargetPoolsClient:
        return self._client(compute_v1.TargetPoolsClient)

    @property
    def forwarding_rules(self) -> compute_v1.ForwardingRulesClient:
        return self._client(compute_v1.ForwardingRulesClient)

    @property
    def firewalls(self) -> compute_v1.FirewallsClient:
        return self._client(compute_v1.FirewallsClient)

    def _legacy(self, method: str, path: str, body: dict | None = None, rid: str | None = None) -> dict | None:
        """Plain REST for ``global/httpHealthChecks`` (the legacy checks target pools take), which
        google-cloud-compute no longer wraps. ``None`` for a 404 on GET."""
        if "legacy" not in self._clients:
            if self.endpoint:
                import requests

                self._clients["legacy"] = requests.Session()
            else:
                import google.auth
                from google.auth.transport.requests import AuthorizedSession

                creds = self.credentials or google.auth.default(scopes=["https://www.googleapis.com/auth/compute"])[0]
                self._clients["legacy"] = AuthorizedSession(creds)
        base = (self.endpoint or "https://compute.googleapis.com").rstrip("/")
        url = f"{base}/compute/v1/projects/{self.project}/{path}"
        resp = self._clients["legacy"].request(
            method, url, json=body, params={"requestId": rid} if rid else None, timeout=60
        )
        if resp.status_code == 404 and method == "GET":
            return None
        if resp.status_code >= 400:
            raise gexc.from_http_response(resp)
        return resp.json()

    def _legacy_op(self, data: dict) -> OpRef:
        return OpRef(
            name=data["name"],
            scope="global",
            location=None,
            kind=data.get("operationType", ""),
            target=data.get("targetLink", "").rsplit("/", 1)[-1],
            done=data.get("status") == "DONE",
        )

    # --- operations -------------------------------------------------------
    def _ref(self, op: compute_v1.Operation, scope: str, location: str | None) -> OpRef:
        return OpRef(
            name=op.name,
            scope=scope,
            location=location,
            kind=op.operation_type,
            target=op.target_link.rsplit("/", 1)[-1] if op.target_link else "",
            done=_status_name(op.status, compute_v1.Operation.Status) == "DONE",
        )

    def _op_get(self, ref: OpRef, wait: bool) -> compute_v1.Operation:
        """One poll. No client-side retry (the library's default retries a 503 for 600 s, which would
        outlast any bound :meth:`wait` sets): :meth:`wait` itself polls through transient errors."""
        verb = "wait" if wait else "get"
        # a long poll is answered within LONG_POLL_S; a connection that stays silent beyond it is dead
        opts = {"retry": None, "timeout": LONG_POLL_S + 30 if wait else 30.0}
        if ref.scope == "zone":
            client = self._client(compute_v1.ZoneOperationsClient)
            return getattr(client, verb)(project=self.project, zone=ref.location, operation=ref.name, **opts)
        if ref.scope == "region":
            client = self._client(compute_v1.RegionOperationsClient)
            return getattr(client, verb)(project=self.project, region=ref.location, operation=ref.name, **opts)
        client = self._client(compute_v1.GlobalOperationsClient)
        return getattr(client, verb)(project=self.project, operation=ref.name, **opts)

    def wait(self, ref: OpRef, timeout: float = 600.0, on_progress: Any = None, poll_s: float | None = None) -> OpRef:
        """Wait until the operation is DONE; raise :class:`GceOperationError` if it failed, and
        :class:`GceTimeout` once ``timeout`` seconds have passed without it being DONE.

        Long-polls with ``operations.wait`` (which GCE answers after at most ``LONG_POLL_S``) while
        more than that is left, then polls ``operations.get`` every second, so the bound holds; with
        ``poll_s``, polls ``operations.get`` that often and calls ``on_progress(op, seconds_waited)``
        after each answer (for progress reports). Transient API errors (a zone's API down) are polled
        through until the bound."""
        start = time.monotonic()
        last_error: str | None = None
        while True:
            left = timeout - (time.monotonic() - start)
            long_poll = poll_s is None and left > LONG_POLL_S
            try:
                op = self._op_get(ref, wait=long_poll)
                last_error = None
            except (*TRANSIENT, requests.ConnectionError, requests.Timeout) as exc:
                last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                op = None
            if op is not None:
                if _status_name(op.status, compute_v1.Operation.Status) == "DONE":
                    if op.error and op.error.errors:
                        err = op.error.errors[0]
                        raise GceOperationError(ref, err.code, err.message)
                    return OpRef(**{**ref.__dict__, "done": True})
                if on_progress is not None:
                    on_progress(op, time.monotonic() - start)
            waited = time.monotonic() - start
            if waited >= timeout:
                raise GceTimeout(ref, waited, last_error)
            if op is None or not long_poll:
                time.sleep(max(0.0, min(poll_s or 1.0, timeout - waited)))

    # --- reads ------------------------------------------------------------
    @staticmethod
    def _missing(call: Any, **kwargs: Any) -> Any:
        try:
            return call(retry=read_retry(), **kwargs)
        except gexc.NotFound:
            return None

    def _instance(self, raw: compute_v1.Instance, zone: str) -> Instance:
        nic = raw.network_interfaces[0] if raw.network_interfaces else None
        nat = nic.access_configs[0].nat_i_p if nic and nic.access_configs else None
        items = {i.key: i.value for i in raw.metadata.items} if raw.metadata else {}
        return Instance(
            name=raw.name,
            zone=zone,
            status=_status_name(raw.status, compute_v1.Instance.Status),
            internal_ip=nic.network_i_p if nic else "",
            external_ip=nat or None,
            labels=dict(raw.labels),
            metadata=public_metadata(items),
            metadata_fingerprint=raw.metadata.fingerprint if raw.metadata else "",
            self_link=raw.self_link,
            id=str(raw.id),
            service_accounts=tuple(sa.email for sa in raw.service_accounts),
        )

    def get_instance(self, zone: str, name: str) -> Instance | None:
        raw = self._missing(self.instances.get, project=self.project, zone=zone, instance=name)
        return None if raw is None else self._instance(raw, zone)

    def list_instances(self, zones: list[str], labels: dict[str, str] | None = None) -> list[Instance]:
        flt = " AND ".join(f'labels.{k} = "{v}"' for k, v in sorted((labels or {}).items())) or None
        out: list[Instance] = []
        for zone in zones:
            req = compute_v1.ListInstancesRequest(project=self.project, zone=zone, filter=flt)
            try:
                out.extend(self._instance(raw, zone) for raw in self.instances.list(request=req, retry=read_retry()))
            except (gexc.RetryError, *TRANSIENT) as exc:
                raise GceZoneUnavailable(zone, exc) from exc
        return sorted(out, key=lambda i: (i.zone, i.name))

    def list_labelled_instances(self, label: str, timeout: float = 10.0) -> list[Instance]:
        """Every VM of the project that carries ``label``, in every zone: ONE ``instances.aggregatedList``
        (a page per 500 VMs), not retried (the watcher looks again next period). A zone that does not
        answer fails the whole list (this client library cannot ask for a partial answer)."""
        req = compute_v1.AggregatedListInstancesRequest(project=self.project, filter=f"labels.{label}:*")
        out: list[Instance] = []
        for scope, scoped in self.instances.aggregated_list(request=req, retry=None, timeout=timeout):
            zone = scope.rsplit("/", 1)[-1]
            out.extend(self._instance(raw, zone) for raw in scoped.instances)
        return sorted(out, key=lambda i: (i.zone, i.name))

    def list_zones(self, region: str) -> list[str]:
        raw = self._client(compute_v1.RegionsClient).get(project=self.project, region=region, retry=read_retry())
        return sorted(z.rsplit("/", 1)[-1] for z in raw.zones)

    def zone_exists(self, zone: str) -> bool:
        client = self._client(compute_v1.ZonesClient)
        return self._missing(client.get, project=self.project, zone=zone) is not None

    def get_address(self, region: str, name: str) -> Address | None:
        raw = self._missing(self.addresses.get, project=self.project, region=region, address=name)
        if raw is None:
            return None
        return Address(
            name=raw.name,
            region=region,
            address=raw.address,
            status=_status_name(raw.status, compute_v1.Address.Status),
            users=tuple(raw.users),
            self_link=raw.self_link,
        )

    def get_target_pool(self, region: str, name: str) -> TargetPool | None:
        raw = self._missing(self.target_pools.get, project=self.project, region=region, target_pool=name)
        if raw is None:
            return None
        return TargetPool(
            name=raw.name,
            region=region,
            instances=tuple(raw.instances),
            health_checks=tuple(raw.health_checks),
            self_link=raw.self_link,
        )

    def get_forwarding_rule(self, region: str, name: str) -> ForwardingRule | None:
        raw = self._missing(self.forwarding_rules.get, project=self.project, region=region, forwarding_rule=name)
        if raw is None:
            return None
        return ForwardingRule(
            name=raw.name, region=region, ip=raw.I_p_address, target=raw.target, self_link=raw.self_link
        )

    def get_firewall(self, name: str) -> Firewall | None:
        raw = self._missing(self.firewalls.get, project=self.project, firewall=name)
        if raw is None:
            return None
        ports = tuple(p for rule in raw.allowed for p in rule.ports)
        return Firewall(
            name=raw.name,
            source_ranges=tuple(raw.source_ranges),
            source_tags=tuple(raw.source_tags),
            target_tags=tuple(raw.target_tags),
            ports=ports,
            self_link=raw.self_link,
        )

    def description_of(self, kind: str, name: str, region: str | None = None) -> str | None:
        """The description of a named resource (``address``, ``target_pool``, ``forwarding_rule``
        in ``region``; ``firewall``, ``health_check`` global); None when it does not exist."""
        if kind == "health_check":
            data = self._legacy("GET", f"global/httpHealthChecks/{name}")
            return None if data is None else data.get("description", "")
        if kind == "firewall":
            raw = self._missing(self.firewalls.get, project=self.project, firewall=name)
        elif kind == "address":
            raw = self._missing(self.addresses.get, project=self.project, region=region, address=name)
        elif kind == "target_pool":
            raw = self._missing(self.target_pools.get, project=self.project, region=region, target_pool=name)
        elif kind == "forwarding_rule":
            raw = self._missing(self.forwarding_rules.get, project=self.project, region=region, forwarding_rule=name)
        else:
            raise ValueError(f"unknown resource kind {kind!r}")
        return None if raw is None else raw.description

    def health_check_exists(self, name: str) -> bool:
        return self._legacy("GET", f"global/httpHealthChecks/{name}") is not None

    def instance_link(self, zone: str, name: str) -> str:
        base = self.endpoint.rstrip("/") if self.endpoint else "https://www.googleapis.com"
        return f"{base}/compute/v1/projects/{self.project}/zones/{zone}/instances/{name}"

    # --- submits: instances -----------------------------------------------
    def insert_instance(
        self,
        zone: str,
        name: str,
        *,
        machine_type: str,
        labels: dict[str, str],
        metadata: dict[str, str],
        tags: list[str],
        external_ip: bool,
        rid: str,
        nat_ip: str | None = None,
        image: str = "projects/debian-cloud/global/images/family/debian-12",
        service_account: str | None = None,
    ) -> OpRef:
        nic = compute_v1.NetworkInterface(network=f"projects/{self.project}/global/networks/default")
        if external_ip:
            access = compute_v1.AccessConfig(name=ACCESS_CONFIG_NAME, type_="ONE_TO_ONE_NAT")
            if nat_ip:
                access.nat_i_p = nat_ip
            nic.access_configs = [access]
        body = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{zone}/machineTypes/{machine_type}",
            labels=labels,
            tags=compute_v1.Tags(items=tags),
            metadata=compute_v1.Metadata(items=[compute_v1.Items(key=k, value=v) for k, v in metadata.items()]),
            network_interfaces=[nic],
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(source_image=image),
                )
            ],
        )
        if service_account:  # the VM's identity: what reads its keys from Secret Manager
            body.service_accounts = [
                compute_v1.ServiceAccount(
                    email=service_account, scopes=["https://www.googleapis.com/auth/cloud-platform"]
                )
            ]
        req = compute_v1.InsertInstanceRequest(project=self.project, zone=zone, instance_resource=body, request_id=rid)
        return self._ref(self.instances.insert_unary(request=req), "zone", zone)

    def delete_instance(self, zone: str, name: str, *, rid: str) -> OpRef:
        req = compute_v1.DeleteInstanceRequest(project=self.project, zone=zone, instance=name, request_id=rid)
        return self._ref(self.instances.delete_unary(request=req), "zone", zone)

    def set_metadata(self, zone: str, name: str, items: dict[str, str], *, rid: str) -> OpRef:
        """Merge ``items`` into the instance's metadata (GCE replaces the whole set; we read it first)."""
        raw = self.instances.get(project=self.project, zone=zone, instance=name, retry=read_retry())
        merged = {i.key: i.value for i in raw.metadata.items}
        merged.update(items)
        body = compute_v1.Metadata(
            fingerprint=raw.metadata.fingerprint, items=[compute_v1.Items(key=k, value=v) for k, v in merged.items()]
        )
        req = compute_v1.SetMetadataInstanceRequest(
            project=self.project, zone=zone, instance=name, metadata_resource=body, request_id=rid
        )
        # the body holds private keys: an error must not carry the request or response onwards
        op = call_carrying_secrets(
            f"setMetadata of instance {name} in {zone}", merged.values(), self.instances.set_metadata_unary, request=req
        )
        return self._ref(op, "zone", zone)

    def add_access_config(self, zone: str, name: str, *, nat_ip: str | None, rid: str) -> OpRef:
        body = compute_v1.AccessConfig(name=ACCESS_CONFIG_NAME, type_="ONE_TO_ONE_NAT")
        if nat_ip:
            body.nat_i_p = nat_ip
        req = compute_v1.AddAccessConfigInstanceRequest(
            project=self.project,
            zone=zone,
            instance=name,
            network_interface=NIC,
            access_config_resource=body,
            request_id=rid,
        )
        return self._ref(self.instances.add_access_config_unary(request=req), "zone", zone)

    def delete_access_config(self, zone: str, name: str, *, rid: str) -> OpRef:
        req = compute_v1.DeleteAccessConfigInstanceRequest(
            project=self.project,
            zone=zone,
            instance=name,
            network_interface=NIC,
            access_config=ACCESS_CONFIG_NAME,
            request_id=rid,
        )
        return self._ref(self.instances.delete_access_config_unary(request=req), "zone", zone)

    # --- submits: network -------------------------------------------------
    def insert_address(self, region: str, name: str, *, address: str | None, rid: str, description: str = "") -> OpRef:
        body = compute_v1.Address(name=name, description=description)
        if address:
            body.address = address
        req = compute_v1.InsertAddressRequest(
            project=self.project, region=region, address_resource=body, request_id=rid
        )
        return self._ref(self.addresses.insert_unary(request=req), "region", region)

    def delete_address(self, region: str, name: str, *, rid: str) -> OpRef:
        req = compute_v1.DeleteAddressRequest(project=self.project, region=region, address=name, request_id=rid)
        return self._ref(self.addresses.delete_unary(request=req), "region", region)

    def insert_firewall(
        self,
        name: str,
        *,
        ports: list[str],
        source_ranges: list[str],
        source_tags: list[str],
        target_tags: list[str],
        description: str,
        rid: str,
    ) -> OpRef:
        body = compute_v1.Firewall(
            name=name,
            network=f"projects/{self.project}/global/networks/default",
            direction="INGRESS",
            description=description,
            allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=ports)],
            source_ranges=source_ranges,
            source_tags=source_tags,
            target_tags=target_tags,
        )
        req = compute_v1.InsertFirewallRequest(project=self.project, firewall_resource=body, request_id=rid)
        return self._ref(self.firewalls.insert_unary(request=req), "global", None)

    def delete_firewall(self, name: str, *, rid: str) -> OpRef:
        req = compute_v1.DeleteFirewallRequest(project=self.project, firewall=name, request_id=rid)
        return self._ref(self.firewalls.delete_unary(request=req), "global", None)

    def insert_health_check(self, name: str, *, port: int, path: str, rid: str, description: str = "") -> OpRef:
        body = {
            "name": name,
            "port": port,
            "requestPath": path,
            "checkIntervalSec": 2,
            "timeoutSec": 1,
            "description": description,
        }
        return self._legacy_op(self._legacy("POST", "global/httpHealthChecks", body, rid))

    def delete_health_check(self, name: str, *, rid: str) -> OpRef:
        return self._legacy_op(self._legacy("DELETE", f"global/httpHealthChecks/{name}", rid=rid))

    def insert_target_pool(
        self, region: str, name: str, *, instances: list[str], health_check: str, rid: str, description: str = ""
    ) -> OpRef:
        hc = f"projects/{self.project}/global/httpHealthChecks/{health_check}"
        body = compute_v1.TargetPool(name=name, instances=instances, health_checks=[hc], description=description)
        req = compute_v1.InsertTargetPoolRequest(
            project=self.project, region=region, target_pool_resource=body, request_id=rid
        )
        return self._ref(self.target_pools.insert_unary(request=req), "region", region)

    def add_pool_instances(self, region: str, pool: str, instances: list[str], *, rid: str) -> OpRef:
        body = compute_v1.TargetPoolsAddInstanceRequest(
            instances=[compute_v1.InstanceReference(instance=i) for i in instances]
        )
        req = compute_v1.AddInstanceTargetPoolRequest(
            project=self.project,
            region=region,
            target_pool=pool,
            target_pools_add_instance_request_resource=body,
            request_id=rid,
        )
        return self._ref(self.target_pools.add_instance_unary(request=req), "region", region)

    def remove_pool_instances(self, region: str, pool: str, instances: list[str], *, rid: str) -> OpRef:
        body = compute_v1.TargetPoolsRemoveInstanceRequest(
            instances=[compute_v1.InstanceReference(instance=i) for i in instances]
        )
        req = compute_v1.RemoveInstanceTargetPoolRequest(
            project=self.project,
            region=region,
            target_pool=pool,
            target_pools_remove_instance_request_resource=body,
            request_id=rid,
        )
        return self._ref(self.target_pools.remove_instance_unary(request=req), "region", region)

    def delete_target_pool(self, region: str, name: str, *, rid: str) -> OpRef:
        req = compute_v1.DeleteTargetPoolRequest(project=self.project, region=region, target_pool=name, request_id=rid)
        return self._ref(self.target_pools.delete_unary(request=req), "region", region)

    def insert_forwarding_rule(
        self, region: str, name: str, *, ip: str, pool: str, port: int, rid: str, description: str = ""
    ) -> OpRef:
        body = compute_v1.ForwardingRule(
            name=name,
            description=description,
            I_p_address=ip,
            I_p_protocol="TCP",
            port_range=f"{port}-{port}",
            target=f"projects/{self.project}/regions/{region}/targetPools/{pool}",
            load_balancing_scheme="EXTERNAL",
        )
        req = compute_v1.InsertForwardingRuleRequest(
            project=self.project, region=region, forwarding_rule_resource=body, request_id=rid
        )
        return self._ref(self.forwarding_rules.insert_unary(request=req), "region", region)

    def delete_forwarding_rule(self, region: str, name: str, *, rid: str) -> OpRef:
        req = compute_v1.DeleteForwardingRuleRequest(
            project=self.project, region=region, forwarding_rule=name, request_id=rid
        )
        return self._ref(self.forwarding_rules.delete_unary(request=req), "region", region)
