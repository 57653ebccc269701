"""Does the settle criterion hold? Measure every packet point twice, DELAY seconds apart.

    sudo .venv/bin/python scripts/settle_check.py SCENARIO [--delay 30] [--results DIR]

Runs SCENARIO as ``kpbench run`` does (sync, settle, repetitions interleaved
with their paired control), except that every point is measured a second
time DELAY seconds after the first, on the same cluster with the same
probes. The first measurement is the result file (written as usual); the
table printed compares each point's p50 and Service - control p50 between
the two measurements against their own noise: a two-sample t test of the
per-repetition figures (p < 0.05: they disagree). A point whose second
measurement disagrees had not settled when the runner said so — unless its
control moved alike, which is the machine drifting, not the datapath
settling (Service - control then still agrees). Settle longer if it does
not: raise ``measure.settle_timeout`` or lower ``measure.settle_tolerance``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.analysis.metrics import METRICS_BY_NAME  # noqa: E402
from bench.measure.runner import Runner  # noqa: E402
from bench.measure.scenario import load_scenario  # noqa: E402
from bench.results.summarise import summarise_point  # noqa: E402


class TwiceRunner(Runner):
    """A runner that measures every point again ``delay`` seconds later."""

    def __init__(self, *args: Any, delay: float, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.delay = delay
        self.pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def _measure(self, *args: Any) -> Any:
        first = super()._measure(*args)
        self.progress.say(f"waiting {self.delay:g} s to measure {first['id']} again")
        time.sleep(self.delay)
        again = super()._measure(*args)
        self.pairs.append((first, again))
        return first


def _figures(point: dict[str, Any]) -> dict[str, Any]:
    s = summarise_point(point)  # type: ignore[arg-type]
    p50 = METRICS_BY_NAME["p50_latency"].samples(point)  # type: ignore[arg-type]
    diff = METRICS_BY_NAME["service_minus_control_p50_ns"].samples(point)  # type: ignore[arg-type]
    return {"p50": (s["latency_ns"] or {}).get("p50"), "p50_reps": p50,
            "minus": s.get("service_minus_control_p50_ns"), "minus_reps": diff,
            "settle_seconds": point["setup"]["settle_seconds"],
            "settle_converged": point["setup"].get("settle_converged")}


def _agree(a: list[float], b: list[float]) -> float | None:
    """p value of a two-sample t test of per-repetition figures (None: too few)."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return None
    p = float(ttest_ind(a, b).pvalue)
    return 1.0 if p != p else p  # identical constant samples: NaN, they agree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("--delay", type=float, default=30.0)
    ap.add_argument("--results", default=str(ROOT / "results"))
    args = ap.parse_args()
    r = TwiceRunner(load_scenario(args.scenario), Path(args.results), delay=args.delay)
    path = r.run()
    rows = []
    print(f"{'point':<55} {'settle':>12} {'p50 first':>10} {'again':>8} {'p':>6} "
          f"{'svc-ctl first':>13} {'again':>8} {'p':>6}")
    for first, again in r.pairs:
        a, b = _figures(first), _figures(again)
        row = {"id": first["id"], "first": a, "again": b,
               "p50_p": _agree(a["p50_reps"], b["p50_reps"]),
               "minus_p": _agree(a["minus_reps"], b["minus_reps"])}
        rows.append(row)
        settle = f"{a['settle_seconds']:.1f}s" + ("" if a["settle_converged"] else " (no)")
        fmt = lambda v: "—" if v is None else f"{v / 1000:.2f}"  # noqa: E731
        pfmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{first['id']:<55} {settle:>12} {fmt(a['p50']):>10} {fmt(b['p50']):>8} "
              f"{pfmt(row['p50_p']):>6} {fmt(a['minus']):>13} {fmt(b['minus']):>8} "
              f"{pfmt(row['minus_p']):>6}")
    out = path.with_name(path.stem + "_settle-check.json")
    out.write_text(json.dumps({"result": str(path), "delay_seconds": args.delay,
                               "points": rows}, indent=1) + "\n")
    print(f"latencies in us; first = the result {path}; pairs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
