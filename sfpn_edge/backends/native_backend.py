"""Native backend: the int8 plan (``model_native_int8.npz``) on sfpn-edge's own CPU kernels.

No ONNX Runtime or OpenVINO in the loop: a SqueezeNet-style graph quantized per channel runs as
uint8 NHWC ops (``sfpn_edge.kernels.engine``), on AVX-512 VNNI where the CPU has it, else on
portable C loops (correct everywhere, fast only with VNNI). Each face is split over ``threads``
threads; descriptors are identical for any thread count.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from sfpn_edge.backends.base import BackendBase, TensorSpec, check_model_file
from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.kernels.engine import MAX_THREADS, Int8Engine, cpu_has_vnni

PLAN_FORMAT = "sfpn-native-int8"
PLAN_VERSION = 1


def available_devices() -> list:
    return ["CPU"]


def load_plan(path: Path) -> tuple:
    """(plan dict, arrays dict) from a plan file, or ModelError saying what is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path.name} is not a readable plan file: {exc}") from None
    raw = arrays.pop("plan", None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelError(f"{path.name}: no 'plan' record (uint8 JSON) in the file")
    try:
        plan = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path.name}: the plan record is not JSON ({exc})") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ModelError(f"{path.name}: not a {PLAN_FORMAT} plan")
    version = plan.get("version")
    if version != PLAN_VERSION:
        raise ModelError(f"{path.name}: plan version {version!r}; this sfpn-edge reads version {PLAN_VERSION} "
                         "(convert the model again with this version)")
    return plan, arrays


class NativeBackend(BackendBase):
    name = "native"

    def __init__(self, path: Path, *, device: str = "CPU", precision: str = "int8",
                 threads: int = 1, cache_dir: Optional[Path] = None, portable: bool = False):
        path = check_model_file(path, (".npz",))
        if device.upper() != "CPU":
            raise SfpnError(f"the native backend runs on the CPU only, not {device!r}")
        super().__init__(path, "CPU", precision, threads)
        plan, arrays = load_plan(path)
        try:
            self.engine = Int8Engine(plan, arrays, portable=portable,
                                     threads=min(threads, MAX_THREADS))
        except ValueError as exc:
            raise ModelError(f"{path.name}: invalid plan: {exc}") from None
        self.inputs = [TensorSpec("input", np.dtype(np.float32), (None,) + self.engine.input_shape)]
        self.output_names = ["descriptor"]

    def run(self, *inputs: np.ndarray) -> list:
        (x,) = self.check_inputs(inputs)
        return [self.engine.run(x)]

    def describe(self) -> dict:
        return {**super().describe(), "engine_threads": self.engine.threads, "isa": self.engine.isa,
                "cpu_has_vnni": cpu_has_vnni()}
