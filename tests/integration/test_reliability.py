"""Reliability: interrupts, faults, bad input and concurrent runs never leave a broken
host or a corrupt result."""

from __future__ import annotations

import json
import logging
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cluster.topology import RUN_DIR, run_namespaces
from bench.errors import FeatureMissing
from bench.measure.probes.cpu import CpuProbe
from bench.measure.probes.loader import Probe
from bench.measure.runner import Runner
from bench.measure.scenario import parse_scenario
from bench.results.reader import load_result
from bench.results.schema import SCHEMA_VERSION
from tests.conftest import DATA, ROOT, host_state

pytestmark = pytest.mark.privileged
KPBENCH = [sys.executable, "-m", "bench"]
TINY = """
name = "tiny"
[sweep]
datapaths = ["iptables-legacy", "nftables"]
services = [1, 300]
endpoints = 4
[traffic]
workloads = ["udp-new"]
rate_pps = 5000
packets = 2000
repetitions = 2
warmup_packets = 100
[measure]
probes = ["latency", "cpu", "drops"]
overhead = false
settle_timeout = 5
"""


def run_state() -> dict[str, object]:
    """What a run could leave behind: namespaces, BPF programs, cgroups, pid files."""
    progs = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                           check=True).stdout
    names = sorted(p.get("name", "") for p in json.loads(progs or "[]")
                   if p.get("name", "").startswith("kpb"))
    cgroups = sorted(str(p) for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
                     if root.is_dir() for p in root.glob("kpb*"))
    pids = sorted(p.name for p in RUN_DIR.glob("kpb*.pid")) if RUN_DIR.is_dir() else []
    procs = subprocess.run(["pgrep", "-f", "tcpreplay|bench.cluster.echo"], capture_output=True,
                           text=True, check=False).stdout.split()
    return {"netns": sorted(run_namespaces()), "bpf": names, "cgroups": cgroups, "pids": pids,
            "procs": procs}


# A deleted namespace is freed by the kernel's cleanup_net work item, after `ip netns
# delete` returns: the tc filters in it, and the BPF programs they hold, go a moment
# later. A leftover is what is still there after this long.
KERNEL_CLEANUP_S = 10.0


def state_after_exit(expected: dict[str, object]) -> dict[str, object]:
    """run_state(), polled until it equals ``expected`` or KERNEL_CLEANUP_S passed."""
    deadline = time.monotonic() + KERNEL_CLEANUP_S
    state = run_state()
    while state != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        state = run_state()
    return state


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


# The main job's scenario with its scale and volume cut down: every datapath, workload,
# probe and the overhead measurement as in the default suite, in about a third of its
# time (the whole suite is the main job, not a test: README "Times of the main job").
SCALED_DOWN = {
    "services = [1, 1000, 5000]": "services = [1, 300]",
    "packets = 10000 ": "packets = 3000 ",
    "repetitions = 3 ": "repetitions = 2 ",
    "control_packets = 5000": "control_packets = 1500",
    "duration_s = 0.5": "duration_s = 0.25",
}


def scaled_down_default(tmp_path: Path) -> Path:
    """scenarios/default.toml with SCALED_DOWN applied; each replacement must apply."""
    text = (ROOT / "scenarios/default.toml").read_text()
    for old, new in SCALED_DOWN.items():
        assert text.count(old) == 1, f"scenarios/default.toml no longer has {old!r}"
        text = text.replace(old, new)
    path = tmp_path / "default.toml"
    path.write_text(text)
    return path


