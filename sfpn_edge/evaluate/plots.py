"""ROC, DET and score-histogram PNGs for evaluation results (needs matplotlib: the ``eval`` extra).

Uses matplotlib's object API (``Figure``) with the Agg canvas: no pyplot global state, no GUI.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from sfpn_edge.errors import SfpnError
from sfpn_edge.evaluate import metrics


def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SfpnError("plots need matplotlib: pip install 'sfpn-edge[eval]'") from None
    return Figure(figsize=(6.4, 4.8), dpi=120, layout="constrained")


def _save(fig, path: Path) -> Path:
    try:
        fig.savefig(path)
    except OSError as exc:
        raise SfpnError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _far_floor(curves: Sequence[metrics.Roc]) -> float:
    """Lower edge of log-rate axes: the decade below the smallest non-zero FAR/FRR of any curve."""
    rates = np.concatenate([np.r_[c.far, c.frr] for c in curves])
    smallest = float(rates[rates > 0].min())
    return 10 ** np.floor(np.log10(smallest))


def roc_plot(curves: Dict[str, metrics.Roc], path: Path, title: str = "ROC") -> Path:
    """TAR against FAR on a log axis, one curve per protocol."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.step(c.far, c.tar, where="post", label=f"{name} (AUC {metrics.auc(c):.4f})")
    ax.set_xscale("log")
    ax.set_xlim(_far_floor(list(curves.values())), 1.0)
    ax.set_ylim(0.0, 1.005)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def det_plot(curves: Dict[str, metrics.Roc], path: Path, title: str = "DET") -> Path:
    """FRR against FAR, both on log axes, with each curve's equal-error point marked."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, c in curves.items():
        rate, _ = metrics.eer(c)
        (line,) = ax.step(c.far, c.frr, where="post", label=f"{name} (EER {100 * rate:.2f} %)")
        ax.plot([rate], [rate], "o", color=line.get_color())
    floor = _far_floor(list(curves.values()))
    ax.plot([floor, 1.0], [floor, 1.0], ":", color="grey", lw=0.8, label="FAR = FRR")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, 1.0)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("false reject rate (FRR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    return _save(fig, path)


def histogram_plot(scores, labels, path: Path, title: str, threshold: float = None) -> Path:
    """Genuine and impostor score densities on shared bins, with an optional threshold line."""
    h = metrics.histogram(scores, labels, bins=60)
    edges = h["edges"]
    width = np.diff(edges)
    fig = _figure()
    ax = fig.add_subplot()
    for key, colour in (("impostor", "tab:red"), ("genuine", "tab:green")):
        counts = h[key]
        ax.stairs(counts / (counts.sum() * width), edges, fill=True, alpha=0.45, color=colour,
                  label=f"{key} ({counts.sum()} pairs)")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"EER threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return _save(fig, path)


def save_plots(results: Dict[str, dict], out_dir: Path) -> List[Path]:
    """Write roc.png, det.png and hist_<protocol>.png for ``{name: {"scores", "labels"}}``."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SfpnError(f"cannot create plot directory {out_dir}: {exc.strerror or exc}") from None
    curves = {name: metrics.roc(r["scores"], r["labels"]) for name, r in results.items()}
    written = [roc_plot(curves, out_dir / "roc.png"), det_plot(curves, out_dir / "det.png")]
    for name, r in results.items():
        _, threshold = metrics.eer(curves[name])
        slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
        written.append(histogram_plot(r["scores"], r["labels"], out_dir / f"hist_{slug}.png",
                                      f"{name}: score distributions", threshold))
    return written
