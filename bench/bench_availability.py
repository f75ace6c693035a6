"""Availability benchmark: a canary through the endpoint while the cluster changes (prints figures, draws PNGs).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_availability.py [--time-scale 0.01] [--create-scale 0.1] [--out docs/availability]

Starts its own Prefect server and GCE emulator (VMs with real etcd, mutual TLS) on the "gce"
latency profile scaled by --time-scale, and runs a canary every 100 ms through the endpoint IP:
a write (``POST /haplane/canary`` on the API server, which puts a key into etcd: it needs etcd's
quorum) and a read of ``/readyz`` (TLS verified against the cluster CA). Another thread samples
each etcd member's role every 0.3 s. Cases:

  1 -> 2 and 2 -> 3 in endpoint mode ``always`` and in ``as-needed`` (the seed's IP move),
  a follower replace (its processes killed, then replace-replica), a leader replace (planned:
  leadership moves away first), and a zone outage with its remediation (the zone fails, the
  health check moves its replica, the zone returns, the check deletes the stranded VM).

For each case: canary write and read success ratios and the longest gap (from the last answer
before a miss to the first after it), and a timeline PNG (member roles, endpoint answers, canary
writes, the flows' task runs). Then create-cluster with 3 replicas under the "gce" profile scaled by
--create-scale, over the forwarding rule's own modelled latency (the load balancer off the
critical path: goal <= 1.05). Everything it starts is stopped, even on failure.

``--upgrade``: instead, a 3-replica cluster on etcd 3.4.23 (Debian's etcd-server) upgraded to 3.5.1
by upgrade-cluster while the canary runs, the etcd cluster version and each member's version sampled
every 0.3 s (``GET /version``), then one replace-replica of a healthy follower on the same cluster:
canary writes answered and longest gap, upgrade time / (3 x replace time) (goal <= 1.2), and when the
cluster version moved against when the last 3.4 member left. Figures and the timeline go to
``OUT/upgrade.json`` and ``OUT/upgrade-3.4-3.5.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import delete_clusters, prefect_server

from haplane.cloud.etcd import EndpointStatus, EtcdClient, EtcdTLS
from haplane.emulator.admin import EmulatorAdmin
from haplane.emulator.server import Emulator
from haplane.emulator.vm import ProcessRuntime
from haplane.testing.canary import PERIOD, EndpointCanary, Sample

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "haplane-bench"
REGION = "europe-west1"
ZONES = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]


# --- what is measured ---------------------------------------------------------------------------


class RoleWatch:
    """Every 0.3 s: each etcd member's role (leader, follower, learner) or 'down' if it does not answer."""

    def __init__(self, tls: EtcdTLS, endpoints: list[str]):
        self.tls, self.endpoints = tls, list(endpoints)
        self.samples: list[tuple[float, dict[str, str]]] = []  # (time, {member id (hex): role})
        self.names: dict[str, str] = {}  # member id (hex) -> name, once the member has one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="roles", daemon=True)

    def _sample(self) -> dict[str, str]:
        with EtcdClient(self.endpoints, tls=self.tls, timeout=0.5) as client:
            members = client.member_list()
            urls = [u for m in members for u in m.client_urls]
            if urls:
                self.endpoints = urls
            roles: dict[str, str] = {}
            statuses = {s.member_id: s for s in client.statuses(urls) if isinstance(s, EndpointStatus)}
            leader = next((s.leader_id for s in statuses.values() if s.leader_id), None)
            for m in members:
                name = m.hex_id
                if m.name:
                    self.names[name] = m.name
                if m.id not in statuses:
                    roles[name] = "learner (down)" if m.is_learner else "down"
                elif m.is_learner:
                    roles[name] = "learner"
                else:
                    roles[name] = "leader" if m.id == leader else "follower"
            return roles

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            try:
                self.samples.append((t, self._sample()))
            except Exception:  # noqa: BLE001 - no member answered: nothing to draw for this instant
                self.samples.append((t, {}))
            self._stop.wait(0.3)

    def __enter__(self) -> RoleWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Case:
    key: str
    title: str
    start: float = 0.0
    end: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    roles: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # member id (hex) -> name
    steps: list[tuple[str, float, float]] = field(default_factory=list)  # (task run, start, end), wall clock
    marks: list[tuple[float, str]] = field(default_factory=list)  # (time, what happened)

    def ratio(self, attr: str) -> float:
        vals = [getattr(s, attr) for s in self.samples]
        return sum(vals) / len(vals) if vals else float("nan")

    def longest_gap(self, attr: str) -> float:
        """From the last success before a miss to the first success after it, less one period."""
        longest, last_ok, missed = 0.0, None, False
        for s in self.samples:
            if getattr(s, attr):
                if missed and last_ok is not None:
                    longest = max(longest, s.t - last_ok - PERIOD)
                last_ok, missed = s.t, False
            else:
                missed = True
        if missed and last_ok is not None:
            longest = max(longest, self.samples[-1].t - last_ok)
        return max(0.0, longest)


