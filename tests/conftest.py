"""Shared test set-up.

Privileged tests (marker ``privileged``) need root. As root, a privileged
test may only be skipped for a kernel feature this machine provably lacks,
via :func:`require_feature`; any other skip fails the run. The host's own
network state is snapshotted before the session and compared after it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
FEATURE_SKIP = "kernel feature missing:"
IS_ROOT = os.geteuid() == 0

# What the tests must never change in the host's own namespace.
HOST_STATE_COMMANDS = (
    ["iptables-legacy-save"],
    ["iptables-nft-save"],
    ["nft", "list", "ruleset"],
    ["ip", "-d", "link", "show"],
    ["ip", "addr", "show"],
    ["ip", "route", "show", "table", "all"],
    ["sysctl", "net.ipv4.ip_forward", "net.ipv4.conf.all.route_localnet",
     "net.ipv4.conf.all.rp_filter"],
)


def host_state() -> dict[str, str]:
    """The host namespace's firewall, links, addresses, routes and sysctls, as text."""
    state = {}
    for argv in HOST_STATE_COMMANDS:
        p = subprocess.run(argv, capture_output=True, text=True)
        lines = [ln for ln in p.stdout.splitlines() if not ln.startswith("#")]
        state[" ".join(argv)] = "\n".join(lines)
    return state


def held_bpf_programs() -> int:
    """How many BPF programs this process holds open (file descriptors)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) == "anon_inode:bpf-prog"
    return count


def require_feature(name: str) -> None:
    """Skip if the kernel lacks feature ``name``; fail if the kernel has it but it fails.

    bench.kernel.features calls a feature missing only when a minimal kernel-only probe of it
    fails too; a failure of our own code or tools (a compiler or verifier error in our
    BPF programs, a tool not installed, bcc not importable) is a test failure with the
    message, never a skip.
    """
    from bench.datapaths import VARIANT_NEEDS
    from bench.kernel.features import feature

    # A datapath variant (nftables-chunked, xdp, ...) needs each feature of its own.
    for need in VARIANT_NEEDS.get(name, (name,)):
        f = feature(need)
        if f.missing:
            pytest.skip(f"{FEATURE_SKIP} {need} ({f.detail})")
        if not f.ok:
            pytest.fail(f"{need} fails although the kernel supports it: {f.detail}",
                        pytrace=False)


@pytest.fixture(autouse=True)
def _results_written_match_the_schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every result document the code writes during a test (the run writer's rewrites,
    merged baselines) must validate against docs/result.schema.json. Results written
    by a `kpbench` subprocess are checked when the test reads them (load_result)."""
    from bench.results import reader, schema, writer

    write = writer.write_json_atomic
    invalid: list[str] = []

    def checked_write(path: str | Path, doc: object) -> None:
        if isinstance(doc, dict) and doc.get("kind") == schema.KIND:
            invalid.extend(f"{path}: {'.'.join(map(str, e.instance_path))}: {e.message}"
                           for e in reader._schema_validator().iter_errors(doc))
        write(path, doc)

    monkeypatch.setattr(writer, "write_json_atomic", checked_write)
    yield
    assert not invalid, "result written against the schema:\n" + "\n".join(invalid[:5])


@pytest.fixture(autouse=True)
def _unload_kept_probe_programs() -> Iterator[None]:
    """Probe programs kept for reuse go with the test that compiled them (a run's end)."""
    yield
    from bench.measure.probes.loader import release_compiled

    release_compiled()


def pytest_sessionstart(session: pytest.Session) -> None:
    if IS_ROOT:
        session.config._kpbench_host_state = host_state()  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (privileged test)")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


_bad_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not (IS_ROOT and report.skipped and "privileged" in report.keywords):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    if FEATURE_SKIP not in reason:
        _bad_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    problems = []
    if _bad_skips:
        problems.append("privileged tests were skipped as root without a missing kernel "
                        "feature:\n  " + "\n  ".join(_bad_skips))
    before = getattr(session.config, "_kpbench_host_state", None)
    if before is not None:
        after = host_state()
        changed = [k for k in before if before[k] != after[k]]
        if changed:
            problems.append("the host's own network state changed during the tests: "
                            + ", ".join(changed))
    if problems:
        for p in problems:
            if tr is not None:
                tr.write_line(f"ERROR: {p}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
pytest_plugins = ["tests.helpers.signals"]  # the handlers fixture
