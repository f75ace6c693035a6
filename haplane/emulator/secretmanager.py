"""The small subset of Google Secret Manager (REST v1) that haplane uses, and the metadata server's token.

Served by the emulator beside the Compute API, for the real
``google-cloud-secret-manager`` client with its REST transport::

    SecretManagerServiceClient(transport="rest", credentials=...,
                               client_options={"api_endpoint": emulator.url})

Methods: ``secrets.create/get/delete/list``, ``secrets.addVersion``,
``versions.list/access/destroy`` (``latest`` resolves to the newest enabled version),
``secrets.getIamPolicy/setIamPolicy``.

Who is calling, from the request's ``Authorization: Bearer T`` alone (never from its source address):

- ``T`` is the **workers' token** (:attr:`SecretManager.workers_token`, the credential the
  workers hold, like a service-account key): the caller is the workers' service account
  (:data:`WORKERS_ACCOUNT`). It manages secrets in every project (create, list, get, delete,
  add and destroy versions, get and set IAM policies: ``roles/secretmanager.secretVersionManager``
  plus IAM admin), and *accesses* a version only where the secret's policy grants it
  ``roles/secretmanager.secretAccessor``;
- ``T`` was issued to a VM by its metadata server: the caller is that VM's **service account**; it
  may only *access* versions of secrets whose IAM policy grants it the accessor role (everything
  else: 403, as for a VM service account without project roles);
- no ``Authorization``, or a token nobody issued (or an expired one): 401 ``UNAUTHENTICATED``.

The metadata server answers each VM for itself through the VM's runtime (the hypervisor side,
:meth:`SecretManager.token_for_instance`), in both network modes. Its HTTP path
``/computeMetadata/v1/...`` refuses: on loopback any process of the host could send from a VM's
address, so the source address proves nothing.

``GET /oauth2/v3/tokeninfo?access_token=T`` answers the email of the token's account, as
Google's token-info endpoint does (haplane asks it which account its workers are).
"""

from __future__ import annotations

import base64
import re
import secrets as pysecrets
import threading
import time

from haplane.emulator.errors import ApiError
from haplane.emulator.store import Store, now_rfc3339

ACCESSOR = "roles/secretmanager.secretAccessor"
TOKEN_TTL_S = 3600
WORKERS_ACCOUNT = "haplane-workers@haplane-emulator.iam.gserviceaccount.com"
_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_P = r"projects/(?P<project>[^/]+)"
_S = _P + r"/secrets/(?P<secret>[^/:]+)"
_V = _S + r"/versions/(?P<version>[^/:]+)"
ROUTES = [
    ("POST", re.compile(f"^/v1/{_P}/secrets$"), "create"),
    ("GET", re.compile(f"^/v1/{_P}/secrets$"), "list"),
    ("GET", re.compile(f"^/v1/{_S}$"), "get"),
    ("DELETE", re.compile(f"^/v1/{_S}$"), "delete"),
    ("POST", re.compile(f"^/v1/{_S}:addVersion$"), "add_version"),
    ("GET", re.compile(f"^/v1/{_S}/versions$"), "list_versions"),
    ("GET", re.compile(f"^/v1/{_V}:access$"), "access"),
    ("POST", re.compile(f"^/v1/{_V}:destroy$"), "destroy"),
    ("GET", re.compile(f"^/v1/{_S}:getIamPolicy$"), "get_iam"),
    ("POST", re.compile(f"^/v1/{_S}:getIamPolicy$"), "get_iam"),
    ("POST", re.compile(f"^/v1/{_S}:setIamPolicy$"), "set_iam"),
]
TOKENINFO_PATH = "/oauth2/v3/tokeninfo"


class RpcError(ApiError):
    """Secret Manager's error shape: ``{"error": {"code", "message", "status"}}``."""

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.reason}}


def _error(code: int, status: str, message: str) -> ApiError:
    return RpcError(code, status, message)


def _not_found(name: str) -> ApiError:
    return _error(404, "NOT_FOUND", f"Secret [{name}] not found or has no versions.")