def task_runs(since: float, until: float) -> list[tuple[str, float, float]]:
    """The flows' task runs that overlap [since, until] (wall clock), from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    after = dt.datetime.fromtimestamp(since - 1, dt.UTC)
    runs: list = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(
                task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=after)),
                limit=200,
                offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                break
    out = []
    for r in runs:
        if r.start_time is None:
            continue
        start = r.start_time.timestamp()
        end = r.end_time.timestamp() if r.end_time else until
        if start <= until:
            out.append((r.name, start, end))
    return sorted(out, key=lambda x: x[1])


def measure(
    case: Case, endpoint: str, ca_pem: str, tls: EtcdTLS, etcd_endpoints: list[str], body: Callable[[Case], object]
) -> Case:
    with EndpointCanary(endpoint, ca_pem) as canary, RoleWatch(tls, etcd_endpoints) as roles:
        time.sleep(1.0)  # a second of steady state before the change
        case.start = time.time()
        try:
            body(case)
        finally:
            case.end = time.time()
            time.sleep(1.0)
    case.samples, case.roles, case.names = canary.samples, roles.samples, roles.names
    case.steps = task_runs(case.start, case.end)
    return case


# --- the picture ----------------------------------------------------------------------------------

ROLE_COLOURS = {
    "leader": "#6a3d9a",
    "follower": "#1f78b4",
    "learner": "#ff7f00",
    "down": "#e31a1c",
    "learner (down)": "#fb9a99",
}
BORING = ("observe ", "report ", "zones of ", "is ", "remediation history", "remember ")


def draw(case: Case, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t0 = case.samples[0].t if case.samples else case.start
    rel = lambda t: t - t0  # noqa: E731
    members = sorted({n for _, r in case.roles for n in r}, key=lambda m: case.names.get(m, m))
    steps = [s for s in case.steps if not s[0].startswith(BORING)]
    lanes: list[float] = []
    placed = []
    span = max(1.0, (case.samples[-1].t if case.samples else case.end) - t0)
    for name, s, e in steps:
        label_end = s + span * (len(name[:60]) + 2) / 210  # room for the label, in seconds
        lane = next((i for i, end in enumerate(lanes) if end <= s), None)
        if lane is None:
            lanes.append(0.0)
            lane = len(lanes) - 1
        lanes[lane] = max(e, label_end)
        placed.append((name, s, e, lane))
    heights = [max(1.2, 0.35 * len(members) + 0.4), 0.6, 0.6, max(1.2, 0.22 * len(lanes) + 0.4)]
    fig, axes = plt.subplots(
        4, 1, figsize=(13, sum(heights) + 1.6), sharex=True, gridspec_kw={"height_ratios": heights}
    )
    ax_roles, ax_read, ax_write, ax_steps = axes

    for i, name in enumerate(members):
        prev = None
        for (t, roles), nxt in zip(case.roles, case.roles[1:] + [(case.roles[-1][0] + 0.3, {})], strict=True):
            role = roles.get(name)
            if role:
                ax_roles.broken_barh([(rel(t), nxt[0] - t)], (i - 0.35, 0.7), color=ROLE_COLOURS.get(role, "grey"))
            prev = role
        del prev
    ax_roles.set_yticks(range(len(members)), [case.names.get(m, f"member {m}") for m in members], fontsize=7)
    ax_roles.set_ylim(-0.6, max(0.6, len(members) - 0.4))
    ax_roles.set_title("etcd members (role every 0.3 s)", fontsize=9, loc="left")
    ax_roles.legend(
        handles=[Patch(color=c, label=r) for r, c in ROLE_COLOURS.items()],
        fontsize=7,
        loc="lower left",
        bbox_to_anchor=(0.55, 1.0),
        ncol=5,
        frameon=False,
    )

    for ax, attr, label in ((ax_read, "read_ok", "endpoint /readyz"), (ax_write, "write_ok", "canary write")):
        ok = [rel(s.t) for s in case.samples if getattr(s, attr)]
        bad = [rel(s.t) for s in case.samples if not getattr(s, attr)]
        ax.vlines(ok, 0, 1, color="#33a02c", linewidth=0.8)
        ax.vlines(bad, 0, 1, color="#e31a1c", linewidth=1.2)
        ax.set_yticks([])
        ax.set_title(
            f"{label}: {case.ratio(attr) * 100:.2f} % of {len(case.samples)} answered, longest gap "
            f"{case.longest_gap(attr):.2f} s (green answered, red did not)",
            fontsize=9,
            loc="left",
        )

    for name, s, e, lane in placed:
        ax_steps.broken_barh([(rel(s), max(0.02, e - s))], (lane - 0.4, 0.8), color="#b2df8a", edgecolor="#33a02c")
        ax_steps.text(rel(s), lane, " " + name[:60], fontsize=6, va="center")
    ax_steps.set_yticks([])
    ax_steps.set_ylim(len(lanes) - 0.5 if lanes else 0.5, -0.6)
    ax_steps.set_title("the flows' task runs", fontsize=9, loc="left")
    ax_steps.set_xlabel("seconds")
    for ax in axes:
        ax.axvspan(rel(case.start), rel(case.end), color="#ffff99", alpha=0.25, zorder=0)
        for t, _what in case.marks:
            ax.axvline(rel(t), color="black", linestyle=":", linewidth=0.8)
    for i, (t, what) in enumerate(case.marks):  # staggered, so that close marks do not overwrite each other
        ax_roles.text(
            rel(t),
            len(members) - 0.45 - 0.5 * (i % 3),
            " " + what,
            fontsize=7,
            va="top",
            bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 0.5},
        )
    fig.suptitle(case.title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- the run --------------------------------------------------------------------------------------


class VersionWatch:
    """Every 0.3 s: each answering member's etcd version and its view of the cluster version (/version)."""

    def __init__(self, tls: EtcdTLS, endpoints: Callable[[], list[str]]):
        self.tls, self.endpoints = tls, endpoints
        self.samples: list[tuple[float, str, dict[str, str]]] = []  # (time, cluster version, {url: server})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="versions", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                urls = self.endpoints()
                with EtcdClient(urls, tls=self.tls, timeout=0.5) as client:
                    seen = {}
                    for url in urls:
                        try:
                            seen[url] = client.version(url)
                        except Exception:  # noqa: BLE001 - a member that does not answer is left out
                            pass
            except Exception:  # noqa: BLE001 - nothing answered this time
                continue
            clusters = {c for _, c in seen.values() if c and c != "not_decided"}
            self.samples.append((time.time(), ",".join(sorted(clusters)), {u: s for u, (s, _) in seen.items()}))

    def __enter__(self) -> VersionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def moments(self) -> dict[str, float | None]:
        """When the last 3.4 member was last seen answering, and when the cluster version first read 3.5."""
        last_34 = max(
            (t for t, _, servers in self.samples if any(v.startswith("3.4.") for v in servers.values())), default=None
        )
        first_35 = min((t for t, c, _ in self.samples if c.startswith("3.5.")), default=None)
        early = [
            t
            for t, c, servers in self.samples
            if c.startswith("3.5.") and any(v.startswith("3.4.") for v in servers.values())
        ]
        return {
            "last_34_member_seen": last_34,
            "cluster_version_35_from": first_35,
            "cluster_35_while_a_34_member_answered": len(early),
        }


