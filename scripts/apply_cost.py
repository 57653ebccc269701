"""kpbench's apply of one change by itself, at scale (root): the sync runner's "apply"
figure of a change without the change's traffic or the syscall probe beside it.

    .venv/bin/python scripts/apply_cost.py [--services 10000] [--rounds 5]
        [--datapaths ebpf-tc userspace] [--traffic PPS] [--syscalls] [--sleep S]

Builds the sync scenario's cluster (``--services`` x 10 endpoints, UDP, 2 nodes,
backend pods for the measured and the spare Service; the states of
``scripts/render_cost.py``), gives node 0 its first full sync, then for each of
the runner's five changes: the partial render (not timed), the partial apply
timed as the runner times it (garbage collector paused; CPU thread time of
this process and wall time), "warm" (right after the render) and "cold" (about
50 MB written and read between render and apply), then the change put back (not
timed). With ``--traffic PPS``, tcpreplay sends new flows to the measured
Service from the client pod throughout, as the runner's effect traffic; with
``--syscalls`` the syscall probe watches the applying thread, as in the runner;
with ``--sleep S`` each timed apply follows S seconds asleep (the runner's
pre-roll of traffic before a change).

Where the apply happens in this process (ebpf-tc: map writes through libbpf's
batch calls), CPU is its cost; where another process applies (userspace: the
proxy takes the new line), wall time is the figure. Compare with a sync
scenario's ``sync.apply`` of the same changes. Prints fastest and median, in ms.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from render_cost import evict, states, summary, timed

from bench.cluster.testbed import Testbed
from bench.datapaths import make_variant
from bench.measure.probes.syscalls import SyscallProbe
from bench.measure.sync_runner import SRC_SPAN
from bench.measure.traffic import Target

TRAFFIC_S = 60  # the --traffic replay's length (the applies take about 10 s a datapath)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--datapaths", nargs="+", default=["ebpf-tc", "userspace"])
    ap.add_argument("--traffic", type=int, default=0, metavar="PPS",
                    help="new flows to the measured Service at PPS throughout (0: none)")
    ap.add_argument("--syscalls", action="store_true",
                    help="the syscall probe attached and watching this thread, as the runner")
    ap.add_argument("--sleep", type=float, default=0.0, metavar="S",
                    help="sleep S seconds before each timed apply (the runner's pre-roll)")
    args = ap.parse_args()
    st = states(args.services)
    measured = st.base.services[args.services - 1]
    print(f"{args.services} services x 10 endpoints; apply alone, ms, fastest / median of "
          f"{args.rounds}; traffic {args.traffic or 'none'}")
    for variant in args.datapaths:
        dp = make_variant(variant)
        bed = Testbed(dp, st.services, st.slices, 2, pod_services=st.backed, echo=False,
                      sync_on_enter=False)
        probe = SyscallProbe() if args.syscalls else None
        with bed, tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            if probe is not None:
                probe.attach()
                stack.callback(probe.detach)
            ctx, ns = bed.node_context(0), bed.cluster.node_ns(0)
            dp.apply(dp.render(st.base_views, ctx), ns)
            stop = threading.Event()
            thread = None
            if args.traffic:
                target = Target.from_client_pod(bed.cluster, measured.cluster_ip,
                                                measured.ports[0].port)
                pcap = Path(tmp) / "flows.pcap"
                target.build_pcap("udp-new", args.traffic * TRAFFIC_S, pcap, src_span=SRC_SPAN)
                thread = threading.Thread(target=target.replay,
                                          args=(pcap, args.traffic, TRAFFIC_S, stop),
                                          daemon=True)
                thread.start()
            try:
                for cold in (False, True):
                    for kind, (changed, views) in st.changes.items():
                        out = []
                        for _ in range(args.rounds):
                            delta = dp.render_partial(views, ctx, changed)
                            if cold:
                                evict()
                            if args.sleep:
                                time.sleep(args.sleep)
                            if probe is not None:
                                probe.start()
                                probe.watch(threading.get_native_id())
                            out.append(timed(dp.apply_partial, delta, ns))
                            if probe is not None:
                                probe.unwatch(threading.get_native_id())
                            dp.apply_partial(dp.render_partial(st.base_views, ctx, changed), ns)
                        temp = "cold" if cold else "warm"
                        print(f"{variant:10} {temp} {kind:20} {summary(out)}", flush=True)
                if thread is not None and not thread.is_alive():
                    print(f"warning: the traffic ended ({TRAFFIC_S} s) before the applies did")
            finally:
                stop.set()
                if thread is not None:
                    thread.join()


if __name__ == "__main__":
    main()
