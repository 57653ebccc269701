"""The read model of a result: frozen Result / Point / Repetition objects over a document.

A document (bench.results.reader) is read into this model once; the objects
keep the document and answer what the analysis and the presentation ask of
it, each answer computed the first time it is asked and kept (as pyperf's
Run and Benchmark): a repetition parses its histograms once, a point merges
its repetitions' histograms once and computes its summary once (the stored
one when the file has it), a pooled point splits into its runs once. So
comparing, summarising, exporting and plotting one file in one process
parse every histogram once, however many metrics read it.

A :class:`Result` and a :class:`Point` are also read-only mappings over
their documents (a point's with its summary filled in), for code that still
reads results as dicts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bench.analysis import stats
from bench.results.schema import (
    PointDoc,
    RepetitionDoc,
    ResultDoc,
    SummaryDoc,
    is_socket_point,
)
from bench.results.summarise import summarise_point


def _dict(obj: Any) -> Mapping[str, Any]:
    # Optional parts of a document may be absent or null: read them as empty.
    return obj if isinstance(obj, Mapping) else {}


@dataclass(frozen=True, eq=False)
class Repetition:
    """One repetition of a point (measured, control or breakdown) and what derives from it."""

    doc: RepetitionDoc

    @property
    def sent(self) -> int:
        return self.doc["sent"]

    @property
    def delivered(self) -> int:
        return self.doc["delivered"]

    @property
    def sync(self) -> Mapping[str, float | None]:
        """The sync times of a sync repetition (empty for a packet repetition)."""
        return _dict(self.doc.get("sync"))

    @cached_property
    def latency(self) -> stats.Histogram | None:
        """The latency histogram, parsed once (None: not measured)."""
        return self._parse("latency_hist")

    @cached_property
    def transit(self) -> stats.Histogram | None:
        """The transit histogram (breakdown probes), parsed once."""
        return self._parse("transit_hist")

    @cached_property
    def rtt(self) -> stats.Histogram | None:
        """A socket repetition's per-transaction RTT histogram, parsed once."""
        return self._parse("rtt_hist")

    @property
    def socket(self) -> Mapping[str, Any]:
        """A socket repetition's figures (empty for a packet repetition)."""
        return _dict(self.doc.get("socket"))

    def rtt_percentile(self, q: str) -> float | None:
        """The repetition's own RTT percentile ``q`` ("p50", "p99"; None: none)."""
        h = self.rtt
        if h is None or not h.count:
            return None
        return h.percentiles([float(q[1:])])[q]

    def _parse(self, key: str) -> stats.Histogram | None:
        h = self.doc.get(key)
        return stats.Histogram.from_json(h) if h is not None else None  # type: ignore[arg-type]

    def histogram(self, key: str) -> stats.Histogram | None:
        """The ``key`` histogram ("latency_hist", "transit_hist", "rtt_hist"; parsed once),
        or another one's (a socket breakdown's "one_way_*_hist"), parsed now."""
        if key == "latency_hist":
            return self.latency
        if key == "rtt_hist":
            return self.rtt
        return self.transit if key == "transit_hist" else self._parse(key)

    @cached_property
    def _latency_percentiles(self) -> dict[str, float | None]:
        return {}

    def latency_percentile(self, q: str) -> float | None:
        """The repetition's own latency percentile ``q`` ("p50", "p99.9"; None: none)."""
        h = self.latency
        if h is None or not h.count:
            return None
        if q not in self._latency_percentiles:
            self._latency_percentiles.update(h.percentiles([float(q[1:])]))
        return self._latency_percentiles[q]

    @cached_property
    def latency_summary(self) -> dict[str, float | int | None] | None:
        """stats.summary of the latency histogram (None: not measured)."""
        return stats.summary(self.latency) if self.latency is not None else None

    @cached_property
    def transit_summary(self) -> dict[str, float | int | None] | None:
        """stats.summary of the transit histogram (None: not measured)."""
        return stats.summary(self.transit) if self.transit is not None else None

    @property
    def cpu_delivered(self) -> int:
        """The CPU figures' packets: those the repetition's cpu pass delivered (results
        from before the passes were split: ``delivered``)."""
        return int(self.doc.get("cpu_delivered", self.delivered))

    @property
    def cpu_ns_per_packet(self) -> float | None:
        """CPU per delivered packet: (NET_RX softirq + the datapath's processes) /
        cpu_delivered, or the recorded figure of a repetition that kept only that."""
        softirq = self.doc.get("softirq_ns")
        if softirq is not None and self.cpu_delivered > 0:
            return (softirq + (self.doc.get("process_ns") or 0)) / self.cpu_delivered
        return self.doc.get("cpu_ns_per_packet")

    @property
    def softirq_ns_per_packet(self) -> float | None:
        """NET_RX softirq time per delivered packet, or the recorded CPU figure."""
        softirq = self.doc.get("softirq_ns")
        if softirq is not None and self.cpu_delivered > 0:
            return float(softirq) / self.cpu_delivered
        return self.doc.get("cpu_ns_per_packet")

    @property
    def delivered_pps(self) -> float | None:
        """Measured at the receiver: n arrivals over the span from the first to the last."""
        span = self.doc.get("arrival_seconds") or 0
        return (self.delivered - 1) / span if span > 0 and self.delivered > 1 else None

    @property
    def loss(self) -> float | None:
        """The fraction of sent packets not delivered (None: nothing sent)."""
        return 1 - self.delivered / self.sent if self.sent > 0 else None


