"""Fitting descriptor calibrations and their operating thresholds (numpy only: the runtime's
self-calibrating gallery and ``sfpn-edge calibrate`` share it).

    cal = fit(desc, labels, "lda")                   # desc: L2-normalised [N, D]; labels: identity per row
    points = operating_points(desc, labels, method="lda")

Methods (all start by subtracting the mean descriptor of the calibration faces):

* ``center``: nothing more (no labels needed).
* ``pca``: project on the top ``dim`` principal axes (no labels needed).
* ``wccn``: PCA to ``pca_dim``, then whiten the within-identity covariance.
* ``lda``: PCA to ``pca_dim``, then the ``dim`` discriminant axes (eigenvectors of Sw^-1 Sb, unit
  length) that best separate identities.

Covariances are shrunk towards a scaled identity, ``(1 - s) S + s tr(S)/d I``, so a singular
within-identity covariance (few images per person) still gives finite, well-conditioned maps.
Defaults come from the CFP measurements in the README (calibration section).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sfpn_edge.calibration import METHODS, Calibration, l2n
from sfpn_edge.errors import SfpnError

DEFAULT_METHOD = "lda"
DEFAULT_DIMS = {"pca": 256, "wccn": 256, "lda": 128}
DEFAULT_PCA_DIM = 256
# Measured on CFP-FP (README): LDA-128 gains ~0.4 points from 0.1 to 0.5; WCCN as in the issue table.
DEFAULT_SHRINKAGE = {"wccn": 0.1, "lda": 0.5}
FARS = (1e-2, 1e-3, 1e-4)
EIG_FLOOR = 1e-9  # relative floor on covariance eigenvalues (only bites at shrinkage 0)


class CalibrationError(SfpnError):
    """Not enough (or unusable) calibration data for the requested method and dimensions."""


@dataclass(frozen=True)
class Plan:
    """A checked request: method, output dim, PCA dim (labelled methods) and shrinkage."""

    method: str
    dim: Optional[int]
    pca_dim: Optional[int]
    shrinkage: float


def plan(method: str, dim: Optional[int] = None, pca_dim: Optional[int] = None,
         shrinkage: Optional[float] = None, descriptor_dim: int = 1000) -> Plan:
    """Resolve defaults (None = default) and check the parameters (not the data) of a fit."""
    shrinkage = DEFAULT_SHRINKAGE.get(method, 0.0) if shrinkage is None else float(shrinkage)
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= shrinkage <= 1.0:
        raise CalibrationError(f"shrinkage must be in [0, 1], got {shrinkage}")
    if method == "center":
        if dim not in (None, descriptor_dim):
            raise CalibrationError("--dim does not apply to 'center' (it keeps all dimensions); use pca or lda")
        return Plan(method, None, None, shrinkage)
    if method == "pca":
        dim = DEFAULT_DIMS["pca"] if dim is None else dim
        pca_dim = None
    else:
        pca_dim = DEFAULT_PCA_DIM if pca_dim is None else pca_dim
        dim = (pca_dim if method == "wccn" else DEFAULT_DIMS["lda"]) if dim is None else dim
        if method == "wccn" and dim != pca_dim:
            raise CalibrationError(f"wccn keeps the PCA dimensions: --dim {dim} must equal --pca-dim {pca_dim}")
        if not 1 <= pca_dim <= descriptor_dim:
            raise CalibrationError(f"--pca-dim must be in 1..{descriptor_dim}, got {pca_dim}")
    limit = pca_dim or descriptor_dim
    if not 1 <= dim <= limit:
        raise CalibrationError(f"--dim for {method} must be in 1..{limit}, got {dim}")
    return Plan(method, dim, pca_dim, shrinkage)


def check_data(p: Plan, n_images: int, labels: Optional[np.ndarray]) -> None:
    """CalibrationError saying how many images / identities ``p`` needs when there are too few."""
    if p.method in ("wccn", "lda") and labels is None:
        raise CalibrationError(f"{p.method} needs identity labels (--labels FILE, or one folder per identity)")
    need_images = 2 if p.method == "center" else (p.pca_dim or p.dim) + 1
    if n_images < need_images:
        what = "centring" if p.method == "center" else f"{p.method} with {(p.pca_dim or p.dim)} PCA dimensions"
        raise CalibrationError(f"{what} needs at least {need_images} face images, got {n_images}"
                               + ("" if p.method == "center" else "; lower --dim/--pca-dim or add images"))
    if p.method in ("center", "pca"):
        return
    _, counts = np.unique(labels, return_counts=True)
    repeated = int((counts >= 2).sum())
    if repeated < 2:
        raise CalibrationError(f"{p.method} needs at least 2 identities with 2 or more images each, got {repeated}")
    if p.method == "lda" and len(counts) < p.dim + 1:
        raise CalibrationError(f"lda to {p.dim} dimensions needs at least {p.dim + 1} identities, got "
                               f"{len(counts)}; lower --dim or add identities")


def fit(desc: np.ndarray, labels: Optional[Sequence] = None, method: str = DEFAULT_METHOD,
        dim: Optional[int] = None, *, pca_dim: Optional[int] = None, shrinkage: Optional[float] = None,
        info: Optional[Dict[str, Any]] = None) -> Calibration:
    """Fit a calibration on descriptors [N, D] (normalised here) and identity ``labels`` [N]."""
    x = np.asarray(desc, np.float64)
    if x.ndim != 2 or not x.size:
        raise CalibrationError(f"expected descriptors [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise CalibrationError("descriptors contain NaN or infinity")
    y = None if labels is None else _codes(labels, len(x))
    p = plan(method, dim, pca_dim, shrinkage, x.shape[1])
    check_data(p, len(x), y)
    x = l2n(x).astype(np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    projection = None
    if p.method == "pca":
        projection = _pca(xc, p.dim)
    elif p.method in ("wccn", "lda"):
        pca = _pca(xc, p.pca_dim)
        z = xc @ pca
        white = _inv_sqrt(_shrink(_within(z, y), p.shrinkage))
        if p.method == "wccn":
            projection = pca @ white
        else:  # eigenvectors of Sw^-1 Sb, each scaled to unit length (not whitened: measured better)
            axes = white @ _top_eig(_between(z @ white, y), p.dim)
            projection = pca @ (axes / np.linalg.norm(axes, axis=0))
    counts = np.unique(y, return_counts=True)[1] if y is not None else None
    record = {
        "images": int(len(x)),
        "identities": None if counts is None else int(len(counts)),
        "images_per_identity": None if counts is None else round(float(counts.mean()), 2),
        "pca_dim": p.pca_dim,
        "shrinkage": p.shrinkage if p.method in ("wccn", "lda") else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(info or {}),
    }
    return Calibration(p.method, mean.astype(np.float32),
                       None if projection is None else np.ascontiguousarray(projection, np.float32), record)


def _codes(labels: Sequence, n: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise CalibrationError(f"{len(arr)} labels for {n} descriptors")
    return np.unique(arr, return_inverse=True)[1].ravel()


def _pca(xc: np.ndarray, d: int) -> np.ndarray:
    """Top ``d`` principal axes [D, d] of centred rows ``xc`` (sign fixed: largest entry positive).

    With fewer rows than dimensions the axes come from the N x N Gram matrix (same axes, an
    eigendecomposition of the smaller side: a 60-photo gallery does not pay for 1000 x 1000)."""
    if len(xc) < xc.shape[1]:
        vals, vecs = np.linalg.eigh(xc @ xc.T)
        axes = xc.T @ vecs[:, ::-1][:, :d]
        axes /= np.maximum(np.linalg.norm(axes, axis=0), 1e-300)
    else:
        vals, vecs = np.linalg.eigh(xc.T @ xc / max(len(xc) - 1, 1))
        axes = vecs[:, ::-1][:, :d]
    return axes * np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(d)])


def _within(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pooled within-identity covariance (identities with one image contribute nothing)."""
    k = y.max() + 1
    sums = np.zeros((k, z.shape[1]))
    np.add.at(sums, y, z)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    zc = z - (sums / counts[:, None])[y]
    dof = max(len(z) - int((counts > 0).sum()), 1)
    return zc.T @ zc / dof


