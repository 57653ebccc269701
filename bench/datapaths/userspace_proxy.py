"""The proxy process of the ``userspace`` datapath: kube-proxy's deprecated userspace mode.

One process per node, started inside the node's namespace by
:class:`bench.datapaths.userspace.UserspaceDatapath`. For every service port
it listens on a proxy port; iptables REDIRECTs (or DNATs) service traffic to
it, and it relays each TCP connection and each UDP client to a backend it
chose, as upstream's ``pkg/proxy/userspace`` did: round robin over the
ready endpoints (shuffled when they change), ``sessionAffinity: ClientIP``
by client address with its timeout, up to four endpoints tried per TCP
connection with growing dial timeouts, one connected UDP socket per client
that expires after ``--udp-timeout`` (250 ms) without traffic. A service
port without endpoints accepts and closes (TCP) or drops (UDP), as upstream
did. Node ports are held open ("claimed") as upstream held them.

Protocol on stdin/stdout, one JSON object per line: the parent sends
``{"services": [...]}``, the whole table (see :func:`Proxy.configure`), or
``{"update": [...], "remove": [[name, protocol], ...]}``, the service ports
of a partial sync only (the others are left as they are), or ``{"show": true}``,
answered with ``table <json>``: what the proxy holds, in the form a full
table gives it (tests compare it with one). For the others the proxy answers
``ok <listening sockets>`` or ``error <reason>`` once every socket is open
or closed. It prints ``ready`` at start.

Bounded: at most :data:`MAX_TCP` relayed connections (one thread each) and
:data:`MAX_UDP_CLIENTS` UDP clients (the least recently active is dropped);
it exits when stdin closes, on SIGTERM, when its parent dies
(PR_SET_PDEATHSIG, set by the parent) or when its namespace file is gone.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import resource
import select
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

MAX_TCP = 4096
MAX_UDP_CLIENTS = 8192
UDP_IDLE_TIMEOUT = 0.25  # kube-proxy's --udp-timeout default
DIAL_TIMEOUTS = (0.25, 0.5, 1.0, 2.0)  # upstream's EndpointDialTimeouts
BUFSIZE = 65536
NETNS_CHECK_S = 0.5
MAX_FILES = 64 * 1000  # upstream's setRLimit(64 * 1000)

Endpoint = tuple[str, int]


@dataclass
class Balancer:
    """Round robin with optional ClientIP affinity (upstream's LoadBalancerRR)."""

    endpoints: list[Endpoint] = field(default_factory=list)
    index: int = 0
    affinity_ttl: float | None = None  # seconds, for sessionAffinity: ClientIP
    sticky: dict[str, tuple[Endpoint, float]] = field(default_factory=dict)

    def update(self, endpoints: list[Endpoint], affinity_ttl: float | None) -> None:
        if sorted(endpoints) != sorted(self.endpoints):
            # Upstream shuffles a changed endpoint list and restarts the round robin.
            self.endpoints = random.sample(endpoints, len(endpoints))
            self.index = 0
            self.sticky = {ip: v for ip, v in self.sticky.items() if v[0] in endpoints}
        if affinity_ttl != self.affinity_ttl:
            self.sticky.clear()
        self.affinity_ttl = affinity_ttl

    def next(self, client_ip: str, reset: bool = False) -> Endpoint | None:
        if not self.endpoints:
            return None
        now = time.monotonic()
        if self.affinity_ttl is not None and not reset:
            got = self.sticky.get(client_ip)
            if got is not None and now - got[1] < self.affinity_ttl:
                self.sticky[client_ip] = (got[0], now)
                return got[0]
        ep = self.endpoints[self.index % len(self.endpoints)]
        self.index = (self.index + 1) % len(self.endpoints)
        if self.affinity_ttl is not None:
            self.sticky[client_ip] = (ep, now)
        return ep


@dataclass
class Service:
    name: str
    protocol: str
    proxy_port: int
    sock: socket.socket
    balancer: Balancer
    claims: dict[int, socket.socket] = field(default_factory=dict)


class UdpClient:
    __slots__ = ("addr", "last", "service", "sock")

    def __init__(self, service: Service, addr: tuple[str, int], sock: socket.socket) -> None:
        self.service = service
        self.addr = addr
        self.sock = sock
        self.last = time.monotonic()


def _listen(protocol: str, port: int) -> socket.socket:
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    if protocol == "TCP":
        s.listen(1024)
    s.setblocking(False)
    return s


class Proxy:
    """Every service port's sockets, served from one selector loop (TCP relays in threads)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.services: dict[tuple[str, str], Service] = {}
        self.udp: collections.OrderedDict[tuple[int, tuple[str, int]], UdpClient] = (
            collections.OrderedDict())
        self.tcp_slots = threading.BoundedSemaphore(MAX_TCP)

    # --- configuration ----------------------------------------------------------------
    def configure(self, doc: dict[str, Any]) -> int:
        """Make the listening sockets and balancers match ``doc["services"]``.

        Each service: ``name``, ``protocol``, ``proxy_port``, ``endpoints`` (``ip:port``),
        ``affinity_timeout`` (seconds, null without ClientIP affinity), ``claims``.
        """
        if "services" not in doc:
            for name, protocol in doc["remove"]:
                svc = self.services.pop((name, protocol), None)
                if svc is not None:
                    self._close_service(svc)
            for spec in doc["update"]:
                self._configure_one(spec)
            return len(self.services)
        wanted = {(s["name"], s["protocol"]): s for s in doc["services"]}
        for key in [k for k in self.services if k not in wanted]:
            self._close_service(self.services.pop(key))
        for spec in wanted.values():
            self._configure_one(spec)
        return len(self.services)

    def _configure_one(self, spec: dict[str, Any]) -> None:
        """Make one service port's socket, balancer and claims match ``spec``."""
        key = (spec["name"], spec["protocol"])
        svc = self.services.get(key)
        if svc is not None and svc.proxy_port != spec["proxy_port"]:
            self._close_service(self.services.pop(key))
            svc = None
        if svc is None:
            sock = _listen(spec["protocol"], spec["proxy_port"])
            svc = Service(spec["name"], spec["protocol"], spec["proxy_port"], sock, Balancer())
            self.sel.register(sock, selectors.EVENT_READ, ("listen", svc))
            self.services[key] = svc
        endpoints = [(h, int(p)) for h, _, p in (e.rpartition(":") for e in spec["endpoints"])]
        ttl = spec.get("affinity_timeout")
        svc.balancer.update(endpoints, float(ttl) if ttl is not None else None)
        for port in [p for p in svc.claims if p not in spec["claims"]]:
            svc.claims.pop(port).close()
        for port in spec["claims"]:
            if port not in svc.claims:
                svc.claims[port] = _listen(spec["protocol"], port)

    def table(self) -> list[dict[str, Any]]:
        """Every service port the proxy serves, as ``configure`` takes it (sorted)."""
        return sorted(({"name": s.name, "protocol": s.protocol, "proxy_port": s.proxy_port,
                        "endpoints": sorted(f"{h}:{p}" for h, p in s.balancer.endpoints),
                        "affinity_timeout": (int(s.balancer.affinity_ttl)
                                             if s.balancer.affinity_ttl is not None else None),
                        "claims": sorted(s.claims)} for s in self.services.values()),
                      key=lambda d: (d["name"], d["protocol"]))

    def _close_service(self, svc: Service) -> None:
        self.sel.unregister(svc.sock)
        svc.sock.close()
        for s in svc.claims.values():
            s.close()
        for key in [k for k, c in self.udp.items() if c.service is svc]:
            self._drop_udp(key)

    # --- TCP ------------------------------------------------------------------------------
    def _accept(self, svc: Service) -> None:
        while True:
            try:
                conn, (ip, _) = svc.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. out of file descriptors: the client sees a reset
            if not self.tcp_slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._relay_tcp, args=(svc, conn, ip), daemon=True).start()

    def _relay_tcp(self, svc: Service, conn: socket.socket, client_ip: str) -> None:
        try:
            backend = self._dial(svc, client_ip)
            if backend is None:
                return  # no endpoint reachable: accept-then-close, as upstream
            with backend:
                _pump(conn, backend)
        finally:
            conn.close()
            self.tcp_slots.release()

    @staticmethod
    def _dial(svc: Service, client_ip: str) -> socket.socket | None:
        for i, timeout in enumerate(DIAL_TIMEOUTS):
            ep = svc.balancer.next(client_ip, reset=i > 0)
            if ep is None:
                return None
            try:
                return socket.create_connection(ep, timeout=timeout)
            except OSError:
                continue
        return None

    # --- UDP ------------------------------------------------------------------------------
    def _datagrams(self, svc: Service) -> None:
        for _ in range(256):  # bounded burst per wake-up, so replies get their turn
            try:
                data, addr = svc.sock.recvfrom(BUFSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            key = (svc.proxy_port, addr)
            client = self.udp.get(key)
            if client is None:
                client = self._new_udp(svc, addr)
                if client is None:
                    continue  # no endpoint: dropped, as upstream
                self.udp[key] = client
                while len(self.udp) > MAX_UDP_CLIENTS:
                    self._drop_udp(next(iter(self.udp)))
            else:
                self.udp.move_to_end(key)
                client.last = time.monotonic()
            with contextlib.suppress(OSError):
                client.sock.send(data)

    def _new_udp(self, svc: Service, addr: tuple[str, int]) -> UdpClient | None:
        ep = svc.balancer.next(addr[0])
        if ep is None:
            return None
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            s.connect(ep)
        except OSError:
            s.close()
            return None
        client = UdpClient(svc, addr, s)
        self.sel.register(s, selectors.EVENT_READ, ("udp-reply", client))
        return client

    def _reply(self, client: UdpClient) -> None:
        for _ in range(64):
            try:
                data = client.sock.recv(BUFSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            client.last = time.monotonic()
            key = (client.service.proxy_port, client.addr)
            if key in self.udp:
                self.udp.move_to_end(key)
            with contextlib.suppress(OSError):
                client.service.sock.sendto(data, client.addr)

    def _drop_udp(self, key: tuple[int, tuple[str, int]]) -> None:
        client = self.udp.pop(key)
        self.sel.unregister(client.sock)
        client.sock.close()

    def _expire_udp(self) -> None:
        # Clients are kept in order of last activity: the stale ones are at the front.
        deadline = time.monotonic() - UDP_IDLE_TIMEOUT
        while self.udp:
            key, client = next(iter(self.udp.items()))
            if client.last >= deadline:
                return
            self._drop_udp(key)

    # --- loop -----------------------------------------------------------------------------
    def serve(self, control: Any, netns_file: str | None) -> None:
        self.sel.register(control, selectors.EVENT_READ, ("control", None))
        pending = b""
        next_check = 0.0
        while True:
            for key, _ in self.sel.select(timeout=UDP_IDLE_TIMEOUT / 2):
                kind, obj = key.data
                if kind == "listen":
                    (self._accept if obj.protocol == "TCP" else self._datagrams)(obj)
                elif kind == "udp-reply":
                    if obj.sock.fileno() >= 0:
                        self._reply(obj)
                else:
                    chunk = os.read(control.fileno(), BUFSIZE)
                    if not chunk:
                        return  # the datapath is gone
                    pending += chunk
                    while b"\n" in pending:
                        line, _, pending = pending.partition(b"\n")
                        _answer(self, line)
            self._expire_udp()
            now = time.monotonic()
            if netns_file and now >= next_check:
                next_check = now + NETNS_CHECK_S
                if not os.path.exists(netns_file):
                    return  # the run tore its namespace down


def _answer(proxy: Proxy, line: bytes) -> None:
    try:
        doc = json.loads(line)
        if doc.get("show"):
            print("table " + json.dumps(proxy.table()), flush=True)
            return
        n = proxy.configure(doc)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error {type(e).__name__}: {e}", flush=True)
        return
    print(f"ok {n}", flush=True)


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both directions are closed (half-close passed on)."""
    open_dirs = {a.fileno(): (a, b), b.fileno(): (b, a)}
    # poll, not select: with thousands of service sockets open, fds pass FD_SETSIZE.
    poller = select.poll()
    for s in (a, b):
        s.setblocking(True)
        s.settimeout(None)
        poller.register(s, select.POLLIN)
    while open_dirs:
        events = poller.poll(60_000)
        if not events:
            return  # idle for a minute: give up, bounded
        for fd, _ in events:
            if fd not in open_dirs:
                continue
            src, dst = open_dirs[fd]
            try:
                data = src.recv(BUFSIZE)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                poller.unregister(src)
                del open_dirs[fd]
                continue
            try:
                dst.sendall(data)
            except OSError:
                return


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.datapaths.userspace_proxy",
                                description=__doc__)
    p.add_argument("--netns-file", help="exit when this file (the node's namespace) is gone")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_FILES if hard == resource.RLIM_INFINITY else min(MAX_FILES, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    print("ready", flush=True)
    Proxy().serve(sys.stdin, a.netns_file)


if __name__ == "__main__":
    main()
