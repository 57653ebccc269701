"""Loading kpbench's eBPF load balancer into a node: compile, size, attach, program maps.

One :class:`LoadedLb` per node namespace holds a BCC object (its maps and
programs live as long as it does), the tc and XDP attachments made in that
namespace, and the map entries last written, so a sync writes only what
changed (as Cilium's agent does) and can always replace the whole contents.

Map sizes are computed from the first rendering a node gets (twice what it
needs, for later changes) and fixed when the programs load; a rendering
beyond them, or beyond what kpbench will load at all, is an InputError with
the numbers. The programs themselves are in ``bpf/`` (see their header
comments); this host's kernel headers need not match the kernel, so they use
UAPI types only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from bench.cluster.netlink import in_netns
from bench.cluster.netns_exec import run_netns
from bench.datapaths import ebpf_maps as M
from bench.errors import ApplyError, FeatureMissing, InputError
from bench.measure.probes.bcc_output import captured_stderr

log = logging.getLogger(__name__)

BPF_DIR = Path(__file__).resolve().parent / "bpf"
NETNS_DIR = Path("/run/netns")
TC_INGRESS = "ffff:fff2"
# After the measurement probes' filters (0x4B50..), which observe and pass packets on.
TC_PRIO = 0x4C00
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_MODES = {1: "native", 2: "generic", 3: "offload"}

MIN_ENTRIES = 4096
MAX_ENTRIES = 1 << 21  # per sync map: 10k services x 10 endpoints x 2 frontends fit twice
CT_ENTRIES = 1 << 18  # LRU: connections tracked per node (two entries each)
AFFINITY_ENTRIES = 1 << 16  # LRU: (client, frontend) pairs with affinity per node
_SIZE_FLAGS = {"svc": "KPB_SVC_MAX", "backend": "KPB_BACKEND_MAX", "revnat": "KPB_REVNAT_MAX",
               "match": "KPB_MATCH_MAX"}


def stat_names() -> tuple[str, ...]:
    """The lb4_stats counters, in index order, read from the ``ST_*`` enum of lb4.h."""
    text = (BPF_DIR / "lb4.h").read_text()
    block = text[text.index("enum {\n    ST_"):]
    block = block[:block.index("};")]
    return tuple(n.lower() for n in re.findall(r"^\s*ST_(\w+),", block, re.M) if n != "N")


def source(name: str) -> str:
    """``bpf/<name>.c`` with ``lb4.h`` inlined: BCC rewrites map calls only in the main text."""
    text = (BPF_DIR / f"{name}.c").read_text()
    return text.replace('#include "lb4.h"', (BPF_DIR / "lb4.h").read_text())


@dataclass(frozen=True)
class MapSizes:
    """max_entries of each map programmed by a sync (rendering names), fixed at load."""

    svc: int
    backend: int
    revnat: int
    match: int

    @classmethod
    def for_counts(cls, counts: dict[str, int]) -> MapSizes:
        """Twice what ``counts`` needs (room for later syncs), a power of two, within limits."""
        sizes = {}
        for m, n in counts.items():
            if n > MAX_ENTRIES:
                raise InputError(f"{n} {M.MAPS[m]} entries exceed the largest map kpbench "
                                 f"loads ({MAX_ENTRIES}); use fewer services or endpoints")
            want = max(MIN_ENTRIES, 2 * n)
            sizes[m] = min(MAX_ENTRIES, 1 << (want - 1).bit_length())
        sizes["revnat"] = min(sizes["revnat"], M.MAX_REVNAT + 1)
        return cls(**sizes)

    def check(self, counts: dict[str, int]) -> None:
        """InputError if ``counts`` do not fit the loaded maps."""
        for m, n in counts.items():
            cap = getattr(self, m)
            if n > cap:
                raise InputError(f"{n} {M.MAPS[m]} entries exceed that map's {cap} entries, "
                                 "sized when the node's first sync loaded the programs; "
                                 "build the cluster again for this many services")

    def cflags(self) -> list[str]:
        return [f"-D{_SIZE_FLAGS[m]}={getattr(self, m)}" for m in _SIZE_FLAGS] + [
            f"-DKPB_CT_MAX={CT_ENTRIES}", f"-DKPB_AFFINITY_MAX={AFFINITY_ENTRIES}"]


def compile_lb(name: str, sizes: MapSizes) -> Any:
    """BCC-compile ``bpf/<name>.c`` with maps of ``sizes``; FeatureMissing if it cannot."""
    try:
        from bcc import BPF
    except ImportError as e:
        raise FeatureMissing(f"eBPF datapath: cannot import bcc ({e}); run scripts/setup.sh")
    try:
        with captured_stderr() as out:  # clang's diagnostics: the error is there, not in e
            bpf = BPF(text=source(name).encode(), cflags=sizes.cflags())
    except Exception as e:  # BCC raises bare Exception
        raise FeatureMissing(f"eBPF datapath: cannot compile bpf/{name}.c: {first_line(e)}: "
                             f"{out.summary()}") from None
    _pass_on(out.text)
    return bpf


def load_func(bpf: Any, fn_name: str, prog_type: int) -> Any:
    """Load one program of a compiled object; FeatureMissing (with the verifier's word) if not."""
    try:
        with captured_stderr() as out:  # the verifier's log: why it refused, not just EACCES
            fn = bpf.load_func(fn_name.encode(), prog_type)
    except Exception as e:  # BCC raises bare Exception
        raise FeatureMissing(f"eBPF datapath: the kernel refused {fn_name}: {first_line(e)}: "
                             f"{out.summary()}") from None
    _pass_on(out.text)
    return fn


def _pass_on(text: str) -> None:
    """Write captured compiler or loader output (warnings of a success) where it was going."""
    if text:
        sys.stderr.write(text)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --- attachments in a namespace ---------------------------------------------------------

def require_netns(netns: str) -> None:
    if not netns or not (NETNS_DIR / netns).exists():
        raise ApplyError(f"namespace {netns!r} does not exist: the datapath only programs "
                         "a run's own namespaces")


def node_links(netns: str) -> list[str]:
    """The node's veth interfaces (underlay and pod-facing), by name."""
    names = []
    with in_netns(netns) as ns:
        for link in ns.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "veth":
                names.append(link.get_attr("IFLA_IFNAME"))
    return sorted(names)


def tc_attach(netns: str, ifname: str, fn: Any) -> None:
    """``fn`` at tc clsact ingress of ``ifname`` (direct action), replacing ours if present."""
    with in_netns(netns) as ns:
        idx = ns.link_lookup(ifname=ifname)[0]
        try:
            ns.tc("add", "clsact", idx)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise ApplyError(f"tc clsact on {ifname} in {netns}: {e}") from e
        with contextlib.suppress(NetlinkError):
            ns.tc("del-filter", "bpf", idx, parent=TC_INGRESS, prio=TC_PRIO)
        try:
            ns.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name=fn.name, parent=TC_INGRESS,
                  classid=1, direct_action=True, prio=TC_PRIO)
        except NetlinkError as e:
            raise FeatureMissing(f"eBPF datapath: cannot attach {fn.name} to {ifname} in "
                                 f"{netns}: {e}") from e


