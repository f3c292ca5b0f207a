"""FaceEmbedder: aligned face crops in, descriptors out.

    embedder = FaceEmbedder(backend="openvino", precision="int8", threads=1)
    embedder = FaceEmbedder(model_dir, runtime=Runtime.resolve("auto", precision="int8"))
    desc = embedder.embed(crops, normalize=True)   # crops: float32 [N, 3, 113, 113], RGB minus mean

One instance may be shared by several threads. Large inputs are cut into chunks of
``batch_size`` faces: for this small model big batches are *slower* per face on CPU (the
activations of one face already fill the cache), so the default is the measured best per backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from sfpn_edge.errors import ModelError
from sfpn_edge.kernels.scoring import l2_normalize
from sfpn_edge.model_dir import ModelDir
from sfpn_edge.runtime import Runtime, make_runtime

# Best chunk size per (backend, precision), from benchmarks/test_bench_embed.py::test_batch_size
# at 1 thread on the 2-core Zen 5 box: fp32 and ORT int8 are flat or slower per face beyond 1-2
# (batch 32 is 20-60 % slower per face); OpenVINO int8 gains ~15 % at 4-8. Others: 1.
BEST_BATCH = {("openvino", "int8"): 4}


class FaceEmbedder:
    """SqueezeFacePoseNet descriptors from one model directory on one runtime.

    ``model_dir``: a path or ``ModelDir`` (None: the cache's default model); ``runtime``: a
    ``Runtime``, or build one from ``backend``, ``precision``, ``device``, ``threads``, ``cache_dir``
    (backend and precision default to ``auto``: see ``sfpn_edge.runtime.make_runtime``).
    """

    def __init__(
        self,
        model_dir: Union[str, Path, ModelDir, None] = None,
        backend: Optional[str] = None,
        precision: Optional[str] = None,
        device: Optional[str] = None,
        threads: Optional[int] = None,
        *,
        batch_size: Optional[int] = None,
        cache_dir: Optional[Union[str, Path]] = None,
        runtime: Optional[Runtime] = None,
    ):
        self.dir = ModelDir.of(model_dir)
        self.model_dir, self.manifest = self.dir.path, self.dir.manifest
        self.input_size, self.mean, self.descriptor_dim = self.dir.input_size, self.dir.mean, self.dir.descriptor_dim
        self.runtime = make_runtime(runtime, backend, precision, device, threads, cache_dir,
                                    int8_gate=self.dir.int8_gate())
        rt = self.runtime
        path = self.dir.file(rt.backend, rt.precision, rt.device)
        self.model = rt.open(path)
        self._check_model()
        static_batch = self.model.inputs[0].shape[0]
        if batch_size is None:
            batch_size = static_batch or BEST_BATCH.get((rt.backend, rt.precision), 1)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if static_batch is not None and batch_size != static_batch:
            raise ValueError(f"{path.name} has a static batch of {static_batch}; batch_size must match")
        self.batch_size = batch_size
        self._static_batch = static_batch

    def _check_model(self) -> None:
        h, w = self.input_size
        name = self.model.path.name
        if len(self.model.inputs) != 1 or len(self.model.output_names) != 1:
            raise ModelError(f"{name}: expected one input and one output, found "
                             f"{self.model.input_names} -> {self.model.output_names}")
        spec = self.model.inputs[0]
        if spec.dtype != np.float32 or len(spec.shape) != 4 or spec.shape[1:] not in ((3, h, w), (None,) * 3):
            raise ModelError(f"{name}: input {spec.name} is {spec.dtype} {spec.shape_text}, but the manifest "
                             f"says float32 [N, 3, {h}, {w}] (model file and manifest do not match)")

    @property
    def backend(self) -> str:
        return self.model.name

    def describe(self) -> dict:
        return {**self.model.describe(), "batch_size": self.batch_size, "model_dir": str(self.model_dir),
                "runtime": self.runtime.as_dict()}

    def embed(self, batch: np.ndarray, normalize: bool = False) -> np.ndarray:
        """Descriptors float32 [N, D] for crops float32 [N, 3, H, W] (L2-normalised on request)."""
        batch = self._check_batch(batch)
        out = np.empty((batch.shape[0], self.descriptor_dim), np.float32)
        for start in range(0, batch.shape[0], self.batch_size):
            chunk = batch[start:start + self.batch_size]
            out[start:start + len(chunk)] = self._run(chunk)
        return l2_normalize(out) if normalize and len(out) else out

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        if self._static_batch is not None and n < self._static_batch:
            chunk = np.concatenate([chunk, np.zeros((self._static_batch - n,) + chunk.shape[1:], chunk.dtype)])
        (desc,) = self.model.run(chunk)
        desc = desc.reshape(len(chunk), -1)[:n]
        if desc.shape[1] != self.descriptor_dim:
            raise ModelError(f"{self.model.path.name} gives {desc.shape[1]}-d descriptors, "
                             f"the manifest says {self.descriptor_dim}")
        return desc

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        h, w = self.input_size
        if not isinstance(batch, np.ndarray):
            raise ValueError(f"expected a numpy array of crops, got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise ValueError(f"crops must be float32 (RGB minus mean), got {batch.dtype}")
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise ValueError(f"crops must have shape [N, 3, {h}, {w}], got {batch.shape}")
        if not np.isfinite(batch).all():
            raise ValueError("crops contain NaN or infinity")
        return np.ascontiguousarray(batch)
