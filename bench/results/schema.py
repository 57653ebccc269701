"""The on-disk schema of a result: its document shape, its version history, its upgrades.

A result file holds the scenario as given, the environment that bends the
numbers, and one entry per measured point (datapath x scale x workload x
rate x position) with its repetitions and a summary computed from them
(bench.results.summarise). A measurement a probe failed to take is recorded
under ``missing`` with the reason and is null in the data — never zero.

The document's JSON Schema is docs/result.schema.json (draft 2020-12); every
read checks a file against it (bench.results.reader). A field added to the
TypedDicts below goes into the schema too (tests/unit/test_result_schema.py).

Schema version history (``schema_version``, an integer; bump it on any change
a reader of the previous version would misread, say here what changed, and
register an upgrade from the previous version with :func:`upgrade_from`):

- 1 (2026-11): first version.
- 2 (2026-11): one meaning for sync times, the datapath's own. ``setup.sync_seconds``
  is node 0's *apply* time (the tool and the kernel, as kube-proxy's per-node
  ``sync_proxy_rules_duration_seconds``) of the scale's first full sync, in packet
  and sync scenarios alike; version 1 held render + apply, summed over both nodes
  in packet scenarios and node 0's in sync scenarios. kpbench's render time is
  ``setup.sync_render_seconds``; every node's apply is ``setup.sync_node_seconds``.
  At status ``exceeded-limit`` they hold the time reached when the tool was
  stopped (version 1: the limit). Sync repetitions lost ``sync.total`` (render +
  apply): ``sync.apply`` is the figure, ``sync.render`` stays apart. Version 1
  documents are upgraded when read (:func:`upgrade_v1`, registered as the upgrade
  from 1): their sync times cannot be split, so they become null with the reason
  under ``missing``; repetitions'
  ``sync.apply`` and ``sync.render`` were measured apart and are kept.
  Also new in version 2 (optional fields): a point's ``breakdown`` (the repetition
  with the breakdown probes, no longer in ``repetitions``; the upgrade moves a
  version 1 point's breakdown repetitions out of ``repetitions``), ``control``
  (the paired control repetitions: the same traffic to the backend pods' own
  addresses), ``failed_repetitions`` (replays that failed,
  with why; not in ``repetitions``); ``setup.settle_converged``; a repetition's
  ``arrival_seconds`` (first to last arrival at the backends); the summary's
  ``control`` and ``service_minus_control_*``. ``delivered_pps`` is now measured at
  the receiver (delivered over arrival_seconds), null where that is unknown.
  A point's ``datapath`` is the datapath family's name (``ebpf-tc``, ``socket-lb``);
  results written before that recorded the variant's first word (``ebpf``,
  ``socket``), which reading maps to the family
  (:data:`bench.results.reader.OLD_FAMILY_NAMES`).
  Socket points (optional fields, still version 2): a point with ``flows`` (and
  ``loop``, ``rate_tps``) measured a socket workload (``tcp-crr``, ``tcp-rr``,
  ``udp-rr``, ``tcp-stream``); its repetitions keep the packet keys neutral
  (``sent``/``delivered`` 0, the rest null) and carry ``rtt_hist`` and ``socket``;
  its ``control`` is the direct path; its summary adds the socket figures
  (:class:`SummaryDoc`). With the ``oneway`` probe, its ``breakdown`` and
  ``control_breakdown`` (the direct path's) carry ``one_way_request_hist``,
  ``one_way_response_hist`` and ``one_way`` (the probe's counts), and the summary
  ``one_way_ns`` and ``service_minus_direct_request_p50_ns`` / ``_response_p50_ns``.
  Its ``generator_ceiling`` is the generator's own ceiling, and its summary says
  ``at_generator_ceiling`` and ``offered_not_reached``.
  CPU passes (optional field, still version 2; 2026-12): a packet repetition's CPU
  figures (``softirq_ns``, ``process_ns``, ``cpu_ns_per_packet``) come from a pass of
  its own - the same traffic on flows of its own, the cpu probe alone timing and the
  latency probe in sink mode - over ``cpu_delivered`` packets (counted by the sink at
  the backends' ingress); its latency, ``sent`` and ``delivered`` from the pass without the cpu
  probe. Earlier results timed both in one pass, both probes attached (their CPU
  figures carry the latency probe's arrival program, their latencies the cpu probe's
  entry program); a reader takes ``delivered`` where ``cpu_delivered`` is absent.
  Compensated CPU passes (optional fields, still version 2; 2026-12): ``softirq_ns`` is
  the NET_RX time less the cpu probe's own share of it, ``softirq_probe_ns`` (the share
  per NET_RX softirq the run measured, bench.measure.overhead.cpu_probe_share, times
  ``net_rx_softirqs``, the softirqs the pass timed). Without ``softirq_probe_ns`` the
  share was not taken out (earlier results, or a run that did not measure its probes'
  overhead): that figure keeps it, about 100-150 ns a softirq on the reference machine.
  Transit at the nodes' hooks (same fields, still version 2; 2026-12-02):
  ``transit_hist`` times a node's tc ingress to its tc egress of the same packet,
  matched by its sequence number, so through a userspace proxy it spans the proxy;
  its sample is the packets whose sequence number is a multiple of
  ``transit_sample_every``. Earlier results timed ``net:netif_receive_skb`` to
  ``net:net_dev_start_xmit`` of the same skb (on veth the same span for the
  kernel's datapaths; no transit through a proxy, whose send is a new skb) on 1 in
  ``transit_sample_every`` of the skbs the client sent.
  Latency per path (optional fields, still version 2; 2026-12-03): a packet
  repetition's ``latency_entry_node_hist`` / ``latency_other_node_hist`` split its
  latency by the node of the backend pod each packet reached (the latency probe
  records each packet's destination as it arrives); the summary's
  ``latency_by_path_ns`` (with each path's ``share``), the control's, and
  ``service_minus_control_p50_by_path_ns``. A udp-established point's control sends
  each of its 16 flows to the pod the Service's flow of the same number reached in
  the repetition it follows (earlier: round-robin over the pods, whatever the Service
  chose).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NotRequired, TypedDict

#: The two paths a packet to a backend pod takes (repetition key of each one's latency
#: histogram): to a pod on the node the traffic entered, or on to another node.
LATENCY_PATHS: tuple[tuple[str, str], ...] = (
    ("entry_node", "latency_entry_node_hist"), ("other_node", "latency_other_node_hist"))

SCHEMA_VERSION = 2
KIND = "kpbench-result"

RUN_STATUSES = ("running", "complete", "interrupted", "failed")
POINT_STATUSES = ("ok", "failed", "exceeded-limit")
WHERE = ("host", "vm")
VM_ACCELS = ("kvm", "tcg")

RunStatus = Literal["running", "complete", "interrupted", "failed"]
PointStatus = Literal["ok", "failed", "exceeded-limit"]


# -- document shape ----------------------------------------------------------------------

class ScenarioDoc(TypedDict):
    name: str
    path: str
    text: str  # the TOML exactly as given, so a result can be re-run or audited
    # Only in a run of part of the file (kpbench run --datapaths): the datapaths it measured.
    selected_datapaths: NotRequired[list[str]]


class VmDoc(TypedDict):
    accel: Literal["kvm", "tcg"]
    kernel: str


class EnvironmentDoc(TypedDict):
    kernel_release: str
    kernel_version: str
    where: Literal["host", "vm"]
    vm: VmDoc | None
    cpu_model: str | None
    cpu_count: int | None
    governor: str | None
    python: str
    kpbench: str | None
    tools: dict[str, str | None]
    git_commit: str | None
    git_dirty: bool | None
    hostname: str
    # A short hash of /etc/machine-id (machine_id()): tells apart two machines that share
    # a host name. Absent in results written before it was recorded.
    machine_id: NotRequired[str | None]
    # Only in a run made slower on purpose (kpbench run --inject-rules, bench.measure.slowdown).
    injected_rules: NotRequired[int]


class SetupDoc(TypedDict):
    # The scale's first full sync: node 0's apply time (tool + kernel; at status
    # "exceeded-limit", the time reached when it was stopped), kpbench's render time
    # for node 0 (never part of sync_seconds), and the apply time of every node
    # programmed, in node order (packet scenarios program all, sync scenarios node 0).
    sync_seconds: float | None
    sync_render_seconds: float | None
    sync_node_seconds: list[float]
    settle_seconds: float | None  # waited, converged or not
    state_size: dict[str, Any]
    # False: the settle timed out (or nothing arrived) before latency stopped drifting,
    # so settle_seconds is how long it waited, not how long settling took.
    settle_converged: NotRequired[bool | None]


class RepetitionDoc(TypedDict):
    offered_pps: float | None
    achieved_pps: float | None
    sent: int
    delivered: int
    latency_hist: dict[str, Any] | None
    cpu_ns_per_packet: float | None  # (softirq_ns + process_ns) / cpu_delivered
    softirq_ns: int | None  # NET_RX softirq time, machine-wide, less softirq_probe_ns
    # The cpu probe's own share taken out of softirq_ns (its share per softirq times
    # net_rx_softirqs); absent: not taken out.
    softirq_probe_ns: NotRequired[int]
    net_rx_softirqs: NotRequired[int]  # NET_RX softirqs the cpu pass timed
    # Packets the backends received in the repetition's cpu pass (its traffic again, the
    # cpu probe alone timing, the latency probe sinking): the CPU figures' denominator.
    # Absent in results written before the passes were split: ``delivered`` then.
    cpu_delivered: NotRequired[int]
    # CPU time of the datapath's own processes (a userspace proxy), their NET_RX time
    # (already in softirq_ns) taken out; 0 for a datapath that runs none.
    process_ns: NotRequired[int | None]
    drops: dict[str, int] | None
    transit_hist: dict[str, Any] | None
    # transit_hist holds 1 in this many of the repetition's packets (the transit probe
    # times a sample of them); absent: every one (results written before sampling).
    transit_sample_every: NotRequired[int]
    # Kernel-function breakdown (bench.measure.kfunc_probes), where the kernel has kprobes.
    kfunc: NotRequired[dict[str, dict[str, Any]] | None]
    # Sync points (workload "sync-*"), node 0, seconds: "apply" (the datapath's time,
    # the figure), "render" (kpbench's, apart), "kernel" (in the applying tool's
    # syscalls), "commit", "effect" (to the change's effect on traffic); None: not measured.
    # Optional, where the datapath has them: "list" (the agent reading its state back from
    # the kernel, e.g. nftables' table listing: timed apart, never part of "apply") and
    # "transaction_max" (the longest transaction of the apply, e.g. nftables-chunked's).
    sync: NotRequired[dict[str, float | None]]
    # First to last arrival of the delivered packets at the backends (the latency probe's
    # stamps): delivered_pps is measured over it, not derived from the sender's rate.
    arrival_seconds: NotRequired[float | None]
    # Disruption points (workload "disruption-<event>/<background>"): the event's figures
    # and the background's timeline (bench.measure.disruption, docs/disruption.md).
    disruption: NotRequired[dict[str, Any]]
    # The latency of the packets that reached a backend pod on the node the traffic
    # entered (entry_node) and on another node (other_node): two paths of different
    # length, whose mix a Service's random choice sets (LATENCY_PATHS).
    latency_entry_node_hist: NotRequired[dict[str, Any] | None]
    latency_other_node_hist: NotRequired[dict[str, Any] | None]
    # Socket points: per-transaction round-trip times (ns), and the socket figures.
    rtt_hist: NotRequired[dict[str, Any] | None]
    socket: NotRequired[SocketRepetitionDoc]
    # A socket point's breakdown repetitions (the one-way probe, probes/oneway.c): the
    # requests' and responses' one-way times (ns) and the probe's counts (matched,
    # unmatched, SYNs per hook, ...: bench.measure.probes.oneway.COUNTERS).
    one_way_request_hist: NotRequired[dict[str, Any] | None]
    one_way_response_hist: NotRequired[dict[str, Any] | None]
    one_way: NotRequired[dict[str, int]]


class SocketRepetitionDoc(TypedDict):
    """A socket workload's repetition (bench.measure.sockets.SocketResult)."""

    seconds: float  # measured duration
    transactions: int  # completed (0 for tcp-stream)
    transactions_per_s: float | None
    throughput_bps: float | None  # tcp-stream
    offered_tps: float | None  # open loop
    failed: int  # failed connections, timeouts, resets mid-transaction, lost replies
    retransmits: int  # TcpRetransSegs of the client and responder namespaces
    resets: int  # TcpOutRsts of the same
    conntrack_entries_created: int | None  # on the nodes
    generator_cpu_ns: int | None
    responder_cpu_ns: int | None
    softirq_ns: int | None  # NET_RX softirq, machine-wide, less softirq_probe_ns
    # The cpu probe's own share taken out of softirq_ns (as a packet repetition's); absent:
    # not taken out. net_rx_softirqs: the NET_RX softirqs timed.
    softirq_probe_ns: NotRequired[int]
    net_rx_softirqs: NotRequired[int]
    # The datapath's own processes (a userspace proxy), NET_RX in their context taken out.
    datapath_ns: NotRequired[int | None]
    # The one CPU the generator and the responders shared (one flow); absent: unpinned.
    shared_cpu: NotRequired[int]



