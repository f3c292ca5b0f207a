"""Render a bench result (the ``--json`` dict) as a terminal table, plain text or Markdown.

The best value of each numeric column is highlighted (bold green with rich, ``*`` in plain
text, **bold** in Markdown); the speed-target verdict, naming the machine it was measured on,
follows the model table. ``rich`` is optional (the ``bench`` extra); without it the same table is
printed as aligned plain text. On a terminal the table is compact: the most useful columns that
fit its width (``COMPACT``, 80 columns at least), row notes under the table; ``wide=True``
(``--wide``) prints every column. Markdown always has every column.
"""
from __future__ import annotations

import shutil
import sys
import textwrap
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[object], str]
    better: Optional[str] = None  # "min", "max" or None (not ranked)
    get: Optional[Callable[[dict], object]] = None  # the cell's value, when it is not simply row[key]


def _num(digits: int) -> Callable[[object], str]:
    return lambda v: f"{v:,.{digits}f}"


MODEL_COLUMNS = [
    Column("backend", "backend", str, get=lambda r: r.get("label", r.get("backend"))),  # label: the baseline
    Column("precision", "precision", str),
    Column("threads", "threads", str, get=lambda r: "default" if r.get("baseline") else r.get("threads")),
    Column("p50_ms", "p50 ms/face", _num(2), "min"),
    Column("speedup_vs_baseline", "vs ORT default", lambda v: f"{v:.2f}x", "max"),
    Column("p95_ms", "p95 ms", _num(2), "min"),
    Column("throughput_fps", "faces/s", _num(0), "max"),
    Column("best_batch", "@batch", str),
    Column("cold_start_s", "cold start s", _num(2), "min"),
    Column("peak_rss_mb", "peak RSS MB", _num(0), "min"),
    Column("model_size_mb", "size MB", _num(2), "min"),
    Column("cosine_vs_fp32", "cos vs fp32", _num(6), "max"),
]
ACCURACY_COLUMNS = [
    Column("cfp_ff_accuracy", "CFP-FF %", _num(2), "max"),
    Column("cfp_fp_accuracy", "CFP-FP %", _num(2), "max"),
    Column("cfp_fp_eer", "FP EER %", _num(2), "min"),
]
STAGE_COLUMNS = [
    Column("stage", "stage", str),
    Column("impl", "implementation", str),
    Column("p50_ms", "p50 ms", _num(4)),
    Column("p95_ms", "p95 ms", _num(4)),
    Column("unit", "per", str),
    Column("speedup", "vs reference", lambda v: f"{v:.2f}x"),
    Column("workload", "workload", str),
]


# Columns in the order a compact table keeps them, while they fit the width.
COMPACT = ("backend", "precision", "threads", "p50_ms", "speedup_vs_baseline", "cfp_fp_accuracy", "cfp_ff_accuracy",
           "throughput_fps", "cosine_vs_fp32", "peak_rss_mb", "p95_ms", "stage", "impl", "unit", "speedup",
           "cold_start_s", "model_size_mb", "best_batch", "cfp_fp_eer", "workload")
SHORT_HEADERS = {"precision": "prec", "threads": "thr", "p50_ms": "ms/face", "speedup_vs_baseline": "vs ORT",
                 "throughput_fps": "faces/s", "cosine_vs_fp32": "cos fp32", "cfp_fp_accuracy": "FP %",
                 "cfp_ff_accuracy": "FF %", "peak_rss_mb": "RSS MB", "p95_ms": "p95", "impl": "impl",
                 "speedup": "vs ref", "cold_start_s": "cold s", "model_size_mb": "MB", "cfp_fp_eer": "EER %"}
MIN_WIDTH = 80
WIDE_FILE_WIDTH = 240  # rich writing --wide to a file or pipe: never fold the table


MODEL_TITLE = "Face embedding model (batch-1 latency per face; throughput at the best batch)"
STAGE_TITLE = "Pipeline stages (one thread; ours first, then the reference)"