def run_upgrade(time_scale: float, out: Path, work: Path) -> None:
    """The --upgrade mode (see the module's doc)."""
    from flows.create_cluster import create_cluster
    from flows.replace_replica import replace_replica
    from flows.upgrade_cluster import upgrade_cluster
    from haplane.node.spec import client_url
    from tasks.cluster import observe_cluster
    from tasks.pki import load_cas

    name = f"bench-up-{uuid.uuid4().hex[:4]}"
    state = work / "emulator"
    emulator = Emulator(state_dir=state, runtime=ProcessRuntime(state)).start()
    os.environ["HAPLANE_GCE_ENDPOINT"], os.environ["HAPLANE_PROJECT"] = emulator.url, PROJECT
    figures: dict[str, object] = {}
    try:
        emulator.latency.configure(profile="gce", time_scale=time_scale)
        print(f"emulator on {emulator.url}; latency profile 'gce' x {time_scale:g}", flush=True)
        rows = create_cluster(cluster=name, region=REGION, zones=ZONES, replicas=3, etcd_version="3.4.23")
        cas = load_cas(name)
        endpoint, tls = rows[0]["endpoint IP"], EtcdTLS.from_cas(cas)
        wait_answering(endpoint, cas.ca.cert_pem)

        def eps() -> list[str]:
            from haplane.core.topology import LABEL_CLUSTER
            from tasks.steps import Change

            vms = Change(name, "bench").gce().list_instances(ZONES, labels={LABEL_CLUSTER: name})
            return [client_url(v.internal_ip) for v in vms if v.status == "RUNNING"]

        case = Case("upgrade-3.4-3.5", f"upgrade-cluster etcd 3.4.23 -> 3.5.1, 3 replicas (gce x{time_scale:g})")
        with VersionWatch(tls, eps) as versions:

            def upgrade(c: Case) -> None:
                c.marks.append((time.time(), "upgrade-cluster"))
                upgrade_cluster(cluster=name, etcd_version="3.5.1")

            print(f"case {case.key}", flush=True)
            measure(case, endpoint, cas.ca.cert_pem, tls, eps(), upgrade)
        figures["versions"] = versions.moments()
        for label, t in (
            ("last 3.4 member", figures["versions"]["last_34_member_seen"]),
            ("cluster version 3.5", figures["versions"]["cluster_version_35_from"]),
        ):
            if t:
                case.marks.append((t, label))
        st = observe_cluster.fn(name, REGION, None)
        follower = next(r.name for r in st.replicas if r.role == "follower")
        print("replace of a healthy follower, for the ratio", flush=True)
        start = time.monotonic()
        replace_replica(cluster=name, replica_name=follower)
        figures["replace_s"] = time.monotonic() - start
        figures["upgrade_s"] = case.end - case.start
    finally:
        emulator.latency.configure(profile="instant", time_scale=1.0)
        delete_clusters([name])
        emulator.stop()
    out.mkdir(parents=True, exist_ok=True)
    draw(case, out / f"{case.key}.png")
    v = figures["versions"]
    summary = {
        "case": case.key,
        "time_scale": time_scale,
        "seconds": figures["upgrade_s"],
        "probes": len(case.samples),
        "write_ok": case.ratio("write_ok"),
        "longest_write_gap_s": case.longest_gap("write_ok"),
        "read_ok": case.ratio("read_ok"),
        "longest_read_gap_s": case.longest_gap("read_ok"),
        "replace_s": figures["replace_s"],
        "upgrade_over_3_replaces": figures["upgrade_s"] / (3 * figures["replace_s"]),
        "versions": v,
        "timeline": dataclasses.asdict(case),
    }
    (out / "upgrade.json").write_text(json.dumps(summary) + "\n")
    print()
    print(
        f"haplane availability benchmark (upgrade), {dt.date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; canary every {PERIOD * 1000:.0f} ms"
    )
    print(
        f"upgrade 3.4.23 -> 3.5.1 (3 replicas, gce x{time_scale:g}): {summary['seconds']:.1f} s; canary "
        f"{len(case.samples)} probes, writes answered {summary['write_ok'] * 100:.2f} % (longest gap "
        f"{summary['longest_write_gap_s']:.2f} s), reads {summary['read_ok'] * 100:.2f} % (longest gap "
        f"{summary['longest_read_gap_s']:.2f} s)"
    )
    print(
        f"upgrade / (3 x replace): {summary['seconds']:.1f} / (3 x {summary['replace_s']:.1f}) = "
        f"{summary['upgrade_over_3_replaces']:.3f}"
    )
    moved = (
        (v["cluster_version_35_from"] - v["last_34_member_seen"])
        if v["cluster_version_35_from"] and v["last_34_member_seen"]
        else float("nan")
    )
    print(
        f"cluster version 3.5 read {moved:.1f} s after the last 3.4 member was last seen answering; samples "
        f"reading 3.5 while a 3.4 member answered: {v['cluster_35_while_a_34_member_answered']}; picture "
        f"{out / (case.key + '.png')}"
    )


