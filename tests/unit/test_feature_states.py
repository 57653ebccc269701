"""What each feature state leads to, without root: a missing kernel feature skips and says
"no"; a broken one (the kernel has it, our code or tools fail) fails tests, fails
`kpbench doctor` and is never called a kernel limit."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from bench.commands import doctor
from bench.kernel import features as F
from tests.conftest import FEATURE_SKIP, require_feature


@pytest.fixture
def found(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, F.Feature]]:
    """Every feature as given here (the checks themselves are not run)."""
    states = {n: F.Feature(n, F.OK, "works") for n in (*F.NETNS_CHECKS, *F.HOST_CHECKS)}
    states["ipvs"] = F.Feature("ipvs", F.MISSING, "the kernel has no IPVS generic netlink family")
    states["ebpf-tc"] = F.Feature("ebpf-tc", F.BROKEN, "cannot compile bpf/lb.c: error: boom")
    monkeypatch.setattr(F, "_found", states)
    yield states


def test_a_missing_feature_skips_and_a_broken_one_fails(found: dict[str, F.Feature]) -> None:
    with pytest.raises(pytest.skip.Exception, match=f"{FEATURE_SKIP} ipvs"):
        require_feature("ipvs")
    with pytest.raises(pytest.fail.Exception, match="error: boom"):
        require_feature("ebpf-tc")
    require_feature("nftables")  # works: nothing raised


def test_lacking_tells_the_kernels_limits_from_our_failures(found: dict[str, F.Feature]) -> None:
    assert F.lacking(F.DATAPATH_NEEDS["ipvs"]) == (
        "ipvs: the kernel has no IPVS generic netlink family", None)
    assert F.lacking(F.DATAPATH_NEEDS["xdp"]) == (
        None, "ebpf-tc: cannot compile bpf/lb.c: error: boom")
    assert F.lacking(F.DATAPATH_NEEDS["nftables"]) == (None, None)


def test_doctor_says_no_for_missing_and_fails_for_broken(
        found: dict[str, F.Feature], capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.run(argparse.Namespace()) == 1
    out = capsys.readouterr().out
    lines = {ln.split()[1]: ln.split()[0] for ln in out.splitlines()
             if ln.startswith("  ") and len(ln.split()) > 1}
    assert lines["ipvs"] == "no" and lines["ebpf-tc"] == "FAILED" and lines["nftables"] == "yes"
    assert "FAILED: ebpf-tc fail" in out
    found["ebpf-tc"] = F.Feature("ebpf-tc", F.OK, "works")
    assert doctor.run(argparse.Namespace()) == 0  # only missing: the kernel's limit


def test_a_failed_check_without_a_kernel_probe_is_broken_not_missing() -> None:
    assert F.judge("bcc", False, "cannot import bcc", "").state == F.BROKEN
    assert F.judge("kernel-headers", False, "no headers", "").state == F.BROKEN


def test_doctor_without_root_is_a_one_line_error_not_a_list_of_failures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.errors import KpbenchError

    monkeypatch.setattr(doctor.os, "geteuid", lambda: 1000)
    with pytest.raises(KpbenchError, match="needs root"):
        doctor.run(argparse.Namespace())
