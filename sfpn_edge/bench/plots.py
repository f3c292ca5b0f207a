"""PNG plots of a bench result (matplotlib, the ``bench``/``eval`` extra; imported lazily)."""
from __future__ import annotations

from pathlib import Path
from typing import List

from sfpn_edge.backends import registry
from sfpn_edge.bench.baseline import TARGET_MS_PER_FACE
from sfpn_edge.bench.configs import BASELINE_LABEL
from sfpn_edge.errors import SfpnError

PALETTE = ("tab:blue", "tab:purple", "tab:orange", "tab:green", "tab:red", "tab:brown", "tab:pink", "tab:olive")
BASELINE_COLOUR = "tab:grey"
MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SfpnError("--plots needs matplotlib: pip install 'sfpn-edge[bench]'") from None
    return plt


def _ok(result: dict) -> List[dict]:
    return [r for r in result["rows"] if r.get("status") == "ok"]


def _label(row: dict) -> str:
    if row.get("baseline"):
        return BASELINE_LABEL
    return f"{row['backend']} {row['precision']} x{row['threads']}"


def _colour(row: dict) -> str:
    """One colour per backend, by its place in the registry (grey for one no longer registered)."""
    if row.get("baseline"):
        return BASELINE_COLOUR
    names = registry.names()
    return PALETTE[names.index(row["backend"]) % len(PALETTE)] if row["backend"] in names else "grey"


def _legend(ax) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_colour({"backend": b}), marker="o", linestyle="", label=b)
               for b in registry.names()]
    handles.append(Line2D([], [], color=BASELINE_COLOUR, marker="o", linestyle="", label=BASELINE_LABEL))
    handles += [Line2D([], [], color="grey", marker=m, linestyle="", label=p) for p, m in MARKERS.items()]
    ax.legend(handles=handles, fontsize=8, loc="best", title="colour: backend, marker: precision, size: threads",
              title_fontsize=7)


def latency_vs_accuracy(result: dict, path: Path) -> Path:
    """Scatter: p50 latency per face vs CFP-FP accuracy (or fidelity to fp32 without accuracy)."""
    plt = _pyplot()
    rows = _ok(result)
    with_accuracy = any(r.get("cfp_fp_accuracy") is not None for r in rows)
    why = "untrained weights" if result["model"].get("kind") == "synthetic" else "CFP not measured"
    key, ylabel = (("cfp_fp_accuracy", "CFP-FP 10-fold accuracy (%)") if with_accuracy else
                   ("cosine_vs_fp32", f"lowest cosine vs fp32 descriptors (no accuracy: {why})"))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, row in enumerate(rows):
        if row.get(key) is None:
            continue
        ax.scatter(row["p50_ms"], row[key], s=40 + 40 * (row["threads"] or 1), c=_colour(row),
                   marker=MARKERS.get(row["precision"], "o"), alpha=0.8, edgecolors="black", linewidths=0.5)
        ax.annotate(_label(row), (row["p50_ms"], row[key]), textcoords="offset points",
                    xytext=(7, 8 if i % 2 else -12), fontsize=7)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("batch-1 latency per face, p50 (ms); left is faster")
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(f"Latency vs {'accuracy' if with_accuracy else 'fidelity'}: {result['model']['label']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.2)
    ax.set_xlim(left=0)
    _legend(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_bars(result: dict, path: Path) -> Path:
    """Horizontal bars: p50 latency per face with a p95 whisker, one bar per configuration."""
    plt = _pyplot()
    rows = sorted(_ok(result), key=lambda r: r["p50_ms"], reverse=True)
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh(y, [r["p50_ms"] for r in rows], color=[_colour(r) for r in rows], alpha=0.85,
            xerr=[[0] * len(rows), [r["p95_ms"] - r["p50_ms"] for r in rows]], capsize=3)
    for i, row in enumerate(rows):
        ax.text(row["p95_ms"], i, f"  {row['p50_ms']:.2f}", va="center", fontsize=8)
    ax.set_yticks(list(y), [_label(r) for r in rows], fontsize=8)
    ax.axvline(TARGET_MS_PER_FACE, color="tab:red", linestyle="--", linewidth=1,
               label=f"issue-5 target: int8 <= {TARGET_MS_PER_FACE:g} ms at 1 thread")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("ms per face at batch 1 (bar: p50, whisker: p95)")
    ax.set_title(f"Embedding latency, {result['machine']['cpu_model']} ({result['model']['label']})", fontsize=9)
    ax.margins(x=0.12)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def stage_bars(result: dict, path: Path) -> Path:
    """Our kernels next to their OpenCV/NumPy references (log scale: stages differ by orders)."""
    plt = _pyplot()
    rows = [r for r in result["stages"] if r.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh(y, [r["p50_ms"] for r in rows], color=["tab:grey" if r.get("reference") else "tab:green" for r in rows])
    ax.set_yticks(list(y), [f"{r['stage']}: {r['impl']} (per {r['unit'].removeprefix('per ')})" for r in rows],
                  fontsize=8)
    for i, row in enumerate(rows):
        ax.text(row["p50_ms"], i, f" {row['p50_ms']:.3g}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.margins(x=0.15)
    ax.set_xlabel("p50 ms (log scale); green: sfpn-edge, grey: reference")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(result: dict, out_dir: Path) -> List[Path]:
    """Write every plot that has data into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if _ok(result):
        paths += [latency_vs_accuracy(result, out_dir / "latency_vs_accuracy.png"),
                  latency_bars(result, out_dir / "latency.png")]
    if any(r.get("status") == "ok" for r in result["stages"]):
        paths.append(stage_bars(result, out_dir / "stages.png"))
    return paths
