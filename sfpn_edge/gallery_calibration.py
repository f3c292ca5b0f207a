"""The self-calibrating gallery's fitting policy: which calibration its own enrolment photos support.

    cal = fit_gallery(vectors, names, model_sha256=sha)   # None: too few photos, stay raw

Stages (never fitted on probes, only on the stored enrolment embeddings):

* fewer than ``MIN_PHOTOS`` photos: none (raw cosine);
* ``MIN_PHOTOS`` or more: centring on their mean (``sfpn_edge.fitting``, no labels needed);
* LDA with shrinkage once ``MIN_LDA_DIM + 1`` identities have 2 or more photos: LDA to ``d``
  dimensions needs ``d + 1`` such identities, so ``d = min(LDA_DIM, repeated identities - 1)``
  (and below the PCA dimensions, themselves below the photo count).

Thresholds are cross-fitted (``fitting.operating_points``: identities in 5 groups, each group's
photo pairs scored under the calibration this policy fits on the others) when there are at least
``MIN_GENUINE_PAIRS`` genuine pairs and 1/FAR impostor pairs; otherwise the calibration has no
operating points and the caller's (built-in) table applies to raw scores.

Bounded cost: the fit uses at most ``FIT_MAX_PHOTOS`` photos and the thresholds at most
``THRESHOLD_MAX_PHOTOS`` (whole identities, a fixed pseudo-random choice), so a refit costs the
same at 10k identities as at 2k (README, gallery section, for the measurement).
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

from sfpn_edge import fitting
from sfpn_edge.calibration import Calibration

MIN_PHOTOS = 50
MIN_LDA_DIM = 16
LDA_DIM = fitting.DEFAULT_DIMS["lda"]
PCA_DIM = fitting.DEFAULT_PCA_DIM
SHRINKAGE = fitting.DEFAULT_SHRINKAGE["lda"]
MIN_GENUINE_PAIRS = 50
THRESHOLD_GROUPS = 5
FIT_MAX_PHOTOS = 20000
THRESHOLD_MAX_PHOTOS = 5000
SOURCE = "the gallery's own enrolment photos"
PROTOCOL = "gallery photo pairs"


def choose(n_photos: int, labels: np.ndarray, descriptor_dim: int) -> Optional[fitting.Plan]:
    """The plan ``n_photos`` photos with identity ``labels`` support (None: stay raw)."""
    if n_photos < MIN_PHOTOS:
        return None
    _, counts = np.unique(labels, return_counts=True)
    repeated = int((counts >= 2).sum())
    pca_dim = min(PCA_DIM, n_photos - 1, descriptor_dim)
    dim = min(LDA_DIM, repeated - 1, pca_dim)
    if dim < MIN_LDA_DIM:
        return fitting.plan("center", descriptor_dim=descriptor_dim)
    return fitting.plan("lda", dim, pca_dim, SHRINKAGE, descriptor_dim)


def subsample(labels: np.ndarray, limit: int) -> np.ndarray:
    """Row indices of whole identities (a fixed pseudo-random order) until ``limit`` rows."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    ids, codes = np.unique(labels, return_inverse=True)
    order = np.random.default_rng(0).permutation(len(ids))
    counts = np.bincount(codes, minlength=len(ids))[order]
    keep = order[np.cumsum(counts) <= limit]
    return np.flatnonzero(np.isin(codes, keep))


def fit_gallery(vectors: np.ndarray, labels: Sequence[str], *, model_sha256: str,
                info: Optional[dict] = None) -> Optional[Calibration]:
    """The calibration for a gallery's stored embeddings [N, D] (unit rows) and their identity
    names; None below ``MIN_PHOTOS``. Its ``info`` holds the provenance, its operating points the
    cross-fitted thresholds (empty when the pairs do not suffice, with the reason in ``info``)."""
    start = time.perf_counter()
    labels = np.asarray(labels)
    plan = choose(len(vectors), labels, vectors.shape[1])
    if plan is None:
        return None
    rows = subsample(labels, FIT_MAX_PHOTOS)
    x, y = vectors[rows], labels[rows]
    plan = choose(len(x), y, x.shape[1])
    counts = np.unique(labels, return_counts=True)[1]
    record = {"source": SOURCE, "model_sha256": model_sha256, "gallery_photos": int(len(vectors)),
              "gallery_identities": int(len(counts)), "identities_with_2_photos": int((counts >= 2).sum()),
              **(info or {})}
    try:
        cal = fitting.fit(x, y, plan.method, plan.dim, pca_dim=plan.pca_dim, shrinkage=plan.shrinkage, info=record)
    except fitting.CalibrationError as exc:  # e.g. no variation within identities: centring still works
        cal = fitting.fit(x, y, "center", info={**record, "lda_refused": str(exc)})
    points, thresholds = _thresholds(vectors, labels)
    cal.info.update(thresholds=thresholds, fit_seconds=round(time.perf_counter() - start, 3))
    return Calibration(cal.method, cal.mean, cal.projection, cal.info, points)


def _fit_fold(x: np.ndarray, y: np.ndarray) -> Calibration:
    """What the gallery would fit on one cross-fitting fold's photos (centring at the least)."""
    plan = choose(len(x), y, x.shape[1]) or fitting.plan("center", descriptor_dim=x.shape[1])
    return fitting.fit(x, y, plan.method, plan.dim, pca_dim=plan.pca_dim, shrinkage=plan.shrinkage)


def _thresholds(vectors: np.ndarray, labels: np.ndarray):
    """(operating point entries, what they rest on or why there are none)."""
    rows = subsample(labels, THRESHOLD_MAX_PHOTOS)
    x, y = vectors[rows], labels[rows]
    _, counts = np.unique(y, return_counts=True)
    genuine = int((counts * (counts - 1) // 2).sum())
    if genuine < MIN_GENUINE_PAIRS:
        return [], {"source": "built-in", "reason": f"{genuine} genuine photo pairs, own thresholds need "
                                                    f"{MIN_GENUINE_PAIRS}"}
    try:
        points, pairs = fitting.operating_points(x, y, groups=THRESHOLD_GROUPS, fit_fold=_fit_fold)
    except fitting.CalibrationError as exc:
        return [], {"source": "built-in", "reason": str(exc)}
    entries = [{**p, "protocol": PROTOCOL, **pairs} for p in points]
    return entries, {"source": "own", "photos": int(len(x)), **pairs}
