"""The HTML report renders in a real headless browser, with its figures.

Needs Debian's ``chromium`` (scripts/setup.sh installs it) but not root. The
report is built from the committed baseline (real measurements), once alone
and once against a slowed-down copy of itself, and each page is screenshot.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from bench import cli
from bench.present import plots
from bench.results.reader import load_result
from bench.results.schema import ResultDoc
from tests.conftest import ROOT
from tests.helpers.perturb import slowed_down

BASELINE = ROOT / "results" / "baselines" / "default.json"
WINDOW = (1280, 2000)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed; run `sudo ./scripts/setup.sh` (it installs "
                    "Debian's chromium for the report screenshot test)")
    return path


def screenshot(html: Path, png: Path, profile: Path) -> np.ndarray:
    """Screenshot ``html`` with headless chromium; returns the image as RGB floats in [0, 1]."""
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
            f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"file://{html.resolve()}"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    assert png.exists() and png.stat().st_size > 0, p.stderr[-2000:]
    return imread(png)[..., :3]


def colour_pixels(img: np.ndarray, colour: str, tol: float = 0.08) -> int:
    """Pixels within ``tol`` (per channel) of a matplotlib named colour."""
    from matplotlib.colors import to_rgb

    return int((np.abs(img - np.asarray(to_rgb(colour))) < tol).all(axis=-1).sum())


def drawn_colours(result: ResultDoc) -> dict[str, str]:
    """The colour bench.present.plots gives each variant that has a measured point."""
    variants = sorted({p["variant"] or p["datapath"] for p in result["points"]})
    # The first screen's figures are the packet points' (socket points' figures follow).
    ok = {p["variant"] or p["datapath"] for p in result["points"]
          if p["status"] == "ok" and p.get("rate_pps") is not None}
    assert ok, "the baseline has no measured point"
    return {v: plots.COLORS[i % len(plots.COLORS)] for i, v in enumerate(variants) if v in ok}


def report(tmp_path: Path, *args: str) -> tuple[Path, Path]:
    """Run ``kpbench report`` in-process; returns the (html, md) paths it printed."""
    out = tmp_path / "out"
    assert cli.main(["report", *args, "--out", str(out)]) == 0
    stem = Path(args[0]).stem
    return out / f"{stem}-report.html", out / f"{stem}-report.md"


@pytest.fixture(scope="module")
def baseline() -> ResultDoc:
    if not BASELINE.exists():
        pytest.fail(f"{BASELINE} is missing: it is committed; see the README to produce it")
    return load_result(BASELINE)


def test_report_renders_with_its_figures(baseline: ResultDoc, tmp_path: Path) -> None:
    html, md = report(tmp_path, str(BASELINE))
    text = html.read_text()
    # Self-contained: every image is embedded, nothing is fetched.
    imgs = re.findall(r'<img [^>]*src="([^"]{0,40})', text)
    assert len(imgs) >= 7 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not re.search(r'(src|href)="(https?:|//)', text)
    for needle in ("Environment", baseline["environment"]["kernel_release"], "Summary",
                   "Latency CDF", "CPU per packet vs services", "Full sync time vs services"):
        assert needle in text
    # The Markdown links the same figures, which exist next to it.
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md.read_text())
    assert len(links) == len(imgs) and all((md.parent / link).exists() for link in links)

    png = tmp_path / "report.png"
    img = screenshot(html, png, tmp_path / "profile")
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    assert img.std() > 0.05, "the screenshot is blank"
    # The figures' curves use one colour per datapath variant (bench.present.plots); nothing else
    # on the page does, so finding each drawn variant's colour means the figures are shown.
    for variant, colour in drawn_colours(baseline).items():
        assert colour_pixels(img, colour) > 300, f"no {colour} ({variant}): figures not shown"


def test_report_with_a_base_shows_the_regressions(baseline: ResultDoc, tmp_path: Path) -> None:
    new = tmp_path / "new.json"
    new.write_text(json.dumps(slowed_down(baseline, 2.0)))  # beyond run drift (README)
    html, md = report(tmp_path, str(new), "--compare", str(BASELINE))
    text = html.read_text()
    assert "Regressions against BASE" in text and "REGRESSION" in text
    assert '<tr class="regression">' in text and "+100." in text
    assert "REGRESSION" in md.read_text()
    img = screenshot(html, tmp_path / "compare.png", tmp_path / "profile")
    assert img.std() > 0.05, "the screenshot is blank"
    # The regression table scrolls in place: the figures still show on the first screen.
    colour = next(iter(drawn_colours(baseline).values()))
    assert colour_pixels(img, colour) > 300, "figures pushed off the first screen"
