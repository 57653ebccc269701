"""``kpbench render``: print what a datapath would program on one node.

Needs no root and touches nothing: the rendering is exactly what ``up`` and
the benchmarks apply (``iptables-restore --noflush`` input, or one ``nft -f``
transaction). Only the rendering goes to stdout; warnings go to stderr.
"""

from __future__ import annotations

import argparse
import sys

from bench.commands._common import (
    DEFAULT_NODE_IP,
    DEFAULT_NODE_NAME,
    add_datapath_args,
    add_services_arg,
    load_services,
)
from bench.datapaths import NodeContext, make_datapath
from bench.model import layout as L
from bench.model.objects import service_port_views


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="print the rules a datapath would program (no root)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_datapath_args(p)
    add_services_arg(p)
    p.add_argument("--node-name", default=DEFAULT_NODE_NAME,
                   help=f"node whose view to render: decides local endpoints "
                        f"(default {DEFAULT_NODE_NAME})")
    p.add_argument("--node-ip", action="append", dest="node_ips", metavar="IP",
                   help=f"the node's IP; repeatable (default {DEFAULT_NODE_IP})")
    p.add_argument("--cluster-cidr", default=L.CLUSTER_CIDR,
                   help=f"pod CIDR of the cluster, as kube-proxy's --cluster-cidr "
                        f"(default {L.CLUSTER_CIDR})")
    p.add_argument("--service-cidr", action="append", dest="service_cidrs", metavar="CIDR",
                   help="the cluster's service CIDR (repeatable); nftables drops traffic to "
                        "unallocated ClusterIPs in it (default: none, no such rule)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ips = args.node_ips or [DEFAULT_NODE_IP]
    datapath = make_datapath(args.datapath, args.iptables_backend)
    ctx = NodeContext(node_name=args.node_name, node_ips=tuple(ips),
                      cluster_cidr=args.cluster_cidr,
                      service_cidrs=tuple(args.service_cidrs or ()))
    objs = load_services(args.services)
    views = service_port_views(objs.services, objs.slices, args.node_name)
    sys.stdout.write(str(datapath.render(views, ctx)))
    return 0
