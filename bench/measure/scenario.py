"""Scenario files: what a benchmark run measures, in TOML.

A scenario names the datapath variants, the scale sweep (services x
endpoints), the workloads, the offered rate, repetitions and warm-up, and
where the measured service sits among the others (kube-proxy's rule order
decides how far iptables walks). Unknown keys, wrong types and impossible
values are refused with the file, the key and the fix.

Example (see scenarios/default.toml)::

    name = "default"
    [sweep]
    datapaths = ["iptables-legacy", "iptables-nft", "nftables"]
    services = [1, 100, 1000, 5000]
    endpoints = 10
    position = "last"
    [sweep.max_services]
    iptables-nft = 1000
    [traffic]
    workloads = ["udp-new", "udp-established"]
    rate_pps = 20000
    packets = 10000
    repetitions = 3
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.datapaths import VARIANTS, without_rules
from bench.errors import InputError
from bench.model.generate import capacity
from bench.model.input_limits import MAX_SCENARIO_BYTES, brief, parse_toml, read_input

# "nodeport-<w>": <w> from the external client to the measured service's NodePort on
# node 0 (see bench.measure.runner), instead of from the client pod to its ClusterIP.
PACKET_WORKLOADS = ("udp-new", "tcp-syn", "udp-established", "nodeport-udp-new",
                    "nodeport-tcp-syn", "nodeport-udp-established")
# Through real sockets (bench.measure.sockets, bench.measure.socket_points): one point per
# workload and concurrency (traffic.flows), closed or open loop (traffic.loop).
SOCKET_WORKLOADS = ("tcp-crr", "tcp-rr", "udp-rr", "tcp-stream", "nodeport-tcp-crr",
                    "nodeport-tcp-rr", "nodeport-udp-rr", "nodeport-tcp-stream")
WORKLOADS = PACKET_WORKLOADS + SOCKET_WORKLOADS
LOOPS = ("closed", "open")
MAX_FLOWS = 256
MAX_DURATION_S = 600.0
MAX_RATE_TPS = 1_000_000
KINDS = ("packets", "sync", "disruption")
# A disruption scenario (bench/measure/disruption_runner.py): background traffic to an
# unchanged service while one event happens; its points are "disruption-<event>/<background>".
EVENTS = ("full-sync", "churn", "proxy-down", "endpoint-removed", "cold-start")
EVENTS_IMPLEMENTED = ("full-sync", "proxy-down", "churn", "endpoint-removed", "cold-start")
# Replayed UDP frames, or tcp-rr transactions on kept connections through real sockets
# (bench.measure.rr_background); a [disruption] table without "background" gets the UDP two.
BACKGROUNDS = ("udp-new", "udp-established", "tcp-rr")
DEFAULT_BACKGROUNDS = ("udp-new", "udp-established")
MAX_DISRUPTION_S = 3600.0
# One change at scale, each applied as a partial sync (see bench/measure/sync_runner.py).
CHANGES = ("add-service", "remove-service", "add-endpoint", "remove-endpoint",
           "endpoint-not-ready")
POSITIONS = ("first", "middle", "last")
PROBES = ("latency", "cpu", "drops", "transit", "oneway")
# "oneway" (socket points' breakdown repetition, docs/sockets.md) only where asked for.
DEFAULT_PROBES = ("latency", "cpu", "drops", "transit")
# tcpreplay reaches about 180k packets/s per core here (docs/machines.md); far beyond that
# the offered rate would be a fiction.
MAX_RATE_PPS = 1_000_000
MAX_PACKETS = 2_000_000
MAX_REPETITIONS = 100

_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"name": str, "description": str, "kind": str, "sweep": dict, "traffic": dict,
         "measure": dict, "sync": dict, "disruption": dict},
    "sweep": {"datapaths": list, "services": list, "endpoints": int, "nodes": int,
              "position": (str, int), "max_services": dict},
    "traffic": {"workloads": list, "rate_pps": int, "packets": int, "repetitions": int,
                "warmup_packets": int, "control_packets": int, "loop": str, "flows": list,
                "duration_s": (int, float), "rate_tps": (int, float)},
    "sync": {"changes": list, "repetitions": int, "effect_rate_pps": int},
    "disruption": {"events": list, "background": list, "rate_pps": int,
                   "before_s": (int, float), "after_s": (int, float), "down_s": (int, float),
                   "churn_per_s": list, "churn_s": (int, float),
                   "min_sync_period_s": (int, float), "full_sync_period_s": (int, float),
                   "conntrack_cleanup": list},
    "measure": {"probes": list, "overhead": bool, "settle_timeout": (int, float),
                "point_time_limit": (int, float), "settle_tolerance": (int, float)},
}


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    text: str
    datapaths: tuple[str, ...]
    services: tuple[int, ...]
    endpoints: int = 10
    nodes: int = 2
    position: str | int = "last"
    max_services: dict[str, int] = field(default_factory=dict)
    workloads: tuple[str, ...] = ("udp-new",)
    rate_pps: int = 20000
    packets: int = 10000
    repetitions: int = 3
    warmup_packets: int = 1000
    # Packets of each paired control repetition (the same traffic to the backend pods'
    # own addresses, after each measured repetition); None: half of ``packets``; 0: none.
    control_packets: int | None = None
    probes: tuple[str, ...] = DEFAULT_PROBES
    overhead: bool = True
    settle_timeout: float = 60.0
    settle_tolerance: float = 0.15
    point_time_limit: float = 900.0
    description: str = ""
    kind: str = "packets"
    changes: tuple[str, ...] = CHANGES
    sync_repetitions: int = 3
    effect_rate_pps: int = 2000
    # kind = "disruption" ([disruption] table; see bench/measure/disruption_runner.py)
    events: tuple[str, ...] = ("full-sync",)
    background: tuple[str, ...] = DEFAULT_BACKGROUNDS
    disruption_rate_pps: int = 5000
    before_s: float = 2.0
    after_s: float = 5.0
    down_s: float = 3.0
    churn_per_s: tuple[int, ...] = (10, 100)
    churn_s: float = 10.0
    min_sync_period_s: float = 1.0
    # churn: a full sync at most this often (kube-proxy's FullSyncPeriod; bench.measure.churn)
    full_sync_period_s: float = 3600.0
    # endpoint-removed: with kube-proxy's conntrack cleanup of the removed UDP endpoint,
    # without it, or both (one point each)
    conntrack_cleanup: tuple[bool, ...] = (True, False)
    # Socket workloads: closed loop at each concurrency, or open loop at rate_tps.
    loop: str = "closed"
    flows: tuple[int, ...] = (8,)
    duration_s: float = 5.0
    rate_tps: float | None = None
    # Set by select_datapaths (kpbench run --datapaths): the run measures only these
    # of the file's datapaths, and its result says so.
    selected: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.control_packets is None:
            object.__setattr__(self, "control_packets", max(self.packets // 2, 1))

    def scales(self, datapath: str) -> list[int]:
        """The service counts this datapath is measured at (its cap applied)."""
        cap = self.max_services.get(datapath)
        return [n for n in self.services if cap is None or n <= cap]

    def position_index(self, services: int) -> int:
        """Index of the measured service among ``services`` (0-based)."""
        if isinstance(self.position, int):
            return min(self.position, services - 1)
        return {"first": 0, "middle": services // 2, "last": services - 1}[self.position]

    def document(self) -> dict[str, Any]:
        """The result's ``scenario``: name, path, the file as given, and a --datapaths choice."""
        doc: dict[str, Any] = {"name": self.name, "path": self.path, "text": self.text}
        if self.selected is not None:
            doc["selected_datapaths"] = list(self.selected)
        return doc

    @property
    def packet_workloads(self) -> tuple[str, ...]:
        return tuple(w for w in self.workloads if w not in SOCKET_WORKLOADS)

    @property
    def socket_items(self) -> tuple[tuple[str, int], ...]:
        """(socket workload, flows): one point each, in run order."""
        return tuple((w, f) for w in self.workloads if w in SOCKET_WORKLOADS
                     for f in self.flows)

    def event_backgrounds(self, event: str) -> tuple[str, ...]:
        """The backgrounds ``event`` is measured with: endpoint-removed is about
        established UDP flows (``udp-established`` only: a new flow per packet meets a
        removal as it meets any partial sync); every other event, each background."""
        if event == "endpoint-removed":
            return tuple(b for b in self.background if b == "udp-established")
        return self.background

    def event_options(self, event: str) -> tuple[int | bool | None, ...]:
        """One disruption point per option of ``event`` (and background): churn's
        changes per second (``churn_per_s``), endpoint-removed's ``conntrack_cleanup``
        (true, false); one point for the other events."""
        if event == "churn":
            return tuple(self.churn_per_s)
        if event == "endpoint-removed":
            return tuple(self.conntrack_cleanup)
        return (None,)

    @property
    def measured(self) -> tuple[str, ...]:
        """What each (datapath, scale) measures: traffic workloads (a socket workload once
        per concurrency, as ``<workload> x<flows>``), sync kinds, or disruption
        events with their background (``disruption-<event>/<background>``)."""
        if self.kind == "sync":
            return ("sync-full", *(f"sync-{c}" for c in self.changes))
        if self.kind == "disruption":
            return tuple(f"disruption-{event_label(e, o)}/{b}"
                         for e in self.events for b in self.event_backgrounds(e)
                         for o in self.event_options(e))
        return (*self.packet_workloads, *(socket_item(w, f) for w, f in self.socket_items))
    @property
    def points(self) -> list[tuple[str, int, str]]:
        """(datapath, services, workload) in run order."""
        return [(dp, n, w) for dp in self.datapaths for n in self.scales(dp)
                for w in self.measured]


