"""The probes' cost per packet, probe by probe, with the runner's own estimators
(bench.measure.overhead; docs/probes.md).

    .venv/bin/python scripts/probe_overhead.py [--in-window RATE]
        VARIANT SERVICES ROUNDS PACKETS [SET ...]

Without --in-window: bench.measure.overhead.measure, the sender's cgroup CPU per
delivered packet of top-speed bursts of PACKETS (the whole path, the client's
egress program included). With --in-window RATE: measure_in_window, bursts of
half a second at RATE packets/s (PACKETS is ignored) with each set attached: each
set's BPF programs' run time per packet by the kernel's statistics
(<set>_programs_ns_per_packet; the cpu probe's own as reporter_programs_...), the
runs' programs_main/programs_breakdown figures (in_window_figures) when the sets
latency and breakdown are there, and the NET_RX per packet a cpu probe reports
beside each set. SET is one of: latency, cpu (a second cpu probe in --in-window),
main (latency + cpu), sink (the latency probe in sink mode, as the cpu passes
run it), drops, null (an empty program at the backends' ingress:
a known workload, whose figure should read about 0), transit, breakdown (drops sinking + transit, as
the runner's breakdown repetition), breakdown-latency (the latency probe sinking
beside drops + transit: the set before); SET@tcx or SET@clsact attaches that set's tc
programs that way (an A/B of the hook within one run; otherwise the default, tcx
where the kernel has it). Default: latency cpu main breakdown (with --in-window:
latency breakdown). As root. Prints the estimator's JSON
(quietest burst less the quietest without probes, paired median and range, raw
samples).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cluster.testbed import Testbed
from bench.datapaths import make_variant
from bench.measure import overhead
from bench.measure import traffic as T
from bench.measure.probes import loader
from bench.measure.probes.cpu import CpuProbe
from bench.measure.probes.drops import DropsProbe
from bench.measure.probes.latency import LatencyProbe
from bench.measure.probes.null import NullProbe
from bench.measure.probes.transit import RUN_SAMPLE_EVERY, TransitProbe
from bench.model.generate import GenSpec, generate

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--in-window", type=int, metavar="RATE")
ap.add_argument("variant")
ap.add_argument("services", type=int)
ap.add_argument("rounds", type=int)
ap.add_argument("packets", type=int)
ap.add_argument("sets", nargs="*")
a = ap.parse_args()
sets = a.sets or (["latency", "breakdown"] if a.in_window
                  else ["latency", "cpu", "main", "breakdown"])
services, slices = generate(GenSpec(services=a.services, endpoints=10, nodes=2,
                                    protocol="UDP"))
svc = services[-1]
with Testbed(make_variant(a.variant), services, slices, nodes=2, pod_services={svc.key},
             echo=False) as tb:
    c = tb.cluster
    tgt = T.Target.from_client_pod(c, svc.cluster_ip, svc.ports[0].port)
    group = None if a.in_window else tb.datapath.process_cgroup
    factories = {
        "latency": lambda: [LatencyProbe.for_cluster(c)],
        "cpu": lambda: [CpuProbe(group)],
        "main": lambda: [LatencyProbe.for_cluster(c), CpuProbe(group)],
        # The latency probe as the measured repetitions' cpu passes run it.
        "sink": lambda: [LatencyProbe.for_cluster(c, sink=True)],
        "drops": lambda: [DropsProbe.for_cluster(c)],
        # An empty program at the backends' ingress: its figure is the calibration's error.
        "null": lambda: [NullProbe.for_cluster(c)],
        # Sampled as the runner's breakdown repetition samples it.
        "transit": lambda: [TransitProbe.for_cluster(c, sample_every=RUN_SAMPLE_EVERY)],
        # As the runner's breakdown repetition: the drops probe sinks (no latency probe).
        "breakdown": lambda: [DropsProbe.for_cluster(c, sink=True, machine_wide=False),
                              TransitProbe.for_cluster(c, sample_every=RUN_SAMPLE_EVERY)],
        # The set before 2026-12-02 (afternoon): the latency probe sinking beside drops.
        "breakdown-latency": lambda: [LatencyProbe.for_cluster(c, sink=True),
                                      DropsProbe.for_cluster(c),
                                      TransitProbe.for_cluster(c, sample_every=RUN_SAMPLE_EVERY)],
    }
    unknown = sorted({s for s in sets if s.partition("@")[0] not in factories
                      or s.partition("@")[2] not in ("", *loader.TC_MODES)})
    if unknown:
        sys.exit(f"unknown set {', '.join(unknown)}: one of {', '.join(factories)}, "
                 f"optionally with @{' or @'.join(loader.TC_MODES)}")
    default_mode = loader.tc_mode(c.client_pod_ns)

    def attached_as(name: str):  # the set's probes, attached the way its name says
        base, _, mode = name.partition("@")

        def make():
            loader._tc_mode = mode or default_mode
            return factories[base]()
        return make
    chosen = {s: attached_as(s) for s in sets}
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    workdir = Path(tempfile.mkdtemp())
    if a.in_window:
        out = overhead.measure_in_window(c, tgt, workdir, a.in_window, chosen,
                                         rounds=a.rounds, say=say)
        out.update(overhead.in_window_figures(out))  # with the sets latency and breakdown
    else:
        out = overhead.measure(c, tgt, workdir, chosen, rounds=a.rounds, packets=a.packets,
                               say=say)
out.update(variant=a.variant, services=a.services, tc_attach_default=default_mode)
print(json.dumps(out, indent=1))
