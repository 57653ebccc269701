"""The loop every run goes through, whatever it measures.

A run writes one result file (rewritten atomically after every point, so
Ctrl-C keeps the points already measured), says its progress, leaves out the
datapath variants this kernel lacks (their points recorded as failed, said
once) and goes over every variant and scale of its scenario. :class:`ScaleLoop`
does that for both kinds of scenario; what one (variant, scale) measures is
the :class:`ScaleStep` it is given: :class:`bench.measure.runner.Runner` for
packet scenarios, :class:`bench.measure.sync_runner.SyncRunner` for sync
scenarios. Every point goes through :meth:`ScaleLoop.record`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from bench import interrupts
from bench import results as R
from bench.datapaths import Datapath, family, make_variant, without_rules
from bench.errors import ApplyTimeout, KpbenchError
from bench.kernel.features import DATAPATH_NEEDS, lacking
from bench.kernel.vm import guest_environment
from bench.measure.probes.loader import release_compiled
from bench.measure.progress import Progress
from bench.measure.scenario import Scenario, split_item
from bench.results.writer import ResultWriteError, check_drops_within_loss

if TYPE_CHECKING:
    from bench.cluster.testbed import SyncTiming, Testbed

log = logging.getLogger("kpbench")


class ScaleStep(Protocol):
    """What one kind of scenario measures at one (datapath variant, number of services)."""

    def measure_scale(self, variant: str, n: int) -> None:
        """Build ``variant``'s cluster at ``n`` services, measure it, and record every
        point of that scale through the loop (a failure recorded as a failed point)."""

    def rate_pps(self, workload: str) -> int | None:
        """The offered rate a point of ``workload`` records (part of its id)."""


class ScaleLoop:
    """One run of ``scenario`` into ``results_dir``, measuring each scale with ``step``.

    ``environment``: keys recorded next to the machine's own (e.g. a slowdown
    injected on purpose).
    """

    def __init__(self, scenario: Scenario, results_dir: Path, step: ScaleStep,
                 out: TextIO = sys.stderr, *, environment: dict[str, Any] | None = None) -> None:
        self.sc = scenario
        self.results_dir = results_dir
        self.step = step
        self.environment = dict(environment or {})
        self.progress = Progress(scenario, out)
        self.workdir = Path(tempfile.mkdtemp(prefix="kpbench-"))
        self.writer: R.ResultWriter | None = None

    def finished_complete(self) -> Path | None:
        """The result file if this run already wrote it as complete (else None)."""
        w = self.writer
        return w.path if w is not None and w.document["status"] == "complete" else None

    def run(self) -> Path:
        """Run every point; returns the result file (complete, or partial on Ctrl-C)."""
        env = R.capture_environment(**guest_environment())  # 'vm', KVM or TCG, in a guest
        env.update(self.environment)  # type: ignore[typeddict-item]
        writer: R.ResultWriter | None = None
        try:
            # A signal waits until the writer is held, and one landing before its block is
            # entered still ends the file "interrupted" (the except below), never "running".
            with interrupts.deferred():
                writer = self.writer = self._writer(
                    R.result_path(self.results_dir, self.sc.name, env), self.sc.document(), env)
            log.info("result: %s", writer.path)
            with writer:
                left_out = {v: self._missing_feature(v) for v in self.sc.datapaths}
                self.progress.skipped = {v for v, why in left_out.items() if why}
                for variant in self.sc.datapaths:
                    missing = left_out[variant]
                    if missing:  # every scale recorded as failed, and said once
                        for n in self.sc.scales(variant):
                            self.record_rest(variant, n, "failed", missing, say=False)
                        self.progress.say(f"{variant}: left out, {missing}; its points are "
                                          "recorded as failed")
                        continue
                    for n in self.sc.scales(variant):
                        t0 = time.monotonic()
                        self.progress.start_scale()
                        self.step.measure_scale(variant, n)
                        self.progress.record_scale(variant, n, time.monotonic() - t0)
        except KeyboardInterrupt:
            if writer is not None and writer.document["status"] == "running":
                with contextlib.suppress(ResultWriteError):  # the file keeps its last version
                    writer.finish("interrupted")
            raise
        finally:
            with interrupts.deferred():
                release_compiled()
            shutil.rmtree(self.workdir, ignore_errors=True)
        assert writer is not None
        return writer.path

    @staticmethod
    def _writer(path: Path, scenario_doc: dict[str, Any], env: Any) -> R.ResultWriter:
        """A writer on ``path``, or on ``<stem>-2``, ``-3``... when another run took it."""
        for k in range(1, 100):
            candidate = path if k == 1 else path.with_name(f"{path.stem}-{k}{path.suffix}")
            try:
                return R.ResultWriter(candidate, scenario=scenario_doc, environment=env)
            except R.ResultExists:
                continue
        raise KpbenchError(f"{path}: 99 results of this scenario in one second; "
                           "use another --results directory")

    def _missing_feature(self, variant: str) -> str | None:
        """Why ``variant`` cannot run here: a feature the kernel lacks, or ours that fails."""
        missing, broken = lacking(DATAPATH_NEEDS.get(variant, ()))
        if broken:  # the kernel has it: our program or a tool fails, which is no kernel limit
            log.error("error: %s fails although this kernel supports it (%s); its points are "
                      "recorded as failed", variant, broken)
            return f"kpbench failed (not a kernel limit): {broken}"
        if missing:  # said once by the run (left out), not here
            return f"kernel feature missing: {missing}"
        return None

    # --- what a step uses ------------------------------------------------------
    def datapath(self, variant: str) -> Datapath:
        """A fresh ``variant`` whose applies stop at the scenario's per-point limit."""
        dp = make_variant(variant)
        dp.apply_timeout = self.sc.point_time_limit
        return dp

    def point(self, variant: str, n: int, workload: str, **kw: Any) -> R.PointDoc:
        """The point of ``workload`` at ``variant`` x ``n`` services (bench.results.make_point)."""
        position = self.sc.position if isinstance(self.sc.position, str) else "index"
        workload, flows = split_item(workload)
        if flows is not None and "socket" not in kw:  # a socket workload's point
            kw["socket"] = {"loop": self.sc.loop, "flows": flows, "rate_tps": self.sc.rate_tps}
        why = without_rules(variant)
        if why is not None:  # its syncs program nothing: no figure, and the reason
            kw.update(sync_seconds=None, sync_render_seconds=None, sync_node_seconds=[],
                      missing={**kw.get("missing", {}),
                               "sync_seconds": f"not applicable: {why}"})
        return R.make_point(datapath=family(variant), variant=variant, services=n,
                            endpoints=self.sc.endpoints, workload=workload,
                            rate_pps=None if "socket" in kw else self.step.rate_pps(workload),
                            position=position, position_index=self.sc.position_index(n), **kw)

    def first_sync(self, bed: Testbed, variant: str, n: int) -> SyncTiming | None:
        """The timed first full sync of every node of ``bed`` (``variant`` at ``n``
        services), fed to the ETA; None when it failed or went past the scenario's
        per-point limit, every point of the scale then recorded so (``exceeded-limit``
        with the time reached on each node, the last one stopped, not the limit)."""
        self.progress.say(f"{variant}: {n} services: full sync")
        try:
            timing = bed.sync(limit=self.sc.point_time_limit)
        except ApplyTimeout as e:
            self.record_rest(variant, n, "exceeded-limit", str(e),
                             **bed.last_timing.setup_fields())
            return None
        except KpbenchError as e:
            self.record_rest(variant, n, "failed", str(e))
            return None
        # Loading BPF programs is a fixed cost, not a per-service one: not for the ETA.
        self.progress.record_sync(variant, n, max(timing.wall - bed.datapath.one_off_seconds(),
                                                  0.0))
        return timing

    def record(self, point: R.PointDoc) -> None:
        """Store a finished point in the result file (rewritten at once).

        A point whose drops exceed the packets it lost shows a harness defect at
        that point (bench.results.writer.check_drops_within_loss): its measurements are
        not stored, the point is recorded as failed with the reason, and the run
        goes on.
        """
        assert self.writer is not None, "record() is for a running loop"
        try:
            check_drops_within_loss(point)
        except ValueError as e:
            log.warning("warning: %s; the point is recorded as failed", e)
            point = _without_measurements(point, f"{e} (not stored)")
        self.writer.add_point(point)
        self.progress.done += 1

    def record_rest(self, variant: str, n: int, status: R.PointStatus, error: str, *,
                    say: bool = True, **setup: Any) -> None:
        """Record every point of ``variant`` x ``n`` not recorded yet with ``status`` and
        ``error`` (the scale's ``setup`` fields as far as they were measured)."""
        assert self.writer is not None, "record_rest() is for a running loop"
        done = {p["id"] for p in self.writer.document["points"]}
        for w in self.sc.measured:  # traffic workloads, or a sync scenario's sync kinds
            point = self.point(variant, n, w, status=status, error=error, **setup)
            if point["id"] not in done:
                self.record(point)
        if say:
            self.progress.say(f"{variant} {n} services: {status}: {error}")


def _without_measurements(point: R.PointDoc, error: str) -> R.PointDoc:
    """``point`` failed with ``error``: its coordinates and set-up (the sync, the settle)
    kept, none of its repetitions."""
    failed: dict[str, Any] = {k: v for k, v in point.items()
                              if k not in ("control", "breakdown", "control_breakdown", "summary")}
    failed.update(status="failed", error=error, repetitions=[], failed_repetitions=[])
    return failed  # type: ignore[return-value]
