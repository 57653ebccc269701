"""A result as a report: self-contained HTML and Markdown.

The report holds the run's environment, its summary table, the figures of
bench.present.plots (latency and CPU per packet against services, latency CDFs; for socket
workloads transactions/s against flows, RTT CDFs, Service minus direct) plus
the full-sync time against services when the result has sync times, and —
given a base result — the regression comparison of bench.analysis.compare.

The HTML embeds every figure as a base64 PNG data URI and its style inline,
so the one file can be mailed, attached to a CI run or opened offline. The
Markdown links the same PNGs from a folder next to it (Markdown renderers do
not reliably show data URIs).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from bench.analysis.compare import Comparison
from bench.analysis.metrics import key_label
from bench.present import plots
from bench.present.compare_output import changes_table, render_text, summary_line
from bench.present.summary import environment_table, overhead_line, run_line, tables
from bench.present.tables import render_html, render_markdown
from bench.results.model import Result, as_result
from bench.results.schema import ResultDoc

FIGURE_TITLES = {
    "latency-vs-services": "Latency vs services",
    "cpu-vs-services": "CPU per packet vs services",
    "latency-cdf": "Latency CDF",
    "sync-vs-services": "Sync time vs services",
    "full-sync-vs-services": "Full sync time vs services (the sync before each scale)",
    "tps-vs-flows": "Transactions/s vs concurrent flows",
    "throughput-vs-flows": "Throughput vs concurrent streams",
    "rtt-cdf": "RTT CDF",
    "service-minus-direct": "Service minus the direct path",
}

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 22px 0 8px; }
p.meta { color: #555; margin: 2px 0; font-size: 13px; }
table { border-collapse: collapse; font-size: 12px; margin: 4px 0 8px; }
th, td { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; }
th { background: #f3f3f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.regression td { background: #fdd; } tr.improvement td { background: #dfd; }
tr.failed td { color: #999; }
.figures { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 12px; }
figure { margin: 0; border: 1px solid #ddd; padding: 4px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #555; }
.env { display: grid; grid-template-columns: auto minmax(0, 1fr); gap: 24px; align-items: start; }
pre { font-size: 11px; background: #f7f7f7; padding: 6px; overflow: auto; max-height: 360px; }
ul.notes { font-size: 13px; }
.scroll { max-height: 420px; overflow: auto; border: 1px solid #eee; }
"""


@dataclass(frozen=True)
class Figure:
    """A PNG figure of the report and its caption."""

    path: Path
    caption: str


def sync_figure(result: Result | ResultDoc, out_dir: Path, formats: tuple[str, ...] = ("png",)
                ) -> list[Path]:
    """The full sync before each scale's measurement against services, one curve per variant.

    [] when the result has no such sync times.

    Drawn with bench.present.plots' own helpers so it looks like the other figures and
    uses the same colour per variant.
    """
    # Sync scenarios' own points (workload "sync-*") are drawn by bench.present.plots itself.
    points = as_result(result).points
    ok = [p for p in points
          if p.ok and not p.is_sync and p.setup.get("sync_seconds") is not None]
    if not ok:
        return []
    # Every workload at one scale shares one sync: keep one point per scale.
    unique = {(p["variant"], p["services"], p["endpoints"], p["rate_pps"], p["position"]): p
              for p in ok}
    variants = sorted({p.variant for p in points})
    colors = {v: plots.COLORS[i % len(plots.COLORS)] for i, v in enumerate(variants)}
    fig, _ = plots._vs_services(
        plots._group(list(unique.values())), colors, "Full rule sync time vs number of services",
        "node 0's apply time of the first full sync (s)",
        [("", "-", lambda p: p.setup.get("sync_seconds"))], "sync_seconds", [])
    if fig is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    return plots._save(fig, out_dir, "full-sync-vs-services", formats)