class FailedRepetitionDoc(TypedDict):
    phase: Literal["measured", "control", "breakdown"]
    index: int
    error: str  # why (tcpreplay's message, a timeout, a short send)


class ControlSummaryDoc(TypedDict):
    """The paired control's own figures (see SummaryDoc)."""

    delivered_pps: float | None
    loss: float | None
    latency_ns: dict[str, float | int | None] | None
    cpu_ns_per_packet: float | None
    softirq_ns_per_packet: NotRequired[float | None]
    process_ns_per_packet: NotRequired[float | None]
    latency_by_path_ns: NotRequired[dict[str, dict[str, float | int | None] | None]]


class SummaryDoc(TypedDict):
    offered_pps: float | None
    achieved_pps: float | None
    delivered_pps: float | None
    loss: float | None
    latency_ns: dict[str, float | int | None] | None
    # Per path (LATENCY_PATHS): the merged histogram's summary and its ``share`` of the
    # packets; a path no packet took is None.
    latency_by_path_ns: NotRequired[dict[str, dict[str, float | int | None] | None]]
    cpu_ns_per_packet: float | None  # softirq + process
    softirq_ns_per_packet: NotRequired[float | None]
    process_ns_per_packet: NotRequired[float | None]
    # The probes' own cost (probe_overhead) as a percentage of this point's CPU per packet.
    probe_overhead_pct: NotRequired[dict[str, float] | None]
    drops: dict[str, int] | None
    transit_ns: dict[str, float | int | None] | None
    kfunc_ns_per_packet: NotRequired[dict[str, float | None] | None]
    sync: NotRequired[dict[str, float | None]]  # per key: median over repetitions
    # Points with a paired control: its figures, and the Service's minus the control's.
    control: NotRequired[ControlSummaryDoc]
    service_minus_control_p50_ns: NotRequired[float | None]
    service_minus_control_p99_ns: NotRequired[float | None]
    service_minus_control_cpu_ns_per_packet: NotRequired[float | None]
    # Per path (LATENCY_PATHS): the Service's p50 minus the control's on the same path.
    service_minus_control_p50_by_path_ns: NotRequired[dict[str, float | None]]
    # Disruption points: per event figure, the median over the repetitions.
    disruption: NotRequired[dict[str, float | None]]
    # Socket points (bench.results.summarise.summarise_point documents each).
    loop: NotRequired[str]
    flows: NotRequired[int]
    offered_tps: NotRequired[float | None]
    transactions_per_s: NotRequired[float | None]
    throughput_bps: NotRequired[float | None]
    rtt_ns: NotRequired[dict[str, float | int | None] | None]
    cpu_ns_per_transaction: NotRequired[dict[str, float | None] | None]
    failed_connections: NotRequired[int]
    retransmits: NotRequired[int]
    resets: NotRequired[int]
    conntrack_entries_created: NotRequired[int | None]
    direct: NotRequired[dict[str, Any]]
    service_minus_direct_rtt_p50_ns: NotRequired[float | None]
    service_minus_direct_rtt_p99_ns: NotRequired[float | None]
    service_minus_direct_cpu_ns_per_transaction: NotRequired[float | None]
    service_minus_direct_transactions_per_s: NotRequired[float | None]
    # From the breakdown repetitions (the one-way probe): {"request": ..., "response": ...}
    # each like rtt_ns (the direct path's under direct.one_way_ns), and the Service's
    # one-way p50 minus the direct path's per direction.
    one_way_ns: NotRequired[dict[str, dict[str, float | int | None] | None]]
    service_minus_direct_request_p50_ns: NotRequired[float | None]
    service_minus_direct_response_p50_ns: NotRequired[float | None]
    # The point's rate >= 90 % of point["generator_ceiling"]'s, and (open loop) achieved
    # < 95 % of offered (bench.results.summarise.ceiling_flags).
    at_generator_ceiling: NotRequired[bool | None]
    offered_not_reached: NotRequired[bool | None]


