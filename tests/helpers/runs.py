"""Run a scenario the way a user does (``python -m bench run``) and read its points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_points(tmp_path: Path, scenario: str, timeout: float = 900) -> list[dict[str, Any]]:
    """Write ``scenario`` (TOML text) under ``tmp_path``, run it without export and return
    its result's points, in order; the run must succeed."""
    path = tmp_path / "s.toml"
    path.write_text(scenario)
    p = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--results",
                        str(tmp_path / "r"), "--no-export"], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    points: list[dict[str, Any]] = json.loads(Path(p.stdout.split()[0]).read_text())["points"]
    return points