def _repetitions(docs: Any) -> tuple[Repetition, ...]:
    return tuple(Repetition(r) for r in docs or [] if isinstance(r, dict))


@dataclass(frozen=True, eq=False)
class Point(Mapping[str, Any]):
    """One measured point: its coordinates, repetitions, summary and runs.

    ``doc`` is the point as stored; the repetitions are read from it once.
    """

    doc: PointDoc
    repetitions: tuple[Repetition, ...] = field(init=False)
    control: tuple[Repetition, ...] | None = field(init=False)
    breakdown: Repetition | None = field(init=False)

    def __post_init__(self) -> None:
        # Frozen: the derived fields are set once, here.
        control = self.doc.get("control")
        breakdown = self.doc.get("breakdown")
        object.__setattr__(self, "repetitions", _repetitions(self.doc.get("repetitions")))
        object.__setattr__(self, "control", None if control is None else _repetitions(control))
        object.__setattr__(self, "breakdown",
                           Repetition(breakdown) if isinstance(breakdown, dict) else None)

    # -- coordinates ----------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.doc["id"]

    @property
    def datapath(self) -> str:
        return self.doc["datapath"]

    @property
    def variant(self) -> str:
        """The datapath variant (the datapath's name where the variant is empty)."""
        return self.doc["variant"] or self.doc["datapath"]

    @property
    def workload(self) -> str:
        return self.doc["workload"]

    @property
    def services(self) -> int:
        return int(self.doc["services"])

    @property
    def status(self) -> str:
        return self.doc["status"]

    @property
    def ok(self) -> bool:
        return self.doc["status"] == "ok"

    @property
    def error(self) -> str | None:
        return self.doc.get("error")

    @property
    def is_sync(self) -> bool:
        """A sync point (bench.measure.sync_runner names their workloads "sync-*")."""
        return self.doc["workload"].startswith("sync-")

    @property
    def is_disruption(self) -> bool:
        """A disruption point (bench.measure.disruption_runner names their workloads
        "disruption-<event>/<background>")."""
        return self.doc["workload"].startswith("disruption-")

    @property
    def is_socket(self) -> bool:
        """A socket workload's point (bench.results.schema.is_socket_point)."""
        return is_socket_point(self.doc)

    @property
    def setup(self) -> Mapping[str, Any]:
        return _dict(self.doc.get("setup"))

    @property
    def missing(self) -> Mapping[str, str]:
        return _dict(self.doc.get("missing"))

    @property
    def probe_overhead(self) -> Mapping[str, Any]:
        return _dict(self.doc.get("probe_overhead"))

    # -- derived, computed once -----------------------------------------------------------

    def _histogram(self, rep: RepetitionDoc, key: str) -> stats.Histogram | None:
        """The cached histogram of one of this point's repetition documents."""
        mine = self._by_doc.get(id(rep))
        return mine.histogram(key) if mine is not None else Repetition(rep).histogram(key)

    @cached_property
    def _by_doc(self) -> dict[int, Repetition]:
        reps = [*self.repetitions, *(self.control or ()),
                *((self.breakdown,) if self.breakdown else ())]
        return {id(r.doc): r for r in reps}

    @cached_property
    def summary(self) -> SummaryDoc:
        """The stored summary, or the one computed (once) from the repetitions."""
        stored = self.doc.get("summary")
        if stored is not None:
            return stored
        return summarise_point(self.doc, self._histogram)

    @property
    def has_latency(self) -> bool:
        """Whether a measured repetition has a latency histogram (without merging them)."""
        return any(r.doc.get("latency_hist") is not None for r in self.repetitions)

    @cached_property
    def latency(self) -> stats.Histogram | None:
        """The merge of the measured repetitions' latency histograms (None: none has one)."""
        hists = [r.latency for r in self.repetitions if r.latency is not None]
        return stats.merge(hists) if hists else None

    @cached_property
    def runs(self) -> tuple[Point, ...]:
        """The point as each run measured it (one per run of a pooled baseline, each
        with its own summary), or ``(self,)`` for a single run."""
        shares = self.doc.get("per_run")
        if not shares:
            return (self,)
        out = []
        start = cstart = 0
        for share in shares:
            sub: Any = {k: v for k, v in self.doc.items() if k not in ("per_run", "summary")}
            sub["repetitions"] = self.doc["repetitions"][start:start + share["repetitions"]]
            if self.control is not None:
                sub["control"] = self.doc["control"][cstart:cstart + share.get("control", 0)]  # type: ignore[index]
                cstart += share.get("control", 0)
            sub["setup"] = {**self.doc["setup"], **share["setup"]}
            start += share["repetitions"]
            out.append(Point._sharing(sub, self))
        return tuple(out)

    @classmethod
    def _sharing(cls, doc: PointDoc, whole: Point) -> Point:
        """A run of ``whole``: its repetitions are the whole point's (their parsed
        histograms shared, not parsed again)."""
        p = cls(doc)
        object.__setattr__(p, "repetitions", tuple(
            whole._by_doc.get(id(r)) or Repetition(r) for r in doc["repetitions"]))
        if p.control is not None:
            object.__setattr__(p, "control", tuple(
                whole._by_doc.get(id(r)) or Repetition(r) for r in doc.get("control") or []))
        object.__setattr__(p, "breakdown", whole.breakdown)
        p.__dict__["summary"] = summarise_point(doc, p._histogram)
        return p

    # -- the document as a mapping (summary filled in) ------------------------------------

    def __getitem__(self, key: str) -> Any:
        if key == "summary":
            return self.summary
        return self.doc[key]  # type: ignore[literal-required]

    def __iter__(self) -> Iterator[str]:
        yield from self.doc
        if "summary" not in self.doc:
            yield "summary"

    def __len__(self) -> int:
        return len(self.doc) + ("summary" not in self.doc)

    def as_doc(self) -> PointDoc:
        """The point as a plain document, with its summary."""
        return {**self.doc, "summary": self.summary}  # type: ignore[typeddict-item]