def event_label(event: str, option: int | bool | None) -> str:
    """A disruption event's part of its points' workload names (``disruption-<label>/
    <background>``): ``churn-100`` for churn at 100 changes/s,
    ``endpoint-removed-no-cleanup`` without the conntrack cleanup; else the event's name."""
    if event == "churn":
        return f"churn-{option}"
    if event == "endpoint-removed" and option is False:
        return "endpoint-removed-no-cleanup"
    return event


def socket_item(workload: str, flows: int) -> str:
    """The name of one socket point among a scale's measured items: ``tcp-crr x8``."""
    return f"{workload} x{flows}"


def split_item(item: str) -> tuple[str, int | None]:
    """``tcp-crr x8`` -> ("tcp-crr", 8); a packet workload or sync kind -> (it, None)."""
    workload, sep, flows = item.partition(" x")
    return (workload, int(flows)) if sep else (item, None)


def select_datapaths(scenario: Scenario, names: Sequence[str]) -> Scenario:
    """``scenario`` measuring only the datapaths ``names`` (kpbench run --datapaths).

    Each name must be one of the scenario's datapaths: a subset of one scenario
    keeps its scales and workloads, so its points pair with a full run's.
    """
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not wanted:
        raise InputError("name at least one datapath, e.g. --datapaths ipvs",
                         source="--datapaths")
    unknown = [n for n in wanted if n not in scenario.datapaths]
    if unknown:
        raise InputError(f"{', '.join(unknown)}: not in scenario {scenario.name!r}; choose "
                         f"from {', '.join(scenario.datapaths)}", source="--datapaths")
    kept = tuple(d for d in scenario.datapaths if d in wanted)
    return replace(scenario, datapaths=kept, selected=kept)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    path = Path(path)
    src = str(path)
    text = read_input(path, MAX_SCENARIO_BYTES)
    doc = parse_toml(text, src)
    return parse_scenario(doc, src, text, default_name=path.stem)


