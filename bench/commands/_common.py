"""Arguments and loading shared by subcommands that take a services file."""

from __future__ import annotations

import argparse
import logging

from bench import layout as L
from bench.datapaths import DATAPATH_NAMES, IPTABLES_BACKENDS
from bench.k8s_input import LoadedObjects, load_objects

log = logging.getLogger("kpbench")


def add_datapath_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datapath", required=True, metavar="NAME",
                   help=f"datapath to program: {', '.join(DATAPATH_NAMES)}")
    p.add_argument("--iptables-backend", default="legacy", metavar="{legacy,nft}",
                   help=f"iptables binary family for --datapath iptables "
                        f"({', '.join(IPTABLES_BACKENDS)}; default legacy)")


def add_services_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--services", required=True, metavar="FILE",
                   help="YAML or JSON with v1 Service and discovery.k8s.io/v1 EndpointSlice "
                        "objects, as `kubectl get svc,endpointslices -A -o yaml` prints them "
                        "(or as `kpbench generate` writes them)")


def load_services(path: str) -> LoadedObjects:
    """Load a services file and log its warnings (to stderr)."""
    objs = load_objects(path)
    for w in objs.warnings:
        log.warning("warning: %s", w)
    return objs


DEFAULT_NODE_NAME = L.default_node_names(1)[0]
DEFAULT_NODE_IP = L.node_ip(0)