@dataclass(frozen=True, eq=False)
class Result(Mapping[str, Any]):
    """One result file read into the model: its document and its points.

    Also a read-only mapping over the document, for code that reads results as dicts.
    """

    doc: ResultDoc
    points: tuple[Point, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(Point(p) for p in self.doc["points"]))

    @property
    def environment(self) -> Mapping[str, Any]:
        return self.doc["environment"]

    @property
    def status(self) -> str:
        return self.doc["status"]

    @property
    def run_id(self) -> str:
        return self.doc["run_id"]

    def __getitem__(self, key: str) -> Any:
        return self.doc[key]  # type: ignore[literal-required]

    def __iter__(self) -> Iterator[str]:
        return iter(self.doc)

    def __len__(self) -> int:
        return len(self.doc)


def as_result(result: Result | ResultDoc) -> Result:
    """``result`` read into the model (itself if it already is)."""
    return result if isinstance(result, Result) else Result(result)


def as_point(point: Point | PointDoc | Mapping[str, Any]) -> Point:
    """``point`` read into the model (itself if it already is)."""
    return point if isinstance(point, Point) else Point(point)  # type: ignore[arg-type]


def runs_of(point: Point | PointDoc) -> list[Point]:
    """The point as each run measured it (:attr:`Point.runs`)."""
    return list(as_point(point).runs)


def scenario_content(doc: Mapping[str, Any]) -> Any:
    """What a run's scenario asks for: its parsed TOML (a changed comment changes nothing),
    or the text itself when it does not parse."""
    text = doc["scenario"].get("text") or ""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text
