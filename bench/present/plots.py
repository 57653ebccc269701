"""Plots of a result: how latency and CPU cost grow with the number of services.

For every workload in a result, three figures, each as PNG and SVG:

- ``latency-vs-services_<workload>``: p50 (solid) and p99 (dashed) latency
  against the number of services, one colour per datapath variant, log x;
- ``cpu-vs-services_<workload>``: softirq CPU ns per delivered packet against
  the number of services;
- ``sync-vs-services_<workload>`` (for ``sync-*`` workloads instead of the
  three above): apply (the datapath's time), kpbench's render and
  time-to-effect seconds per sync, log-log;
- ``latency-cdf_<workload>``: the latency CDF of each datapath variant at the
  largest number of services it was measured at, from the merged histograms.

For every socket workload (docs/sockets.md), instead:

- ``tps-vs-flows_<workload>`` (``throughput-vs-flows`` for ``tcp-stream``):
  transactions/s against concurrent flows, one colour per datapath variant,
  one line style per number of services (an open loop's offered rate is a
  line of its own);
- ``rtt-cdf_<workload>-x<flows>-<loop>``: the RTT CDF of each variant at that
  load, from the merged RTT histograms, at the largest number of services;
- ``service-minus-direct_<workload>``: the Service minus its paired direct
  path against flows, RTT p50 and p99 (left) and transactions/s (right).

Only points with status "ok" are drawn. Anything that cannot be drawn (a
failed point, a missing measurement, a workload without latency data) is
skipped and named, in the log and in a footnote of the figure; a figure with
nothing to draw is not written. Figures are built on matplotlib's object API
(no pyplot), so nothing global — backend, rcParams — is touched.
"""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.analysis import stats
from bench.analysis.metrics import socket_load
from bench.datapaths.direct import DirectDatapath
from bench.present.export import count_unit
from bench.results.model import Point, Result, as_result
from bench.results.schema import ResultDoc

log = logging.getLogger("kpbench")

FORMATS = ("png", "svg")
# Extra coordinates that split a datapath's curve in two when they vary within a workload.
SPLIT_BY = ("position", "rate_pps", "endpoints")
MAX_NOTES = 6
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "workload"


def _point_label(p: Point) -> str:
    return f"{p['variant'] or p['datapath']} @ {p['services']} services"


def _by_workload(points: Sequence[Point], warn: Callable[..., None],
                 ) -> Iterator[tuple[str, list[Point], list[str]]]:
    """(workload, its completed points, why the others were skipped) for every workload
    with a completed point; the skipped and the empty ones are said through ``warn``."""
    for workload in sorted({p.workload for p in points}):
        wl = [p for p in points if p.workload == workload]
        ok = [p for p in wl if p.ok]
        skipped = _skipped(wl)
        for note in skipped:
            warn("plot: workload %s: skipped %s", workload, note)
        if not ok:
            warn("plot: workload %s: no point completed; no figure", workload)
            continue
        yield workload, ok, skipped