class PointDoc(TypedDict):
    id: str
    datapath: str
    variant: str
    services: int
    endpoints: int
    workload: str
    rate_pps: int | None  # None: the generator's top speed
    position: str
    position_index: int
    status: PointStatus
    error: str | None
    setup: SetupDoc
    repetitions: list[RepetitionDoc]
    summary: NotRequired[SummaryDoc]
    missing: dict[str, str]
    probe_overhead: dict[str, Any] | None
    # The repetition with the breakdown probes (drops, transit, kernel functions): their
    # cost inflates its latency and CPU, so it is never pooled with the repetitions.
    breakdown: NotRequired[RepetitionDoc | None]
    # The paired control: after each repetition, the same traffic to the backend pods'
    # own addresses (no Service translation); summary.service_minus_control_* pair them.
    control: NotRequired[list[RepetitionDoc] | None]
    failed_repetitions: NotRequired[list[FailedRepetitionDoc]]
    # Socket points: the direct path's breakdown repetition (``breakdown`` is the
    # Service's), with the one-way probe; never pooled.
    control_breakdown: NotRequired[RepetitionDoc | None]
    # Socket points only: the closed loop's concurrency or the open loop's offered rate.
    loop: NotRequired[Literal["closed", "open"]]
    flows: NotRequired[int]
    rate_tps: NotRequired[float | None]
    # Socket points: the generator and responder's own ceiling at this workload and
    # flows, closed loop (bench.measure.generator_ceiling): {transactions_per_s,
    # throughput_bps, seconds, measured_at}; None when it could not be measured.
    generator_ceiling: NotRequired[dict[str, Any] | None]
    # Only in a baseline pooled from several runs (bench.results.baseline): which runs the
    # repetitions came from, in order (see bench.results.model.Point.runs).
    per_run: NotRequired[list[RunShareDoc]]


