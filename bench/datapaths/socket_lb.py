"""``socket-lb``: ClusterIP load-balanced at connect()/sendmsg(), as Cilium does east-west.

``bpf/sock_lb.c`` runs at the cgroup v2 hooks connect4, sendmsg4 and
recvmsg4 of the client pod's cgroup (``<prefix>-cpod``, created here on the
node that hosts that pod and removed at clean-up): a socket that connects or
sends to a frontend is pointed straight at a backend, so no packet is ever
translated and no connection tracked. The maps and their sync are those of
``ebpf-tc`` (:mod:`bench.datapaths.ebpf_maps`); no tc or XDP program is
attached, so only sockets of processes inside the cgroup are load-balanced
(see :func:`bench.cluster.cgroups.member`): replayed frames, other pods and the
external client are not, which is why the benchmark's packet workloads do
not apply to this datapath.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path

from bench.cluster import cgroups
from bench.cluster.topology import CLIENT_POD_IF, PREFIX_RE
from bench.datapaths import bpf_lb as B
from bench.datapaths.ebpf_tc import EbpfTcDatapath
from bench.errors import FeatureMissing

# (program, cgroup attach type): BPF_CGROUP_INET4_CONNECT, _UDP4_SENDMSG, _UDP4_RECVMSG.
HOOKS = (("kpb_sock_connect4", 10), ("kpb_sock_sendmsg4", 14), ("kpb_sock_recvmsg4", 19))


def _remove_all(paths: dict[str, Path]) -> None:
    for path in paths.values():
        cgroups.remove(path)
    paths.clear()


class SocketLbDatapath(EbpfTcDatapath):
    """Socket load balancing for the client pod's processes."""

    name = "socket-lb"
    variants = {"socket-lb": ("bcc", "socket-lb")}
    program = "sock_lb"
    # What the runner's replayed-frame workloads cannot measure here, by target, and why.
    not_measured = {
        "clusterip": "socket LB acts at connect()/sendmsg() of sockets in the client pod's "
                     "cgroup; replayed frames have no socket, so nothing would translate them",
        "nodeport": "socket LB serves the client pod's own sockets; NodePort traffic from "
                    "outside the cluster is not load-balanced by it",
        # Socket workloads (bench.measure.socket_points): the client pod's are measured.
        "sockets-nodeport": "socket LB serves the client pod's own sockets; NodePort "
                            "traffic from outside the cluster is not load-balanced by it",
    }

    def __init__(self) -> None:
        super().__init__()
        self._cgroups: dict[str, Path] = {}  # node namespace -> client pod cgroup
        # The cgroup goes with this object even if nobody calls cleanup().
        weakref.finalize(self, _remove_all, self._cgroups)

    def _attach(self, node: B.LoadedLb) -> None:
        from bcc import BPF

        if CLIENT_POD_IF not in B.node_links(node.netns):
            return  # no client pod on this node: its maps are programmed all the same
        m = PREFIX_RE.match(node.netns)
        if m is None:
            raise ValueError(f"not a run namespace: {node.netns}")
        path = cgroups.create(f"{m.group(1)}-cpod")
        self._cgroups[node.netns] = path
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for fn_name, attach_type in HOOKS:
                try:
                    fn = node.bpf.load_func(fn_name.encode(), BPF.CGROUP_SOCK_ADDR,
                                            attach_type=attach_type)
                    BPF.attach_func(fn, fd, attach_type)
                except Exception as e:  # BCC raises bare Exception
                    raise FeatureMissing(f"socket-lb: cannot attach {fn_name} to {path}: "
                                           f"{B.first_line(e)}") from e
                node.cgroups.append((fd, fn, attach_type))
        except BaseException:
            if not node.cgroups:
                os.close(fd)
            raise

    def client_cgroup(self) -> Path | None:
        """The cgroup the client pod's processes must run in to be load-balanced."""
        return next(iter(self._cgroups.values()), None)

    def cleanup(self, netns: str) -> None:
        """Detach and free the programs, then remove the client pod's cgroup."""
        super().cleanup(netns)
        path = self._cgroups.pop(netns, None)
        if path is not None:
            with contextlib.suppress(OSError):
                cgroups.remove(path)
