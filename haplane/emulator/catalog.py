"""Regions and zones the emulator serves: real GCE names, extendable.

The default catalogue holds a few real regions with their real zone
suffixes. Extend it with a JSON file (``--catalog FILE``) or the
``catalog=`` argument of :class:`~haplane.emulator.server.Emulator`::

    {"regions": {"us-west1": ["a", "b", "c"], "me-central1": ["a", "b", "c"]}}

Zone names are ``{region}-{suffix}``. Extra regions are merged into the
defaults (a region named again replaces its zone list).
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_REGIONS: dict[str, tuple[str, ...]] = {
    "us-central1": ("a", "b", "c", "f"),
    "us-east1": ("b", "c", "d"),
    "europe-west1": ("b", "c", "d"),
    "europe-west4": ("a", "b", "c"),
    "asia-east1": ("a", "b", "c"),
}


class Catalog:
    """Region -> zone names; zone -> region."""

    def __init__(self, regions: dict[str, tuple[str, ...] | list[str]] | None = None):
        merged = dict(DEFAULT_REGIONS)
        merged.update({r: tuple(z) for r, z in (regions or {}).items()})
        self.regions: dict[str, list[str]] = {
            region: [f"{region}-{suffix}" for suffix in suffixes] for region, suffixes in merged.items()
        }
        self._zone_region = {zone: region for region, zones in self.regions.items() for zone in zones}

    @classmethod
    def from_file(cls, path: str | Path) -> Catalog:
        data = json.loads(Path(path).read_text())
        regions = data.get("regions", data) if isinstance(data, dict) else None
        if not isinstance(regions, dict) or not all(isinstance(z, list) for z in regions.values()):
            raise ValueError(f'{path}: expected {{"regions": {{"REGION": ["a", "b"]}}}}')
        return cls(regions)

    def has_region(self, region: str) -> bool:
        return region in self.regions

    def has_zone(self, zone: str) -> bool:
        return zone in self._zone_region

    def region_of(self, zone: str) -> str:
        return self._zone_region[zone]

    def zones(self) -> list[str]:
        return list(self._zone_region)