def _check_keys(table: dict[str, Any], section: str, src: str) -> None:
    schema = _SCHEMA[section]
    for key, value in table.items():
        where = f"{section}.{key}" if section else key
        if key not in schema:
            raise InputError(f"unknown key; known keys here: {', '.join(sorted(schema))}",
                             source=src, field=where)
        want = schema[key]
        types = want if isinstance(want, tuple) else (want,)
        if isinstance(value, bool) and bool not in types:
            types = ()
        if not isinstance(value, types):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise InputError(f"expected {names}, got {type(value).__name__} {brief(value)}",
                             source=src, field=where)


def _choices(values: list[Any], allowed: tuple[str, ...], src: str, where: str) -> tuple[str, ...]:
    if not values:
        raise InputError("must not be empty", source=src, field=where)
    for v in values:
        if not isinstance(v, str) or v not in allowed:
            raise InputError(f"unknown value {brief(v)}; choose from {', '.join(allowed)}",
                             source=src, field=where)
    if len(set(values)) != len(values):
        twice = sorted({v for v in values if values.count(v) > 1})
        raise InputError(f"{', '.join(twice)} named more than once; name each once",
                         source=src, field=where)
    return tuple(values)


def _positive(value: int | float, src: str, where: str, hi: float | None = None,
              zero_ok: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{value} is not a finite number; give a number", source=src,
                         field=where)
    if value < 0 or (value == 0 and not zero_ok) or (hi is not None and value > hi):
        rng = f"{0 if zero_ok else 1}-{hi:g}" if hi is not None else "a positive number"
        raise InputError(f"{value} is out of range ({rng})", source=src, field=where)


