"""Arguments and loading shared by subcommands that take a services file."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from pathlib import Path

from bench.datapaths import DATAPATH_NAMES, IPTABLES_BACKENDS
from bench.errors import InputError
from bench.model import layout as L
from bench.model.k8s_input import LoadedObjects, load_objects

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


def number_in(lo: float, hi: float, *, integer: bool = False,
              unit: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number within [lo, hi] (NaN and inf are refused)."""
    def parse(text: str) -> float:
        try:
            value: float = int(text) if integer else float(text.strip().removesuffix(unit))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if integer else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is outside {lo:g}..{hi:g}")
        return value
    return parse


def output_file(path: str) -> Path:
    """A file the command will write: refused in one line if it cannot be one."""
    p = Path(path)
    if p.is_dir():
        raise InputError("is a directory; give a file name", source=path)
    if not p.parent.is_dir():
        raise InputError(f"directory {p.parent} does not exist; create it or choose another "
                         "path", source=path)
    return p


def output_dir(path: str | Path) -> Path:
    """A directory the command will write into, created if missing; refused in one line
    if it is a file or cannot be created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError("exists and is not a directory; give a directory", source=str(p))
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the directory ({e.strerror or e})",
                         source=str(p)) from None
    return p
