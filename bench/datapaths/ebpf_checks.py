"""Feature checks of the eBPF and userspace datapaths, by trying them in a scratch namespace.

Each check loads the datapath's own programs (so the verifier of the running
kernel judges the real code, helpers and all) and attaches them the way the
datapath does, then removes everything. ``bench.kernel.features`` runs them inside
a throwaway run namespace and ``kpbench doctor`` prints the result.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from typing import Any

from bench.cluster import cgroups
from bench.cluster.netns_exec import run_netns
from bench.datapaths import bpf_lb as B
from bench.errors import KpbenchError

_VETH = ("kpbv0", "kpbv1")
_SIZES = B.MapSizes(svc=B.MIN_ENTRIES, backend=B.MIN_ENTRIES, revnat=B.MIN_ENTRIES,
                    match=B.MIN_ENTRIES)


@contextlib.contextmanager
def _loaded(program: str) -> Iterator[Any]:
    bpf = B.compile_lb(program, _SIZES)
    try:
        yield bpf
    finally:
        bpf.cleanup()


def _veth(ns: str) -> None:
    # Both ends stay in the scratch namespace, which takes them along when it goes.
    for argv in (["link", "add", _VETH[0], "type", "veth", "peer", "name", _VETH[1]],
                 ["link", "set", _VETH[0], "up"], ["link", "set", _VETH[1], "up"]):
        subprocess.run(["ip", "-n", ns, *argv], capture_output=True, check=False, timeout=10)


def check_tc(ns: str) -> tuple[bool, str]:
    """ebpf-tc: kpb_lb_tc verified and attached at tc clsact ingress of a veth."""
    from bcc import BPF

    try:
        _veth(ns)
        with _loaded("lb") as bpf:
            B.tc_attach(ns, _VETH[0], B.load_func(bpf, "kpb_lb_tc", BPF.SCHED_CLS))
            B.tc_detach(ns, _VETH[0])
    except KpbenchError as e:
        return False, str(e)
    return True, "kpb_lb_tc loads and attaches at tc clsact ingress (direct action)"


def check_xdp(ns: str) -> tuple[bool, str]:
    """xdp: kpb_lb_xdp verified and attached to a veth; reports native or generic."""
    from bcc import BPF

    try:
        _veth(ns)
        with _loaded("lb") as bpf:
            mode = B.xdp_attach(ns, _VETH[0], B.load_func(bpf, "kpb_lb_xdp", BPF.XDP))
            B.xdp_detach(ns, _VETH[0])
    except KpbenchError as e:
        return False, str(e)
    return True, f"kpb_lb_xdp attaches to veth in {mode} mode"


def check_socket_lb(ns: str) -> tuple[bool, str]:
    """socket-lb: the cgroup sock_addr programs load and attach to a scratch run cgroup."""
    from bcc import BPF

    from bench.datapaths.socket_lb import HOOKS

    try:
        path = cgroups.create(ns)
    except (KpbenchError, ValueError) as e:
        return False, str(e)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with _loaded("sock_lb") as bpf:
            for fn_name, attach_type in HOOKS:
                fn = bpf.load_func(fn_name.encode(), BPF.CGROUP_SOCK_ADDR,
                                   attach_type=attach_type)
                BPF.attach_func(fn, fd, attach_type)
                BPF.detach_func(fn, fd, attach_type)
    except KpbenchError as e:
        return False, str(e)
    except Exception as e:  # BCC raises bare Exception
        return False, f"cgroup sock_addr program refused: {B.first_line(e)}"
    finally:
        os.close(fd)
        cgroups.remove(path)
    return True, f"connect4/sendmsg4/recvmsg4 attach under {path.parent}"


def check_userspace(ns: str) -> tuple[bool, str]:
    """userspace: iptables-legacy nat with REDIRECT and addrtype."""
    for argv in (["-t", "nat", "-N", "KPB-USERSPACE"],
                 ["-t", "nat", "-A", "KPB-USERSPACE", "-p", "tcp", "-m", "tcp", "--dport", "1",
                  "-j", "REDIRECT", "--to-ports", "2"],
                 ["-t", "nat", "-A", "KPB-USERSPACE", "-m", "addrtype", "--dst-type", "LOCAL",
                  "-j", "RETURN"]):
        try:
            p = run_netns(ns, ["iptables-legacy", "-w", *argv], check=False)
        except FileNotFoundError:
            return False, "ip (iproute2) is not installed"
        if p.returncode != 0:
            lines = (p.stderr or p.stdout).strip().splitlines()
            return False, lines[0] if lines else f"iptables-legacy exit {p.returncode}"
    return True, "iptables-legacy nat REDIRECT and addrtype work"
