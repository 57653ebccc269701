"""Cross-check of CPU per packet against a figure no probe touches (docs/probes.md).

    sudo .venv/bin/python scripts/crosscheck_cpu.py VARIANT SERVICES ROUNDS PACKETS [WORKLOAD]

Builds a cluster with VARIANT and SERVICES services, then, per round and
interleaved, replays PACKETS frames at top speed from the client pod to the
last service with the sender (tcpreplay) in a cgroup of its own:

- path: no probe; the sender's CPU per packet (cgroup cpu.stat), which holds
  the NET_RX softirq that runs in its context;
- cut: no probe, node 0's veth to the client pod down, so the frames die at
  the client's veth and no NET_RX runs: the sender's own cost;
- probe: the cpu probe attached, its NET_RX time in the sender's context.

path - cut (quietest bursts) is the node's per-packet cost without any probe;
it is compared with the cpu probe's figure. Prints JSON.
"""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from bench import cgroups, overhead
from bench import probes as P
from bench import traffic as T
from bench.datapaths import make_variant
from bench.generate import GenSpec, generate
from bench.testbed import Testbed

variant, n, rounds, packets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
workload = sys.argv[5] if len(sys.argv) > 5 else "udp-established"
services, slices = generate(GenSpec(services=n, endpoints=10, nodes=2, protocol="UDP"))
svc = services[-1]
dp = make_variant(variant)
res = {"variant": variant, "services": n, "workload": workload, "rounds": rounds,
       "packets": packets, "path": [], "cut": [], "probe_netrx": [], "probe_netrx_cut": [],
       "probe_sender": []}
with Testbed(dp, services, slices, nodes=2, pod_services={svc.key}, echo=False) as tb:
    c = tb.cluster
    node = c.node_ns(0)
    tgt = T.Target.from_client_pod(c, svc.cluster_ip, svc.ports[0].port)
    tmp = Path(tempfile.mkdtemp())
    pcap = tgt.build_pcap(workload, packets, tmp / "x.pcap", seq_start=1 << 28,
                          **({"src_span": 16} if workload == "udp-new" else {}))
    g = cgroups.create(f"{c.prefix}-sender")
    from bench.topology import in_netns
    def pc(state):
        with in_netns(node) as ns:
            ns.link("set", index=ns.link_lookup(ifname="pc")[0], state=state)
    def burst(cut, probe):
        if cut:
            pc("down")
        try:
            if probe:
                with P.CpuProbe(g) as cpu:
                    cpu.start()
                    before = cgroups.cpu_usage_ns(g)
                    with cgroups.member(g):
                        s = tgt.replay(pcap, None, timeout=120)
                    used = cgroups.cpu_usage_ns(g) - before
                    time.sleep(0.05)
                    r = cpu.read()
                return r.group_net_rx_ns / s.sent, used / s.sent
            before_rx = overhead.pods_rx_packets(c)
            before = cgroups.cpu_usage_ns(g)
            with cgroups.member(g):
                s = tgt.replay(pcap, None, timeout=120)
            used = cgroups.cpu_usage_ns(g) - before
            time.sleep(0.05)
            d = overhead.pods_rx_packets(c) - before_rx
            assert cut or d >= 0.99 * s.sent, (d, s.sent)
            return used / s.sent
        finally:
            if cut:
                pc("up")
                time.sleep(0.05)
    try:
        burst(False, False)
        for r in range(rounds):
            res["path"].append(burst(False, False))
            res["cut"].append(burst(True, False))
            a, b = burst(False, True)
            res["probe_netrx"].append(a)
            res["probe_sender"].append(b)
            res["probe_netrx_cut"].append(burst(True, True)[0])
            print(r, {k: round(v[-1]) for k, v in res.items() if isinstance(v, list)},
                  file=sys.stderr, flush=True)
    finally:
        cgroups.remove(g)
for k in ("path", "cut", "probe_netrx", "probe_netrx_cut", "probe_sender"):
    res[k + "_min"] = min(res[k])
    res[k + "_median"] = statistics.median(res[k])
res["no_probe_ns_per_packet"] = res["path_min"] - res["cut_min"]
res["probe_ns_per_packet_after_cut"] = res["probe_netrx_min"] - res["probe_netrx_cut_min"]
print(json.dumps(res, indent=1))
