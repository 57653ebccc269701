"""Connection client for semantics checks: opens real TCP connections (or
sends UDP requests) from inside a run namespace and reports which backend
answered and which peer address that backend saw.

``python -m bench.cluster.netclient TCP 172.30.0.41 80 --count 400`` prints one JSON
object per attempt. :func:`connect_many` runs it inside a namespace.
Attempts are bounded in count and each by a timeout.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.cluster.netns_exec import netns_argv

MAX_COUNT = 10000


@dataclass(frozen=True)
class Attempt:
    ok: bool
    pod: str | None = None
    peer_ip: str | None = None
    error: str | None = None  # "refused", "timeout", "unreachable", ...
    seconds: float = 0.0


def _one(proto: str, ip: str, port: int, timeout: float) -> Attempt:
    start = time.monotonic()
    kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
    try:
        with socket.socket(socket.AF_INET, kind) as s:
            s.settimeout(timeout)
            s.connect((ip, port))
            if proto == "UDP":
                s.send(b"kpbench\n")
            data = s.recv(256).decode(errors="replace").split()
    except TimeoutError:
        return Attempt(False, error="timeout", seconds=time.monotonic() - start)
    except OSError as e:
        name = {errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "unreachable",
                errno.ENETUNREACH: "unreachable", errno.ECONNRESET: "reset"}.get(
                    e.errno or 0, errno.errorcode.get(e.errno or 0, str(e)))
        return Attempt(False, error=name, seconds=time.monotonic() - start)
    if len(data) < 2:
        return Attempt(False, error="short-reply", seconds=time.monotonic() - start)
    return Attempt(True, pod=data[0], peer_ip=data[1], seconds=time.monotonic() - start)


def connect_many(netns: str, proto: str, ip: str, port: int, count: int = 1,
                 timeout: float = 1.0, interval: float = 0.0) -> list[Attempt]:
    """Make ``count`` connections from inside ``netns``; one Attempt each."""
    argv = netns_argv(netns, [sys.executable, "-m", "bench.cluster.netclient", proto, ip,
                              str(port), "--count", str(count), "--timeout", str(timeout),
                              "--interval", str(interval)])
    bound = count * (timeout + interval) + 30
    out = subprocess.run(argv, capture_output=True, text=True, timeout=bound, check=True)
    return [Attempt(**json.loads(line)) for line in out.stdout.splitlines() if line]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cluster.netclient", description=__doc__)
    p.add_argument("proto", choices=["TCP", "UDP"])
    p.add_argument("ip")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--interval", type=float, default=0.0)
    a = p.parse_args()
    if not 1 <= a.count <= MAX_COUNT:
        p.error(f"--count must be within 1-{MAX_COUNT}")
    for i in range(a.count):
        if i and a.interval:
            time.sleep(a.interval)
        print(json.dumps(_one(a.proto, a.ip, a.port, a.timeout).__dict__), flush=True)


if __name__ == "__main__":
    main()