def _between(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Covariance of the identity means, each weighted by its number of images."""
    k = y.max() + 1
    sums = np.zeros((k, z.shape[1]))
    np.add.at(sums, y, z)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    means = sums / counts[:, None] - z.mean(axis=0)
    return (means * counts[:, None]).T @ means / len(z)


def _shrink(cov: np.ndarray, s: float) -> np.ndarray:
    d = len(cov)
    scale = np.trace(cov) / d
    if not scale > 0:
        raise CalibrationError("the descriptors show no variation within identities (identical images?)")
    return (1.0 - s) * cov + s * scale * np.eye(d)


def _inv_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric inverse square root; eigenvalues floored so a singular matrix stays finite."""
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, EIG_FLOOR * max(vals.max(), 1e-300))
    return (vecs / np.sqrt(vals)) @ vecs.T


def _top_eig(sym: np.ndarray, d: int) -> np.ndarray:
    vals, vecs = np.linalg.eigh(sym)
    return vecs[:, ::-1][:, :d]


# ----------------------------------------------------------------------------- thresholds


def operating_points(desc: np.ndarray, labels: Sequence, *, method: str = DEFAULT_METHOD,
                     dim: Optional[int] = None, pca_dim: Optional[int] = None,
                     shrinkage: Optional[float] = None, fars: Sequence[float] = FARS,
                     groups: int = 5, fit_fold: Optional[Callable[[np.ndarray, np.ndarray], Calibration]] = None,
                     ) -> Tuple[List[Dict[str, float]], Dict[str, int]]:
    """Thresholds at ``fars`` from labelled pairs, cross-fitted so they are not optimistic.

    Identities are split into ``groups``; each group's pairs (all genuine and impostor pairs
    among its images) are scored under a calibration fitted on the other groups, and the pooled
    scores give the thresholds. A FAR needs at least 1/FAR impostor pairs; smaller FARs are left
    out. Returns the points (``far``, ``threshold``, ``tar``) and the pair counts. ``fit_fold``
    (descriptors, labels) -> Calibration replaces the fixed method for each group's fit.
    """
    x = l2n(np.asarray(desc, np.float64))
    y = _codes(labels, len(x))
    ids = np.unique(y)
    if len(ids) < 2 * groups:
        raise CalibrationError(f"thresholds need at least {2 * groups} identities (cross-fitted over "
                               f"{groups} groups), got {len(ids)}")
    group_of = np.random.default_rng(0).permutation(len(ids)) % groups
    genuine, impostor = [], []
    for g in range(groups):
        test = group_of[y] == g
        cal = (fit(x[~test], y[~test], method, dim, pca_dim=pca_dim, shrinkage=shrinkage) if fit_fold is None
               else fit_fold(x[~test], y[~test]))
        z, yt = cal.apply(x[test]), y[test]
        scores = z @ z.T
        iu = np.triu_indices(len(z), 1)
        same = yt[iu[0]] == yt[iu[1]]
        genuine.append(scores[iu][same])
        impostor.append(scores[iu][~same])
    gen, imp = np.concatenate(genuine), np.concatenate(impostor)
    if not len(gen):
        raise CalibrationError("no genuine pairs: thresholds need several images per identity")
    points = []
    for far in sorted(fars, reverse=True):
        if len(imp) * far < 1:
            continue
        threshold = threshold_at_far(imp, far)
        points.append({"far": float(far), "threshold": threshold, "tar": float((gen >= threshold).mean())})
    if not points:
        raise CalibrationError(f"only {len(imp)} impostor pairs: FAR {max(fars):g} needs {int(np.ceil(1 / max(fars)))}")
    return points, {"genuine_pairs": int(len(gen)), "impostor_pairs": int(len(imp))}


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Lowest threshold whose false-accept rate (score >= threshold) does not exceed ``far``."""
    s = np.sort(np.asarray(impostor, np.float64))[::-1]
    allowed = int(np.floor(far * len(s)))  # this many impostors may be accepted
    if allowed >= len(s):
        return float(s[-1])
    # accept the top ``allowed`` (ties at the cut-off must all be rejected)
    return float(np.nextafter(s[allowed], np.inf))
