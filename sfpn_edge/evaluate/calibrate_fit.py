"""The honest per-fold calibrated protocol (CFP), on the fitting in ``sfpn_edge.fitting``.

    results = evaluate_per_fold(protocols, pairs, emb, identities, method="lda")

The fitting itself (``fit``, ``plan``, ``operating_points``, ...) lives in the runtime module
``sfpn_edge.fitting`` (the self-calibrating gallery uses it too) and is re-exported here.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from sfpn_edge.calibration import Calibration
from sfpn_edge.fitting import (DEFAULT_DIMS, DEFAULT_METHOD, DEFAULT_PCA_DIM, DEFAULT_SHRINKAGE,  # noqa: F401
                               FARS, CalibrationError, Plan, check_data, fit, operating_points, plan,
                               threshold_at_far)


def evaluate_per_fold(protocols, pairs, emb, identities: np.ndarray, *, method: str,
                      dim: Optional[int] = None, pca_dim: Optional[int] = None,
                      shrinkage: Optional[float] = None, max_skipped: float = 0.01):
    """The honest calibrated protocol: for each test fold, the calibration (and the threshold) is
    fitted only on images of identities that appear in no pair of that fold.

    ``emb`` holds every image available for fitting plus the protocols' images (``pairs[i]``
    indexes it for ``protocols[i]``); ``identities[j]`` is the identity of image ``j``. Returns
    one ``ProtocolResult`` per protocol: pooled held-out scores for EER/AUC/TAR, and the accuracy
    of each fold at the threshold chosen on the other folds under that fold's calibration.
    """
    from dataclasses import replace

    from sfpn_edge.evaluate import metrics
    from sfpn_edge.evaluate.runner import ProtocolResult, score_protocol

    identities = np.asarray(identities)
    fits: Dict[frozenset, Calibration] = {}
    results = []
    for proto, p in zip(protocols, pairs):
        base = score_protocol(proto, p, emb, max_skipped)  # usable pairs, labels, folds, skip count
        usable = emb.ok[p[:, 0]] & emb.ok[p[:, 1]]
        ids_of_pair = identities[p[usable]]
        pooled = np.empty_like(base.scores)
        per_fold, thresholds = [], []
        fold_ids = np.unique(base.folds)
        if fold_ids.size < 2:
            raise CalibrationError(f"{proto.name}: the per-fold protocol needs at least two folds")
        for fold in fold_ids:
            test = base.folds == fold
            held_out = frozenset(np.unique(ids_of_pair[test]).tolist())
            if held_out not in fits:
                train = emb.ok & ~np.isin(identities, list(held_out))
                fits[held_out] = fit(emb.vectors[train], identities[train], method, dim, pca_dim=pca_dim,
                                     shrinkage=shrinkage)
            cal = fits[held_out]
            scored = score_protocol(proto, p, replace(emb, vectors=cal.apply(emb.vectors)), max_skipped)
            threshold = metrics.best_threshold(scored.scores[~test], scored.labels[~test])
            per_fold.append(metrics.accuracy(scored.scores[test], scored.labels[test], threshold))
            thresholds.append(threshold)
            pooled[test] = scored.scores[test]
        result = ProtocolResult(proto.name, pooled, base.labels, base.folds, base.skipped_pairs)
        result.metrics = metrics.verification_metrics(pooled, base.labels, base.folds)
        acc = np.array(per_fold)
        result.metrics["accuracy"] = {"mean": float(acc.mean()), "std": float(acc.std()),
                                      "folds": [int(f) for f in fold_ids], "per_fold": acc.tolist(),
                                      "thresholds": thresholds}
        some = next(iter(fits.values()))
        result.metrics["calibration_fits"] = {"folds": len(fold_ids), "images_per_fit":
                                              sorted({c.info["images"] for c in fits.values()}),
                                              "dim_out": some.dim_out, "pca_dim": some.info["pca_dim"],
                                              "shrinkage": some.info["shrinkage"]}
        results.append(result)
    return results


def cfp_identity(path) -> int:
    """CFP identity number from an image path ``.../Data/Images/NNN/<pose>/NN.jpg``."""
    from pathlib import Path

    name = Path(path).parent.parent.name
    if not name.isdigit():
        raise CalibrationError(f"{path}: not a CFP image path (expected Data/Images/NNN/pose/NN.jpg)")
    return int(name)


def evaluate_cfp_per_fold(root, protocols, embedder, *, method: str, dim: Optional[int] = None,
                          pca_dim: Optional[int] = None, shrinkage: Optional[float] = None,
                          max_skipped: float = 0.01, **embed_options):
    """``runner.evaluate`` with the per-fold calibration protocol on CFP: every CFP image (all
    500 identities, frontal and profile) is embedded once and is available for fitting, except
    the identities of the fold under test. Returns (embeddings, results) like ``evaluate``."""
    from sfpn_edge.evaluate.protocols import cfp_images, merge_samples
    from sfpn_edge.evaluate.runner import embed_samples

    plan(method, dim, pca_dim, shrinkage, embedder.descriptor_dim)  # fail before the slow part
    samples, pairs = merge_samples(protocols)
    known = {s.path for s in samples}
    samples = samples + [s for s in cfp_images(root) if s.path not in known]
    emb = embed_samples(samples, embedder, **embed_options)
    identities = np.array([cfp_identity(s.path) for s in samples])
    results = evaluate_per_fold(protocols, pairs, emb, identities, method=method, dim=dim, pca_dim=pca_dim,
                                shrinkage=shrinkage, max_skipped=max_skipped)
    return emb, results
