"""The Backend protocol and the input checks every implementation shares."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from sfpn_edge.errors import ModelError

MYRIAD_GONE = (
    "MYRIAD (Intel Movidius VPU) support was removed from OpenVINO after 2022.3 LTS; "
    "the current Intel VPU is the NPU device (target 'vpu')"
)


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, numpy dtype and shape (``None`` for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple

    def check(self, array: np.ndarray) -> np.ndarray:
        """Return ``array`` as a C-contiguous array this input accepts, or raise ValueError."""
        if not isinstance(array, np.ndarray):
            raise ValueError(f"input {self.name!r}: expected a numpy array, got {type(array).__name__}")
        if array.dtype != self.dtype:
            raise ValueError(f"input {self.name!r}: expected dtype {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.shape):
            raise ValueError(
                f"input {self.name!r}: expected {len(self.shape)} dimensions {self.shape_text}, "
                f"got shape {array.shape}"
            )
        for want, got in zip(self.shape, array.shape):
            if (want is not None and want != got) or got == 0:
                raise ValueError(f"input {self.name!r}: expected shape {self.shape_text}, got {array.shape}")
        return np.ascontiguousarray(array)

    @property
    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@runtime_checkable
class Backend(Protocol):
    """A loaded model ready to run on one device.

    ``run`` takes one array per input (in ``input_names`` order) and returns one array per
    output (in ``output_names`` order). Implementations are safe to call from several threads.
    """

    name: str
    device: str
    precision: str
    path: Path
    inputs: Sequence[TensorSpec]
    output_names: list

    @property
    def input_names(self) -> list: ...

    def run(self, *inputs: np.ndarray) -> list: ...

    def describe(self) -> dict: ...


class BackendBase:
    """Shared plumbing: input checking and the common part of ``describe``."""

    name = ""

    def __init__(self, path: Path, device: str, precision: str, threads: int):
        check_precision(self.name, precision)
        self.path = Path(path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.inputs: list = []
        self.output_names: list = []
        self.cache_hit: Optional[bool] = None  # None: no cache in use

    @property
    def input_names(self) -> list:
        return [spec.name for spec in self.inputs]

    def _check_io(self) -> None:
        if not self.inputs or not self.output_names:
            raise ModelError(f"{self.path.name}: the model has no inputs or no outputs")

    def check_inputs(self, arrays: Sequence[np.ndarray]) -> list:
        if len(arrays) != len(self.inputs):
            raise ValueError(
                f"{self.path.name} takes {len(self.inputs)} input(s) {self.input_names}, got {len(arrays)}"
            )
        return [spec.check(a) for spec, a in zip(self.inputs, arrays)]

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
            "model": str(self.path),
            "inputs": {s.name: {"dtype": str(s.dtype), "shape": list(s.shape)} for s in self.inputs},
            "outputs": list(self.output_names),
            "cache_hit": self.cache_hit,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path.name} on {self.device} ({self.precision})>"


def check_model_file(path: Path, suffixes: tuple) -> Path:
    """Raise ModelError unless ``path`` is an existing file with one of ``suffixes``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if path.suffix.lower() not in suffixes:
        raise ModelError(f"{path.name}: expected a {' or '.join(suffixes)} file")
    return path


def check_precision(backend: str, precision: str, why: str = "") -> None:
    """SfpnError unless the registry says ``backend`` runs ``precision`` (``why`` explains a refusal)."""
    from sfpn_edge.backends.registry import get

    get(backend).check_precision(precision, why)
