"""Every malformed input, of every kind, refused by the real CLI in one line.

The corpus: Service/EndpointSlice files (tests/data/bad/*.yaml|json), scenarios
(tests/data/bad/scenarios/), result files (tests/data/bad/results/), command
lines (tests/data/bad/cli.txt), plus inputs generated here because they are
big or hostile (YAML alias bombs, deep nesting, huge integers, binary data,
oversized files). Each runs as ``python -m bench ...`` in a subprocess and
must exit 2 with exactly one line on stderr (argparse's usage + error for
argument errors), no traceback, within 2 s of CPU and 100 MB of memory
(measured from the child's own rusage, so other load on the machine does not
count against it). The subprocesses run in parallel.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DATA, ROOT

BAD = DATA / "bad"
MAX_CPU_S = 2.0
MAX_RSS_MB = 100
WALL_LIMIT_S = 60  # only against a hang; the CPU bound above is the real one

SERVICE = ("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
           "spec:\n  clusterIP: 172.30.0.10\n  ports: [{port: 80}]\n")
SCENARIO = '[sweep]\ndatapaths = ["nftables"]\nservices = [1]\n'


@dataclass
class Case:
    name: str
    argv: list[str]
    needle: str = ""  # text the one line must hold (the file's name when there is one)


@dataclass
class Outcome:
    code: int
    stderr: str
    cpu_s: float
    rss_mb: float


def test_the_batch_runs_commands_as_python_m_bench_does(tmp_path: Path) -> None:
    """The batch's forked children and real interpreters agree, case by case."""
    cases = corpus(tmp_path)
    sample = [cases[0], cases[len(cases) // 2], cases[-1],
              next(c for c in cases if c.name.startswith("result/"))]
    for case, batched in zip(sample, run_batch([c.argv for c in sample]), strict=True):
        real = run_cli(case.argv)
        assert (real.code, real.stderr) == (batched.code, batched.stderr), case.name


def _alias_bomb(levels: int = 9, width: int = 10) -> str:
    lines = ["    l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines)


def generated(tmp: Path) -> list[tuple[str, str, bytes]]:
    """(name, kind, content) of the inputs made here: big or hostile."""
    svc = SERVICE.encode()
    big_int = "9" * 5000
    return [
        # Services files.
        ("alias-bomb-in-field.yaml", "services",
         (SERVICE + "  selector:\n" + _alias_bomb() + "\n").encode()),
        ("alias-bomb-top.yaml", "services", (_alias_bomb().replace("    ", "") + "\n").encode()),
        ("many-aliases.yaml", "services",
         ("a: &a x\nb: [" + ", ".join(["*a"] * 20000) + "]\n").encode()),
        ("deep-flow.yaml", "services", b"a: " + b"[" * 50000 + b"]" * 50000),
        ("deep-block.yaml", "services",
         "".join("  " * i + f"k{i}:\n" for i in range(2000)).encode()),
        ("deep.json", "services", b"[" * 200000 + b"]" * 200000),
        ("deep-object.json", "services", b'{"a":' * 100000 + b"1" + b"}" * 100000),
        ("huge-int.yaml", "services", svc.replace(b"80", big_int.encode())),
        ("huge-int.json", "services",
         b'{"kind": "Service", "spec": {"ports": [{"port": ' + big_int.encode() + b"}]}}"),
        ("huge-int-tagged.yaml", "services", svc.replace(b"80", b"!!int " + big_int.encode())),
        ("binary.yaml", "services", os.urandom(4096)),
        ("utf16.yaml", "services", SERVICE.encode("utf-16")),
        ("bad-utf8-late.yaml", "services", svc + b"# caf\xc3\x28\n"),
        ("oversized.yaml", "services", b""),  # made sparse below
        # Scenarios.
        ("deep.toml", "scenario", b"a = " + b"[" * 20000 + b"]" * 20000),
        ("deep-inline.toml", "scenario", b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000),
        ("huge-int.toml", "scenario", SCENARIO.replace("[1]", f"[{big_int}]").encode()),
        ("long-int.toml", "scenario", SCENARIO.replace("[1]", "[" + "9" * 60 + "]").encode()),
        ("binary.toml", "scenario", os.urandom(2048)),
        ("latin1.toml", "scenario", b'name = "caf\xe9"\n' + SCENARIO.encode()),
        ("oversized.toml", "scenario", b""),  # made sparse below
        ("nan-tolerance.toml", "scenario",
         (SCENARIO + "[measure]\nsettle_tolerance = -nan\n").encode()),
        # Result files.
        ("deep-result.json", "result", b"[" * 200000 + b"]" * 200000),
        ("huge-int-result.json", "result",
         b'{"kind": "kpbench-result", "schema_version": ' + big_int.encode() + b"}"),
        ("binary-result.json", "result", os.urandom(4096)),
        ("latin1-result.json", "result", b'{"kind": "kpbench-r\xe9sult"}'),
        ("infinity-result.json", "result",
         b'{"kind": "kpbench-result", "schema_version": 1, "x": -Infinity}'),
        ("oversized-result.json", "result", b""),  # made sparse below
    ]


def corpus(tmp: Path) -> list[Case]:
    """Every case of the corpus, with the command line that reads it."""
    cases: list[Case] = []

    def services(path: Path) -> None:
        cases.append(Case(f"services/{path.name}", ["render", "--datapath", "nftables",
                                                     "--services", str(path)], str(path)))

    def scenario(path: Path) -> None:
        # `run` refuses the scenario before anything is built (see the test below).
        cases.append(Case(f"scenario/{path.name}", ["run", str(path), "--no-export",
                                                    "--results", str(tmp / "results")],
                          str(path)))

    def result(path: Path, i: int) -> None:
        cmd = (["show", str(path)] if i % 2 == 0
               else ["export", str(path), "--csv", str(tmp / f"{path.stem}.csv")])
        cases.append(Case(f"result/{path.name}", cmd, str(path)))

    for p in sorted(BAD.iterdir()):
        if p.suffix in (".yaml", ".json"):
            services(p)
    for p in sorted((BAD / "scenarios").glob("*.toml")):
        scenario(p)
    for i, p in enumerate(sorted((BAD / "results").glob("*.json"))):
        result(p, i)
    gen = tmp / "generated"
    gen.mkdir()
    for i, (name, kind, content) in enumerate(generated(tmp)):
        p = gen / name
        p.write_bytes(content)
        if name.startswith("oversized"):
            os.truncate(p, 200 * 1024 * 1024)  # sparse: no disk, no memory
        if kind == "services":
            services(p)
        elif kind == "scenario":
            scenario(p)
        else:
            result(p, i)
    cases.append(Case("services/dev-zero", ["render", "--datapath", "nftables",
                                            "--services", "/dev/zero"], "/dev/zero"))
    for line in (BAD / "cli.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            args, _, needle = line.partition(" | ")
            cases.append(Case(f"cli/{args}", shlex.split(args), needle.strip()))
    return cases


def run_cli(argv: list[str]) -> Outcome:
    """``python -m bench ARGV`` with the child's own CPU time and peak memory."""
    with open(os.devnull, "wb") as null, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, "-m", "bench", *argv], cwd=ROOT,
                             stdin=subprocess.DEVNULL, stdout=null, stderr=err)
        timer = threading.Timer(WALL_LIMIT_S, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    return Outcome(p.returncode, text, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def test_corpus_is_large_and_covers_every_kind(tmp_path: Path) -> None:
    cases = corpus(tmp_path)
    kinds = {c.name.split("/")[0] for c in cases}
    assert kinds == {"services", "scenario", "result", "cli"}
    assert len(cases) >= 100, len(cases)


def run_batch(argvs: list[list[str]], workers: int = 2) -> list[Outcome]:
    """Many command lines through tests/helpers/cli_batch.py (one CLI import, a fork each),
    split over ``workers`` batch processes."""
    def batch(chunk: list[list[str]]) -> list[Outcome]:
        p = subprocess.run([sys.executable, "-m", "tests.helpers.cli_batch"], cwd=ROOT, text=True,
                           input="".join(json.dumps(a) + "\n" for a in chunk),
                           capture_output=True, timeout=WALL_LIMIT_S * len(chunk))
        assert p.returncode == 0, p.stderr
        return [Outcome(**json.loads(line)) for line in p.stdout.splitlines()]

    chunks = [argvs[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(batch, chunks))
    out: list[Outcome] = [None] * len(argvs)  # type: ignore[list-item]
    for i, chunk in enumerate(done):
        out[i::workers] = chunk
    return out


def test_every_bad_input_is_refused_in_one_line(tmp_path: Path) -> None:
    cases = corpus(tmp_path)
    outcomes = run_batch([c.argv for c in cases])
    problems = []
    for case, out in zip(cases, outcomes, strict=True):
        lines = out.stderr.strip().splitlines()
        # argparse's refusal is its usage (several lines) then one "error:" line.
        argparse_error = out.stderr.startswith("usage:") and lines[-1].startswith("kpbench")
        why = []
        if out.code != 2:
            why.append(f"exit {out.code}")
        if "Traceback" in out.stderr:
            why.append("traceback")
        if not argparse_error and len(lines) != 1:
            why.append(f"{len(lines)} lines")
        if lines and case.needle not in lines[-1]:
            why.append(f"does not say {case.needle!r}")
        if out.cpu_s > MAX_CPU_S:
            why.append(f"{out.cpu_s:.2f} s CPU")
        if out.rss_mb > MAX_RSS_MB:
            why.append(f"{out.rss_mb:.0f} MB")
        if why:
            problems.append(f"{case.name}: {', '.join(why)}: {out.stderr.strip()[-300:]}")
    assert not problems, "\n".join(problems)
    assert not (tmp_path / "results").exists()  # no refused run left a result behind


@pytest.mark.privileged
def test_a_refused_scenario_creates_no_namespace_and_no_pid_file(tmp_path: Path) -> None:
    from bench.cluster.topology import RUN_DIR, run_namespaces, run_owner

    before_ns = set(run_namespaces())
    before_pid = set(RUN_DIR.glob("*.pid")) if RUN_DIR.is_dir() else set()
    for name in ("datapath-twice.toml", "tolerance-nan.toml", "unknown-datapath.toml"):
        out = run_cli(["run", str(BAD / "scenarios" / name), "--results", str(tmp_path)])
        assert out.code == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    # Other sessions' live runs may come and go meanwhile: only runs without a live
    # owner (what a refused run would leave) count.
    new_ns = {p for p in set(run_namespaces()) - before_ns if run_owner(p) is None}
    after_pid = set(RUN_DIR.glob("*.pid")) if RUN_DIR.is_dir() else set()
    new_pid = {p for p in after_pid - before_pid if run_owner(p.stem) is None}
    assert not new_ns and not new_pid
    assert list(tmp_path.iterdir()) == []
