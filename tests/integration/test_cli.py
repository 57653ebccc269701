"""The CLI end to end: errors are one line with exit code 2, nothing is left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.cluster.topology import run_namespaces
from tests.conftest import DATA

KPBENCH = [sys.executable, "-m", "bench"]


def kpbench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KPBENCH, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 2, p
    # Warnings about the input may come first; the error itself is one line.
    lines = [ln for ln in p.stderr.strip().splitlines() if "warning:" not in ln]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


BAD_UP = [
    (["--datapath", "iptables", "--services", str(DATA / "bad" / "not-yaml.yaml")],
     ["not-yaml.yaml", "not valid YAML"]),
    (["--datapath", "ipfw", "--services", str(DATA / "good" / "kubectl-list.yaml")],
     ["--datapath", "unknown datapath 'ipfw'"]),
    (["--datapath", "nftables", "--services", str(DATA / "bad" / "clusterip-loopback.yaml")],
     ["clusterip-loopback.yaml", "Service default/web", "spec.clusterIP"]),
    (["--datapath", "iptables", "--services", str(DATA / "bad" / "port-out-of-range.yaml")],
     ["Service default/web", "spec.ports[0].port", "70000"]),
    (["--datapath", "iptables", "--iptables-backend", "xt", "--services",
      str(DATA / "good" / "kubectl-list.yaml")], ["--iptables-backend"]),
    (["--datapath", "iptables", "--services", "/nonexistent.yaml"], ["/nonexistent.yaml"]),
    (["--datapath", "iptables", "--nodes", "99", "--services",
      str(DATA / "good" / "kubectl-list.yaml")], ["--nodes"]),
]


@pytest.mark.privileged
@pytest.mark.parametrize("args,needles", BAD_UP, ids=[str(i) for i in range(len(BAD_UP))])
def test_up_with_bad_input_fails_cleanly(args: list[str], needles: list[str]) -> None:
    before = run_namespaces()
    p = kpbench("up", "--for", "0", *args)
    assert_one_line_error(p, *needles)
    assert run_namespaces() == before


def test_render_prints_only_the_rules_on_stdout() -> None:
    p = kpbench("render", "--datapath", "iptables", "--services",
                str(DATA / "good" / "kubectl-list.yaml"), "--node-name", "node-b")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("*filter") and p.stdout.rstrip().endswith("COMMIT")
    assert "ignored unsupported fields" in p.stderr  # warnings go to stderr only


def test_render_bad_argument() -> None:
    p = kpbench("render", "--datapath", "nftables", "--node-ip", "1.2.3", "--services",
                str(DATA / "good" / "kubectl-list.yaml"))
    assert_one_line_error(p, "--node-ip", "1.2.3")


def test_argparse_errors_exit_2() -> None:
    p = kpbench("render")
    assert p.returncode == 2 and "Traceback" not in p.stderr


@pytest.mark.privileged
def test_up_builds_and_removes_everything() -> None:
    before = run_namespaces()
    p = kpbench("up", "--datapath", "nftables", "--for", "0.5", "--services",
                str(DATA / "good" / "kubectl-list.yaml"))
    assert p.returncode == 0, p.stderr
    assert "up: datapath nftables" in p.stdout and "removed" in p.stdout
    assert run_namespaces() == before


@pytest.mark.privileged
def test_up_is_removed_on_sigint() -> None:
    import signal
    import time

    before = run_namespaces()
    proc = subprocess.Popen([*KPBENCH, "up", "--datapath", "iptables", "--services",
                             str(DATA / "good" / "kubectl-list.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while "Ctrl-C" not in proc.stdout.readline():
        assert time.monotonic() < deadline and proc.poll() is None
    assert len(run_namespaces()) > len(before)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert run_namespaces() == before


@pytest.mark.privileged
def test_sigkill_leftovers_are_warned_about_and_cleaned() -> None:
    import signal
    import time

    before = run_namespaces()
    proc = subprocess.Popen([*KPBENCH, "up", "--datapath", "iptables", "--services",
                             str(DATA / "good" / "kubectl-list.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while "Ctrl-C" not in proc.stdout.readline():
        assert time.monotonic() < deadline and proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    left = set(run_namespaces()) - set(before)
    assert len(left) == 1  # SIGKILL leaves the run's namespaces by nature
    p = kpbench("up", "--datapath", "iptables", "--for", "0", "--services",
                str(DATA / "good" / "kubectl-list.yaml"))
    assert p.returncode == 0 and "leftovers of an earlier run" in p.stderr, p.stderr
    killed = left.pop()
    p = kpbench("clean")
    assert p.returncode == 0 and f"{killed}: removed" in p.stdout, p.stdout
    assert killed not in run_namespaces()
