"""``list`` and ``aggregatedList`` replies, paged and ordered as GCE pages them.

Query parameters (GCE's, on every list method the emulator serves):

- ``filter``: see :mod:`haplane.emulator.filters`;
- ``maxResults``: 0..500 (0 or absent: 500, GCE's default); a list longer than
  one page answers ``nextPageToken``;
- ``pageToken``: the ``nextPageToken`` of the previous page (opaque; the
  emulator's tokens hold the sort key of the last item served, so resources
  created or deleted between pages neither repeat nor shift the rest);
- ``orderBy``: ``name`` (the default order) or ``creationTimestamp desc``,
  the two GCE supports; anything else answers 400 invalid;
- aggregated lists: ``returnPartialSuccess`` (a failed zone is then named in
  ``unreachables``; without it the call fails 503: an unreachable zone is never
  silently left out of an inventory), ``includeAllScopes`` (accepted).

An aggregated reply maps every scope (``zones/Z``, ``regions/R``, ``global``)
to ``{collection: [...]}``, or, when the scope has nothing on this page, to
GCE's ``NO_RESULTS_ON_PAGE`` warning.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from haplane.emulator.errors import backend_error, invalid
from haplane.emulator.filters import compile_filter
from haplane.emulator.store import public

MAX_RESULTS = 500
ORDERS = ("name", "creationTimestamp desc")


@dataclass(frozen=True)
class ListQuery:
    """A list call's parsed paging parameters."""

    filter: str | None
    max_results: int
    order: str
    after: tuple | None  # sort key of the last item of the previous page

    @classmethod
    def parse(cls, query: dict[str, str]) -> ListQuery:
        raw_max = query.get("maxResults") or "0"
        try:
            max_results = int(raw_max)
        except ValueError:
            raise invalid(f"Invalid value for field 'maxResults': '{raw_max}'. Must be an integer.") from None
        if not 0 <= max_results <= MAX_RESULTS:
            raise invalid(
                f"Invalid value for field 'maxResults': {max_results}. Must be in the range [0, {MAX_RESULTS}]."
            )
        order = " ".join((query.get("orderBy") or "name").split())
        if order not in ORDERS:
            raise invalid(
                f"Invalid value for field 'orderBy': '{query.get('orderBy')}'. "
                "Only 'name' and 'creationTimestamp desc' are supported."
            )
        return cls(
            filter=query.get("filter"),
            max_results=max_results or MAX_RESULTS,
            order=order,
            after=_decode_token(query.get("pageToken")),
        )


def _decode_token(token: str | None) -> tuple | None:
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        key = None
    if not isinstance(key, list) or not key:
        raise invalid(
            f"Invalid value for field 'pageToken': '{token}'. Pass the nextPageToken of the previous page, unchanged."
        )
    return tuple(key)


def _encode_token(key: tuple) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _epoch(resource: dict) -> float:
    stamp = resource.get("creationTimestamp") or resource.get("insertTime") or ""
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


def _sort_key(order: str, scope: str, resource: dict) -> tuple:
    name = resource.get("name", "")
    if order == "name":
        return (scope, name)
    return (scope, -_epoch(resource), name)


def _page(q: ListQuery, scoped: Iterable[tuple[str, dict]]) -> tuple[list[tuple[str, dict]], str | None]:
    """Filter, order and cut one page out of ``(scope, served resource)`` pairs."""
    predicate = compile_filter(q.filter)
    keyed = sorted(((_sort_key(q.order, s, r), s, r) for s, r in scoped if predicate(r)), key=lambda t: t[0])
    if q.after is not None:
        keyed = [t for t in keyed if _comparable(t[0]) > _comparable(q.after)]
    page = keyed[: q.max_results]
    token = _encode_token(page[-1][0]) if len(keyed) > q.max_results else None
    return [(s, r) for _, s, r in page], token


def _comparable(key: tuple) -> tuple:
    # a token's key came through JSON: compare numbers with numbers and text with text, never mixed
    return tuple((0, k, "") if isinstance(k, int | float) else (1, 0, str(k)) for k in key)


def list_reply(base_link: str, path: str, kind: str, resources: Iterable[dict], query: dict[str, str]) -> dict:
    """A ``list`` reply for the collection at ``path`` (``projects/P/zones/Z/instances``...)."""
    q = ListQuery.parse(query)
    page, token = _page(q, (("", public(r)) for r in resources))
    reply: dict = {
        "kind": kind,
        "id": path,
        "items": [r for _, r in page],
        "selfLink": f"{base_link}/compute/v1/{path}",
    }
    if not reply["items"]:
        del reply["items"]
    if token:
        reply["nextPageToken"] = token
    return reply


def aggregated_reply(
    base_link: str,
    project: str,
    kind: str,
    collection: str,
    scoped: dict[str, list[dict]],
    query: dict[str, str],
    unreachable: Iterable[str] = (),
) -> dict:
    """An ``aggregatedList`` reply over every scope in ``scoped`` (scope -> resources)."""
    q = ListQuery.parse(query)
    unreachable = sorted(unreachable)
    partial = (query.get("returnPartialSuccess") or "").lower() == "true"
    if unreachable and not partial:
        raise backend_error(
            f"Scopes {', '.join(unreachable)} are unavailable; retry, or list with "
            "returnPartialSuccess=true to get the other scopes and 'unreachables'."
        )
    page, token = _page(q, ((s, public(r)) for s, rs in scoped.items() if s not in unreachable for r in rs))
    items: dict[str, dict] = {}
    for scope in sorted(scoped):
        if scope in unreachable:
            continue
        found = [r for s, r in page if s == scope]
        if found:
            items[scope] = {collection: found}
        else:
            items[scope] = {
                "warning": {
                    "code": "NO_RESULTS_ON_PAGE",
                    "message": f"There are no results for scope '{scope}' on this page.",
                    "data": [{"key": "scope", "value": scope}],
                }
            }
    path = f"projects/{project}/aggregated/{collection}"
    reply: dict = {"kind": kind, "id": path, "items": items, "selfLink": f"{base_link}/compute/v1/{path}"}
    if token:
        reply["nextPageToken"] = token
    if unreachable:
        reply["unreachables"] = unreachable
    return reply
