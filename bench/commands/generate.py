"""``kpbench generate``: write a synthetic cluster of N services x E endpoints.

The output is a Kubernetes ``List`` of v1 Service and discovery.k8s.io/v1
EndpointSlice objects, the same format ``--services`` reads from a real
cluster dump. Endpoints are spread round-robin over the nodes.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from bench.commands._common import number_in, output_file
from bench.errors import InputError
from bench.model.generate import GenSpec, generate, to_k8s
from bench.model.objects import DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write a synthetic services file (N x E)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, required=True, metavar="N")
    p.add_argument("--endpoints", type=int, default=10, metavar="E",
                   help="endpoints per service (default 10)")
    p.add_argument("--nodes", type=int, default=2, help="nodes to spread endpoints over")
    p.add_argument("--type", default="ClusterIP", choices=["ClusterIP", "NodePort"])
    p.add_argument("--protocol", default="TCP", choices=["TCP", "UDP"])
    p.add_argument("--affinity-timeout", type=number_in(1, MAX_AFFINITY_TIMEOUT, integer=True),
                   default=None, metavar="SECONDS",
                   help=f"set sessionAffinity: ClientIP with this timeout "
                        f"(1-{MAX_AFFINITY_TIMEOUT}, as Kubernetes allows)")
    p.add_argument("--external-traffic-policy", default="Cluster", choices=["Cluster", "Local"])
    p.add_argument("-o", "--output", default="-", help="file to write (default stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = GenSpec(
        services=args.services, endpoints=args.endpoints, nodes=args.nodes, type=args.type,
        protocol=args.protocol,
        session_affinity="ClientIP" if args.affinity_timeout is not None else "None",
        affinity_timeout=(args.affinity_timeout if args.affinity_timeout is not None
                          else DEFAULT_AFFINITY_TIMEOUT),
        external_traffic_policy=args.external_traffic_policy)
    out = None if args.output == "-" else output_file(args.output)
    text = yaml.safe_dump(to_k8s(*generate(spec)), sort_keys=False)
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            out.write_text(text)
        except OSError as e:
            raise InputError(f"cannot write ({e.strerror or e})", source=str(out)) from None
    return 0