def tc_detach(netns: str, ifname: str) -> None:
    """Remove our tc filter from ``ifname``; a namespace or link already gone is fine."""
    if not (NETNS_DIR / netns).exists():
        return
    with in_netns(netns) as ns:
        idx = ns.link_lookup(ifname=ifname)
        if idx:
            with contextlib.suppress(NetlinkError):
                ns.tc("del-filter", "bpf", idx[0], parent=TC_INGRESS, prio=TC_PRIO)


def xdp_attach(netns: str, ifname: str, fn: Any) -> str:
    """``fn`` as the XDP program of ``ifname``: native if the driver takes it, else generic.

    Returns the mode the kernel reports for the attachment ("native" or "generic").
    """
    with in_netns(netns) as ns:
        idx = ns.link_lookup(ifname=ifname)[0]
        try:
            ns.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", fn.fd),
                                                     ("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE)]})
        except NetlinkError as native:
            log.warning("warning: native XDP refused on %s in %s (%s); using generic XDP",
                        ifname, netns, native)
            try:
                ns.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", fn.fd),
                                                         ("IFLA_XDP_FLAGS",
                                                          XDP_FLAGS_SKB_MODE)]})
            except NetlinkError as e:
                raise FeatureMissing(f"xdp datapath: cannot attach XDP to {ifname} in "
                                     f"{netns}: {e}") from e
        return xdp_mode(ns, idx)


