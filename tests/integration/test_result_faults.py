"""Results stay safe when the file system around them fails: full or read-only.

Each case runs in a private mount namespace (``unshare -m``) with a small
tmpfs as the results directory, so that the file system really fills up or
refuses writes (root ignores permission bits, so chmod would prove nothing);
the host's mounts are never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.privileged

FILL = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from bench.errors import KpbenchError
    from bench.results.reader import load_result
    from bench.results.writer import ResultWriter
    from tests.unit.test_results import ENV, SCENARIO, point

    path = Path(sys.argv[1]) / "m" / "r.json"
    added = 0
    try:
        with ResultWriter(path, scenario=SCENARIO, environment=ENV) as w:
            for i in range(10_000):  # until the tmpfs is full
                w.add_point(point(i))
                added += 1
    except KpbenchError as e:
        error = str(e)
    doc = load_result(path)
    print(json.dumps({"added": added, "error": error, "on_disk": len(doc["points"]),
                      "status": doc["status"],
                      "left": sorted(p.name for p in path.parent.iterdir())}))
""")


def _in_private_tmpfs(tmp_path: Path, options: str,
                      argv: list[str]) -> subprocess.CompletedProcess[str]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = f"mount -t tmpfs -o {options} kpbench-test {mnt} && cd {ROOT} && exec \"$@\""
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv, str(mnt)],
                          capture_output=True, text=True, timeout=120)


def test_a_full_disk_keeps_every_point_written_before(tmp_path: Path) -> None:
    p = _in_private_tmpfs(tmp_path, "size=64k", [sys.executable, "-c", FILL])
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["added"] >= 1  # some points fitted, then the disk was full
    assert "cannot write the result" in out["error"] and "\n" not in out["error"]
    assert f"({out['added']} points)" in out["error"]
    # The file holds exactly the points written before the failure, and parses.
    assert out["on_disk"] == out["added"]
    # Marked failed if that smaller document still fitted, else left as "running".
    assert out["status"] in ("failed", "running")
    assert out["left"] == ["r.json"]  # no temporary or partial file


def test_a_read_only_results_directory_is_one_line_and_no_file(tmp_path: Path) -> None:
    scenario = tmp_path / "one.toml"
    scenario.write_text('[sweep]\ndatapaths = ["iptables-legacy"]\nservices = [1]\n')
    p = _in_private_tmpfs(tmp_path, "ro,size=64k", [
        sys.executable, "-m", "bench", "run", str(scenario), "--no-export", "--results"])
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert "Traceback" not in p.stderr
    assert "cannot create" in lines[-1] and "writable --results" in lines[-1], p.stderr
