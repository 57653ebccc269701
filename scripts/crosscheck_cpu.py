"""Cross-check of CPU per packet against a figure no probe touches (docs/probes.md).

    .venv/bin/python scripts/crosscheck_cpu.py VARIANT SERVICES ROUNDS PACKETS [WORKLOAD]

Builds a cluster with VARIANT and SERVICES services, then, per round and
interleaved, replays PACKETS frames at top speed from the client pod to the
last service with the sender (tcpreplay) in a cgroup of its own:

- path: no probe; the sender's CPU per packet (cgroup cpu.stat), which holds
  the NET_RX softirq that runs in its context;
- down: no probe, node 0's veth to the client pod down, so the frames die at
  the client's veth and no NET_RX runs: the sender's own cost;
- othermac: no probe, the same frames to a MAC nobody has, dropped by the
  node's stack at its first look (NET_RX runs, the node's path does not);
- path and othermac again with the cpu probe: its NET_RX time in the
  sender's context.

path - down (quietest bursts) is the node's per-packet cost without any
probe, compared with the probe's NET_RX; path - othermac is the node's path
after its first look, both without and with the probe. Prints JSON.
"""
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from bench.cluster import cgroups
from bench.cluster.netlink import in_netns
from bench.cluster.testbed import Testbed
from bench.datapaths import make_variant
from bench.measure import overhead
from bench.measure import traffic as T
from bench.measure.probes.cpu import CpuProbe
from bench.model.generate import GenSpec, generate

OTHER_MAC = "02:00:00:00:00:99"

variant, n, rounds, packets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
workload = sys.argv[5] if len(sys.argv) > 5 else "udp-established"
services, slices = generate(GenSpec(services=n, endpoints=10, nodes=2, protocol="UDP"))
svc = services[-1]
dp = make_variant(variant)
res = {"variant": variant, "services": n, "workload": workload, "rounds": rounds,
       "packets": packets}
with Testbed(dp, services, slices, nodes=2, pod_services={svc.key}, echo=False) as tb:
    c = tb.cluster
    node = c.node_ns(0)
    tgt = T.Target.from_client_pod(c, svc.cluster_ip, svc.ports[0].port)
    tmp = Path(tempfile.mkdtemp())
    extra = {"src_span": 16} if workload == "udp-new" else {}
    pcaps = {"path": tgt.build_pcap(workload, packets, tmp / "x.pcap", seq_start=1 << 28,
                                    **extra)}
    pcaps["down"] = pcaps["path"]
    # Same frames to a MAC nobody has: the node's stack drops them as soon as it
    # sees them (ip_rcv: PACKET_OTHERHOST), inside the same NET_RX softirq.
    pcaps["othermac"] = replace(tgt, dst_mac=OTHER_MAC).build_pcap(
        workload, packets, tmp / "o.pcap", seq_start=1 << 28, **extra)
    g = cgroups.create(f"{c.prefix}-sender")

    def pc(state: str) -> None:
        with in_netns(node) as ns:
            ns.link("set", index=ns.link_lookup(ifname="pc")[0], state=state)

    def burst(kind: str, probe: bool) -> float:
        """Sender CPU per sent packet (no probe) or the probe's NET_RX in its context."""
        if kind == "down":
            pc("down")
        try:
            with contextlib.ExitStack() as stack:
                cpu = stack.enter_context(CpuProbe(g)) if probe else None
                if cpu is not None:
                    cpu.start()
                before_rx = overhead.pods_rx_packets(c)
                before = cgroups.cpu_usage_ns(g)
                with cgroups.member(g):
                    s = tgt.replay(pcaps[kind], None, timeout=120)
                used = cgroups.cpu_usage_ns(g) - before
                time.sleep(0.05)
                d = overhead.pods_rx_packets(c) - before_rx
                assert kind != "path" or d >= 0.99 * s.sent, (d, s.sent)
                return (cpu.read().group_net_rx_ns if cpu is not None else used) / s.sent
        finally:
            if kind == "down":
                pc("up")
                time.sleep(0.05)

    keys = [("path", False), ("down", False), ("othermac", False), ("path", True),
            ("othermac", True)]
    res.update({f"{k}{'_probe' if pr else ''}": [] for k, pr in keys})
    try:
        burst("path", False)
        for r in range(rounds):
            for k, pr in (keys if r % 2 == 0 else keys[::-1]):
                res[f"{k}{'_probe' if pr else ''}"].append(burst(k, pr))
            print(r, {k: round(v[-1]) for k, v in res.items() if isinstance(v, list) and v},
                  file=sys.stderr, flush=True)
    finally:
        cgroups.remove(g)
for k in ("path", "down", "othermac", "path_probe", "othermac_probe"):
    res[k + "_min"] = min(res[k])
    res[k + "_median"] = statistics.median(res[k])
# The whole NET_RX (and the veth's enqueue) without a probe, against the probe's NET_RX.
res["no_probe_path_minus_down"] = res["path_min"] - res["down_min"]
res["probe_netrx"] = res["path_probe_min"]
# The node's path after the first look at the frame, both ways.
res["no_probe_path_minus_othermac"] = res["path_min"] - res["othermac_min"]
res["probe_path_minus_othermac"] = res["path_probe_min"] - res["othermac_probe_min"]
print(json.dumps(res, indent=1))
