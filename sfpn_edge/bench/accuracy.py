"""CFP-FF / CFP-FP 10-fold accuracy and EER of every backend x precision (runs in a measure child).

Decoding and cropping 6,905 CFP images costs more than embedding them, so all configurations
share one pass of the evaluation runner: :class:`ConfigFanout` looks like one embedder to
:func:`sfpn_edge.evaluate.runner.embed_samples`, runs each chunk of crops through every
configuration (the same model files and settings as the latency rows) and returns their
descriptors side by side; they are split and scored per configuration afterwards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from sfpn_edge.errors import SfpnError

CROP = "fiducials"  # the reference protocol of DESIGN.md section 2 (landmark box + 30 %)
PROTOCOLS = ("FF", "FP")


class ConfigFanout:
    """Embeds crops with several (backend, precision) models at once; descriptors concatenated."""

    def __init__(self, model_dir: Path, configs: Sequence[Tuple[str, str]], threads: int):
        from sfpn_edge.backends import open_model
        from sfpn_edge.model_dir import ModelDir

        self.dir = ModelDir(model_dir)
        self.manifest = self.dir.manifest
        self.input_size = self.dir.input_size
        self.mean = self.dir.mean
        self.dim = self.dir.descriptor_dim
        self.models: List[tuple] = []
        self.unavailable: Dict[tuple, str] = {}
        for backend, precision in configs:
            try:
                path = self.dir.file(backend, precision)
                self.models.append(((backend, precision), open_model(path, backend, precision=precision,
                                                                     threads=threads)))
            except SfpnError as exc:
                self.unavailable[(backend, precision)] = str(exc)
        if not self.models:
            raise SfpnError("no configuration could be loaded for the accuracy run")
        self.descriptor_dim = self.dim * len(self.models)

    def embed(self, crops: np.ndarray, normalize: bool = False) -> np.ndarray:
        return np.concatenate([m.run(crops)[0].reshape(len(crops), self.dim) for _, m in self.models], axis=1)

    def split(self, vectors: np.ndarray, ok: np.ndarray) -> Dict[tuple, np.ndarray]:
        """Per configuration, its unit-norm descriptors (rows of unusable images stay zero)."""
        from sfpn_edge.kernels.scoring import l2_normalize

        out = {}
        for j, (key, _) in enumerate(self.models):
            block = np.zeros((len(vectors), self.dim), np.float32)
            block[ok] = l2_normalize(np.ascontiguousarray(vectors[ok, j * self.dim:(j + 1) * self.dim]))
            out[key] = block
        return out


def cfp(spec: dict) -> dict:
    """Per "backend/precision": ``cfp_ff_accuracy``/``cfp_fp_accuracy`` (+ ``_std``), ``cfp_*_eer``
    in percent, skipped pairs; or ``status``/``reason`` for a configuration that cannot run."""
    from sfpn_edge.evaluate.protocols import load_cfp, merge_samples
    from sfpn_edge.evaluate.runner import Embeddings, embed_samples, score_protocol

    fanout = ConfigFanout(Path(spec["model_dir"]), [tuple(c) for c in spec["configs"]], spec["threads"])
    protocols = [load_cfp(Path(spec["cfp_root"]), name) for name in PROTOCOLS]
    samples, pairs = merge_samples(protocols)
    joint = embed_samples(samples, fanout, crop=CROP, threads=spec["threads"])
    results = {f"{b}/{p}": {"status": "not available", "reason": r} for (b, p), r in fanout.unavailable.items()}
    for (backend, precision), vectors in fanout.split(joint.vectors, joint.ok).items():
        emb = Embeddings(joint.samples, vectors, joint.failures, joint.face_sources, joint.seconds)
        row = {"status": "ok"}
        for name, proto, proto_pairs in zip(PROTOCOLS, protocols, pairs):
            result = score_protocol(proto, proto_pairs, emb)
            key = f"cfp_{name.lower()}"
            row[f"{key}_accuracy"] = 100.0 * result.metrics["accuracy"]["mean"]
            row[f"{key}_accuracy_std"] = 100.0 * result.metrics["accuracy"]["std"]
            row[f"{key}_eer"] = 100.0 * result.metrics["eer"]
            row[f"{key}_skipped_pairs"] = result.skipped_pairs
        results[f"{backend}/{precision}"] = row
    return {"results": results, "images": len(samples), "unusable_images": len(joint.failures),
            "seconds": joint.seconds}
