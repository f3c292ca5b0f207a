"""The int8 accuracy gate: how closely each int8 file follows fp32, measured when it is written.

``--precision auto`` runs a backend's int8 file only when its gate passed (``ModelDir.int8_gate``).
The gate is the mean cosine between the file's descriptors and fp32 ONNX Runtime's on up to
``GATE_CROPS`` of the calibration crops, at least ``MIN_MEAN_COSINE``. It is a rule checked on
every machine that writes int8 files, not a CFP number: the dataset-free int8 files measure
0.9987-0.9994 here and score CFP within 0.5 point of fp32 (README, the defaults); a damaged plan
(tests/test_quantize.py negates one layer's weights) falls below it, but clipping that costs CFP
accuracy on other faces may not (README), so accuracy itself is measured on CFP, not here. A backend whose
library is not installed where the files are written is recorded as not measured: auto passes it by.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from sfpn_edge import models
from sfpn_edge.backends import registry
from sfpn_edge.errors import SfpnError

KEY = models.INT8_GATE_KEY
MIN_MEAN_COSINE = 0.995
GATE_CROPS = 48


def measure(model_dir: Path, crops: np.ndarray) -> dict:
    """The gate entry for every int8 file in ``model_dir``'s manifest, on ``crops`` [N, 3, h, w]."""
    from sfpn_edge.embed import FaceEmbedder

    manifest = models.load_manifest(model_dir)
    picked = crops[np.unique(np.linspace(0, len(crops) - 1, min(GATE_CROPS, len(crops))).astype(int))]
    reference = FaceEmbedder(model_dir, "onnxruntime", "fp32", threads=1).embed(picked, normalize=True)
    backends: Dict[str, dict] = {}
    for spec in registry.specs():
        if "int8" not in spec.precisions or "int8" not in manifest["files"].get(spec.files or spec.name, {}):
            continue
        try:
            got = FaceEmbedder(model_dir, spec.name, "int8", threads=1).embed(picked, normalize=True)
        except (SfpnError, ImportError) as exc:
            backends[spec.name] = {"passed": False, "reason": f"not measured: {exc}"}
            continue
        cosine = np.sum(got * reference, axis=1)
        mean = float(cosine.mean())
        name = manifest["files"][spec.files or spec.name]["int8"]
        backends[spec.name] = {"mean_cosine": round(mean, 5), "min_cosine": round(float(cosine.min()), 5),
                               "passed": bool(mean >= MIN_MEAN_COSINE), "sha256": models.file_digests(manifest, name)}
    return {"rule": f"mean cosine to fp32 ONNX Runtime descriptors >= {MIN_MEAN_COSINE} on "
                    f"{len(picked)} calibration crops", "backends": backends}


def record(model_dir: Path, crops: np.ndarray) -> dict:
    """Measure the gate and store it in the manifest; returns the entry."""
    model_dir = Path(model_dir)
    entry = measure(model_dir, crops)
    manifest = models.load_manifest(model_dir)
    manifest[KEY] = entry
    models.write_manifest(model_dir, manifest).chmod(0o644)
    return entry
