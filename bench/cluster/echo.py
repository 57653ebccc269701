"""Backend pod listeners: TCP and UDP servers that answer with who they are
and the peer address they saw (so tests can tell which endpoint was chosen
and whether the client's address was kept or SNATed).

Run as ``python -m bench.cluster.echo`` with a JSON list on stdin::

    [{"netns": "kpb1a2b3c-pod0-0", "name": "pod0-0", "tcp": [8080], "udp": [8080]}]

One process serves every pod: each socket is created inside its pod's
namespace (a socket stays in the namespace it was made in) and then served
from one selector loop. It prints ``ready`` once every socket listens.
Answer format (one line): ``<pod name> <peer ip> <peer port>``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys

from pyroute2.netns import setns


def _bind(spec: list[dict]) -> selectors.DefaultSelector:
    sel = selectors.DefaultSelector()
    host_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        for pod in spec:
            setns(pod["netns"], flags=0)  # flags=0: never create a namespace by mistake
            for port in pod.get("tcp", []):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
                s.listen(1024)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, ("tcp", pod["name"]))
            for port in pod.get("udp", []):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("0.0.0.0", port))
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, ("udp", pod["name"]))
    finally:
        setns(host_ns, flags=0)
        os.close(host_ns)
    return sel


def serve(sel: selectors.DefaultSelector) -> None:
    while True:
        for key, _ in sel.select():
            kind, name = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if kind == "tcp":
                    conn, (ip, port) = sock.accept()
                    with conn:
                        conn.sendall(f"{name} {ip} {port}\n".encode())
                else:
                    _, (ip, port) = sock.recvfrom(2048)
                    sock.sendto(f"{name} {ip} {port}\n".encode(), (ip, port))
            except (BlockingIOError, ConnectionError):
                continue


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sel = _bind(json.load(sys.stdin))
    except OSError as e:
        print(f"error: {e}", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    serve(sel)


if __name__ == "__main__":
    main()
