"""Service-account tokens as kube-apiserver mints and verifies them (ES256 JWTs).

kube-apiserver signs a token with ``--service-account-signing-key-file`` and
accepts a token signed by *any* key of ``--service-account-key-file`` (a PEM
file that may hold several public keys: the current one and, during a
rotation, the previous one). The ``kid`` header is the key's id as
:func:`haplane.cloud.pki.key_id` computes it. The issuer must match
``--service-account-issuer`` and the audiences must meet the API server's
(by default: the issuer).

This module is what the emulator's API-server stand-in runs, so that "a token
minted by one replica verifies on every other" is tested with real signatures
against the key files each replica was given. Pure functions over PEM text and
a clock; no I/O.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

ISSUER = "https://kubernetes.default.svc.cluster.local"
LEEWAY_S = 60  # kube-apiserver's clock-skew allowance for exp/nbf
_PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


class TokenError(ValueError):
    """A token that does not authenticate, with the reason (as kube-apiserver logs it)."""


@dataclass(frozen=True)
class ServiceAccountUser:
    namespace: str
    name: str
    uid: str
    audiences: tuple[str, ...]

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def key_id(public_pem: str) -> str:
    """kube-apiserver's ``kid`` of a public key: unpadded base64url of SHA-256 over its DER (PKIX)."""
    key = serialization.load_pem_public_key(public_pem.encode())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return _b64(digest.finalize())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_keys(bundle_pem: str) -> list[ec.EllipticCurvePublicKey]:
    """Every public key of a ``--service-account-key-file``."""
    keys = []
    for block in _PEM_BLOCK.findall(bundle_pem):
        key = serialization.load_pem_public_key(block.encode())
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("only ECDSA P-256 service-account keys are supported")
        keys.append(key)
    return keys


def mint(
    signing_key_pem: str,
    *,
    namespace: str,
    name: str,
    audiences: tuple[str, ...] = (ISSUER,),
    expiration_s: int = 3600,
    issuer: str = ISSUER,
    uid: str | None = None,
    now: float | None = None,
) -> tuple[str, int]:
    """(token, expiry as Unix time) for service account ``namespace/name``."""
    key = serialization.load_pem_private_key(signing_key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the service-account signing key must be an ECDSA P-256 key")
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    iat = int(now if now is not None else time.time())
    exp = iat + expiration_s
    header = {"alg": "ES256", "kid": key_id(public_pem)}
    claims = {
        "aud": list(audiences),
        "exp": exp,
        "iat": iat,
        "nbf": iat,
        "iss": issuer,
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid or str(uuid.uuid4())}},
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}", exp


def verify(
    token: str,
    bundle_pem: str,
    *,
    issuer: str = ISSUER,
    audiences: tuple[str, ...] = (ISSUER,),
    now: float | None = None,
) -> ServiceAccountUser:
    """The service account a token authenticates, or :class:`TokenError` saying why not."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a JWT")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        sig = _unb64(parts[2])
    except ValueError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    if header.get("alg") != "ES256" or len(sig) != 64:
        raise TokenError(f"unsupported signing algorithm {header.get('alg')!r}")
    signature = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    signed = f"{parts[0]}.{parts[1]}".encode()
    for key in public_keys(bundle_pem):  # kube-apiserver tries every configured key
        try:
            key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
            break
        except InvalidSignature:
            continue
    else:
        raise TokenError("invalid signature: signed by none of the configured service-account keys")
    t = now if now is not None else time.time()
    if claims.get("iss") != issuer:
        raise TokenError(f"issuer {claims.get('iss')!r} is not {issuer!r}")
    if not isinstance(claims.get("exp"), int) or t > claims["exp"] + LEEWAY_S:
        raise TokenError("token has expired")
    if isinstance(claims.get("nbf"), int) and t < claims["nbf"] - LEEWAY_S:
        raise TokenError("token is not valid yet")
    aud = claims.get("aud")
    aud = tuple([aud] if isinstance(aud, str) else aud or ())
    if not set(aud) & set(audiences):
        raise TokenError(f"token audiences {list(aud)} are not the API server's {list(audiences)}")
    k8s = claims.get("kubernetes.io") or {}
    sa = k8s.get("serviceaccount") or {}
    if claims.get("sub") != f"system:serviceaccount:{k8s.get('namespace')}:{sa.get('name')}":
        raise TokenError("token subject does not name its service account")
    return ServiceAccountUser(
        namespace=k8s["namespace"],
        name=sa["name"],
        uid=sa.get("uid", ""),
        audiences=tuple(a for a in aud if a in audiences),
    )
