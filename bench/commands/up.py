"""``kpbench up``: build the namespace cluster, program a datapath, keep it.

Builds a client, an in-cluster client pod, N nodes on an underlay and a
backend pod (TCP/UDP echo) for each endpoint address, applies the datapath on
every node, prints how to reach it, and waits until Ctrl-C (or --for SECONDS).
Everything is removed on exit, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time

from bench.cluster.testbed import Testbed
from bench.cluster.topology import leftovers
from bench.commands._common import (
    add_datapath_args,
    add_services_arg,
    load_services,
    number_in,
)
from bench.datapaths import make_datapath
from bench.model import layout as L

log = logging.getLogger("kpbench")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="build the cluster, program a datapath, wait for Ctrl-C",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_datapath_args(p)
    add_services_arg(p)
    p.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    p.add_argument("--max-pods", type=int, default=L.DEFAULT_MAX_PODS,
                   help="backend pods to create at most; further endpoints are programmed "
                        f"but have no pod (default {L.DEFAULT_MAX_PODS})")
    p.add_argument("--for", dest="duration", type=number_in(0, 365 * 86400), default=None,
                   metavar="SECONDS",
                   help="tear down after SECONDS instead of waiting for Ctrl-C")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    datapath = make_datapath(args.datapath, args.iptables_backend)
    L.check_nodes(args.nodes)
    objs = load_services(args.services)
    for prefix, names in leftovers().items():
        log.warning("warning: leftovers of an earlier run %s (%d namespaces): "
                    "run `kpbench clean`", prefix, len(names))
    with Testbed(datapath, objs.services, objs.slices, args.nodes, args.max_pods) as tb:
        c = tb.cluster
        lay = tb.layout
        print(f"cluster {c.prefix} up: datapath {datapath.variant}, {len(objs.services)} "
              f"services, {c.node_count} nodes, {len(lay.pods)} pods", flush=True)
        if lay.omitted_endpoints:
            print(f"  {lay.omitted_endpoints} endpoints have no pod (--max-pods "
                  f"{args.max_pods})")
        for i, name in enumerate(lay.node_names):
            print(f"  node {name:<12} {L.node_ip(i):<15} netns {c.node_ns(i)}")
        print(f"  external client {L.CLIENT_IP:<15} netns {c.client_ns}")
        print(f"  client pod      {L.client_pod_ip():<15} netns {c.client_pod_ns}")
        for s in objs.services[:5]:
            p = s.ports[0]
            print(f"  try: ip netns exec {c.client_pod_ns} python3 -m bench.cluster.netclient "
                  f"{p.protocol} {s.cluster_ip} {p.port}   # {s.key}")
        print("press Ctrl-C to tear down" if args.duration is None
              else f"tearing down in {args.duration:g} s", flush=True)
        if args.duration is None:
            while True:
                signal.pause()
        else:
            time.sleep(args.duration)
    print(f"cluster {c.prefix} removed")
    return 0
