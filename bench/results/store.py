"""The results store: finding result files and choosing which run a path means.

Runs live at ``results/<machine>/<date>_<commit>[-dirty]_<scenario>.json``
(:func:`result_path`) and baselines under ``results/baselines/``.
A path given to ``compare``, ``show`` or ``report`` is either one result file
or a directory: a directory stands for the newest run of each scenario found
under it, so ``kpbench compare results/baselines results/<machine>`` compares the
latest run of every scenario against its baseline.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.errors import InputError
from bench.results.environment import capture_environment, commit_label
from bench.results.model import Result
from bench.results.reader import load_result
from bench.results.schema import KIND, EnvironmentDoc, ResultDoc


def _slug(text: str, fallback: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return s or fallback


def machine_name(environment: Mapping[str, Any] | None = None) -> str:
    """The folder a run is filed under: host name, machine id, where, kernel.

    E.g. ``bench-01-3f2a9c1e-host-6.18.44`` for a host run and
    ``bench-01-3f2a9c1e-vm-tcg-6.1.0-57-amd64`` for a ``kpbench vm`` run on
    the same machine: the host name alone is shared by machines made from one
    image and by a host and its VM guests, whose numbers are not comparable.
    """
    env = environment if environment is not None else capture_environment()
    host = _slug(str(env.get("hostname") or "").split(".")[0], "unknown-machine")
    parts = [host, env.get("machine_id") or "noid", env.get("where") or "host"]
    vm = env.get("vm")
    if vm:
        parts.append(str(vm.get("accel")))
    parts.append(str(env.get("kernel_release") or "unknown-kernel"))
    return _slug("-".join(parts), "unknown-machine")


def result_path(results_dir: str | Path, scenario_name: str,
                environment: EnvironmentDoc | None = None,
                now: _dt.datetime | None = None) -> Path:
    """Where a run's result goes: ``<dir>/<machine>/<date>_<commit>[-dirty]_<scenario>.json``
    (``<machine>``: :func:`machine_name`).

    The date carries the time to the second (``20261129T143012``) so that two
    runs of one scenario on one day do not collide. Results are laid out by
    machine first because numbers from different machines are not comparable.
    """
    env = environment if environment is not None else capture_environment()
    stamp = (now or _dt.datetime.now(_dt.UTC)).strftime("%Y%m%dT%H%M%S")
    name = f"{stamp}_{commit_label(env)}_{_slug(scenario_name, 'scenario')}.json"
    return Path(results_dir) / machine_name(env) / name


@dataclass(frozen=True)
class StoredRun:
    """A result file and its validated document."""

    path: Path
    doc: ResultDoc

    @property
    def scenario(self) -> str:
        return self.doc["scenario"]["name"]

    @cached_property
    def result(self) -> Result:
        """The document read into the model (bench.results.model), once per file."""
        return Result(self.doc)

    @property
    def started(self) -> str:
        return self.doc["started"]


def _looks_like_result(path: Path) -> bool:
    # Only files that say they are results are reported when unreadable; other JSON
    # (exports, unrelated files) under the results directory is none of our business.
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return KIND.encode() in head


def scan(root: str | Path) -> tuple[list[StoredRun], list[InputError]]:
    """Every result file under ``root`` (recursively), oldest first, and the ones unusable.

    A file that claims to be a result but cannot be read (damaged, or written
    by an older or newer schema version) is returned with the error saying why
    and what to do, rather than stopping the scan.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("no such directory", source=str(root))
    runs: list[StoredRun] = []
    errors: list[InputError] = []
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith(".") or not _looks_like_result(path):
            continue  # .<name>.tmp files of a write in progress never end in .json, but be safe
        try:
            runs.append(StoredRun(path, load_result(path)))
        except InputError as e:
            errors.append(e)
    runs.sort(key=lambda r: (r.started, str(r.path)))
    return runs, errors


def resolve(path: str | Path) -> list[StoredRun]:
    """The runs ``path`` stands for: the file, or the newest run per scenario of a directory."""
    path = Path(path)
    if path.is_dir():
        runs, errors = scan(path)
        if not runs:
            why = f" ({len(errors)} unreadable: {errors[0]})" if errors else ""
            raise InputError(f"no kpbench result under this directory{why}", source=str(path))
        newest: dict[str, StoredRun] = {}
        for run in runs:  # oldest first: later runs of a scenario replace earlier ones
            newest[run.scenario] = run
        return sorted(newest.values(), key=lambda r: r.scenario)
    return [StoredRun(path, load_result(path))]


def resolve_one(path: str | Path) -> StoredRun:
    """The single run ``path`` stands for; a directory must hold only one scenario."""
    runs = resolve(path)
    if len(runs) > 1:
        names = ", ".join(r.scenario for r in runs)
        raise InputError(f"holds runs of several scenarios ({names}); pass one result file",
                         source=str(path))
    return runs[0]


def pair_runs(base: list[StoredRun], new: list[StoredRun]
              ) -> tuple[list[tuple[StoredRun, StoredRun]], list[str]]:
    """Which base run each new run is compared with, and what could not be paired.

    One run on each side is compared whatever the scenario names (a warning
    about differing names is the comparison's business); otherwise runs are
    paired by scenario name and an unpaired scenario is named in the notes.
    """
    if len(base) == 1 and len(new) == 1:
        return [(base[0], new[0])], []
    by_name = {r.scenario: r for r in base}
    pairs: list[tuple[StoredRun, StoredRun]] = []
    notes: list[str] = []
    for r in new:
        if r.scenario in by_name:
            pairs.append((by_name.pop(r.scenario), r))
        else:
            notes.append(f"scenario {r.scenario!r} only in NEW ({r.path})")
    notes += [f"scenario {name!r} only in BASE ({r.path})" for name, r in by_name.items()]
    return pairs, notes

