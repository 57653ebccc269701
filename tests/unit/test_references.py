"""No dangling references: every repository path the README, docs/ and the code's
comments and messages name exists, and nothing cites notes that are not part of it."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_GLOBS = ("bench/**/*.py", "bench/**/*.c", "bench/**/*.h", "probes/*.c", "scripts/*.sh",
              "scenarios/*.toml", ".ci/*", "Vagrantfile", "pyproject.toml")
# Made by the set-up or by Python, never part of the repository.
NOT_REPOSITORY = {".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "build"}
PATH_RE = re.compile(r"(?<![\w/.$-])[\w.{}<>*…-]+(?:/[\w.{}<>*…,-]*)+")
# A placeholder path component: <machine>, RESULT, NAME.json, …-plots, *.json.
PLACEHOLDER_RE = re.compile(r"<|…|\.\.\.|\*|^[A-Z][A-Z0-9_]*(\.\w+)?$")


def top_level() -> set[str]:
    """The names a repository path starts with: the checkout's own top-level entries."""
    return {p.name for p in ROOT.iterdir()
            if p.name not in NOT_REPOSITORY and not p.name.endswith(".egg-info")
            and (not p.name.startswith(".") or p.name == ".ci")}


def _braces(token: str) -> list[str]:
    """``tests/{unit,vm}`` -> ``tests/unit``, ``tests/vm`` (one level of braces)."""
    m = re.search(r"\{([^{}]*)\}", token)
    if not m:
        return [token]
    return list(itertools.chain.from_iterable(
        _braces(token[:m.start()] + alt + token[m.end():]) for alt in m.group(1).split(",")))


def paths_named(text: str, top: set[str]) -> Iterator[str]:
    """The repository paths ``text`` names (with braces expanded)."""
    for m in PATH_RE.finditer(text):
        token = m.group(0).rstrip(".,:;")
        if token.split("/", 1)[0] in top:
            yield from _braces(token)


def dangling(path: str, root: Path = ROOT) -> bool:
    """Whether ``path`` (up to its first placeholder component) is missing under root."""
    kept = []
    for part in path.rstrip("/").split("/"):
        if PLACEHOLDER_RE.search(part):
            break
        kept.append(part)
    return not (root / "/".join(kept)).exists()


def code_files() -> list[Path]:
    return sorted({p for g in CODE_GLOBS for p in ROOT.glob(g) if p.is_file()})


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_the_docs_name_exists(doc: Path) -> None:
    missing = sorted({p for p in paths_named(doc.read_text(), top_level()) if dangling(p)})
    assert not missing, f"{doc.name} names paths the repository lacks: {missing}"


def test_every_path_the_code_names_exists() -> None:
    top = top_level()
    missing = sorted({f"{f.relative_to(ROOT)}: {p}" for f in code_files()
                      for p in paths_named(f.read_text(errors="replace"), top) if dangling(p)})
    assert not missing, f"code names paths the repository lacks: {missing}"


def test_nothing_cites_notes_outside_the_repository() -> None:
    citing = [str(f.relative_to(ROOT)) for f in (*DOCS, *code_files())
              if "DESIGN.md" in f.read_text(errors="replace")]
    assert not citing, f"cite DESIGN.md, which is not part of the project: {citing}"


def test_the_check_finds_what_is_missing() -> None:
    top = {"docs", "results", "tests"}
    text = ("see `docs/probes.md`, [gone](docs/gone.md), `results/<machine>/x.json`, "
            "`tests/{unit,nowhere}`, `results/baselines/NAME.json`; /tmp/docs/x is not ours")
    named = list(paths_named(text, top))
    assert named == ["docs/probes.md", "docs/gone.md", "results/<machine>/x.json",
                     "tests/unit", "tests/nowhere", "results/baselines/NAME.json"]
    assert [p for p in named if dangling(p)] == ["docs/gone.md", "tests/nowhere"]