def draw_figures(result: Result | ResultDoc, out_dir: Path, notes: list[str] | None = None
                 ) -> list[Figure]:
    """The report's PNG figures, drawn into ``out_dir``, in reading order (what a figure
    lacks: see plots.plot_result's ``notes``)."""
    result = as_result(result)
    paths = (plots.plot_result(result, out_dir, formats=("png",), notes=notes)
             + sync_figure(result, out_dir))
    figures = []
    for path in paths:
        kind, _, workload = path.stem.partition("_")
        title = FIGURE_TITLES.get(kind, kind)
        figures.append(Figure(path, f"{title} — {workload}" if workload else title))
    return figures


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _comparison_html(c: Comparison) -> str:
    e = html.escape
    parts = [f"<h2>Regressions against BASE</h2><p class=\"meta\">BASE: {e(c.base_source)} — "
             f"{e(run_line(c.base))}</p>",
             f"<p><b>{e(summary_line(c))}</b></p>"]
    changed = changes_table(c, changed_only=True)
    # Scrolled in place, so that a long list does not push the figures off the first screen.
    parts.append(f'<div class="scroll">{render_html(changed)}</div>' if changed.rows
                 else "<p>No significant change.</p>")
    if c.points:
        parts.append("<ul class=\"notes\">" + "".join(
            f"<li>{e(key_label(p.key))}: {e(p.what)}</li>" for p in c.points) + "</ul>")
    if c.warnings:
        parts.append("<ul class=\"notes\">" + "".join(
            f"<li>warning: {e(w)}</li>" for w in c.warnings) + "</ul>")
    parts.append("<details><summary>Every point and metric</summary><div class=\"scroll\">"
                 + render_html(changes_table(c)) + "</div></details>")
    return "\n".join(parts)


def render_report_html(result: Result | ResultDoc, source: str, figures: list[Figure],
                       comparison: Comparison | None = None) -> str:
    """The report as one self-contained HTML page (figures embedded as data URIs)."""
    e = html.escape
    result = as_result(result)
    name = result.doc["scenario"]["name"]
    figs = "\n".join(
        f'<figure><img alt="{e(f.caption)}" src="{_data_uri(f.path)}">'
        f"<figcaption>{e(f.caption)}</figcaption></figure>" for f in figures)
    body = [
        f"<h1>kpbench report — scenario {e(name)}</h1>",
        f'<p class="meta">{e(run_line(result))}</p><p class="meta">{e(source)}</p>',
        f'<p class="meta">{e(overhead_line(result) or "probe overhead: not measured")}</p>',
        _comparison_html(comparison) if comparison else "",
        "<h2>Environment</h2>",
        f'<div class="env">{render_html(environment_table(result))}'
        f"<div><b>Scenario</b><pre>{e(result.doc['scenario'].get('text') or '')}</pre></div></div>",
        "<h2>Figures</h2>",
        f'<div class="figures">{figs}</div>' if figures else "<p>No figure could be drawn.</p>",
        "<h2>Summary</h2>",
        *(render_html(t) for t in tables(result)),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>kpbench report — {e(name)}</title><style>{CSS}</style></head>\n"
            "<body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")


def render_report_markdown(result: Result | ResultDoc, source: str, figures: list[Figure],
                           figures_rel: Path, comparison: Comparison | None = None) -> str:
    """The report as Markdown; figures are linked as ``figures_rel/<name>.png``."""
    result = as_result(result)
    out = [f"# kpbench report — scenario {result.doc['scenario']['name']}", "",
           run_line(result), "", overhead_line(result) or "probe overhead: not measured", "",
           f"`{source}`", ""]
    if comparison is not None:
        out += ["## Regressions against BASE", "",
                render_text([comparison], "markdown", changed_only=True).rstrip(), ""]
    out += ["## Environment", "", render_markdown(environment_table(result)), "",
            "## Summary", ""]
    for t in tables(result):
        out += [render_markdown(t), ""]
    out += ["## Figures", ""]
    for f in figures:
        out += [f"![{f.caption}]({(figures_rel / f.path.name).as_posix()})", ""]
    return "\n".join(out)


def write_report(result: Result | ResultDoc, source: str, out_dir: Path, stem: str,
                 comparison: Comparison | None = None, notes: list[str] | None = None
                 ) -> tuple[Path, Path]:
    """Write ``<stem>-report.html``, ``<stem>-report.md`` and the PNGs the Markdown links.

    Returns (html path, markdown path). ``notes``: see plots.plot_result.
    """
    result = as_result(result)  # read once: every table and figure shares its points
    out_dir.mkdir(parents=True, exist_ok=True)
    files = Path(f"{stem}-report-files")
    figures = draw_figures(result, out_dir / files, notes)
    html_path = out_dir / f"{stem}-report.html"
    md_path = out_dir / f"{stem}-report.md"
    html_path.write_text(render_report_html(result, source, figures, comparison),
                         encoding="utf-8")
    md_path.write_text(render_report_markdown(result, source, figures, files, comparison),
                       encoding="utf-8")
    return html_path, md_path
