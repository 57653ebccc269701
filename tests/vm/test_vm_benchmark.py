"""A short benchmark inside the VM: every datapath in one kernel, recorded as such.

The result must say where it ran (a VM, with the accelerator ``kpbench vm``
chose and the kernel image it booted), carry points for iptables and IPVS
measured in that one kernel, and hold the kernel-function breakdown the host
cannot take. (Kept to two datapaths and a few hundred packets: under TCG each
point costs minutes, and the VM stage has a budget; the default suite covers
every datapath.)
"""

from __future__ import annotations

import io
import os
import platform
from pathlib import Path

import pytest

from bench.kernel.vm import ENV_ACCEL, ENV_KERNEL
from bench.measure.runner import Runner
from bench.measure.scenario import load_scenario
from bench.results.reader import load_result
from tests.conftest import require_feature

pytestmark = pytest.mark.privileged

SCENARIO = """\
name = "vm-smoke"

[sweep]
datapaths = ["iptables-legacy", "ipvs"]
services = [20]
endpoints = 2

[traffic]
workloads = ["udp-new"]
rate_pps = 1000
packets = 200
repetitions = 1
warmup_packets = 50

[measure]
settle_timeout = 10
overhead = false
"""


def test_short_benchmark_records_vm_kernel_and_accelerator(tmp_path: Path) -> None:
    require_feature("ipvs")
    scenario = tmp_path / "vm-smoke.toml"
    scenario.write_text(SCENARIO)
    path = Runner(load_scenario(str(scenario)), tmp_path / "results", out=io.StringIO()).run()
    doc = load_result(path)
    env = doc["environment"]
    assert env["where"] == "vm"
    assert env["vm"] == {"accel": os.environ[ENV_ACCEL], "kernel": os.environ[ENV_KERNEL]}
    assert env["kernel_release"] == platform.release()
    assert Path(env["vm"]["kernel"]).name == f"vmlinuz-{platform.release()}"
    assert doc["status"] == "complete"
    by_variant = {p["variant"]: p for p in doc["points"]}
    assert set(by_variant) == {"iptables-legacy", "ipvs"}
    for variant, point in by_variant.items():
        assert point["status"] == "ok", (variant, point["error"])
        assert point["summary"]["loss"] < 0.02, (variant, point["summary"])
    ipvs = by_variant["ipvs"]
    assert ipvs["setup"]["state_size"]["virtual_servers"] == 20
    # The per-packet kernel-function breakdown, where kprobes exist (here).
    assert "kfunc" not in ipvs["missing"], ipvs["missing"]
    kf = ipvs["summary"]["kfunc_ns_per_packet"]
    assert kf["ipvs_hook"] > 0 and kf["nf_hook_slow"] >= kf["ipvs_hook"]
    assert by_variant["iptables-legacy"]["summary"]["kfunc_ns_per_packet"]["ipt_do_table"] > 0