class RunShareDoc(TypedDict):
    """One run's share of a pooled point: its next ``repetitions`` (and ``control``
    repetitions) and its own setup."""

    repetitions: int
    setup: SetupDoc
    control: NotRequired[int]


class ResultDoc(TypedDict):
    schema_version: int
    # Only in memory, when an older document was read (bench.results.schema.upgrade).
    upgraded_from: NotRequired[int]
    kind: str
    run_id: str
    started: str
    finished: str | None
    status: RunStatus
    scenario: ScenarioDoc
    environment: EnvironmentDoc
    points: list[PointDoc]




def is_socket_point(point: Any) -> bool:
    """Whether a point (document or read model) measured a socket workload."""
    return point.get("flows") is not None


# -- upgrades ------------------------------------------------------------------------------

Upgrade = Callable[[dict[str, Any]], dict[str, Any]]

#: version -> the function that reads a document of that version as the next version.
UPGRADES: dict[int, Upgrade] = {}


def upgrade_from(version: int) -> Callable[[Upgrade], Upgrade]:
    """Register the decorated function as the upgrade of a ``version`` document to
    ``version + 1`` (one per older version: :func:`upgrade` chains them)."""
    def register(fn: Upgrade) -> Upgrade:
        if version in UPGRADES:
            raise ValueError(f"two upgrades from schema_version {version}")
        UPGRADES[version] = fn
        return fn
    return register