class SecretManager:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._secrets: dict[str, dict] = {}  # name -> secret (with "_versions", "_policy")
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (service account email, expiry)
        self.workers_account = WORKERS_ACCOUNT
        # the workers' credential: no expiry, like a service-account key (see the module's docstring)
        self.workers_token = "ya29.emulated-workers-" + pysecrets.token_urlsafe(32)

    # --- the metadata server ------------------------------------------------------------------
    @staticmethod
    def metadata(path: str) -> tuple[int, dict | str]:
        raise _error(
            403,
            "FORBIDDEN",
            f"the emulator's metadata server does not answer {path} over HTTP: a "
            "request's source address does not prove which VM sent it. A VM gets its "
            "token through its runtime (SecretManager.token_for_instance)",
        )

    def tokeninfo(self, query: dict[str, str]) -> tuple[int, dict]:
        email = self._account_of(query.get("access_token", ""))
        if email is None:
            raise _error(400, "INVALID_ARGUMENT", "invalid_token")
        return 200, {"email": email, "email_verified": "true"}

    def token_for_instance(self, internal_ip: str) -> str:
        """What the metadata server answers the running VM with this internal address: a token for its
        service account. Asked in-process by the emulator's VM runtime (the hypervisor side, which
        knows which VM it runs), never over the network."""
        email = self._instance_service_account(internal_ip)
        token = "ya29.emulated-" + pysecrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (email, time.time() + TOKEN_TTL_S)
        return token

    def _instance_service_account(self, client_ip: str) -> str:
        with self.store.lock:
            for inst in self.store.instances.values():
                if inst["networkInterfaces"][0].get("networkIP") == client_ip and inst.get("status") == "RUNNING":
                    accounts = inst.get("serviceAccounts") or []
                    if not accounts:
                        raise _error(404, "NOT_FOUND", f"instance {inst['name']} has no service account")
                    return accounts[0]["email"]
        raise _error(404, "NOT_FOUND", f"no running instance has the internal IP {client_ip}")

    def _account_of(self, token: str) -> str | None:
        if token and pysecrets.compare_digest(token, self.workers_token):
            return self.workers_account
        with self._lock:
            found = self._tokens.get(token)
        return found[0] if found is not None and found[1] >= time.time() else None

    def identity(self, authorization: str | None) -> str:
        """``serviceAccount:EMAIL`` of the bearer token; 401 without a valid one."""
        scheme, _, token = (authorization or "").partition(" ")
        email = self._account_of(token.strip()) if scheme.lower() == "bearer" else None
        if email is None:
            raise _error(
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential or had invalid authentication "
                "credentials. Expected OAuth 2 access token (the workers' token of the emulator, "
                "HAPLANE_GCE_TOKEN, or a VM's metadata-server token).",
            )
        return f"serviceAccount:{email}"

    # --- the API ------------------------------------------------------------------------------
    def handle(self, verb: str, path: str, query: dict[str, str], body: dict | None, who: str) -> tuple[int, dict]:
        for route_verb, pattern, method in ROUTES:
            m = pattern.match(path)
            if m and route_verb == verb:
                with self._lock:
                    return 200, getattr(self, "_" + method)(m.groupdict(), query, body or {}, who)
        raise _error(404, "NOT_FOUND", f"No such Secret Manager method: {verb} {path}")

    def _operator_only(self, who: str, what: str) -> None:
        if who != f"serviceAccount:{self.workers_account}":
            raise _error(
                403, "PERMISSION_DENIED", f"Permission '{what}' denied for {who} (it has no role on the project)"
            )

    def _secret(self, p: dict) -> dict:
        name = f"projects/{p['project']}/secrets/{p['secret']}"
        secret = self._secrets.get(name)
        if secret is None:
            raise _error(404, "NOT_FOUND", f"Secret [{name}] not found.")
        return secret

    @staticmethod
    def _public(secret: dict) -> dict:
        return {k: v for k, v in secret.items() if not k.startswith("_")}

    def _create(self, p, query, body, who):
        self._operator_only(who, "secretmanager.secrets.create")
        sid = query.get("secretId", "")
        if not _SECRET_ID.match(sid):
            raise _error(400, "INVALID_ARGUMENT", f"invalid secretId {sid!r}: 1-255 of [A-Za-z0-9_-]")
        name = f"projects/{p['project']}/secrets/{sid}"
        if name in self._secrets:
            raise _error(409, "ALREADY_EXISTS", f"Secret [{name}] already exists.")
        secret = {
            "name": name,
            "replication": body.get("replication") or {"automatic": {}},
            "createTime": now_rfc3339(),
            "labels": body.get("labels") or {},
            "etag": '"1"',
            "_versions": [],
            "_policy": {"version": 1, "etag": base64.b64encode(bytes(5)).decode()},
        }
        self._secrets[name] = secret
        return self._public(secret)

    def _list(self, p, query, body, who):
        self._operator_only(who, "secretmanager.secrets.list")
        prefix = f"projects/{p['project']}/secrets/"
        wanted = dict(re.findall(r"labels\.([\w-]+)\s*[:=]\s*\"?([\w-]+)\"?", query.get("filter", "")))
        found = [
            self._public(s)
            for n, s in sorted(self._secrets.items())
            if n.startswith(prefix) and all(s["labels"].get(k) == v for k, v in wanted.items())
        ]
        return {"secrets": found, "totalSize": len(found)} if found else {}

    def _get(self, p, query, body, who):
        self._operator_only(who, "secretmanager.secrets.get")
        return self._public(self._secret(p))

    def _delete(self, p, query, body, who):
        self._operator_only(who, "secretmanager.secrets.delete")
        secret = self._secret(p)
        del self._secrets[secret["name"]]
        return {}

    def _add_version(self, p, query, body, who):
        self._operator_only(who, "secretmanager.versions.add")
        secret = self._secret(p)
        data = (body.get("payload") or {}).get("data")
        if data is None:
            raise _error(400, "INVALID_ARGUMENT", "payload.data is required")
        try:
            base64.b64decode(data, validate=True)
        except ValueError:
            raise _error(400, "INVALID_ARGUMENT", "payload.data is not base64") from None
        number = len(secret["_versions"]) + 1
        version = {
            "name": f"{secret['name']}/versions/{number}",
            "createTime": now_rfc3339(),
            "state": "ENABLED",
            "_data": data,
        }
        secret["_versions"].append(version)
        return self._public(version)

    def _version(self, p) -> dict:
        secret = self._secret(p)
        if p["version"] == "latest":
            enabled = [v for v in secret["_versions"] if v["state"] == "ENABLED"]
            if not enabled:
                raise _not_found(secret["name"])
            return enabled[-1]
        if not p["version"].isdigit() or not 1 <= int(p["version"]) <= len(secret["_versions"]):
            raise _error(404, "NOT_FOUND", f"Secret Version [{secret['name']}/versions/{p['version']}] not found.")
        return secret["_versions"][int(p["version"]) - 1]

    def _access(self, p, query, body, who):
        secret = self._secret(p)
        if not self._granted(secret, who, ACCESSOR):
            raise _error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'secretmanager.versions.access' denied for resource "
                f"'{secret['name']}/versions/{p['version']}' (or it may not exist).",
            )
        version = self._version(p)
        if version["state"] != "ENABLED":
            raise _error(400, "FAILED_PRECONDITION", f"{version['name']} is in {version['state']} state.")
        return {"name": version["name"], "payload": {"data": version["_data"]}}

    def _list_versions(self, p, query, body, who):
        self._operator_only(who, "secretmanager.versions.list")
        found = [self._public(v) for v in reversed(self._secret(p)["_versions"])]  # newest first, as GCE
        return {"versions": found, "totalSize": len(found)} if found else {}

    def _destroy(self, p, query, body, who):
        self._operator_only(who, "secretmanager.versions.destroy")
        version = self._version(p)
        if version["state"] == "DESTROYED":
            raise _error(400, "FAILED_PRECONDITION", f"{version['name']} is already in DESTROYED state.")
        version.update(state="DESTROYED", destroyTime=now_rfc3339())
        version.pop("_data", None)
        return self._public(version)

    @staticmethod
    def _granted(secret: dict, who: str, role: str) -> bool:
        return any(b.get("role") == role and who in b.get("members", []) for b in secret["_policy"].get("bindings", []))

    def _get_iam(self, p, query, body, who):
        self._operator_only(who, "secretmanager.secrets.getIamPolicy")
        return dict(self._secret(p)["_policy"])

    def _set_iam(self, p, query, body, who):
        self._operator_only(who, "secretmanager.secrets.setIamPolicy")
        secret = self._secret(p)
        policy = body.get("policy") or {}
        current = secret["_policy"]
        if policy.get("etag") and policy["etag"] != current["etag"]:
            raise _error(409, "ABORTED", "There were concurrent policy changes; read the policy and try again.")
        serial = int.from_bytes(base64.b64decode(current["etag"]), "big") + 1
        secret["_policy"] = {
            "version": 1,
            "bindings": policy.get("bindings", []),
            "etag": base64.b64encode(serial.to_bytes(5, "big")).decode(),
        }
        return dict(secret["_policy"])