def _value(row: dict, column: Column):
    return column.get(row) if column.get else row.get(column.key)


def _target_line(result: dict, title: str) -> List[str]:
    """The speed-target verdict under the model table, with the machine it was measured on."""
    target = result.get("speed_target")
    if not target or title != MODEL_TITLE:
        return []
    m = result["machine"]
    return [f"Speed target (issue 5), measured on this machine ({m['cpu_model']}, {m['logical_cpus']} logical "
            f"CPUs; other machines differ): {target['text']}"]


def _tables(result: dict) -> list:
    """(title, rows, columns) of each non-empty table; accuracy columns only when measured."""
    with_accuracy = any(row.get("cfp_fp_accuracy") is not None for row in result["rows"])
    tables = [(MODEL_TITLE, result["rows"], MODEL_COLUMNS + (ACCURACY_COLUMNS if with_accuracy else [])),
              (STAGE_TITLE, result["stages"], STAGE_COLUMNS)]
    return [t for t in tables if t[1]]


def winners(rows: List[dict], columns: List[Column]) -> dict:
    """column key -> the best value among measured rows (ties all win)."""
    best = {}
    for column in columns:
        values = [_value(r, column) for r in rows if r.get("status") == "ok"]
        values = [v for v in values if isinstance(v, (int, float))]
        if column.better and len(values) > 1:
            best[column.key] = (min if column.better == "min" else max)(values)
    return best


def _note(row: dict) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('reason', '')}"
    return row.get("note", "")


def _cells(rows: List[dict], columns: List[Column]) -> List[List[tuple]]:
    """Per row, per column: (text, is_winner); plus a trailing note cell."""
    best = winners(rows, columns)
    table = []
    for row in rows:
        cells = []
        for column in columns:
            value = _value(row, column)
            text = "-" if value is None else column.fmt(value)
            won = column.key in best and isinstance(value, (int, float)) and value == best[column.key]
            cells.append((text, won))
        cells.append((_note(row), False))
        table.append(cells)
    return table


def compact(columns: List[Column], cells: List[List[tuple]], width: int, overhead: int) -> List[int]:
    """Indices of the ``COMPACT`` columns (in table order) that fit ``width``, each costing its widest
    cell plus ``overhead``; the first three always stay."""
    def cost(i: int) -> int:
        return max([len(SHORT_HEADERS.get(columns[i].key, columns[i].header))] +
                   [len(row[i][0]) + row[i][1] for row in cells]) + overhead

    ranked = sorted((i for i, c in enumerate(columns) if c.key in COMPACT), key=lambda i: COMPACT.index(columns[i].key))
    keep, used = [], 0
    for n, i in enumerate(ranked):
        if n < 3 or used + cost(i) <= width:
            keep.append(i)
            used += cost(i)
    return sorted(keep)


def _row_notes(rows: List[dict], cells: List[List[tuple]], width: int) -> List[str]:
    """A compact table's row notes, one wrapped line group per row that has one."""
    lines = []
    for row, cell in zip(rows, cells):
        if cell[-1][0]:
            who = " ".join(str(t) for t, _ in cell[:3])
            lines += textwrap.wrap(f"{who}: {cell[-1][0]}", width, subsequent_indent="    ")
    return lines


def terminal_width(stream=None) -> int:
    """The width to render for: the terminal's (at least ``MIN_WIDTH``), else ``MIN_WIDTH``."""
    stream = stream if stream is not None else sys.stdout
    if getattr(stream, "isatty", lambda: False)():
        return max(shutil.get_terminal_size((MIN_WIDTH, 24)).columns, MIN_WIDTH)
    return MIN_WIDTH