def upgrade(doc: dict[str, Any], version: int) -> dict[str, Any] | None:
    """``doc`` (of schema ``version``) read as :data:`SCHEMA_VERSION`, by the chain of
    registered upgrades, with ``upgraded_from`` set; None when a step of the chain is
    missing (the version is too old to read)."""
    if version == SCHEMA_VERSION:
        return doc
    start = version
    while version < SCHEMA_VERSION:
        step = UPGRADES.get(version)
        if step is None:
            return None
        doc = step(doc)
        version += 1
        doc["schema_version"] = version
    doc["upgraded_from"] = start
    return doc


V1_SYNC_NOTE = ("schema 1 recorded render + apply (summed over both nodes in packet "
                "scenarios): not the datapath's per-node apply time; re-record the result")


def _is_v1_breakdown(rep: Any) -> bool:
    """Version 1 appended the breakdown repetition to ``repetitions``: the one that took
    no latency but drops, transit or kernel-function time."""
    return (isinstance(rep, dict) and rep.get("latency_hist") is None
            and any(rep.get(k) is not None for k in ("drops", "transit_hist", "kfunc")))


def _move_v1_breakdown(p: dict[str, Any]) -> bool:
    """Move a version 1 point's breakdown repetitions to ``breakdown`` (each run's share
    of a pooled point shrinks by its own); True if any moved."""
    reps = p.get("repetitions")
    if not isinstance(reps, list) or not any(_is_v1_breakdown(r) for r in reps):
        return False
    shares = p.get("per_run")
    if isinstance(shares, list) and all(isinstance(r, dict) and isinstance(
            r.get("repetitions"), int) for r in shares):
        start = 0
        for share in shares:
            mine = reps[start:start + share["repetitions"]]
            start += share["repetitions"]
            share["repetitions"] -= sum(_is_v1_breakdown(r) for r in mine)
    p["breakdown"] = next(r for r in reversed(reps) if _is_v1_breakdown(r))
    p["repetitions"] = [r for r in reps if not _is_v1_breakdown(r)]
    return True


