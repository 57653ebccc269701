"""kpbench's own render cost at scale, timed as the sync runner times it (no root).

    .venv/bin/python scripts/render_cost.py [--services 10000] [--rounds 5]
        [--datapaths ebpf-tc userspace] [--cases first change resync after]

For each datapath, at ``--services`` services x 10 endpoints (UDP, position
"last", 2 nodes: the states of ``scenarios/sync.toml``), it times
``render``/``render_partial`` alone, as ``bench.measure.sync_runner`` does
(garbage collector paused, the runner's views, node 0's one NodeContext
object), in CPU thread time and wall time:

- ``first``: the first full sync of an empty node (a new datapath object);
- ``change``: each of the runner's five changes as a partial sync, then (not
  timed) the partial sync putting the state back, as the runner does between
  repetitions;
- ``resync``: a full sync of an unchanged state;
- ``after``: a full sync right after a partial one.

Each case is timed ``--rounds`` times "warm" (back to back) and "cold" (about
50 MB written and read between calls, evicting the CPU caches as the runner's
apply and traffic do between its syncs). Prints fastest and median, in ms.
Nothing is applied: apply figures come from a sync scenario.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datapaths import NodeContext, make_variant
from bench.measure.sync_runner import State, _make_change
from bench.model import layout as L
from bench.model.generate import GenSpec, generate
from bench.model.objects import service_port_views

CHANGES = ["add-service", "remove-service", "add-endpoint", "remove-endpoint",
           "endpoint-not-ready"]
_EVICT = bytearray(50 << 20)


def evict() -> None:
    """Write and read ~50 MB: the last-level cache holds none of the render's data."""
    _EVICT[::64] = b"\1" * len(range(0, len(_EVICT), 64))
    sum(_EVICT[::4096])


_CONTEXT: list[NodeContext] = []  # the one context of node 0, as Testbed.node_context
FRESH_CONTEXT = False  # --fresh-context: a new (equal) object every sync, as Testbed's before


def ctx() -> NodeContext:
    """Node 0's context, made before the render is timed."""
    if _CONTEXT and not FRESH_CONTEXT:
        return _CONTEXT[0]
    made = NodeContext(node_name="node-0", node_ips=(L.node_ip(0),),
                       cluster_cidr=L.CLUSTER_CIDR, service_cidrs=(str(L.SERVICE_CIDR),))
    _CONTEXT[:] = [made]
    return made


def timed(fn: Callable[..., object], *args: object) -> tuple[float, float]:
    """(CPU ms, wall ms) of ``fn(*args)``, the collector paused as the runner's gc_paused."""
    gc.disable()
    try:
        w0, c0 = time.monotonic_ns(), time.thread_time_ns()
        fn(*args)
        c1, w1 = time.thread_time_ns(), time.monotonic_ns()
    finally:
        gc.enable()
    return (c1 - c0) / 1e6, (w1 - w0) / 1e6


def summary(samples: list[tuple[float, float]]) -> str:
    cpu = [s[0] for s in samples]
    wall = [s[1] for s in samples]
    return (f"cpu {min(cpu):8.3f} / {statistics.median(cpu):8.3f}   "
            f"wall {min(wall):8.3f} / {statistics.median(wall):8.3f}")


class States(NamedTuple):
    base: State  # the measured state, without the spare Service
    base_views: Any  # node 0's views of it
    changes: dict[str, tuple[set[str], Any]]  # change -> (changed Services, views)
    services: list[Any]  # every Service, the spare one too (what a Testbed builds)
    slices: list[Any]
    backed: set[str]  # the measured and the spare Service: the ones with backend pods


def states(n: int) -> States:
    """The sync runner's base state of ``n`` services (plus its spare one), node 0's views
    of it, and each change's (changed Services, views), as the runner makes them."""
    services, slices = generate(GenSpec(services=n + 1, endpoints=10, nodes=2,
                                        protocol="UDP"))
    spare = services[-1]
    base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                 [s for s in slices if s.service_name == spare.name])
    measured = base.services[n - 1]
    base_views = service_port_views(base.services, base.slices, "node-0")
    changes = {}
    for kind in CHANGES:
        c = _make_change(kind, base, measured, spare)
        # As the runner's: the views of the Services the change left alone are the same
        # objects as before it (previous=).
        changes[kind] = (c.changed, service_port_views(c.services, c.slices, "node-0",
                                                       previous=base_views))
    return States(base, base_views, changes, services, slices, {measured.key, spare.key})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--datapaths", nargs="+", default=["ebpf-tc", "userspace"])
    ap.add_argument("--cases", nargs="+", default=["first", "change", "resync", "after"])
    ap.add_argument("--fresh-context", action="store_true",
                    help="a new NodeContext object every sync (Testbed before 2026-12-02)")
    args = ap.parse_args()
    global FRESH_CONTEXT
    FRESH_CONTEXT = args.fresh_context
    n = args.services
    base, base_views, changes, *_ = states(n)
    print(f"{n} services x 10 endpoints; ms, fastest / median of {args.rounds}")
    for variant in args.datapaths:
        for cold in (False, True):
            temp = "cold" if cold else "warm"
            if "first" in args.cases:
                out = []
                for _ in range(args.rounds):
                    # Fresh views, as the runner's: no port's name computed yet.
                    fresh = service_port_views(base.services, base.slices, "node-0")
                    dp = make_variant(variant)
                    c = ctx()
                    if cold:
                        evict()
                    out.append(timed(dp.render, fresh, c))
                    del dp
                print(f"{variant:10} {temp} first full sync      {summary(out)}")
            dp = make_variant(variant)
            dp.render(base_views, ctx())
            if "resync" in args.cases:
                out = []
                for _ in range(args.rounds):
                    c = ctx()
                    if cold:
                        evict()
                    out.append(timed(dp.render, base_views, c))
                print(f"{variant:10} {temp} resync               {summary(out)}")
            if "change" in args.cases:
                for kind, (changed, views) in changes.items():
                    out = []
                    for _ in range(args.rounds):
                        c = ctx()
                        if cold:
                            evict()
                        out.append(timed(dp.render_partial, views, c, changed))
                        dp.render_partial(base_views, ctx(), changed)  # back, not timed
                    print(f"{variant:10} {temp} {kind:20} {summary(out)}")
            if "after" in args.cases:
                out = []
                changed, views = changes["remove-endpoint"]
                for _ in range(args.rounds):
                    dp.render(base_views, ctx())
                    dp.render_partial(views, ctx(), changed)
                    c = ctx()
                    if cold:
                        evict()
                    out.append(timed(dp.render, views, c))
                print(f"{variant:10} {temp} full after a partial {summary(out)}")


if __name__ == "__main__":
    main()
