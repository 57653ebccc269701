"""Tables for the terminal, Markdown and HTML, and number formatting with units.

Commands build a :class:`Table` of display strings once and render it in the
format asked for. Machine-readable output (JSON, CSV) is written from the raw
records instead, so numbers there keep their full precision and base units.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """Columns, rows of display strings, and per-column alignment ("l" or "r")."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    align: list[str] | None = None
    # Per-row CSS class for HTML (e.g. "regression"); ignored by the other renderers.
    row_classes: list[str] = field(default_factory=list)

    def add(self, row: Sequence[Any], css: str = "") -> None:
        if len(row) != len(self.columns):
            raise ValueError(f"row has {len(row)} cells, table has {len(self.columns)} columns")
        self.rows.append(["" if c is None else str(c) for c in row])
        self.row_classes.append(css)

    def _align(self) -> list[str]:
        return self.align or ["l"] * len(self.columns)


def render_text(t: Table) -> str:
    """Aligned plain-text columns separated by two spaces, with a dashed rule under the header."""
    widths = [max([len(c), *(len(r[i]) for r in t.rows)]) for i, c in enumerate(t.columns)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if a == "r" else c.ljust(w)
                 for c, w, a in zip(cells, widths, t._align(), strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(t.columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in t.rows]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(t: Table) -> str:
    """A GitHub-flavoured Markdown table."""
    rule = ["---:" if a == "r" else "---" for a in t._align()]
    out = ["| " + " | ".join(_md_cell(c) for c in t.columns) + " |",
           "| " + " | ".join(rule) + " |"]
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in t.rows]
    return "\n".join(out)


def render_html(t: Table) -> str:
    """An HTML ``<table>`` (escaped), numeric columns right-aligned via class "num"."""
    align = t._align()
    head = "".join(f'<th class="{"num" if a == "r" else ""}">{html.escape(c)}</th>'
                   for c, a in zip(t.columns, align, strict=True))
    body = []
    for row, css in zip(t.rows, t.row_classes or [""] * len(t.rows), strict=True):
        cells = "".join(f'<td class="{"num" if a == "r" else ""}">{html.escape(c)}</td>'
                        for c, a in zip(row, align, strict=True))
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return (f"<table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def render(t: Table, fmt: str) -> str:
    """``t`` as "table" (plain text) or "markdown"."""
    if fmt == "markdown":
        return render_markdown(t)
    if fmt == "table":
        return render_text(t)
    raise ValueError(f"no text rendering for format {fmt!r}")


def records_csv(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV of raw records (missing values empty), header first."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n",
                       extrasaction="ignore")
    w.writeheader()
    for r in records:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    return buf.getvalue()


def dumps(obj: Any) -> str:
    """JSON for command output; an infinite change is written as null (JSON has no Infinity)."""
    return json.dumps(_no_inf(obj), indent=1, allow_nan=False)


def _no_inf(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_inf(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_inf(v) for v in obj]
    return obj


# -- numbers -------------------------------------------------------------------------------

def _sig(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, without an exponent for everyday sizes."""
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def fmt_value(value: float | None, unit: str) -> str:
    """A measurement for people: ns as µs, fractions as %, rates with separators."""
    if value is None:
        return "—"
    if unit == "ns":
        return f"{_sig(value / 1000)} µs"
    if unit in ("ns/packet", "ns/transaction"):
        return f"{value:,.0f} ns"
    if unit == "bit/s":
        scaled = next(((value / f, u) for f, u in ((1e9, "Gbit/s"), (1e6, "Mbit/s"))
                       if abs(value) >= f), (value, "bit/s"))
        return f"{_sig(scaled[0])} {scaled[1]}"
    if unit == "tx/s":
        return f"{value:,.0f} tx/s"
    if unit == "fraction":
        return f"{value * 100:.3g} %"
    if unit == "s":
        return f"{_sig(value)} s"
    if unit == "packets/s":
        return f"{value:,.0f} pps"
    return f"{_sig(value)} {unit}".strip()


def fmt_change(pct: float | None) -> str:
    """A relative change in percent, signed: "+20.1%", "-3.0%", "+inf%" from zero."""
    if pct is None:
        return "—"
    if math.isinf(pct):
        return "+inf%" if pct > 0 else "-inf%"
    return f"{pct:+.1f}%"