def header_lines(result: dict) -> List[str]:
    m, model, s = result["machine"], result["model"], result["settings"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    return [
        f"Machine: {m['cpu_model']} | {m['logical_cpus']} logical CPUs | {m['arch']} {m['system']}",
        f"CPU features: {' '.join(m['features']) or '-'}",
        f"Libraries: python {m['python']}, {libs}",
        f"Model: {model['label']} ({model['origin']})",
        f"Run: {'quick' if s['quick'] else 'full'} | threads {s['threads']} | batches {s['batches']} | "
        f"each row in its own process | {result['elapsed_s']:.0f} s",
    ]


def render_rich(result: dict, console=None, wide: bool = False) -> None:
    """Print with rich (raises ImportError when rich is not installed)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console(width=WIDE_FILE_WIDTH if wide and not sys.stdout.isatty() else terminal_width())
    for line in header_lines(result):
        console.print(line, highlight=False)
    for title, rows, columns in _tables(result):
        cells = _cells(rows, columns)
        keep = list(range(len(columns))) if wide else compact(columns, cells, console.width - 1, 3)
        table = Table(title=title, title_justify="left")
        for i in keep:
            header = columns[i].header if wide else SHORT_HEADERS.get(columns[i].key, columns[i].header)
            table.add_column(header, justify="right" if columns[i].better or "ms" in columns[i].header else "left")
        if wide:
            table.add_column("note", overflow="fold")
        for row in cells:
            shown = [row[i] for i in keep] + ([row[-1]] if wide else [])
            table.add_row(*(f"[bold green]{t}[/]" if won else t for t, won in shown))
        console.print(table)
        for line in ([] if wide else _row_notes(rows, cells, console.width)):
            console.print(line, highlight=False)
        for line in _target_line(result, title):
            console.print(line, highlight=False, style="bold")
    for note in result["notes"]:
        console.print(f"- {note}", highlight=False)


def _grid(rows: List[List[str]], headers: List[str]) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def render_text(result: dict, width: Optional[int] = None, wide: bool = False) -> str:
    """Plain aligned text; winners marked with ``*``. Compact to ``width`` (default: the terminal's)
    unless ``wide``, which prints every column and leaves lines long."""
    width = width or terminal_width()
    lines = header_lines(result)
    for title, rows, columns in _tables(result):
        cells = _cells(rows, columns)
        marked = [[t + ("*" if won else "") for t, won in r] for r in cells]
        if wide:
            lines += ["", title] + _grid(marked, [c.header for c in columns] + ["note"])
        else:
            keep = compact(columns, cells, width, 2)
            lines += ["", title] + _grid([[r[i] for i in keep] for r in marked],
                                         [SHORT_HEADERS.get(columns[i].key, columns[i].header) for i in keep])
            lines += _row_notes(rows, cells, width)
        lines += _target_line(result, title)
    lines += [""] + [f"- {n}" for n in result["notes"]] + ["(* best in column)"]
    return "\n".join(lines) if wide else "\n".join(_wrap(lines, width))


def _wrap(lines: Sequence[str], width: int) -> List[str]:
    """``lines`` folded to ``width`` (table lines already fit)."""
    out: List[str] = []
    for line in lines:
        out += textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False) or [""]
    return out


def render_markdown(result: dict) -> str:
    """GitHub Markdown; winners in bold."""
    lines = ["# sfpn-edge benchmark", ""] + [f"- {line}" for line in header_lines(result)]
    for title, rows, columns in _tables(result):
        headers = [c.header for c in columns] + ["note"]
        lines += ["", f"## {title}", "", "| " + " | ".join(headers) + " |",
                  "|" + "|".join("---:" if c.better else "---" for c in columns) + "|---|"]
        for cells in _cells(rows, columns):
            lines.append("| " + " | ".join(f"**{t}**" if won else t.replace("|", "\\|") for t, won in cells) + " |")
        lines += [f"\n**{line}**" for line in _target_line(result, title)]
    lines += [""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def render(result: dict, wide: bool = False) -> None:
    """Print the result: rich when available, else plain text."""
    try:
        render_rich(result, wide=wide)
    except ImportError:
        print(render_text(result, wide=wide))