def xdp_mode(ns: Any, idx: int) -> str:
    """The XDP attachment mode the kernel reports for a link ("none" without one)."""
    link = ns.link("get", index=idx)[0]
    xdp = link.get_attr("IFLA_XDP")
    attached = xdp.get_attr("IFLA_XDP_ATTACHED") if xdp is not None else None
    # pyroute2 names the kernel's XDP_ATTACHED_* values; older versions give the number.
    by_name = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload"}
    if isinstance(attached, str):
        return by_name.get(attached, "none")
    return XDP_MODES.get(attached, "none") if isinstance(attached, int) else "none"


def xdp_detach(netns: str, ifname: str) -> None:
    """Remove the XDP program from ``ifname`` (either mode); gone already is fine."""
    if not (NETNS_DIR / netns).exists():
        return
    with in_netns(netns) as ns:
        idx = ns.link_lookup(ifname=ifname)
        for flags in (XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE):
            with contextlib.suppress(NetlinkError, IndexError):
                ns.link("set", index=idx[0], xdp={"attrs": [("IFLA_XDP_FD", -1),
                                                            ("IFLA_XDP_FLAGS", flags)]})


def veth_peer(netns: str, ifname: str) -> tuple[str, str] | None:
    """(namespace, interface) of a veth's peer, when the peer is in another named namespace.

    The link's ``IFLA_LINK_NETNSID`` is the id ``netns`` gives the peer's namespace
    and ``IFLA_LINK`` the peer's index there; the namespace's name is the named one
    whose id in ``netns`` is that (what ``ip netns list-id`` shows). None for a link
    that is missing, not a veth, or whose peer is in the same or an unnamed namespace.
    """
    with in_netns(netns) as ns:
        try:
            link = ns.link("get", ifname=ifname)[0]
        except NetlinkError:
            return None
        index, nsid = link.get_attr("IFLA_LINK"), link.get_attr("IFLA_LINK_NETNSID")
        if index is None or nsid is None:
            return None
        peer_ns = _named_netns(ns, nsid, first=netns.partition("-")[0] + "-")
    if peer_ns is None:
        return None
    with in_netns(peer_ns) as ns:
        peer = ns.link("get", index=index)[0].get_attr("IFLA_IFNAME")
    return peer_ns, peer


def _named_netns(ns: Any, nsid: int, first: str) -> str | None:
    """The named namespace that ``ns`` knows as ``nsid``; names starting with ``first``
    (the same run's) are asked first."""
    names = sorted(os.listdir(NETNS_DIR), key=lambda n: not n.startswith(first))
    for name in names:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY)
        except OSError:
            continue  # another run's namespace, gone since the listing
        try:
            found = ns.get_netnsid(fd=fd)
        except NetlinkError:
            continue
        finally:
            os.close(fd)
        if found and found.get("nsid") == nsid:
            return name
    return None


# ethtool feature names (as ``ethtool -K`` takes them) -> as ``ethtool -k`` prints them.
_FEATURES = {"gro": "generic-receive-offload", "tx": "tx-checksumming"}


def set_features(netns: str, ifname: str, want: dict[str, bool]) -> dict[str, bool]:
    """Set ethtool features (``gro``, ``tx``) of a link; returns their previous values."""
    if not (NETNS_DIR / netns).exists():
        return {}
    shown = run_netns(netns, ["ethtool", "-k", ifname], timeout=10, check=False).stdout
    before = {}
    for name, long in _FEATURES.items():
        m = re.search(rf"^{long}: (on|off)", shown, re.M)
        if name in want and m:
            before[name] = m.group(1) == "on"
    args = [x for name, on in want.items() for x in (name, "on" if on else "off")]
    p = run_netns(netns, ["ethtool", "-K", ifname, *args], timeout=10, check=False)
    if p.returncode != 0:
        raise FeatureMissing(f"cannot set {' '.join(args)} on {ifname} in {netns}: "
                             f"{(p.stderr or p.stdout).strip()}")
    return before


