"""The socket generators' own ceilings on this machine (docs/sockets.md).

    .venv/bin/python scripts/socket_ceilings.py [SECONDS] [FLOWS ...]

Two run namespaces joined by a veth pair: no node, no rules, no conntrack.
Each socket workload (tcp-crr and tcp-rr with kpb-crr, udp-rr with sockperf)
runs closed loop at each concurrency (default 1, 8, 64) for SECONDS
(default 3) through bench.measure.sockets, as the runner runs it. What a
generator and its responder reach here is the most any point can show: a
point's direct path near this rate is bound by the generator and the
machine's two cores, not by the path. Prints a Markdown table and JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cluster.topology import new_prefix, register_run, remove_run
from bench.measure import sockets as S

CLIENT_IP, SERVER_IP = "10.99.0.1", "10.99.0.2"


def ns_run(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True,
                   timeout=30)


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 3.0
    flows = [int(f) for f in argv[1:]] or [1, 8, 64]
    prefix = new_prefix()
    register_run(prefix)
    client, server = f"{prefix}-sc", f"{prefix}-ss"
    rows = []
    try:
        for ns in (client, server):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            ns_run(ns, "ip", "link", "set", "lo", "up")
        ns_run(client, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
               "netns", server)
        ns_run(client, "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
        ns_run(server, "ip", "addr", "add", f"{SERVER_IP}/24", "dev", "eth0")
        for ns in (client, server):
            ns_run(ns, "ip", "link", "set", "eth0", "up")
        path = S.SocketPath(client, SERVER_IP, 9000, (S.Responder(server, SERVER_IP),),
                            client_ip=CLIENT_IP)
        for workload in ("tcp-crr", "tcp-rr", "udp-rr"):
            for f in flows:
                r = S.run(S.SocketWorkload(workload, flows=f, duration_s=seconds), path)
                s = r.summary()
                rtt = s["rtt_ns"] or {}
                rows.append({"workload": workload, "flows": f,
                             "transactions_per_s": s["transactions_per_s"],
                             "rtt_p50_ns": rtt.get("p50"), "rtt_p99_ns": rtt.get("p99"),
                             "failed": s["failed_connections"]})
                print(f"{workload} x{f}: {s['transactions_per_s']:.0f} tx/s", file=sys.stderr)
    finally:
        remove_run(prefix)
    print("| workload | flows | transactions/s | RTT p50 (us) | RTT p99 (us) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workload']} | {row['flows']} | {row['transactions_per_s']:,.0f} | "
              f"{(row['rtt_p50_ns'] or 0) / 1000:.1f} | {(row['rtt_p99_ns'] or 0) / 1000:.1f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