def run(time_scale: float, create_scale: float, out: Path, work: Path) -> None:
    from flows.add_replica import add_replica
    from flows.create_cluster import create_cluster
    from flows.health_check import health_check
    from flows.replace_replica import replace_replica
    from haplane.node.spec import client_url
    from tasks.pki import load_cas

    tag = uuid.uuid4().hex[:4]
    state = work / "emulator"
    emulator = Emulator(state_dir=state, runtime=ProcessRuntime(state)).start()
    admin = EmulatorAdmin(emulator.url)
    os.environ["HAPLANE_GCE_ENDPOINT"], os.environ["HAPLANE_PROJECT"] = emulator.url, PROJECT
    os.environ["HAPLANE_GCE_TOKEN"] = emulator.workers_token
    os.environ["HAPLANE_GCE_READ_RETRY_S"] = "1"  # a failed zone is seen as such at once
    created: list[str] = []
    cases: list[Case] = []
    figures: dict[str, float] = {}
    try:
        emulator.latency.configure(profile="gce", time_scale=time_scale)
        print(f"emulator on {emulator.url}; latency profile 'gce' x {time_scale:g}", flush=True)

        def cluster_of(name: str, mode: str) -> tuple[str, str, EtcdTLS, Callable[[], list[str]]]:
            created.append(name)
            rows = create_cluster(cluster=name, region=REGION, zones=ZONES, replicas=1, load_balancer=mode)
            cas = load_cas(name)
            endpoint = rows[0]["endpoint IP"]
            wait_answering(endpoint, cas.ca.cert_pem)

            def etcd_endpoints() -> list[str]:
                from haplane.core.topology import LABEL_CLUSTER
                from tasks.steps import Change

                vms = Change(name, "bench").gce().list_instances(ZONES, labels={LABEL_CLUSTER: name})
                return [client_url(v.internal_ip) for v in vms if v.status == "RUNNING"]

            return endpoint, cas.ca.cert_pem, EtcdTLS.from_cas(cas), etcd_endpoints

        scaled: dict[str, dict[str, str]] = {}
        for mode in ("always", "as-needed"):
            name = f"bench-{'al' if mode == 'always' else 'an'}-{tag}"
            endpoint, ca, tls, eps = cluster_of(name, mode)
            for step, zone in (("1-2", ZONES[1]), ("2-3", ZONES[2])):
                case = Case(
                    f"{step}-{mode}", f"{step.replace('-', ' -> ')} in endpoint mode '{mode}' (gce x{time_scale:g})"
                )

                def add(c: Case, zone: str = zone, name: str = name) -> None:
                    c.marks.append((time.time(), "add-replica"))
                    add_replica(cluster=name, zone=zone)

                print(f"case {case.key}", flush=True)
                cases.append(measure(case, endpoint, ca, tls, eps(), add))
            scaled[mode] = {"name": name, "endpoint": endpoint}

        # replaces and the zone outage on the 'always' cluster (3 replicas now)
        name = scaled["always"]["name"]
        endpoint, ca = scaled["always"]["endpoint"], load_cas(name).ca.cert_pem
        tls = EtcdTLS.from_cas(load_cas(name))

        def members() -> tuple[list[dict], list[str]]:
            from flows.params import ClusterName  # noqa: F401 - flows import cost outside the window
            from tasks.cluster import observe_cluster

            st = observe_cluster.fn(name, REGION, None)
            return (
                [{"name": r.name, "zone": r.zone, "role": r.role} for r in st.replicas],
                [client_url(r.internal_ip) for r in st.replicas if r.vm_status == "RUNNING"],
            )

        reps, eps = members()
        follower = next(r for r in reps if r["role"] == "follower")

        def follower_replace(c: Case) -> None:
            admin.kill_vm(PROJECT, follower["zone"], follower["name"])
            c.marks.append((time.time(), f"{follower['name']} killed"))
            replace_replica(cluster=name, replica_name=follower["name"])

        print("case follower-replace", flush=True)
        cases.append(
            measure(
                Case(
                    "follower-replace",
                    f"follower replace: {follower['name']} killed, then replace-replica (gce x{time_scale:g})",
                ),
                endpoint,
                ca,
                tls,
                eps,
                follower_replace,
            )
        )

        reps, eps = members()
        leader = next(r for r in reps if r["role"] == "leader")

        def leader_replace(c: Case) -> None:
            c.marks.append((time.time(), "replace-replica (leader)"))
            replace_replica(cluster=name, replica_name=leader["name"])

        print("case leader-replace", flush=True)
        cases.append(
            measure(
                Case(
                    "leader-replace",
                    f"leader replace (planned: leadership moves first): {leader['name']} (gce x{time_scale:g})",
                ),
                endpoint,
                ca,
                tls,
                eps,
                leader_replace,
            )
        )

        reps, eps = members()
        dead_zone = next(r for r in reps if r["role"] == "follower")["zone"]

        def zone_outage(c: Case) -> None:
            admin.fail_zone(dead_zone)
            c.marks.append((time.time(), f"zone {dead_zone} fails"))
            moved = health_check(cluster=name, zone_grace_s=0, return_state=True)
            c.marks.append((time.time(), f"moved: {moved.message[:40]}"))
            admin.restore_zone(dead_zone)
            c.marks.append((time.time(), "zone restored"))
            health_check(cluster=name, zone_grace_s=0)
            c.marks.append((time.time(), "stranded VM deleted"))

        print("case zone-outage", flush=True)
        cases.append(
            measure(
                Case(
                    "zone-outage",
                    f"zone outage: {dead_zone} fails, the health check moves its "
                    f"replica, the zone returns, the stranded VM is deleted "
                    f"(gce x{time_scale:g})",
                ),
                endpoint,
                ca,
                tls,
                eps,
                zone_outage,
            )
        )

        # create 3 at once, the load balancer beside the VMs
        emulator.latency.configure(profile="gce", time_scale=create_scale)
        name = f"bench-c3-{tag}"
        created.append(name)
        print(f"create-3 under 'gce' x {create_scale:g}", flush=True)
        start = time.monotonic()
        create_cluster(cluster=name, region=REGION, zones=ZONES, replicas=3)
        figures["create3"] = time.monotonic() - start
        figures["fr"] = emulator.latency.seconds["forwarding_rule_insert"] * create_scale
        emulator.latency.configure(profile="instant", time_scale=1.0)
    finally:
        emulator.latency.configure(profile="instant", time_scale=1.0)
        delete_clusters(created)
        admin.close()
        emulator.stop()

    out.mkdir(parents=True, exist_ok=True)
    raw = {
        "time_scale": time_scale,
        "create_scale": create_scale,
        "figures": figures,
        "cases": [dataclasses.asdict(c) for c in cases],
    }
    (out / "timelines.json").write_text(json.dumps(raw) + "\n")
    redraw(out)


