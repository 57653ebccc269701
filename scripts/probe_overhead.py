"""The probes' cost per packet, probe by probe, with the runner's own estimator
(bench.measure.overhead.measure: the sender's cgroup CPU per delivered packet of
top-speed bursts, interleaved paired rounds; docs/probes.md).

    .venv/bin/python scripts/probe_overhead.py VARIANT SERVICES ROUNDS PACKETS [SET ...]

SET is one of: latency, cpu, main (latency + cpu), drops, transit, breakdown
(latency + drops + transit, as the runner's breakdown repetition). As root. Default:
latency cpu main breakdown. Prints the estimator's JSON (quietest burst less
the quietest without probes, paired median and range, raw samples).
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cluster.testbed import Testbed
from bench.datapaths import make_variant
from bench.measure import overhead
from bench.measure import traffic as T
from bench.measure.probes.cpu import CpuProbe
from bench.measure.probes.drops import DropsProbe
from bench.measure.probes.latency import LatencyProbe
from bench.measure.probes.transit import TransitProbe
from bench.model.generate import GenSpec, generate

variant, n, rounds, packets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sets = sys.argv[5:] or ["latency", "cpu", "main", "breakdown"]
services, slices = generate(GenSpec(services=n, endpoints=10, nodes=2, protocol="UDP"))
svc = services[-1]
with Testbed(make_variant(variant), services, slices, nodes=2, pod_services={svc.key},
             echo=False) as tb:
    c = tb.cluster
    tgt = T.Target.from_client_pod(c, svc.cluster_ip, svc.ports[0].port)
    factories = {
        "latency": lambda: [LatencyProbe.for_cluster(c)],
        "cpu": lambda: [CpuProbe(tb.datapath.process_cgroup)],
        "main": lambda: [LatencyProbe.for_cluster(c), CpuProbe(tb.datapath.process_cgroup)],
        "drops": lambda: [DropsProbe.for_cluster(c)],
        "transit": lambda: [TransitProbe.for_cluster(c)],
        "breakdown": lambda: [LatencyProbe.for_cluster(c), DropsProbe.for_cluster(c),
                              TransitProbe.for_cluster(c)],
    }
    out = overhead.measure(c, tgt, Path(tempfile.mkdtemp()), {s: factories[s] for s in sets},
                           rounds=rounds, packets=packets,
                           say=lambda m: print(m, file=sys.stderr, flush=True))
out.update(variant=variant, services=n)
print(json.dumps(out, indent=1))
