"""scripts/kernel-headers.sh: the set-up links Debian's headers for a kernel without its
own, and fails (not warns) when it has none to give: every BPF program would fail to compile."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "kernel-headers.sh"
REL = "6.18.0-test"


def _run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), REL, str(tmp_path / "modules"),
                           str(tmp_path / "src")], capture_output=True, text=True, timeout=30)


def test_no_headers_to_give_is_an_error_that_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    p = _run(tmp_path)
    assert p.returncode == 1, p.stderr
    assert "error: no kernel headers for 6.18.0-test" in p.stderr
    assert "apt-get install linux-headers-amd64" in p.stderr
    assert not (tmp_path / "modules" / REL / "build").exists()


def test_debians_newest_headers_are_linked_for_a_kernel_without_its_own(tmp_path: Path) -> None:
    for tree in ("linux-headers-6.1.0-9-amd64", "linux-headers-6.1.0-57-amd64",
                 "linux-headers-6.1.0-57-common"):
        (tmp_path / "src" / tree / "include").mkdir(parents=True)
    p = _run(tmp_path)
    assert p.returncode == 0, p.stderr
    moddir = tmp_path / "modules" / REL
    assert (moddir / "build").resolve().name == "linux-headers-6.1.0-57-amd64"
    assert (moddir / "source").resolve().name == "linux-headers-6.1.0-57-common"


def test_a_kernel_with_its_own_headers_keeps_them(tmp_path: Path) -> None:
    own = tmp_path / "modules" / REL / "build" / "include"
    own.mkdir(parents=True)
    (tmp_path / "src").mkdir()
    p = _run(tmp_path)
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "modules" / REL / "build").is_symlink()
