"""Plain-text tables for the terminal and for logs.

Every table is plain text whether or not the output is a terminal: no colour codes and no box
characters, so a piped or pasted summary greps the same as one on screen. Columns take the width
of their longest cell (a number or an id is never cut; a wide character counts two columns), the
first column is left-aligned and the others right-aligned unless told otherwise, and a line never
ends in spaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from pipeline.metrics import NETWORK, STAGES


def render_table(heads: Sequence[str] | None, rows: Iterable[Sequence[str]], *, align: str | None = None,
                 gap: int = 1, rule: bool = False, min_widths: Sequence[int] | None = None,
                 tails: Sequence[str] | None = None) -> str:
    """Lay ``rows`` out under ``heads`` (None: no head line) and return the lines joined by newlines.

    ``align``: one letter per column, ``l`` or ``r`` (default: the first left, the rest right).
    ``gap``: spaces between columns. ``rule``: a line of dashes under the heads, as wide as the table.
    ``min_widths``: the least width of each column. ``tails``: text appended to each row's line,
    outside the columns (it widens none of them), e.g. an error note.
    """
    from rich.cells import cell_len  # display width (a wide character takes two columns)

    rows = [[str(c) for c in r] for r in rows]
    ncols = len(heads) if heads is not None else max((len(r) for r in rows), default=0)
    if ncols == 0:
        return ""
    align = align or "l" + "r" * (ncols - 1)
    if len(align) != ncols or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: expected one of 'l' or 'r' per column ({ncols})")
    if any(len(r) != ncols for r in rows):
        raise ValueError(f"every row needs {ncols} cells")
    mins = list(min_widths or []) + [0] * ncols
    cells = ([list(heads)] if heads is not None else []) + rows
    widths = [max([mins[i], *(cell_len(r[i]) for r in cells)]) for i in range(ncols)]

    def line(row: Sequence[str]) -> str:
        pad = [" " * (w - cell_len(c)) for c, w in zip(row, widths)]
        return (" " * gap).join(c + p if a == "l" else p + c for c, p, a in zip(row, pad, align)).rstrip()

    lines = [line(r) for r in cells]
    if heads is not None and rule:
        lines.insert(1, "-" * (sum(widths) + gap * (ncols - 1)))
    for i, tail in enumerate(tails or []):
        lines[len(lines) - len(rows) + i] += tail
    return "\n".join(lines)


def ms(value: float) -> str:
    """Milliseconds with one decimal; NaN (no samples) as '-'."""
    return "-" if value != value else f"{value:.1f}"


class SourceCounts(Protocol):
    """What the per-source table reads of a source's summary."""

    id: str
    frames_in: int
    frames_out: int
    drops: Mapping[str, int]
    fps: float
    e2e_ms: Sequence[float]  # p50, p95, p99
    error: str | None


SOURCE_HEADS = ("source", "in", "out", "dropped", "fps", "e2e p50", "p99 ms")


def sources_table(sources: Iterable[SourceCounts]) -> str:
    """One row per source: frames in and out, drops, fps, end-to-end p50 and p99 (an error after the row)."""
    sources = list(sources)
    rows = [(s.id, str(s.frames_in), str(s.frames_out), str(sum(s.drops.values())), f"{s.fps:.1f}",
             ms(s.e2e_ms[0]), ms(s.e2e_ms[2])) for s in sources]
    return render_table(SOURCE_HEADS, rows, rule=True, tails=[f"  ERROR: {s.error}" if s.error else "" for s in sources])


def stage_table(rows: Mapping[str, Sequence[float]]) -> str:
    """p50/p95/p99 ms per stage, in path order then e2e; '' when no frame passed (no rows)."""
    cells = [(name, *(f"{v:.2f}" for v in rows[name])) for name in (NETWORK, *STAGES, "e2e") if name in rows]
    if not cells:
        return ""
    w = max(8, *(len(c) for row in cells for c in row[1:]))  # the three columns share one width
    return render_table(("stage", "p50 ms", "p95 ms", "p99 ms"), cells, min_widths=(12, w, w, w))


__all__ = ["render_table", "sources_table", "stage_table", "ms", "SourceCounts", "SOURCE_HEADS"]
