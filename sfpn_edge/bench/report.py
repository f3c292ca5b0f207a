"""Render a bench result (the ``--json`` dict) as a terminal table, plain text or Markdown.

The best value of each numeric column is highlighted (bold green with rich, ``*`` in plain
text, **bold** in Markdown); the speed-target verdict follows the model table. ``rich`` is
optional (the ``bench`` extra); without it the same table is printed as aligned plain text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional


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


MODEL_TITLE = "Face embedding model (batch-1 latency per face; throughput at the best batch)"
STAGE_TITLE = "Pipeline stages (one thread; ours first, then the reference)"


def _value(row: dict, column: Column):
    return column.get(row) if column.get else row.get(column.key)


def _target_line(result: dict, title: str) -> List[str]:
    """The speed-target verdict under the model table."""
    target = result.get("speed_target")
    return [f"Speed target (issue 5): {target['text']}"] if target and title == MODEL_TITLE else []


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


def render_rich(result: dict, console=None) -> None:
    """Print with rich (raises ImportError when rich is not installed)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a file or pipe: do not fold the wide table into 80 columns
            console = Console(width=max(console.width, 240))
    for line in header_lines(result):
        console.print(line, highlight=False)
    for title, rows, columns in _tables(result):
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column.header, justify="right" if column.better or "ms" in column.header else "left")
        table.add_column("note", overflow="fold")
        for cells in _cells(rows, columns):
            table.add_row(*(f"[bold green]{t}[/]" if won else t for t, won in cells))
        console.print(table)
        for line in _target_line(result, title):
            console.print(line, highlight=False, style="bold", soft_wrap=True)
    for note in result["notes"]:
        console.print(f"- {note}", highlight=False)


def _grid(rows: List[List[str]], headers: List[str]) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def render_text(result: dict) -> str:
    """Plain aligned text; winners marked with ``*``."""
    lines = header_lines(result)
    for title, rows, columns in _tables(result):
        cells = [[t + ("*" if won else "") for t, won in r] for r in _cells(rows, columns)]
        lines += ["", title] + _grid(cells, [c.header for c in columns] + ["note"]) + _target_line(result, title)
    lines += [""] + [f"- {n}" for n in result["notes"]] + ["(* best in column)"]
    return "\n".join(lines)


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


def render(result: dict) -> None:
    """Print the result: rich when available, else plain text."""
    try:
        render_rich(result)
    except ImportError:
        print(render_text(result))