def redraw(out: Path) -> None:
    """Draw every case's PNG and print the report from ``out/timelines.json`` (what a run measured)."""
    raw = json.loads((out / "timelines.json").read_text())
    cases = []
    for c in raw["cases"]:
        c["samples"] = [Sample(**x) for x in c["samples"]]
        c["roles"] = [tuple(x) for x in c["roles"]]
        c["steps"] = [tuple(x) for x in c["steps"]]
        c["marks"] = [tuple(x) for x in c["marks"]]
        cases.append(Case(**c))
    for case in cases:
        draw(case, out / f"{case.key}.png")
    report(cases, raw["figures"], raw["time_scale"], raw["create_scale"], out)


def wait_answering(ip: str, ca_pem: str, timeout: float = 120.0) -> None:
    ctx = ssl.create_default_context(cadata=ca_pem)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"https://{ip}:6443/readyz", verify=ctx, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the endpoint {ip} never answered")


def report(cases: list[Case], f: dict[str, float], time_scale: float, create_scale: float, out: Path) -> None:
    print()
    print(
        f"haplane availability benchmark, {dt.date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; canary every {PERIOD * 1000:.0f} ms"
    )
    head = (
        f"{'case':<18} {'seconds':>8} {'probes':>7} {'writes ok':>10} {'longest':>8} {'reads ok':>10} "
        f"{'longest':>8}  picture"
    )
    print(head)
    for c in cases:
        print(
            f"{c.key:<18} {c.end - c.start:8.1f} {len(c.samples):7d} {c.ratio('write_ok') * 100:9.2f}% "
            f"{c.longest_gap('write_ok'):7.2f}s "
            f"{c.ratio('read_ok') * 100:9.2f}% {c.longest_gap('read_ok'):7.2f}s  {out / (c.key + '.png')}"
        )
    by = {c.key: c for c in cases}
    print()
    print(
        f"1 -> 2 endpoint downtime (longest /readyz gap): always {by['1-2-always'].longest_gap('read_ok'):.2f} s, "
        f"as-needed {by['1-2-as-needed'].longest_gap('read_ok'):.2f} s (its forwarding rule is modelled as "
        f"{1200 * time_scale:.0f} s = 1200 s x {time_scale:g})"
    )
    print(
        f"create 3 / forwarding rule, gce x{create_scale:g}: {f['create3']:.1f} s / {f['fr']:.1f} s = "
        f"{f['create3'] / f['fr']:.3f}"
    )
    print(f"follower replace, canary writes answered: {by['follower-replace'].ratio('write_ok') * 100:.2f} %")
    print(f"leader replace, longest canary write gap: {by['leader-replace'].longest_gap('write_ok'):.2f} s")
    summary = {
        c.key: {
            "seconds": c.end - c.start,
            "write_ok": c.ratio("write_ok"),
            "read_ok": c.ratio("read_ok"),
            "longest_write_gap_s": c.longest_gap("write_ok"),
            "longest_read_gap_s": c.longest_gap("read_ok"),
        }
        for c in cases
    }
    summary["create3"] = {"seconds": f["create3"], "forwarding_rule_s": f["fr"], "ratio": f["create3"] / f["fr"]}
    (out / "figures.json").write_text(json.dumps(summary, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-scale", type=float, default=0.01, help="'gce' profile scale for the cases")
    parser.add_argument(
        "--create-scale",
        type=float,
        default=0.1,
        help="'gce' profile scale for create-3 over the forwarding rule (default 0.1: the rule "
        "takes 120 s, so Prefect's own seconds do not hide the overlap)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "availability")
    parser.add_argument("--verbose", action="store_true", help="show the flows' logs")
    parser.add_argument("--redraw", action="store_true", help="only draw the PNGs again from OUT/timelines.json")
    parser.add_argument(
        "--upgrade",
        action="store_true",
        help="only the rolling upgrade 3.4.23 -> 3.5.1 (needs Debian's etcd-server for /usr/bin/etcd)",
    )
    args = parser.parse_args(argv)
    if args.redraw:
        redraw(args.out)
        return 0

    with prefect_server("haplane-avail-", args.verbose) as work:
        if args.upgrade:
            run_upgrade(args.time_scale, args.out, work)
        else:
            run(args.time_scale, args.create_scale, args.out, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
