"""Scrubbing secrets out of errors (that no key leaks from a cluster's runs is tests/test_secrets.py)."""

from __future__ import annotations

import base64
import binascii
import json
import re

from haplane.cloud.pki import new_ca
from haplane.core.scrub import scrub

B64_RE = re.compile(rb"[A-Za-z0-9+/=]{80,}")


def test_scrub_removes_pem_blocks_and_secret_values():
    pem = new_ca("x", "cluster-ca").key_pem.get_secret_value()
    text = f"400 bad value '{pem}' and escaped {json.dumps(pem)} and plain secret-value-123"
    out = scrub(text, [pem, "secret-value-123"])
    assert "PRIVATE KEY" not in out and "secret-value-123" not in out
    assert not _leaks(out.encode(), _key_lines(pem))


def _key_lines(pem: str) -> list[bytes]:
    """The base64 lines of a PEM private key: any of them found anywhere means the key leaked."""
    return [line.encode() for line in pem.strip().splitlines()[1:-1] if len(line) >= 40]


def _leaks(blob: bytes, needles: list[bytes]) -> list[bytes]:
    """Needles found in ``blob``, or in base64 text inside it (Prefect's result files hold the
    pickled value as base64 with line breaks, inside JSON)."""
    found = [n for n in needles if n in blob]
    flat = blob.replace(b"\\n", b"").replace(b"\n", b"")
    for chunk in B64_RE.findall(flat):
        try:
            decoded = base64.b64decode(chunk + b"=" * (-len(chunk) % 4))
        except (binascii.Error, ValueError):
            continue
        found += [n for n in needles if n in decoded]
    return found