def _socket_traffic(traffic: dict[str, Any], kw: dict[str, Any], src: str) -> None:
    """traffic.loop, flows, duration_s, rate_tps: the socket workloads' load."""
    loop = traffic.get("loop", "closed")
    if loop not in LOOPS:
        raise InputError(f"unknown loop {brief(loop)}; choose closed (a fixed number of "
                         "concurrent flows) or open (a fixed offered rate_tps)", source=src,
                         field="traffic.loop")
    kw["loop"] = loop
    if "flows" in traffic:
        flows = traffic["flows"]
        if not flows or not all(isinstance(f, int) and not isinstance(f, bool) for f in flows):
            raise InputError("must be a non-empty list of integers, e.g. [1, 8, 64]",
                             source=src, field="traffic.flows")
        for f in flows:
            _positive(f, src, "traffic.flows", hi=MAX_FLOWS)
        kw["flows"] = tuple(sorted(set(flows)))
    if "duration_s" in traffic:
        _positive(traffic["duration_s"], src, "traffic.duration_s", hi=MAX_DURATION_S)
        kw["duration_s"] = float(traffic["duration_s"])
    if "rate_tps" in traffic:
        _positive(traffic["rate_tps"], src, "traffic.rate_tps", hi=MAX_RATE_TPS)
        kw["rate_tps"] = float(traffic["rate_tps"])
    if (loop == "open") != ("rate_tps" in kw):
        raise InputError("loop = \"open\" needs rate_tps (offered transactions/s), and "
                         "rate_tps only goes with it", source=src, field="traffic.rate_tps")
    socket = [w for w in kw.get("workloads", ()) if w in SOCKET_WORKLOADS]
    if loop == "open" and any(w.endswith("tcp-stream") for w in socket):
        raise InputError("tcp-stream runs closed loop only (a stream has no transactions)",
                         source=src, field="traffic.loop")
    if not socket and any(k in traffic for k in ("loop", "flows", "duration_s", "rate_tps")):
        raise InputError("loop, flows, duration_s and rate_tps set the socket workloads' "
                         f"load; add one ({', '.join(SOCKET_WORKLOADS[:4])}) or remove them",
                         source=src, field="traffic")