# --- one node's loaded object --------------------------------------------------------------

@dataclass
class LoadedLb:
    """The load balancer loaded for one node namespace."""

    netns: str
    bpf: Any
    sizes: MapSizes
    # The render generation (ebpf_maps.NodeRender) the maps hold; None: not known, so
    # only a full sync, which reads the maps back, may program them.
    generation: int | None = None
    tc_links: list[str] = field(default_factory=list)
    xdp_links: list[tuple[str, str]] = field(default_factory=list)  # (namespace, link)
    xdp_mode: str | None = None
    # (namespace, link, features to restore) of links whose features were changed
    tuned: list[tuple[str, str, dict[str, bool]]] = field(default_factory=list)
    # cgroup attachments: (directory fd, program, attach type); the fd is ours to close
    cgroups: list[tuple[int, Any, int]] = field(default_factory=list)
    fds: dict[str, int] = field(default_factory=dict)  # sync map fds by rendering name

    def program(self, maps: M.Maps) -> dict[str, int]:
        """Make the sync maps hold exactly ``maps`` (a full sync: rendering name -> packed
        key -> packed value); returns entries written/deleted.

        The maps are read back from the kernel and compared with ``maps``: what
        differs or is missing is written, what no entry wants is deleted. A full
        sync therefore writes nothing when the maps already hold the rendering, as
        an eBPF agent's full reconciliation (Cilium's: update the frontends that
        changed, prune what nothing wants) writes nothing then, and it repairs
        entries changed behind its back.
        """
        self.sizes.check({m: len(maps[m]) for m in M.MAPS})
        self.generation = None  # until this write completes
        plans = {}
        for m in M.MAPS:
            held = self.dump(m)
            want = maps[m]
            if held == want:  # (compared in C) a resync of what the maps hold: nothing
                plans[m] = ([], [])
            elif not held:  # a first sync: everything
                plans[m] = (list(want.items()), [])
            else:
                plans[m] = ([(k, v) for k, v in want.items() if held.get(k) != v],
                            [k for k in held if k not in want])
        return self.program_delta(M.batches({m: p[0] for m, p in plans.items()},
                                            {m: p[1] for m, p in plans.items()}))

    def program_delta(self, batches: Sequence[M.Batch]) -> dict[str, int]:
        """Make the kernel calls ``batches`` (ebpf_maps.batches: a partial sync's come
        packed and ordered by the render, ``MapsDelta.batches``), one per map and kind;
        returns entries written/deleted."""
        self.generation = None  # until this write completes
        written = deleted = 0
        for b in batches:
            if b.delete:
                self._delete_batch(b.m, b.keys, b.count)
                deleted += b.count
            else:
                self._write_batch(b.m, b.keys, b.values, b.count)
                written += b.count
        return {"written": written, "deleted": deleted}

    def dump(self, m: str) -> dict[bytes, bytes]:
        """Every entry of sync map ``m`` as the kernel holds it (key bytes -> value bytes),
        read with the batch lookup call."""
        from bcc.libbcc import lib

        table = self._table(m)
        ksize, vsize = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
        cap = table.max_entries
        keys = ctypes.create_string_buffer(ksize * cap)
        values = ctypes.create_string_buffer(vsize * cap)
        token, nxt = ctypes.c_uint32(0), ctypes.c_uint32(0)
        total, first = 0, True
        while total < cap:
            count = ctypes.c_uint32(cap - total)
            res = lib.bpf_lookup_batch(table.map_fd, None if first else ctypes.byref(token),
                                       ctypes.byref(nxt), ctypes.byref(keys, ksize * total),
                                       ctypes.byref(values, vsize * total),
                                       ctypes.byref(count))
            err = ctypes.get_errno()
            total += count.value
            if res != 0:
                if err == errno.ENOENT:
                    break  # the whole map was read
                raise ApplyError(f"reading {M.MAPS[m]} in {self.netns}: {os.strerror(err)}")
            token.value, first = nxt.value, False
        # Cut into one bytes object an entry by numpy's C loop, not a Python slice each.
        np = M.numpy()
        return dict(zip(np.frombuffer(keys, f"V{ksize}", total).tolist(),
                        np.frombuffer(values, f"V{vsize}", total).tolist(), strict=True))

    def _table(self, m: str) -> Any:
        return self.bpf[M.MAPS[m].encode()]

    def _fd(self, m: str) -> int:
        fd = self.fds.get(m)
        if fd is None:
            fd = self.fds[m] = self._table(m).map_fd
        return fd

    # The two calls below hand the packed bytes to libbpf as they are: BCC's table layer
    # (a ctypes array type per call, copies, checks) and the joins before took about as
    # long as the kernel's own work in a one-change sync, and the apply is the datapath's
    # figure.

    def _write_batch(self, m: str, keys: bytes, values: bytes, n: int) -> None:
        """One BPF_MAP_UPDATE_BATCH of ``n`` entries into sync map ``m``."""
        from bcc.libbcc import lib

        key_layout, value_layout = M.LAYOUTS[m]
        if len(keys) != n * key_layout.size or len(values) != n * value_layout.size:
            raise ApplyError(f"writing {M.MAPS[m]} in {self.netns}: the entries are not "
                             f"{n} {key_layout.size}/{value_layout.size}-byte keys/values")
        count = ctypes.c_uint32(n)
        if lib.bpf_update_batch(self._fd(m), keys, values, ctypes.byref(count)) != 0:
            raise ApplyError(f"writing {n} {M.MAPS[m]} entries in {self.netns} (stopped "
                             f"after {count.value}): {os.strerror(ctypes.get_errno())}")

    def _delete_batch(self, m: str, keys: bytes, n: int) -> None:
        """One BPF_MAP_DELETE_BATCH of ``n`` keys from sync map ``m``."""
        from bcc.libbcc import lib

        if len(keys) != n * M.LAYOUTS[m][0].size:
            raise ApplyError(f"deleting from {M.MAPS[m]} in {self.netns}: the keys are not "
                             f"{n} {M.LAYOUTS[m][0].size}-byte keys")
        count = ctypes.c_uint32(n)
        if lib.bpf_delete_batch(self._fd(m), keys, ctypes.byref(count)) != 0:
            raise ApplyError(f"deleting {n} {M.MAPS[m]} entries in {self.netns} (stopped "
                             f"after {count.value}): {os.strerror(ctypes.get_errno())}")

    def stats(self) -> dict[str, int]:
        """What the programs counted (lb4_stats), summed over CPUs."""
        table = self.bpf[b"lb4_stats"]
        return {name: int(sum(table.getvalue(table.Key(i))))
                for i, name in enumerate(stat_names())}

    def reset_stats(self) -> None:
        table = self.bpf[b"lb4_stats"]
        zero = (table.Leaf)()
        for i in range(len(stat_names())):
            table[table.Key(i)] = zero

    def close(self) -> None:
        """Detach everything from the namespace and free the maps and programs."""
        from bcc import BPF

        for netns, ifname in self.xdp_links:
            xdp_detach(netns, ifname)
        for ifname in self.tc_links:
            tc_detach(self.netns, ifname)
        for fd, fn, attach_type in self.cgroups:
            with contextlib.suppress(Exception):
                BPF.detach_func(fn, fd, attach_type)
        for fd in {fd for fd, _, _ in self.cgroups}:
            with contextlib.suppress(OSError):
                os.close(fd)
        for netns, link, before in self.tuned:
            with contextlib.suppress(FeatureMissing):
                set_features(netns, link, before)
        self.xdp_links.clear()
        self.tc_links.clear()
        self.cgroups.clear()
        self.tuned.clear()
        self.bpf.cleanup()


def ctypes_sizes_match(bpf: Any) -> None:
    """Refuse to run if Python's struct layouts differ from what the compiler made."""
    for m, (k, v) in M.LAYOUTS.items():
        table = bpf[M.MAPS[m].encode()]
        if ctypes.sizeof(table.Key) != k.size or ctypes.sizeof(table.Leaf) != v.size:
            raise ApplyError(f"{M.MAPS[m]}: key/value sizes {ctypes.sizeof(table.Key)}/"
                             f"{ctypes.sizeof(table.Leaf)} differ from ebpf_maps' {k.size}/"
                             f"{v.size}; bpf/lb4.h and ebpf_maps.py disagree")
