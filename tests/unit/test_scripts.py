"""The scripts work as typed: as root directly, as a user through sudo (arguments and
KPBENCH_* settings kept), and say what to do when there is no sudo; the set-up of a
complete machine is quiet."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, ROOT

PROBE = """set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/as-root.sh
as_root "$@"
echo "ran as $(id -u) with $*"
"""
TOOLS = ("bash", "dirname", "basename", "id", "env", "cat")


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A copy of the scripts that another user can read, with a fake sudo that records."""
    top = Path(tempfile.mkdtemp(prefix="kpbench-scripts-"))
    try:
        (top / "scripts").mkdir()
        shutil.copy(ROOT / "scripts/as-root.sh", top / "scripts")
        (top / "scripts/probe.sh").write_text(PROBE)
        for d in ("bin", "bin-sudo"):
            (top / d).mkdir()
            for tool in TOOLS:
                (top / d / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
        sudo = top / "bin-sudo/sudo"
        sudo.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {top}/sudo-args\n')
        sudo.chmod(0o755)
        top.chmod(0o777)  # the fake sudo, run as nobody, writes its record here
        yield top
    finally:
        shutil.rmtree(top)


def run(checkout: Path, path_dir: str, *args: str, user: bool = True
        ) -> subprocess.CompletedProcess[str]:
    """probe.sh with PATH limited to ``path_dir``; as nobody when we are root and ``user``."""
    drop = [shutil.which("setpriv") or "/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
            "--clear-groups"]
    argv = [*(drop if IS_ROOT and user else []), str(checkout / path_dir / "bash"),
            str(checkout / "scripts/probe.sh"), *args]
    env = {"PATH": str(checkout / path_dir), "KPBENCH_SKIP_VM": "1", "OTHER": "x"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)


def test_a_user_is_sent_through_sudo_with_arguments_and_settings(checkout: Path) -> None:
    p = run(checkout, "bin-sudo", "--host", "a b")
    assert p.returncode == 0, p.stderr
    assert "ran as" not in p.stdout  # it did not go on unprivileged
    assert "needs root: running it again through sudo" in p.stderr
    args = (checkout / "sudo-args").read_text().splitlines()
    assert args == ["--", "env", "KPBENCH_SKIP_VM=1", "bash",
                    f"{checkout}/scripts/probe.sh", "--host", "a b"]


def test_without_sudo_a_user_is_told_what_to_do(checkout: Path) -> None:
    p = run(checkout, "bin", "--host")
    assert p.returncode == 2 and "ran as" not in p.stdout
    (line,) = p.stderr.splitlines()
    assert "needs root" in line and "sudo is not installed" in line
    assert f"su -c '{checkout}/scripts/probe.sh --host'" in line


@pytest.mark.skipif(not IS_ROOT, reason="runs as root only when the tests do")
def test_root_runs_directly(checkout: Path) -> None:
    p = run(checkout, "bin-sudo", "x", user=False)
    assert p.returncode == 0 and p.stdout == "ran as 0 with x\n" and p.stderr == ""
    assert not (checkout / "sudo-args").exists()


def test_every_script_that_needs_root_asks_for_it_first() -> None:
    for script in ("bench.sh", "test.sh", "setup.sh", "microbench.sh"):
        lines = (ROOT / "scripts" / script).read_text().splitlines()
        body = [ln for ln in lines if ln and not ln.startswith("#")]
        # After `set` and `cd`, before anything else.
        assert body[1:4] == ['cd "$(dirname "$0")/.."', "source scripts/as-root.sh",
                             'as_root "$@"'], script


@pytest.mark.privileged
def test_a_complete_set_up_is_quiet() -> None:
    first = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout == "" and again.stderr == ""  # no pip run, no warnings


def test_pyproject_license_is_an_spdx_string() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # A table here makes setuptools print a deprecation banner on every install.
    assert project["license"] == "Apache-2.0"