def test_default_run_leaves_the_host_untouched(tmp_path: Path) -> None:
    """The main job, scaled down: a default run, the host namespace compared before/after."""
    scenario = scaled_down_default(tmp_path)
    before, left = host_state(), run_state()
    p = subprocess.run([*KPBENCH, "run", str(scenario), "--results",
                        str(tmp_path / "results")], capture_output=True, text=True,
                       timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    result = load_result(p.stdout.split()[0])
    assert result["status"] == "complete"
    # Datapaths this kernel provably lacks (IPVS on the host) are recorded as failed
    # with that reason (the VM stage covers them), as are workloads a datapath cannot
    # act on ("not applicable": socket LB and replayed frames); everything else measures.
    bad = [(pt["id"], pt["error"]) for pt in result["points"] if pt["status"] != "ok"
           and not (pt["error"] or "").startswith(("kernel feature missing",
                                                   "not applicable"))]
    assert not bad, bad
    assert host_state() == before
    assert state_after_exit(left) == left


# Runs interrupted at random moments (each lasts up to a whole tiny run: with the cpu
# passes, 14 take about as long as 20 did before them).
INTERRUPTS = 14
AT_PHASE = ("x 4 endpoints: building", "services: full sync")  # interrupts 0 and 1


def test_interrupts_at_random_moments_leave_nothing_and_valid_results(
        tiny: Path, tmp_path: Path) -> None:
    rng = random.Random(20261129)  # reproducible "random" moments
    left = run_state()
    t0 = time.monotonic()
    full = subprocess.run([*KPBENCH, "run", str(tiny), "--results", str(tmp_path / "full"),
                           "--no-export"], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    duration = time.monotonic() - t0
    n_points = len(load_result(full.stdout.split()[0])["points"])
    phases = set()
    for i in range(INTERRUPTS):
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        at = rng.uniform(0.2, duration)
        out = tmp_path / f"r{i}"
        proc = subprocess.Popen([*KPBENCH, "run", str(tiny), "--results", str(out),
                                 "--no-export"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        seen = ""
        if i < len(AT_PHASE):
            # The short phases (set-up takes a fifth of a second a scale) are hit on
            # purpose, at their progress line; the rest at random moments.
            assert proc.stderr is not None
            while AT_PHASE[i] not in seen:
                line = proc.stderr.readline()
                assert line, f"the run ended before {AT_PHASE[i]!r}: {seen}"
                seen += line
        else:
            time.sleep(at)
        proc.send_signal(sig)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        err = seen + err
        took = time.monotonic() - sent
        progress = [ln for ln in err.splitlines() if ln.startswith("[")]
        phases.add(re.sub(r".*\] [^:]+: (\d+ services)?:? ?", "", progress[-1]).split(" ")[0]
                   if progress else "start")
        if proc.returncode == 0:  # finished before the signal arrived
            continue
        word = "interrupted" if sig == signal.SIGINT else "terminated"
        assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
        assert word in err.splitlines()[-1] and "Traceback" not in err, err
        assert took < 30, f"took {took:.1f} s to stop"
        state = state_after_exit(left)
        assert state == left, f"interrupt {i} at {at:.2f} s left {state}"
        for f in out.rglob("*.json"):
            doc = load_result(f)  # valid JSON of the current schema
            assert doc["schema_version"] == SCHEMA_VERSION
            assert all(pt["status"] == "ok" for pt in doc["points"])
            if doc["status"] == "complete":
                # The signal came after the last point was written: the process still
                # stops with the signal's code, and says that the result is whole.
                assert len(doc["points"]) == n_points, (len(doc["points"]), n_points)
                assert f"{f} is complete" in err, err
            else:
                assert doc["status"] == "interrupted", doc["status"]
    assert len(phases) >= 3, phases  # set-up, sync, traffic, ... were all hit


def test_sigkill_leftovers_are_cleaned_by_clean(tiny: Path, tmp_path: Path) -> None:
    left = run_state()
    proc = subprocess.Popen([*KPBENCH, "run", str(tiny), "--results", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen: list[str] = []
    while "full sync" not in (line := proc.stderr.readline()):
        seen.append(line)
        if not line:  # end of output: the run stopped before its first sync
            raise AssertionError(f"the run ended (exit {proc.wait()}) before its first sync:\n"
                                 + "".join(seen))
    proc.kill()
    proc.wait()
    (killed,) = set(run_namespaces()) - set(left["netns"])  # type: ignore[arg-type]
    p = subprocess.run([*KPBENCH, "clean"], capture_output=True, text=True, check=True)
    assert f"{killed}: removed" in p.stdout
    assert killed not in run_namespaces()
    assert not (RUN_DIR / f"{killed}.pid").exists()


def test_two_runs_at_once_do_not_collide(tiny: Path, tmp_path: Path) -> None:
    procs = [subprocess.Popen([*KPBENCH, "run", str(tiny), "--results", str(tmp_path),
                               "--no-export"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    files = {Path(o[0].split()[0]) for o in outs}
    assert len(files) == 2
    for f in files:
        doc = load_result(f)
        assert doc["status"] == "complete" and all(pt["status"] == "ok" for pt in doc["points"])


def test_a_probe_that_cannot_load_is_recorded_as_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def fail(self: Probe) -> None:
        raise FeatureMissing("cpu probe: injected: cannot attach to irq:softirq_entry")

    monkeypatch.setattr(CpuProbe, "attach", fail)
    sc = parse_scenario(__import__("tomllib").loads(TINY), "<tiny>", TINY)
    with caplog.at_level(logging.WARNING):
        result = load_result(Runner(sc, tmp_path).run())
    # Said once per run with the reason, recorded at every point.
    said = [r for r in caplog.records if "injected" in r.getMessage()]
    assert len(said) == 1 and "recorded as missing" in said[0].getMessage()
    assert len(result["points"]) > 1
    for pt in result["points"]:
        assert pt["status"] == "ok"
        assert "injected" in pt["missing"]["cpu"]
        assert pt["summary"]["cpu_ns_per_packet"] is None  # missing, not zero
        assert pt["summary"]["latency_ns"]["p50"] > 0


BAD_FILES = sorted(p for p in (DATA / "bad").iterdir() if p.suffix in (".yaml", ".json"))
BAD_SCENARIOS = sorted((DATA / "bad" / "scenarios").glob("*.toml"))
BAD_CLI = [ln.split(" | ") for ln in (DATA / "bad" / "cli.txt").read_text().splitlines()
           if ln and not ln.startswith("#")]


def _one_line_exit_2(args: list[str], needle: str) -> None:
    before = run_state()
    p = subprocess.run([*KPBENCH, *args], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    errors = [ln for ln in p.stderr.splitlines() if "warning:" not in ln]
    if p.stderr.startswith("usage:"):
        errors = errors[-1:]  # argparse's refusal: its usage, then one "error:" line
    assert p.returncode == 2, (args, p.stderr)
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert needle in errors[0], errors[0]
    assert state_after_exit(before) == before  # nothing applied, nothing left


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.name for p in BAD_FILES])
def test_bad_services_file_fails_cleanly(path: Path) -> None:
    _one_line_exit_2(["up", "--datapath", "nftables", "--for", "0", "--services", str(path)],
                     path.name)


@pytest.mark.parametrize("path", BAD_SCENARIOS, ids=[p.name for p in BAD_SCENARIOS])
def test_bad_scenario_fails_cleanly(path: Path, tmp_path: Path) -> None:
    _one_line_exit_2(["run", str(path), "--results", str(tmp_path)], path.name)
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize("args,needle", BAD_CLI, ids=[a for a, _ in BAD_CLI])
def test_bad_command_line_fails_cleanly(args: str, needle: str) -> None:
    _one_line_exit_2(shlex.split(args), needle)