@upgrade_from(1)
def upgrade_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """A schema 1 document read as schema 2 (see the version history above), in place.

    Sync times of version 1 mixed kpbench's render into the datapath's apply
    and, in packet scenarios, summed both nodes: they cannot be split, so they
    become null with :data:`V1_SYNC_NOTE` under the point's ``missing``. A sync
    point's repetitions measured ``apply`` and ``render`` apart: those stay.
    """
    def items(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []  # the reader names the damage

    for p in items(doc.get("points")):
        if not isinstance(p, dict):
            continue
        had = False
        for setup in [p.get("setup"), *(r.get("setup") for r in items(p.get("per_run"))
                                        if isinstance(r, dict))]:
            if isinstance(setup, dict):
                had |= setup.get("sync_seconds") is not None
                setup.update(sync_seconds=None, sync_render_seconds=None, sync_node_seconds=[])
        for rep in items(p.get("repetitions")):
            if isinstance(rep, dict) and isinstance(rep.get("sync"), dict):
                rep["sync"].pop("total", None)
        summary = p.get("summary")
        if isinstance(summary, dict) and isinstance(summary.get("sync"), dict):
            summary["sync"].pop("total", None)
        if _move_v1_breakdown(p):
            p.pop("summary", None)  # pooled with the breakdown: computed again when read
        if had and isinstance(p.setdefault("missing", {}), dict):
            p["missing"]["sync_seconds"] = V1_SYNC_NOTE
    doc["schema_version"] = 2
    doc.setdefault("upgraded_from", 1)
    return doc

