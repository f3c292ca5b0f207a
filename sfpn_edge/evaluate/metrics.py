"""Verification metrics over pair scores: k-fold accuracy, ROC/DET, EER, AUC, TAR@FAR.

Conventions: a higher score means "more likely the same person"; a pair is accepted
as genuine when ``score >= threshold``. ``labels`` are True for genuine (same) pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np


def _check(scores, labels) -> Tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {s.shape} and {y.shape}")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be boolean (True = genuine pair)")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    if y.all() or not y.any():
        raise ValueError("need at least one genuine and one impostor pair")
    return s, y


@dataclass(frozen=True)
class Roc:
    """Operating points at every distinct score, from "accept nothing" to "accept all".

    ``far[i]``/``tar[i]`` are the impostor/genuine acceptance rates at ``thresholds[i]``;
    both are non-decreasing.
    """

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray

    @property
    def frr(self) -> np.ndarray:
        return 1.0 - self.tar


def roc(scores, labels) -> Roc:
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    far = np.r_[0.0, fp / (~y).sum()]
    tar = np.r_[0.0, tp / y.sum()]
    thresholds = np.r_[np.nextafter(s[0], np.inf), s[last]]
    return Roc(far=far, tar=tar, thresholds=thresholds)


def auc(curve: Roc) -> float:
    """Area under the ROC (ties count one half, as in the Mann-Whitney statistic)."""
    return float(np.sum(np.diff(curve.far) * (curve.tar[1:] + curve.tar[:-1]) / 2.0))


def eer(curve: Roc) -> Tuple[float, float]:
    """Equal error rate and its threshold, interpolated linearly where FAR crosses FRR."""
    d = curve.far - curve.frr  # -1 at "accept nothing", +1 at "accept all", non-decreasing
    i = int(np.argmax(d >= 0))
    if d[i] == 0 or i == 0:
        return float(curve.far[i]), float(curve.thresholds[i])
    w = d[i - 1] / (d[i - 1] - d[i])
    rate = curve.far[i - 1] + w * (curve.far[i] - curve.far[i - 1])
    threshold = curve.thresholds[i - 1] + w * (curve.thresholds[i] - curve.thresholds[i - 1])
    return float(rate), float(threshold)


def tar_at_far(curve: Roc, far: float) -> Tuple[float, float]:
    """Highest TAR whose FAR does not exceed ``far``, and the threshold that gives it."""
    i = int(np.flatnonzero(curve.far <= far)[-1])
    return float(curve.tar[i]), float(curve.thresholds[i])


def accuracy(scores, labels, threshold: float) -> float:
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    return float(np.mean((s >= threshold) == y))


def best_threshold(scores, labels) -> float:
    """Threshold maximising accuracy on these pairs (midpoint between neighbouring scores).

    Among equally good thresholds the lowest (most accepting) one is returned; this tie rule
    reproduces the reference CFP numbers of DESIGN.md §2 exactly on CFP-FF.
    """
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # Accepting the top k pairs is possible for k = 0, n, and every k where the score changes.
    k = np.r_[0, np.flatnonzero(np.diff(s) != 0) + 1, s.size]
    tp = np.r_[0, np.cumsum(y)][k]
    correct = tp + ((~y).sum() - (k - tp))
    kb = k[np.flatnonzero(correct == correct.max())[-1]]
    if kb == 0:
        return float(np.nextafter(s[0], np.inf))
    if kb == s.size:
        return float(s[-1])
    return float((s[kb - 1] + s[kb]) / 2.0)


@dataclass(frozen=True)
class FoldAccuracy:
    """Accuracy of each fold at the threshold chosen on all the other folds."""

    folds: np.ndarray
    accuracies: np.ndarray
    thresholds: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        """Population standard deviation over folds (ddof=0, the usual LFW/CFP reporting)."""
        return float(self.accuracies.std())


def kfold_accuracy(scores, labels, folds) -> FoldAccuracy:
    """Leave-one-fold-out: choose the threshold on k-1 folds, measure on the held-out one."""
    s, y = _check(scores, labels)
    f = np.asarray(folds)
    if f.shape != s.shape:
        raise ValueError(f"folds must match scores in shape, got {f.shape} and {s.shape}")
    ids = np.unique(f)
    if ids.size < 2:
        raise ValueError("k-fold accuracy needs at least two folds")
    accs, ths = [], []
    for fid in ids:
        test = f == fid
        t = best_threshold(s[~test], y[~test])
        accs.append(accuracy(s[test], y[test], t))
        ths.append(t)
    return FoldAccuracy(folds=ids, accuracies=np.array(accs), thresholds=np.array(ths))


def histogram(scores, labels, bins: int = 50) -> dict:
    """Genuine and impostor score histograms on shared bin edges."""
    s, y = _check(scores, labels)
    edges = np.histogram_bin_edges(s, bins=bins)
    return {
        "edges": edges,
        "genuine": np.histogram(s[y], bins=edges)[0],
        "impostor": np.histogram(s[~y], bins=edges)[0],
    }


def verification_metrics(
    scores, labels, folds, far_targets: Sequence[float] = (1e-2, 1e-3)
) -> dict:
    """Everything we report for one protocol, as plain floats (rates in 0..1).

    ``accuracy`` is None when there is only one fold (no held-out threshold possible).
    """
    s, y = _check(scores, labels)
    f = np.asarray(folds)
    curve = roc(s, y)
    rate, eer_threshold = eer(curve)
    out: dict = {
        "pairs": int(s.size),
        "genuine_pairs": int(y.sum()),
        "impostor_pairs": int((~y).sum()),
        "accuracy": None,
        "eer": rate,
        "eer_threshold": eer_threshold,
        "auc": auc(curve),
        "tar_at_far": {},
        "genuine_scores": {"mean": float(s[y].mean()), "std": float(s[y].std())},
        "impostor_scores": {"mean": float(s[~y].mean()), "std": float(s[~y].std())},
    }
    if np.unique(f).size >= 2:
        kf = kfold_accuracy(s, y, f)
        out["accuracy"] = {
            "mean": kf.mean,
            "std": kf.std,
            "folds": [int(x) for x in kf.folds],
            "per_fold": [float(x) for x in kf.accuracies],
            "thresholds": [float(x) for x in kf.thresholds],
        }
    for target in far_targets:
        tar, threshold = tar_at_far(curve, target)
        out["tar_at_far"][f"{target:g}"] = {"tar": tar, "threshold": threshold}
    return out