def parse_scenario(doc: dict[str, Any], src: str = "<scenario>", text: str = "",
                   default_name: str = "scenario") -> Scenario:
    """Validate a parsed TOML document into a Scenario."""
    _check_keys(doc, "", src)
    for section in ("sweep", "traffic", "measure", "sync", "disruption"):
        _check_keys(doc.get(section, {}), section, src)
    if "sweep" not in doc:
        raise InputError("missing [sweep] table (datapaths and services)", source=src,
                         field="sweep")
    sweep, traffic, measure = doc["sweep"], doc.get("traffic", {}), doc.get("measure", {})
    kw: dict[str, Any] = {}
    for key in ("datapaths", "services"):
        if key not in sweep:
            raise InputError("missing required key", source=src, field=f"sweep.{key}")
    kw["datapaths"] = _choices(sweep["datapaths"], tuple(VARIANTS), src, "sweep.datapaths")
    services = sweep["services"]
    if not services or not all(isinstance(n, int) and not isinstance(n, bool)
                               for n in services):
        raise InputError("must be a non-empty list of integers", source=src,
                         field="sweep.services")
    nodes = sweep.get("nodes", 2)
    _positive(nodes, src, "sweep.nodes", hi=16)
    endpoints = sweep.get("endpoints", 10)
    _positive(endpoints, src, "sweep.endpoints", hi=1000)
    max_svc, max_eps = capacity(nodes)
    for n in services:
        _positive(n, src, "sweep.services")
        if n > max_svc:
            raise InputError(f"{n} services do not fit the service CIDR (at most {max_svc}); "
                             "lower the count", source=src, field="sweep.services")
        if n * endpoints > max_eps:
            raise InputError(f"{n} services x {endpoints} endpoints exceed the pod CIDRs of "
                             f"{nodes} nodes ({max_eps}); use fewer endpoints or more nodes",
                             source=src, field="sweep.endpoints")
    kw["services"] = tuple(sorted(set(services)))
    kw["endpoints"], kw["nodes"] = endpoints, nodes
    position = sweep.get("position", "last")
    if isinstance(position, str) and position not in POSITIONS:
        raise InputError(f"unknown position {brief(position)}; use {', '.join(POSITIONS)} or an "
                         "index", source=src, field="sweep.position")
    if isinstance(position, int):
        _positive(position, src, "sweep.position", zero_ok=True)
    kw["position"] = position
    caps = sweep.get("max_services", {})
    for dp, cap in caps.items():
        where = f"sweep.max_services.{dp}"
        if dp not in VARIANTS:
            raise InputError(f"unknown datapath; choose from {', '.join(VARIANTS)}", source=src,
                             field=where)
        if not isinstance(cap, int) or isinstance(cap, bool):
            raise InputError(f"expected int, got {brief(cap)}", source=src, field=where)
        _positive(cap, src, where)
    kw["max_services"] = dict(caps)

    if "workloads" in traffic:
        kw["workloads"] = _choices(traffic["workloads"], WORKLOADS, src, "traffic.workloads")
    for key, hi, zero_ok in (("rate_pps", MAX_RATE_PPS, False), ("packets", MAX_PACKETS, False),
                             ("repetitions", MAX_REPETITIONS, False),
                             ("warmup_packets", MAX_PACKETS, True),
                             ("control_packets", MAX_PACKETS, True)):
        if key in traffic:
            _positive(traffic[key], src, f"traffic.{key}", hi=hi, zero_ok=zero_ok)
            kw[key] = traffic[key]
    _socket_traffic(traffic, kw, src)
    if "probes" in measure:
        kw["probes"] = _choices(measure["probes"], PROBES, src, "measure.probes")
        timed = [w for w in kw.get("workloads", Scenario.workloads)
                 if w in SOCKET_WORKLOADS and not w.endswith("tcp-stream")]
        if "oneway" in kw["probes"] and (not timed or doc.get("kind", "packets") != "packets"):
            raise InputError("the oneway probe times socket workloads' requests and responses "
                             "(tcp-crr, tcp-rr, udp-rr); add one to traffic.workloads or "
                             "remove \"oneway\"", source=src, field="measure.probes")
    for key in ("settle_timeout", "point_time_limit", "settle_tolerance"):
        if key in measure:
            _positive(measure[key], src, f"measure.{key}", zero_ok=key == "settle_timeout")
            kw[key] = float(measure[key])
    if "overhead" in measure:
        kw["overhead"] = measure["overhead"]
    kind = doc.get("kind", "packets")
    if kind not in KINDS:
        raise InputError(f"unknown kind {brief(kind)}; choose from {', '.join(KINDS)}", source=src,
                         field="kind")
    kw["kind"] = kind
    if kind != "packets":  # a sync or disruption scenario measures the rules' changes
        for dp in kw["datapaths"]:
            if without_rules(dp):
                raise InputError(f"{dp} programs no Service rules, so a {kind} scenario has "
                                 "nothing to measure for it; remove it", source=src,
                                 field="sweep.datapaths")
    sync = doc.get("sync", {})
    if sync and kind != "sync":
        raise InputError("a [sync] table needs kind = \"sync\"", source=src, field="sync")
    if "changes" in sync:
        kw["changes"] = _choices(sync["changes"], CHANGES, src, "sync.changes")
    if "repetitions" in sync:
        _positive(sync["repetitions"], src, "sync.repetitions", hi=MAX_REPETITIONS)
        kw["sync_repetitions"] = sync["repetitions"]
    if "effect_rate_pps" in sync:
        _positive(sync["effect_rate_pps"], src, "sync.effect_rate_pps", hi=MAX_RATE_PPS)
        kw["effect_rate_pps"] = sync["effect_rate_pps"]
    kw.update(_disruption(doc.get("disruption", {}), kind, src))
    name = doc.get("name", default_name)
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise InputError("use letters, digits, '-', '_' and '.' only", source=src, field="name")
    return Scenario(name=name, path=src, text=text, description=doc.get("description", ""),
                    **kw)


