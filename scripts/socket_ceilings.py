"""The socket generators' own ceilings on this machine (docs/sockets.md).

    .venv/bin/python scripts/socket_ceilings.py [SECONDS] [FLOWS ...]

Each socket workload (tcp-crr and tcp-rr with kpb-crr, udp-rr with sockperf)
runs closed loop at each concurrency (default 1, 8, 64) for SECONDS (default
1) through bench.measure.generator_ceiling.measure, the code a run uses for
each point's ``generator_ceiling``: generator and responder in ONE run
namespace, over its loopback (no node, no veth, no rules, no conntrack).
What they reach there is the most any point can show: a point near this rate
is bound by the generator and the machine's two cores, not by the path.
Prints a Markdown table and JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.cluster.topology import new_prefix, register_run, remove_run
from bench.measure import sockets as S
from bench.measure.generator_ceiling import measure


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 1.0
    flows = [int(f) for f in argv[1:]] or [1, 8, 64]
    prefix = new_prefix()
    register_run(prefix)
    ns = f"{prefix}-sc"
    rows = []
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
                       check=True, capture_output=True, timeout=30)
        for workload in ("tcp-crr", "tcp-rr", "udp-rr"):
            for f in flows:
                c = measure(S.SocketWorkload(workload, flows=f), ns, seconds)
                rows.append({"workload": workload, "flows": f, **c})
                print(f"{workload} x{f}: {c['transactions_per_s']:.0f} tx/s", file=sys.stderr)
    finally:
        remove_run(prefix)
    print("| workload | flows | transactions/s |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['workload']} | {row['flows']} | {row['transactions_per_s'] or 0:,.0f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
