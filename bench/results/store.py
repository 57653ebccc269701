"""The results store: finding result files and choosing which run a path means.

Runs live at ``results/<machine>/<date>_<commit>[-dirty]_<scenario>.json``
(bench.results.result_path) and baselines under ``results/baselines/``.
A path given to ``compare``, ``show`` or ``report`` is either one result file
or a directory: a directory stands for the newest run of each scenario found
under it, so ``kpbench compare results/baselines results/<machine>`` compares the
latest run of every scenario against its baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.errors import InputError
from bench.results import KIND, ResultDoc, load_result


@dataclass(frozen=True)
class StoredRun:
    """A result file and its validated document."""

    path: Path
    doc: ResultDoc

    @property
    def scenario(self) -> str:
        return self.doc["scenario"]["name"]

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

