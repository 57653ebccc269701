"""A feature is "missing" only when the kernel lacks it; our own failures fail the tests.

- A syntax error in our BPF program makes a test that needs the feature fail (in a
  pytest run of its own), where the intact program passes: it is never a skip.
- A program the verifier rejects is ``broken`` with the verifier's words.
- A tool that is not installed is ``broken``, not a missing kernel feature.
- Every kernel-only probe agrees with a feature that works the full way (a probe that
  failed on a capable kernel would turn our bugs into skips again).
- A kernel without IPVS (this host's) stays ``missing``, so its tests still skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.datapaths import bpf_lb as B
from bench.kernel import features as F
from tests.conftest import ROOT

pytestmark = pytest.mark.privileged


@pytest.fixture
def fresh() -> Iterator[None]:
    """Checks are cached per process: tests that change what they see forget both ways."""
    F.forget()
    yield
    F.forget()


def _bpf_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of the datapath's BPF sources with ``old`` replaced by ``new`` in lb.c."""
    d = tmp_path / name
    shutil.copytree(B.BPF_DIR, d)
    text = (d / "lb.c").read_text()
    assert old in text
    (d / "lb.c").write_text(text.replace(old, new, 1))
    return d


def test_a_bpf_program_that_does_not_compile_fails_the_run_not_skips(tmp_path: Path) -> None:
    broken = _bpf_copy(tmp_path, "broken", "int kpb_lb_tc(struct __sk_buff *skb)\n{",
                       "int kpb_lb_tc(struct __sk_buff *skb)\n{ kpb_no_such_symbol = ;")
    test = tmp_path / "test_needs_tc.py"
    test.write_text(
        "from pathlib import Path\n"
        "import pytest\n"
        "from bench.kernel import features\n"
        "from bench.datapaths import bpf_lb\n"
        "from tests.conftest import require_feature\n\n"
        f"@pytest.mark.parametrize('bpf_dir', [{str(broken)!r}, {str(B.BPF_DIR)!r}],\n"
        "                         ids=['broken', 'intact'])\n"
        "def test_needs_ebpf_tc(bpf_dir, monkeypatch):\n"
        "    monkeypatch.setattr(bpf_lb, 'BPF_DIR', Path(bpf_dir))\n"
        "    features.forget()\n"
        "    require_feature('ebpf-tc')\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
                        "tests.conftest", "-rA", "--rootdir", str(tmp_path), str(test)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT)})
    out = p.stdout
    assert p.returncode == 1, out + p.stderr
    assert "FAILED test_needs_tc.py::test_needs_ebpf_tc[broken]" in out, out
    assert "PASSED test_needs_tc.py::test_needs_ebpf_tc[intact]" in out, out
    assert "skipped" not in out.splitlines()[-1], out
    # The failure carries the compiler's own message, not just "cannot compile".
    assert "kpb_no_such_symbol" in out and "error:" in out, out


def test_a_program_the_verifier_rejects_is_broken_with_the_verifiers_words(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: None) -> None:
    # A read of packet data with no bounds check: the verifier must refuse it.
    rejected = _bpf_copy(tmp_path, "rejected", "    struct tuple t = {};\n",
                         "    struct tuple t = {};\n"
                         "    if (*(volatile __u32 *)data == 0x4b50) return 2;\n")
    monkeypatch.setattr(B, "BPF_DIR", rejected)
    f = F.feature("ebpf-tc")
    assert f.state == F.BROKEN, f
    assert "the kernel refused kpb_lb_tc" in f.detail, f
    assert "invalid access to packet" in f.detail, f  # the verifier's log, not only EACCES
    assert "yet the kernel supports it" in f.detail, f


def test_a_tool_that_is_not_installed_is_broken_not_missing(
        monkeypatch: pytest.MonkeyPatch, fresh: None) -> None:
    which = shutil.which
    monkeypatch.setattr(F.shutil, "which", lambda cmd: None if cmd == "nft" else which(cmd))
    f = F.feature("nftables")
    assert f.state == F.BROKEN, f
    assert "nft not installed" in f.detail, f


def test_the_kernel_probes_agree_with_every_feature_that_works() -> None:
    found = F.detect()  # as the session found them (cached)
    with F.scratch_netns() as ns:
        for name, probe in F.KERNEL_PROBES.items():
            if found[name].ok:
                ok, detail = probe(ns)
                assert ok, (name, detail)


def test_a_kernel_without_ipvs_is_missing_not_broken() -> None:
    with F.scratch_netns() as ns:
        kernel_has_it, detail = F.KERNEL_PROBES["ipvs"](ns)
    f = F.feature("ipvs")
    assert f.state == (F.OK if kernel_has_it else F.MISSING), (f, detail)
    if not kernel_has_it:
        assert "no IPVS generic netlink family" in f.detail, f


def test_a_run_records_a_broken_program_as_our_failure_and_no_ipvs_as_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: None) -> None:
    import tomllib

    from bench.measure.runner import Runner
    from bench.measure.scenario import parse_scenario
    from bench.results.reader import load_result

    broken = _bpf_copy(tmp_path, "broken", "int kpb_lb_tc(struct __sk_buff *skb)\n{",
                       "int kpb_lb_tc(struct __sk_buff *skb)\n{ kpb_no_such_symbol = ;")
    monkeypatch.setattr(B, "BPF_DIR", broken)
    text = ('name = "features"\n[sweep]\ndatapaths = ["ebpf-tc", "ipvs"]\nservices = [1]\n'
            'endpoints = 2\n[traffic]\nworkloads = ["udp-new"]\n')
    sc = parse_scenario(tomllib.loads(text), "<features>", text)
    points = {p["variant"]: p for p in load_result(Runner(sc, tmp_path).run())["points"]}
    tc = points["ebpf-tc"]
    assert tc["status"] == "failed", tc
    assert tc["error"].startswith("kpbench failed (not a kernel limit):"), tc["error"]
    assert "kpb_no_such_symbol" in tc["error"], tc["error"]
    if F.feature("ipvs").missing:
        assert points["ipvs"]["error"].startswith("kernel feature missing: ipvs:"), points["ipvs"]