def _skipped(points: Sequence[Point]) -> list[str]:
    """The points that did not complete, one note per variant and reason (a datapath
    that does not apply to a workload is one line, not one per scale)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for p in points:
        if not p.ok:
            why = p.status + (f" ({p.error})" if p.error else "")
            groups.setdefault((p.variant, why), []).append(p.services)
    return [f"{variant} @ {', '.join(str(n) for n in sorted(ns))} services: {why}"
            for (variant, why), ns in groups.items()]


def _series_key(p: Point, split: Sequence[str]) -> tuple[str, ...]:
    key = [p.datapath, p.variant]
    for dim in split:
        v = p.doc[dim]  # type: ignore[literal-required]
        key.append(f"{dim}={'top' if v is None else v}")
    return tuple(key)


def _series_label(key: tuple[str, ...]) -> str:
    return ", ".join(key[1:])


def _group(points: list[Point]) -> dict[tuple[str, ...], list[Point]]:
    """Points of one workload by series (datapath variant and any varying SPLIT_BY dims)."""
    split = [d for d in SPLIT_BY if len({p.doc[d] for p in points}) > 1]  # type: ignore[literal-required]
    groups: dict[tuple[str, ...], list[Point]] = {}
    for p in points:
        groups.setdefault(_series_key(p, split), []).append(p)
    for pts in groups.values():
        pts.sort(key=lambda p: p.services)
    return dict(sorted(groups.items()))


def _footnote(ax: Axes, notes: list[str]) -> None:
    if not notes:
        return
    shown = notes[:MAX_NOTES]
    if len(notes) > MAX_NOTES:
        shown.append(f"... and {len(notes) - MAX_NOTES} more (see the log)")
    # An annotation below the axes (not fig.text) so constrained layout makes room for it.
    # Wrapped: one long line would leave constrained layout no width for the axes.
    text = "\n".join(textwrap.fill(n, 110, subsequent_indent="  ") for n in shown)
    ax.annotate("not drawn: " + text, xy=(0, 0), xycoords="axes fraction",
                xytext=(0, -36), textcoords="offset points", va="top", ha="left",
                fontsize=7, color="dimgray", annotation_clip=False)


def _save(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    written = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        # No date in SVG metadata, so re-plotting the same result gives the same file.
        fig.savefig(path, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
        written.append(path)
    return written


def _vs_services(series: dict[tuple[str, ...], list[Point]], colors: dict[str, str],
                 title: str, ylabel: str,
                 curves: Sequence[tuple[str, str, Callable[[Point], float | None]]],
                 what: str, skipped: list[str]) -> tuple[Figure | None, list[str]]:
    """A metric against services, log x; ``curves`` are (name, line style, value getter).

    Returns the figure (None if nothing could be drawn) and what it left out,
    beyond ``skipped`` (the workload's points that did not complete).
    """
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    notes: list[str] = []
    drawn = 0
    ys_all: list[float] = []
    for key, pts in series.items():
        for name, style, get in curves:
            xs, ys = [], []
            for p in pts:
                y = get(p)
                if y is None:
                    if name == curves[0][0]:  # one note per point, not per curve
                        why = p.missing.get(what, "not measured")
                        notes.append(f"{_point_label(p)}: no {what} ({why})")
                    continue
                xs.append(p.services)
                ys.append(y)
            if xs:
                label = f"{_series_label(key)} {name}".strip()
                ax.plot(xs, ys, style, color=colors[key[1]], marker="o", markersize=4,
                        label=label)
                ys_all.extend(ys)
                drawn += 1
    if not drawn:
        return None, notes
    ax.set_xscale("log")
    # Latency across datapaths can differ by orders of magnitude at scale;
    # a log y keeps the flat curves readable then, a linear one shows growth otherwise.
    positive = [y for y in ys_all if y > 0]
    if positive and len(positive) == len(ys_all) and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("services (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _footnote(ax, skipped + notes)
    return fig, notes


def _latency_us(q: str) -> Callable[[Point], float | None]:
    def get(p: Point) -> float | None:
        lat = p.summary.get("latency_ns")
        v = lat.get(q) if lat else None
        return None if v is None else v / 1000
    return get


def _sync(key: str) -> Callable[[Point], float | None]:
    def get(p: Point) -> float | None:
        v = (p.summary.get("sync") or {}).get(key)
        return v if v is not None and v > 0 else None
    return get


def _cpu(p: Point) -> float | None:
    return p.summary.get("cpu_ns_per_packet")


def _cdf(series: dict[tuple[str, ...], list[Point]], colors: dict[str, str],
         workload: str, skipped: list[str]) -> tuple[Figure | None, list[str]]:
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    notes: list[str] = []
    drawn = 0
    for key, pts in series.items():
        with_hist = [p for p in pts if p.has_latency]
        if not with_hist:
            notes.append(f"{_series_label(key)}: no latency histogram at any scale")
            continue
        largest = max(with_hist, key=lambda p: p.services)
        if largest.services != pts[-1].services:
            notes.append(f"{_series_label(key)}: CDF at {largest['services']} services, "
                         f"the largest with latency data")
        hist = largest.latency
        assert hist is not None  # with_hist holds only points with a latency histogram
        xs, fractions = hist.cdf()
        if not len(xs):
            notes.append(f"{_point_label(largest)}: latency histogram is empty")
            continue
        ax.step(xs / 1000, fractions, where="post", color=colors[key[1]],
                label=f"{_series_label(key)} ({largest['services']} services, "
                      f"{hist.count} samples)")
        drawn += 1
    if not drawn:
        return None, notes
    _finish_cdf(ax, "latency (µs, log scale)", "fraction of packets ≤ latency",
                f"Latency CDF at the largest scale — workload {workload}", skipped + notes)
    return fig, notes


def _finish_cdf(ax: Axes, xlabel: str, ylabel: str, title: str, footnotes: list[str]) -> None:
    """The axes, grid, legend and footnote every CDF figure shares."""
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _footnote(ax, footnotes)


def _timeline(p: Point, color: str) -> Figure | None:
    """Delivered (and sent) packets per bin, and p50/p99 latency per bin, against time
    from the event's start; the event shaded. None when the point stores no timeline.
    A tcp-rr background's bins count transactions by due time, its latency their RTT."""
    tl = next((r.doc.get("disruption", {}).get("timeline") for r in p.repetitions
               if r.doc.get("disruption", {}).get("timeline")), None)
    if not tl:
        return None
    bin_ms = tl["bin_ns"] / 1e6
    xs = [(tl["t0_ns"] + i * tl["bin_ns"]) / 1e6 for i in range(len(tl["sent"]))]
    end_ms = tl["event_end_ns"] / 1e6
    fig = Figure(figsize=(9, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.step(xs, tl["sent"], where="post", color="lightgray", linewidth=3, label="sent")
    top.step(xs, tl["delivered"], where="post", color=color, linewidth=1, label="delivered")
    lost = [s - d for s, d in zip(tl["sent"], tl["delivered"], strict=True)]
    if any(lost):
        top.step(xs, lost, where="post", color="black", linewidth=1, linestyle=":",
                 label="lost")
    count = count_unit(p.workload)
    top.set_ylabel(f"{count} per {bin_ms:g} ms bin")
    for q, style in (("p50_ns", "-"), ("p99_ns", "--")):
        ys = [v / 1e3 if v is not None else float("nan") for v in tl[q]]
        bottom.step(xs, ys, where="post", color=color, linestyle=style, label=q[:3])
    bottom.set_yscale("log")
    tx = count == "transactions"
    bottom.set_ylabel("RTT from due, per bin (µs)" if tx else "latency per bin (µs)")
    bottom.set_xlabel(f"time from the event's start (ms, {'due' if tx else 'send'} time; "
                      "CLOCK_MONOTONIC)")
    fig_ = p.summary.get("disruption") or {}
    for ax in (top, bottom):
        ax.axvspan(0, max(end_ms, bin_ms / 10), color="tab:red", alpha=0.15,
                   label="event")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    def fmt(key: str, unit: str, scale: float = 1.0) -> str:
        v = fig_.get(key)
        return f"{key} {v / scale:.4g} {unit}" if isinstance(v, int | float) else f"{key} -"
    top.set_title(f"{p.workload} — {p.variant} @ {p.services} services\n"
                  + ", ".join((fmt("stall_ms", "ms"),
                               fmt("lost", "transactions" if tx else "pkts"),
                               fmt("excess_p99_ns", "µs", 1e3), fmt("recovery_ms", "ms"),
                               fmt("event_ms", "ms"))), fontsize=9)
    return fig


def plot_result(result: Result | ResultDoc, out_dir: str | Path,
                formats: Sequence[str] = FORMATS, notes: list[str] | None = None
                ) -> list[Path]:
    """Draw the figures of ``result`` into ``out_dir`` (created); returns the files written.

    Files are ``<figure>_<workload>.<format>`` with figure one of
    latency-vs-services, cpu-vs-services, latency-cdf (sync-vs-services for a
    sync workload; tps-vs-flows or throughput-vs-flows, rtt-cdf and
    service-minus-direct for a socket workload). What cannot be drawn
    is named in the figure's footnote and logged as a warning, or, given
    ``notes``, appended there instead (a caller that sums them up itself).
    """
    sink = notes  # the name ``notes`` is reused below for each figure's own notes

    def warn(msg: str, *args: object) -> None:
        if sink is None:
            log.warning(msg, *args)
        else:
            sink.append(msg % args)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points = as_result(result).points
    written: list[Path] = []
    if not points:
        warn("plot: the result has no points; nothing to draw")
        return written
    variants = sorted({p.variant for p in points})
    # One colour per datapath variant, the same in every figure of the run.
    colors = {v: COLORS[i % len(COLORS)] for i, v in enumerate(variants)}

    for workload, ok, skipped in _by_workload([p for p in points if not p.is_socket], warn):
        series = _group(ok)
        slug = _slug(workload)
        if workload.startswith("disruption-"):
            # One timeline per datapath variant, scale and event/background (its first
            # repetition's: the others are in the result).
            for p in ok:
                fig = _timeline(p, colors[p.variant])
                if fig is None:
                    warn("plot: timeline %s %s: no timeline stored; no figure", p.variant,
                         workload)
                    continue
                written += _save(fig, out, f"timeline_{_slug(p.variant)}_s{p.services}_{slug}",
                                 formats)
            continue
        if workload.startswith("sync-"):
            fig, notes = _vs_services(
                series, colors, f"Rule sync vs number of services — {workload}",
                "seconds", [("apply", "-", _sync("apply")),
                            ("render (kpbench)", "--", _sync("render")),
                            ("time to effect", ":", _sync("effect"))], "sync", skipped)
            if fig is not None:
                fig.axes[0].set_yscale("log")  # sync times span orders of magnitude
                written += _save(fig, out, f"sync-vs-services_{slug}", formats)
            continue
        figures = (
            ("latency-vs-services", *_vs_services(
                series, colors, f"Latency vs number of services — workload {workload}",
                "latency (µs)", [("p50", "-", _latency_us("p50")),
                                 ("p99", "--", _latency_us("p99"))], "latency", skipped)),
            ("cpu-vs-services", *_vs_services(
                series, colors, f"CPU cost per packet vs number of services — workload "
                f"{workload}", "softirq CPU per delivered packet (ns)",
                [("", "-", _cpu)], "cpu_ns_per_packet", skipped)),
            ("latency-cdf", *_cdf(series, colors, workload, skipped)),
        )
        for name, fig, notes in figures:
            for note in notes:
                warn("plot: %s %s: %s", name, workload, note)
            if fig is None:
                warn("plot: %s %s: nothing to draw; no figure", name, workload)
                continue
            written += _save(fig, out, f"{name}_{slug}", formats)
    sockets = [p for p in points if p.is_socket]
    if sockets:
        written += _socket_plots(sockets, colors, out, formats, warn)
    return written


# -- socket points (docs/sockets.md) ------------------------------------------------------

LINESTYLES = ("-", "--", ":", "-.")
# One colour per number of services where datapaths are the categories (bar groups).
SCALE_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def _loop_tag(p: Point) -> str:
    """closed, or open@<offered tx/s>: what, besides flows, sets a socket point's load."""
    rate = p.doc.get("rate_tps")
    return "closed" if rate is None else f"open@{rate:g}"


def _socket_series(points: list[Point]) -> dict[tuple[str, int, str], list[Point]]:
    """Socket points of one workload by (variant, services, loop), each sorted by flows."""
    groups: dict[tuple[str, int, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.variant, p.services, _loop_tag(p)), []).append(p)
    for pts in groups.values():
        pts.sort(key=lambda p: int(p.doc["flows"]))  # type: ignore[typeddict-item]
    return dict(sorted(groups.items()))


def _socket_label(key: tuple[str, int, str]) -> str:
    variant, services, loop = key
    # direct programs no Service rules: the reference every other curve is read against.
    name = f"{variant} (no Service rules)" if variant == DirectDatapath.name else variant
    return f"{name}, {services:,} svc" + ("" if loop == "closed" else f", {loop}")


def _styles(series: dict[tuple[str, int, str], list[Point]]) -> dict[int, str]:
    """One line style per number of services (the colour is the variant's)."""
    scales = sorted({services for _, services, _ in series})
    return {n: LINESTYLES[i % len(LINESTYLES)] for i, n in enumerate(scales)}


def _flows_axis(ax: Axes, flows: set[int], ylabel: str, title: str) -> None:
    if len(flows) > 1 and max(flows) / min(flows) >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(flows), [str(f) for f in sorted(flows)])
    ax.set_xlabel("concurrent flows")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def _stream(points: Sequence[Point]) -> bool:
    """A stream workload's points: a throughput, no transactions."""
    return all(p.summary.get("transactions_per_s") is None
               and p.summary.get("throughput_bps") is not None for p in points)


def _rate_vs_flows(series: dict[tuple[str, int, str], list[Point]], colors: dict[str, str],
                   workload: str, skipped: list[str]) -> tuple[Figure | None, list[str]]:
    """Transactions/s (a stream's throughput) against flows, one line per variant, services
    and loop."""
    stream = _stream([p for pts in series.values() for p in pts])
    key, scale, unit = (("throughput_bps", 1e9, "Gbit/s") if stream
                        else ("transactions_per_s", 1.0, "transactions/s"))
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    styles = _styles(series)
    notes: list[str] = []
    flows: set[int] = set()
    for skey, pts in series.items():
        xs, ys = [], []
        for p in pts:
            v = p.summary.get(key)
            if v is None:
                notes.append(f"{_socket_label(skey)} x{p.doc['flows']}: no {key}")  # type: ignore[typeddict-item]
                continue
            xs.append(int(p.doc["flows"]))  # type: ignore[typeddict-item]
            ys.append(v / scale)
        if xs:
            ax.plot(xs, ys, styles[skey[1]], color=colors[skey[0]], marker="o", markersize=4,
                    label=_socket_label(skey))
            flows.update(xs)
    if not flows:
        return None, notes
    ax.set_ylim(bottom=0)
    _flows_axis(ax, flows, unit, f"{'Throughput' if stream else 'Transactions/s'} vs "
                f"concurrent flows — workload {workload}")
    ax.legend(fontsize=8)
    _footnote(ax, skipped + notes)
    return fig, notes


def _rate_vs_services(points: Sequence[Point], colors: dict[str, str], workload: str,
                      skipped: list[str]) -> tuple[Figure | None, list[str]]:
    """Transactions/s (a stream's throughput) against the number of services, one line per
    variant and load (flows, loop): what the rules cost a connection as they grow. None
    when the points have one number of services."""
    if len({p.services for p in points}) < 2:
        return None, []
    stream = _stream(points)
    key, scale, unit = (("throughput_bps", 1e9, "Gbit/s") if stream
                        else ("transactions_per_s", 1.0, "transactions/s"))
    lines: dict[tuple[str, int, str], list[tuple[int, float]]] = {}
    for p in points:
        v = p.summary.get(key)
        if v is not None:
            lines.setdefault((p.variant, int(p.doc["flows"]), _loop_tag(p)),  # type: ignore[typeddict-item]
                             []).append((p.services, v / scale))
    if not lines:
        return None, []
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    loads = sorted({(f, loop) for _, f, loop in lines})
    for (variant, flows, loop), xy in sorted(lines.items()):
        xy.sort()
        style = LINESTYLES[loads.index((flows, loop)) % len(LINESTYLES)]
        name = (f"{variant} (no Service rules)" if variant == DirectDatapath.name
                else variant)
        label = f"{name}, x{flows}" + ("" if loop == "closed" else f" {loop}")
        if len(xy) == 1:  # one scale (direct, a capped datapath): a level, drawn across
            ax.axhline(xy[0][1], color=colors[variant], linestyle=style, linewidth=1,
                       label=f"{label} ({xy[0][0]:,} svc)")
        else:
            ax.plot(*zip(*xy, strict=True), style, color=colors[variant], marker="o",
                    markersize=4, label=label)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("services (log scale)")
    ax.set_ylabel(unit)
    ax.set_title(f"{'Throughput' if stream else 'Transactions/s'} vs services — workload "
                 f"{workload}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    _footnote(ax, skipped)
    return fig, []


def _rtt(p: Point) -> stats.Histogram | None:
    """The merge of the point's repetitions' RTT histograms (None: none has one)."""
    hists = [r.rtt for r in p.repetitions if r.rtt is not None]
    merged = stats.merge(hists) if hists else None
    return merged if merged is not None and merged.count else None


def _rtt_cdf(points: list[Point], colors: dict[str, str], load: str,
             skipped: list[str]) -> tuple[Figure | None, list[str]]:
    """The RTT CDF of each variant at one workload and load, at the largest number of
    services it has RTTs at (as the latency CDF)."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    notes: list[str] = []
    drawn = 0
    for variant in sorted({p.variant for p in points}):
        mine = sorted((p for p in points if p.variant == variant), key=lambda p: p.services)
        with_rtt = [(p, h) for p in mine if (h := _rtt(p)) is not None]
        if not with_rtt:
            notes.append(f"{variant}: no RTT histogram at any scale")
            continue
        p, hist = with_rtt[-1]
        if p.services != mine[-1].services:
            notes.append(f"{variant}: CDF at {p.services} services, the largest with RTTs")
        xs, fractions = hist.cdf()
        ax.step(xs / 1000, fractions, where="post", color=colors[variant],
                label=f"{variant} ({p.services:,} services, {hist.count:,} RTTs)")
        drawn += 1
    if not drawn:
        return None, notes
    _finish_cdf(ax, "round-trip time (µs, log scale)", "fraction of transactions ≤ RTT",
                f"RTT CDF — {load}", skipped + notes)
    return fig, notes


def _minus_direct(series: dict[tuple[str, int, str], list[Point]], colors: dict[str, str],
                  workload: str, skipped: list[str]) -> tuple[Figure | None, list[str]]:
    """Service minus the direct path per datapath: one row per load (flows, loop), RTT p50
    (bars; p99 as a diamond) on the left and transactions/s on the right, a bar per
    number of services in each datapath's group (``colors`` is unused: a colour per
    services count reads better across groups)."""
    del colors
    notes: list[str] = []
    rows: dict[tuple[int, str], dict[tuple[str, int], Point]] = {}
    for skey, pts in series.items():
        if skey[0] == DirectDatapath.name:
            continue  # the rules-free reference itself: drawn in the rate figure
        if not any(p.summary.get("direct") for p in pts):
            why = pts[0].missing.get("direct", "not measured")
            notes.append(f"{_socket_label(skey)}: no direct path ({why})")
            continue
        for p in pts:
            if p.summary.get("direct"):
                rows.setdefault((int(p.doc["flows"]), skey[2]), {})[(skey[0], skey[1])] = p  # type: ignore[typeddict-item]
    if not rows:
        return None, notes
    variants = list(dict.fromkeys(v for row in rows.values() for v, _ in row))
    scales = sorted({n for row in rows.values() for _, n in row})
    width = 0.8 / len(scales)
    fig = Figure(figsize=(max(9.0, 2.2 * len(variants)), 1.2 + 3.6 * len(rows)),
                 layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for (flows, loop), (rtt_ax, tps_ax) in zip(sorted(rows), axes, strict=True):
        row = rows[(flows, loop)]
        for j, n in enumerate(scales):
            color = SCALE_COLORS[j % len(SCALE_COLORS)]
            xs = [i + (j - (len(scales) - 1) / 2) * width for i in range(len(variants))]
            got = [(x, row.get((v, n))) for x, v in zip(xs, variants, strict=True)]
            got = [(x, p) for x, p in got if p is not None]
            label = f"{n:,} service" + ("" if n == 1 else "s")
            for ax, key, scale in ((rtt_ax, "service_minus_direct_rtt_p50_ns", 1000),
                                   (tps_ax, "service_minus_direct_transactions_per_s", 1)):
                bars = [(x, p.summary.get(key)) for x, p in got]
                bars = [(x, v / scale) for x, v in bars if v is not None]
                if bars:
                    ax.bar(*zip(*bars, strict=True), width=width, color=color, label=label)
            p99 = [(x, p.summary.get("service_minus_direct_rtt_p99_ns")) for x, p in got]
            p99 = [(x, v / 1000) for x, v in p99 if v is not None]
            if p99:
                rtt_ax.plot(*zip(*p99, strict=True), "D", color=color, markersize=4,
                            markeredgecolor="black", markeredgewidth=0.5,
                            label=f"{label} p99")
        load = f"x{flows}" + ("" if loop == "closed" else f" {loop}")
        for ax, ylabel, what in ((rtt_ax, "Service − direct RTT (µs)", "RTT p50 (p99 ◆)"),
                                 (tps_ax, "Service − direct transactions/s", "transactions/s")):
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize=8)
            ax.set_ylabel(ylabel)
            ax.set_title(f"What the Service adds: {what} — {workload} {load}", fontsize=10)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=7)
    _footnote(axes[-1][0], skipped + notes)
    return fig, notes


def _socket_plots(points: Sequence[Point], colors: dict[str, str], out: Path,
                  formats: Sequence[str], warn: Callable[..., None]) -> list[Path]:
    """The socket workloads' figures: ``tps-vs-flows`` (``throughput-vs-flows`` for a
    stream), ``tps-vs-services`` when the points have several numbers of services,
    ``rtt-cdf`` per workload and load, ``service-minus-direct``."""
    written: list[Path] = []
    for workload, ok, skipped in _by_workload(points, warn):
        series = _socket_series(ok)
        slug = _slug(workload)
        rate = "throughput-vs-flows" if _stream(ok) else "tps-vs-flows"
        figures = [(f"{rate}_{slug}", *_rate_vs_flows(series, colors, workload, skipped))]
        fig, notes = _rate_vs_services(ok, colors, workload, skipped)
        if fig is not None:
            figures.append((f"{rate.replace('flows', 'services')}_{slug}", fig, notes))
        if not _stream(ok):
            for load in dict.fromkeys(socket_load(p) for p in sorted(
                    ok, key=lambda p: (int(p.doc["flows"]), _loop_tag(p)))):  # type: ignore[typeddict-item]
                mine = [p for p in ok if socket_load(p) == load]
                figures.append((f"rtt-cdf_{_slug(load)}",
                                *_rtt_cdf(mine, colors, load, skipped)))
            figures.append((f"service-minus-direct_{slug}",
                            *_minus_direct(series, colors, workload, skipped)))
        for stem, fig, notes in figures:
            for note in notes:
                warn("plot: %s: %s", stem, note)
            if fig is None:
                warn("plot: %s: nothing to draw; no figure", stem)
                continue
            written += _save(fig, out, stem, formats)
    return written