def _disruption(table: dict[str, Any], kind: str, src: str) -> dict[str, Any]:
    """The Scenario fields of a ``[disruption]`` table (validated; types checked already)."""
    if table and kind != "disruption":
        raise InputError("a [disruption] table needs kind = \"disruption\"", source=src,
                         field="disruption")
    kw: dict[str, Any] = {}
    if "events" in table:
        events = _choices(table["events"], EVENTS, src, "disruption.events")
        todo = [e for e in events if e not in EVENTS_IMPLEMENTED]
        if todo:
            raise InputError(f"not implemented yet: {', '.join(todo)}; implemented: "
                             f"{', '.join(EVENTS_IMPLEMENTED)}", source=src,
                             field="disruption.events")
        kw["events"] = events
        if ("endpoint-removed" in events and "udp-established"
                not in table.get("background", DEFAULT_BACKGROUNDS)):
            raise InputError("endpoint-removed measures established UDP flows: add "
                             "\"udp-established\" to disruption.background", source=src,
                             field="disruption.events")
    if "background" in table:
        kw["background"] = _choices(table["background"], BACKGROUNDS, src,
                                    "disruption.background")
    if "rate_pps" in table:
        _positive(table["rate_pps"], src, "disruption.rate_pps", hi=MAX_RATE_PPS)
        kw["disruption_rate_pps"] = table["rate_pps"]
    for key in ("before_s", "after_s", "down_s", "churn_s", "min_sync_period_s",
                "full_sync_period_s"):
        if key in table:
            _positive(table[key], src, f"disruption.{key}", hi=MAX_DISRUPTION_S,
                      zero_ok=key == "min_sync_period_s")
            kw[key] = float(table[key])
    if "churn_per_s" in table:
        values = table["churn_per_s"]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool)
                                 for v in values):
            raise InputError("must be a non-empty list of integers", source=src,
                             field="disruption.churn_per_s")
        for v in values:
            _positive(v, src, "disruption.churn_per_s", hi=100_000)
        kw["churn_per_s"] = tuple(values)
    if "conntrack_cleanup" in table:
        values = table["conntrack_cleanup"]
        if (not values or not all(isinstance(v, bool) for v in values)
                or len(set(values)) != len(values)):
            raise InputError("must be [true], [false] or [true, false] (endpoint-removed with "
                             "kube-proxy's conntrack cleanup, without it, or both)",
                             source=src, field="disruption.conntrack_cleanup")
        kw["conntrack_cleanup"] = tuple(values)
    return kw
