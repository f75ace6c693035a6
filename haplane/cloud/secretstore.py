"""Replicas' private keys in Google Secret Manager: one secret per replica and key.

A replica's private keys (etcd peer and server, API server, API server's etcd
client, the service-account signing key) never go into instance metadata,
which anyone with ``compute.instances.get`` can read. Each goes into its own
secret ``<replica>-<key>``, labelled with the cluster and replica, whose IAM
policy grants ``roles/secretmanager.secretAccessor`` to that replica's VM service
account only. Instance metadata carries the *names of the versions* to read
(``haplane-secrets``, see :mod:`haplane.node.spec`); the VM reads them with its own
identity (the metadata server's token) at boot and whenever that key changes.

The operator (the flows) talks to Secret Manager with the same endpoint and
credentials as to Compute Engine: the real ``google-cloud-secret-manager``
client, REST transport.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

ACCESSOR = "roles/secretmanager.secretAccessor"
LABEL_CLUSTER = "haplane-cluster"
LABEL_REPLICA = "haplane-replica"


def secret_id(replica: str, suffix: str) -> str:
    """The secret holding one private key of one replica."""
    return f"{replica}-{suffix}"


def service_account_email(project: str, replica: str) -> str:
    """The VM service account of a replica (its own, so IAM can tell replicas apart).

    Account ids are 6-30 characters: a replica name that fits is used as is, a longer
    one is shortened with a hash of the whole name."""
    account = replica if 6 <= len(replica) <= 30 else f"hp-{hashlib.sha256(replica.encode()).hexdigest()[:20]}"
    return f"{account}@{project}.iam.gserviceaccount.com"


def _label(value: str) -> str:
    return value.lower()[:63]


class SecretUnreadable(RuntimeError):
    """A secret could not be read; the message names it and what to do (and holds no secret)."""


@dataclass
class SecretStore:
    """Secret Manager for one project, real or emulated (``endpoint``)."""

    project: str
    endpoint: str | None = None
    credentials: Any = None
    _client: Any = field(default=None, repr=False)

    @classmethod
    def for_gce(cls, gce: Any) -> SecretStore:
        return cls(project=gce.project, endpoint=gce.endpoint, credentials=gce.credentials)

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import secretmanager_v1

            kwargs: dict[str, Any] = {"transport": "rest"}
            if self.endpoint:
                from google.auth.credentials import AnonymousCredentials

                kwargs["client_options"] = {"api_endpoint": self.endpoint}
                kwargs["credentials"] = self.credentials or AnonymousCredentials()
            elif self.credentials is not None:
                kwargs["credentials"] = self.credentials
            self._client = secretmanager_v1.SecretManagerServiceClient(**kwargs)
        return self._client

    def name(self, sid: str) -> str:
        return f"projects/{self.project}/secrets/{sid}"

    def put(self, cluster: str, replica: str, suffix: str, value: str, reader: str) -> str:
        """Store ``value`` as the newest version of the replica's secret, readable by ``reader`` (a
        service-account email) alone. Idempotent: the secret and its policy are made once. Returns
        the version's resource name (no secret in it)."""
        return self.add(
            secret_id(replica, suffix), {LABEL_CLUSTER: _label(cluster), LABEL_REPLICA: _label(replica)}, value, reader
        )

    def add(self, sid: str, labels: dict[str, str], value: str, reader: str) -> str:
        """Add ``value`` as the newest version of secret ``sid`` (made once, with ``labels``), whose
        policy lets ``reader`` (a service-account email) alone read it. Returns the version's name."""
        from google.api_core.exceptions import Conflict
        from google.iam.v1 import policy_pb2

        try:
            self.client.create_secret(
                request={
                    "parent": f"projects/{self.project}",
                    "secret_id": sid,
                    "secret": {"replication": {"automatic": {}}, "labels": labels},
                }
            )
        except Conflict:  # ALREADY_EXISTS: made by an earlier attempt
            pass
        member = f"serviceAccount:{reader}"
        policy = self.client.get_iam_policy(request={"resource": self.name(sid)})
        if [(b.role, list(b.members)) for b in policy.bindings] != [(ACCESSOR, [member])]:
            self.client.set_iam_policy(
                request={
                    "resource": self.name(sid),
                    "policy": policy_pb2.Policy(
                        bindings=[policy_pb2.Binding(role=ACCESSOR, members=[member])], etag=policy.etag
                    ),
                }
            )
        from haplane.core.scrub import call_carrying_secrets

        # the request carries the key: an error must not carry it onwards (see haplane.core.scrub)
        version = call_carrying_secrets(
            f"adding a version to secret {sid}",
            [value],
            self.client.add_secret_version,
            request={"parent": self.name(sid), "payload": {"data": value.encode()}},
        )
        return version.name

    def read(self, version: str) -> str:
        """The payload of a secret version; :class:`SecretUnreadable` (naming the secret and what to do)
        when it is missing, destroyed, not readable by this caller, or the credentials are refused."""
        from google.api_core import exceptions as core
        from google.auth.exceptions import GoogleAuthError

        secret = version.split("/versions/")[0]
        try:
            return self.client.access_secret_version(request={"name": version}).payload.data.decode()
        except core.NotFound:
            problem = (
                f"secret {secret} (version {version.rsplit('/', 1)[-1]}) does not exist in project "
                f"{self.project}: it was deleted, or this is not the cluster's project"
            )
        except core.Forbidden:
            problem = (
                f"the workers' account may not read secret {secret}: its IAM policy must grant "
                f"{ACCESSOR} to the workers' service account"
            )
        except (core.FailedPrecondition, core.BadRequest):
            problem = f"version {version} of secret {secret} is destroyed or disabled"
        except (core.Unauthorized, GoogleAuthError):
            problem = (
                f"Secret Manager refused the workers' credentials reading {secret}: give the workers a "
                "valid credential (real GCE: application default credentials or the connection's GCP "
                "credentials; the emulator: HAPLANE_GCE_TOKEN or the connection block's token)"
            )
        raise SecretUnreadable(problem)

    def destroy_versions(self, sid: str, keep: str | None = None) -> list[str]:
        """Destroy every enabled version of secret ``sid`` but ``keep`` (the one in use): what a
        rotation replaced, or what a killed run added and never used. Returns the destroyed names."""
        from google.api_core.exceptions import NotFound

        try:
            versions = list(self.client.list_secret_versions(request={"parent": self.name(sid)}))
        except NotFound:
            return []
        gone = []
        for v in versions:
            if v.name != keep and v.state.name == "ENABLED":
                self.client.destroy_secret_version(request={"name": v.name})
                gone.append(v.name)
        return gone

    def workers_account(self) -> str:
        """The workers' service account (the one reader of the cluster's own keys):
        ``HAPLANE_WORKERS_ACCOUNT``, else the credentials' account, else (the emulator) the token's."""
        from haplane import settings

        explicit = settings.workers_account()
        if explicit:
            return explicit
        email = getattr(self.credentials, "service_account_email", None)
        if isinstance(email, str) and "@" in email:
            return email
        token = getattr(self.credentials, "token", None)
        if self.endpoint and token:
            import httpx

            reply = httpx.get(
                self.endpoint.rstrip("/") + "/oauth2/v3/tokeninfo", params={"access_token": token}, timeout=10
            )
            if reply.status_code == 200:
                return reply.json()["email"]
        raise ValueError(
            "cannot tell the workers' service account, which alone may read the cluster's keys: set "
            "HAPLANE_WORKERS_ACCOUNT to its email (or give the connection service-account credentials)"
        )

    def list(self, cluster: str, replica: str | None = None) -> list[str]:
        """Names of the cluster's (or one replica's) secrets."""
        flt = f"labels.{LABEL_CLUSTER}={_label(cluster)}"
        if replica:
            flt += f" AND labels.{LABEL_REPLICA}={_label(replica)}"
        return [s.name for s in self.client.list_secrets(request={"parent": f"projects/{self.project}", "filter": flt})]

    def delete(self, name: str) -> bool:
        """Delete a secret (every version is destroyed with it). False if it was already gone."""
        from google.api_core.exceptions import NotFound

        try:
            self.client.delete_secret(request={"name": name})
        except NotFound:
            return False
        return True


def read_as_vm(endpoint: str | None, token: str, version: str) -> str:
    """Read a secret version with a VM's token (the real client, REST transport)."""
    from google.cloud import secretmanager_v1
    from google.oauth2.credentials import Credentials

    kwargs: dict[str, Any] = {"transport": "rest", "credentials": Credentials(token=token)}
    if endpoint:
        kwargs["client_options"] = {"api_endpoint": endpoint}
    client = secretmanager_v1.SecretManagerServiceClient(**kwargs)
    data = client.access_secret_version(request={"name": version}).payload.data
    return data.decode()
