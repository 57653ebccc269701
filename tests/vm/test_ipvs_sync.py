"""IPVS programming obeys the point time limit like the tools' applies do.

The IPVS datapath programs virtual servers from the harness's own thread over
netlink (no tool to stop), so the limit is checked between requests; past it
the sync is an ApplyTimeout (recorded as exceeded-limit) and the next sync
completes the half-programmed table.
"""

from __future__ import annotations

import subprocess

import pytest

from bench.cluster.testbed import Testbed
from bench.datapaths import _ipvs_netlink, make_variant
from bench.errors import ApplyTimeout
from bench.model.generate import GenSpec, generate
from tests.conftest import require_feature

pytestmark = pytest.mark.privileged


def ipvs_table(netns: str) -> tuple[int, int]:
    """(virtual servers, real servers) programmed in ``netns``."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ipvsadm", "-Ln"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return (sum(ln.startswith(("TCP", "UDP")) for ln in out),
            sum(ln.strip().startswith("->") and "Masq" in ln for ln in out))


def test_an_ipvs_sync_past_its_limit_times_out_and_the_next_one_repairs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    require_feature("ipvs")
    services, slices = generate(GenSpec(services=200, endpoints=5, nodes=2, protocol="UDP"))
    dp = make_variant("ipvs")
    with Testbed(dp, services, slices, 2, pod_services={services[0].key}, echo=False,
                 sync_on_enter=False) as bed:
        node0 = bed.cluster.node_ns(0)
        # Only the netlink part gets a limit it cannot meet (the tools' own steps,
        # sysctl and restores, keep theirs): past it before the first virtual server.
        real = _ipvs_netlink.sync
        with monkeypatch.context() as m:
            m.setattr(_ipvs_netlink, "sync",
                      lambda plan, netns=None: real({**plan, "timeout": 1e-6}, netns))
            with pytest.raises(ApplyTimeout, match="IPVS programming did not finish"):
                bed.sync()
        assert ipvs_table(node0)[0] < 200
        timing = bed.sync()
        want = dp.state_size(timing.rendered[0])
        assert ipvs_table(node0) == (want["virtual_servers"], want["real_servers"])
        assert want["virtual_servers"] == 200
