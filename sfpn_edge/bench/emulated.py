"""Rows marked "emulated": Raspberry Pi estimates from ``tools/arm64-cost`` (instruction counts
under QEMU and an issue-rate cost model), shown beside the measured table, never mixed into it.

    python -m sfpn_edge.bench --emulate-arm ~/.cache/sfpn_edge/arm64/cost/cost.json
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from sfpn_edge.errors import SfpnError

CORES = (("cortex-a76", "Pi 5 est. ms"), ("cortex-a72", "Pi 4 est. ms"))


def load(path: Path) -> dict:
    """The cost report at ``path``, checked enough to render (SfpnError otherwise)."""
    try:
        data = json.loads(Path(path).read_text())
        rows = list(data["rows"])
        missing = [key for row in rows for key in ("name", "total_instructions", "instructions", *dict(CORES))
                   if key not in row]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SfpnError(f"{path}: not a tools/arm64-cost report ({type(exc).__name__}: {exc})") from None
    if missing:
        raise SfpnError(f"{path}: a row lacks {missing[0]!r}: not a tools/arm64-cost report")
    return {"source": str(path), "model": data.get("model", ""), "rows": rows}


def lines(emulated: dict) -> List[str]:
    """A plain-text table: one row per workload, estimated ms on each core and what bounds it."""
    head = f"{'ARM workload (emulated)':<28} {'M instr':>8} {'dot M':>6}"
    head += "".join(f" {label:>20}" for _, label in CORES)
    out = [head]
    for row in emulated["rows"]:
        cells = f"{row['name']:<28} {row['total_instructions'] / 1e6:8.1f} {row['instructions']['dot'] / 1e6:6.1f}"
        for core, _ in CORES:
            est = row[core]
            text = f"{est['ms']:.2f} ({est['bound_by']})" if "ms" in est else "not runnable"
            cells += f" {text:>20}"
        out.append(cells)
    out.append(f"estimates, not measurements: {emulated['model']} ({emulated['source']})")
    return out
