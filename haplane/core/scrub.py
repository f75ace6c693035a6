"""Errors of calls that carried key material, made safe to persist and log.

google-api-core's exceptions keep the HTTP response, and through it the request, whose body holds
a replica's private keys when the call was ``setMetadata``; Prefect persists a task's final
exception with the task's result and logs its message and traceback. :func:`call_carrying_secrets`
runs such a call and replaces any exception it raises by a :class:`SecretCallFailed`: the
exception's type name, HTTP status and reason, and its message with every PEM block and every
secret value scrubbed — no request, no response, no chained cause or context.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|$)", re.S)
MESSAGE_MAX = 300


class SecretCallFailed(RuntimeError):
    """A call that carried key material failed. Holds strings only (pickles to strings only)."""

    def __init__(self, message: str, error_type: str = "", status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status = status
        self.reason = reason

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.error_type, self.status, self.reason))

    @property
    def transient(self) -> bool:
        """429 / 500 / 503: the same call may well succeed when tried again."""
        return self.status in (429, 500, 502, 503, 504)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without PEM blocks or any of ``secrets`` (nor their JSON-escaped forms), shortened."""
    text = PEM_RE.sub("<redacted PEM>", text)
    for secret in secrets:
        if secret and len(secret) >= 8:
            for form in {secret, secret.replace("\n", "\\n"), secret.replace("\n", "\\\\n")}:
                text = text.replace(form, "<redacted>")
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX] + "..."


def sanitised(what: str, exc: BaseException, secrets: Iterable[str] = ()) -> SecretCallFailed:
    """The safe stand-in for ``exc``, raised by a call that carried ``secrets``."""
    secrets = list(secrets)
    status = getattr(exc, "code", None)
    status = int(status) if isinstance(status, int) else None
    reason = str(getattr(exc, "reason", "") or "")
    detail = scrub(str(getattr(exc, "message", "") or exc), secrets)
    message = (
        f"{what} failed: {type(exc).__name__}"
        + (f" {status}" if status else "")
        + (f" ({scrub(reason, secrets)})" if reason else "")
        + f": {detail} "
        "[request and response dropped: the call carried private keys]"
    )
    return SecretCallFailed(message, type(exc).__name__, status, scrub(reason, secrets))


def call_carrying_secrets(what: str, secrets: Iterable[str], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; any exception becomes a :class:`SecretCallFailed` with no cause or
    context (it is raised outside the handler, so Python links nothing to the original)."""
    secrets = list(secrets)
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every error of such a call is replaced
        error = sanitised(what, exc, secrets)
    raise error
