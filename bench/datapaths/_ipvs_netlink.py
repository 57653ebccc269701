"""IPVS and dummy-device programming over netlink, inside one node's namespace.

:class:`bench.datapaths.ipvs.IpvsDatapath` calls :func:`sync` with the
namespace's name: pyroute2 opens the generic-netlink IPVS socket and the
rtnetlink socket in that namespace (from a short-lived forked child), so the
harness's own process never enters it and no new interpreter is started (on
a TCG guest a Python start costs a minute). :func:`sync` does what
kube-proxy's ``syncService``, ``syncEndpoint``, ``cleanLegacyService`` and
dummy-device handling do: ensure ``kube-ipvs0``, bind the service addresses,
add or update each virtual server and its real servers (masquerade
forwarding, as kube-proxy), delete real servers and virtual servers no longer
wanted, and unbind addresses no longer used. ``{"flush": true}`` removes
everything (kube-proxy's ``CleanupLeftovers``). A ``"timeout"`` (seconds)
bounds the work like the tools' timeouts bound theirs: past it, :func:`sync`
stops between two requests (of any kind: a virtual or real server, an address)
and raises :class:`TimeoutError`; the next sync repairs what was left half-done.
"""

from __future__ import annotations

import errno
import json
import sys
import time
from typing import Any

from pyroute2 import IPVS, IPRoute, IPVSDest, IPVSService
from pyroute2.netlink.exceptions import NetlinkError

from bench import interrupts

IP_VS_CONN_F_MASQ = 0  # fwd_method: kube-proxy uses NAT (masquerading)
AF_INET = 2


def _key(proto: int, addr: str, port: int) -> tuple[int, str, int]:
    return (proto, addr, port)


def _service(spec: dict[str, Any]) -> IPVSService:
    return IPVSService(addr=spec["addr"], port=spec["port"], protocol=spec["protocol"],
                       sched_name=spec["sched"], timeout=spec["timeout"],
                       flags={"flags": spec["flags"], "mask": 0xFFFF})


def _ensure_dummy(ipr: IPRoute, name: str) -> int:
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        ipr.link("add", ifname=name, kind="dummy")
        idx = ipr.link_lookup(ifname=name)
    # kube-proxy leaves kube-ipvs0 down: the addresses are local either way.
    return int(idx[0])


def _bound(ipr: IPRoute, index: int) -> set[str]:
    return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=AF_INET)}


def sync(plan: dict[str, Any], netns: str | None = None) -> dict[str, int]:
    """Make the namespace's IPVS table and kube-ipvs0 addresses match ``plan``; returns counts."""
    counts = {"services_added": 0, "services_updated": 0, "services_deleted": 0,
              "dests_added": 0, "dests_deleted": 0, "addresses_bound": 0,
              "addresses_unbound": 0}
    kw: dict[str, Any] = {"netns": netns, "flags": 0} if netns else {}
    start = time.monotonic()
    timeout = plan.get("timeout")

    def in_time() -> None:
        interrupts.raise_pending()
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"IPVS programming did not finish within {timeout:g} s "
                               f"({counts['services_added']} virtual servers added, "
                               f"{counts['addresses_bound']} addresses bound)")

    # Signals wait for the request in flight (see bench.cluster.netlink) and stop the
    # sync between two requests, through in_time().
    with interrupts.deferred(), IPRoute(**kw) as ipr, IPVS(**kw) as ipvs:
        if plan.get("flush"):
            for s in ipvs.service("dump"):
                interrupts.raise_pending()
                ipvs.service("del", service=IPVSService.from_message(s))
                counts["services_deleted"] += 1
            idx = ipr.link_lookup(ifname=plan["device"])
            if idx:
                ipr.link("del", index=idx[0])
            return counts

        index = _ensure_dummy(ipr, plan["device"])
        already = _bound(ipr, index)
        current: dict[tuple[int, str, int], IPVSService] = {}
        for s in ipvs.service("dump"):
            svc = IPVSService.from_message(s)
            current[_key(svc["protocol"], svc["addr"], svc["port"])] = svc

        wanted: set[tuple[int, str, int]] = set()
        for spec in plan["services"]:
            in_time()
            key = _key(spec["protocol"], spec["addr"], spec["port"])
            wanted.add(key)
            svc = _service(spec)
            have = current.get(key)
            if have is None:
                ipvs.service("add", service=svc)
                counts["services_added"] += 1
                dests: dict[tuple[str, int], int] = {}
            else:
                if (have.get("sched_name") != spec["sched"]
                        or int(have.get("timeout") or 0) != spec["timeout"]):
                    ipvs.service("set", service=svc)
                    counts["services_updated"] += 1
                dests = {}
                for d in ipvs.dest("dump", service=svc):
                    dest = IPVSDest.from_message(d)
                    dests[(dest["addr"], dest["port"])] = int(dest.get("weight") or 0)
            want = {(ip, port): weight for ip, port, weight in spec["dests"]}
            for (ip, port), weight in want.items():
                if (ip, port) in dests:
                    continue
                in_time()
                ipvs.dest("add", service=svc,
                          dest=IPVSDest(addr=ip, port=port, weight=weight,
                                        fwd_method=IP_VS_CONN_F_MASQ))
                counts["dests_added"] += 1
            for ip, port in dests.keys() - want.keys():
                in_time()
                ipvs.dest("del", service=svc, dest=IPVSDest(addr=ip, port=port))
                counts["dests_deleted"] += 1

        for addr in plan["addresses"]:
            if addr in already:
                continue
            in_time()
            try:
                ipr.addr("add", index=index, address=addr, prefixlen=32)
                counts["addresses_bound"] += 1
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
        for addr in already - set(plan["addresses"]):
            in_time()
            ipr.addr("del", index=index, address=addr, prefixlen=32)
            counts["addresses_unbound"] += 1
        for key in current.keys() - wanted:
            in_time()
            ipvs.service("del", service=current[key])
            counts["services_deleted"] += 1
    return counts


def main() -> int:
    """Read a plan on stdin and apply it in the current namespace (for debugging by hand)."""
    try:
        counts = sync(json.load(sys.stdin))
    except NetlinkError as e:
        print(f"netlink error {e.code}: {e}", file=sys.stderr)
        return 1
    json.dump(counts, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
