"""Native backend: the int8 plan (``model_native_int8.npz``) on sfpn-edge's own CPU kernels.

No ONNX Runtime or OpenVINO in the loop: a SqueezeNet-style graph quantized per channel runs as
uint8 NHWC ops (``sfpn_edge.kernels.engine``), on AVX-512 VNNI where the CPU has it, else on
portable C loops (correct everywhere, fast only with VNNI). Each face is split over ``threads``
threads; descriptors are identical for any thread count.

The plan file is read member by member, and nothing is allocated before it is checked: member
names (``plan``, ``op<i>.w`` / ``.scale`` / ``.bias``), each ``.npy`` header's dtype, order and
shape against the size the archive declares, per-member and total size caps (a zip bomb is
refused from its directory, not decompressed), CRC; the JSON plan record has size and depth caps.
"""
from __future__ import annotations

import math
import re
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from sfpn_edge import bounded_read
from sfpn_edge.backends.base import BackendBase, TensorSpec, check_model_file
from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.kernels.engine import MAX_THREADS, Int8Engine, cpu_has_vnni

PLAN_FORMAT = "sfpn-native-int8"
PLAN_VERSION = 1
PLAN_MAX_BYTES = 1 << 20      # the JSON plan record (the DWC model's: ~10 KB)
PLAN_MAX_DEPTH = 16
ARRAY_MAX_BYTES = 32 << 20    # any one weight array, decompressed
TOTAL_MAX_BYTES = 64 << 20    # all members together (the DWC model's plan: under 1 MB)
MAX_MEMBERS = 1024
_DTYPES = {"plan": np.dtype(np.uint8), "w": np.dtype(np.int8), "scale": np.dtype(np.float32),
           "bias": np.dtype(np.float32)}
_MEMBER_NAME = re.compile(r"plan\.npy|op\d{1,4}\.(w|scale|bias)\.npy")


def available_devices() -> list:
    return ["CPU"]


def load_plan(path: Path) -> tuple:
    """(plan dict, arrays dict) from a plan file, or ModelError saying what is wrong with it."""
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = _read_members(archive)
    except (OSError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelError(f"{path.name} is not a readable plan file: {exc}") from None
    raw = arrays.pop("plan", None)
    if raw is None or raw.ndim != 1:
        raise ModelError(f"{path.name}: no 'plan' record (uint8 JSON) in the file")
    try:
        plan = bounded_read.parse_json(raw.tobytes(), max_bytes=PLAN_MAX_BYTES, max_depth=PLAN_MAX_DEPTH)
    except ValueError as exc:
        raise ModelError(f"{path.name}: the plan record is not JSON within limits ({exc})") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ModelError(f"{path.name}: not a {PLAN_FORMAT} plan")
    version = plan.get("version")
    if version != PLAN_VERSION:
        raise ModelError(f"{path.name}: plan version {version!r}; this sfpn-edge reads version {PLAN_VERSION} "
                         "(convert the model again with this version)")
    ops = plan.get("ops")
    for i, op in enumerate(ops if isinstance(ops, list) else []):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            kind = op.get("op") if isinstance(op, dict) else op
            raise ModelError(f"{path.name}: invalid plan: op {i} must be an object whose 'op' is a string, "
                             f"got {type(kind).__name__} {str(kind)[:40]!r}")
    return plan, arrays


def _read_members(archive: zipfile.ZipFile) -> dict:
    """Every member as an array, each checked against the archive's declared sizes first."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ValueError(f"{len(members)} members (limit {MAX_MEMBERS})")
    total = sum(info.file_size for info in members)
    if total > TOTAL_MAX_BYTES:
        raise ValueError(f"members declare {total:,} bytes decompressed (limit {TOTAL_MAX_BYTES:,})")
    arrays: dict = {}
    for info in members:
        match = _MEMBER_NAME.fullmatch(info.filename)
        if match is None:
            raise ValueError(f"unexpected member {info.filename[:60]!r}")
        key, kind = info.filename[:-4], match.group(1) or "plan"
        limit = PLAN_MAX_BYTES if kind == "plan" else ARRAY_MAX_BYTES
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):  # what np.savez writes
            raise ValueError(f"member {key!r} uses zip compression method {info.compress_type}")
        if key in arrays:
            raise ValueError(f"member {key!r} appears twice")
        if info.file_size > limit + 4096:  # the .npy header is at most a few hundred bytes
            raise ValueError(f"member {key!r} declares {info.file_size:,} bytes (limit {limit:,})")
        arrays[key] = _read_array(archive, info, key, _DTYPES[kind])
    return arrays


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, dtype: np.dtype) -> np.ndarray:
    """One ``.npy`` member whose header must promise ``dtype`` in C order and a shape that fills
    exactly the declared size; its data is read into an array allocated only after those checks
    (the engine checks each array's exact shape against the plan)."""
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, found = read_header(fh)
        if found != dtype or fortran:
            raise ValueError(f"member {key!r} is {'Fortran-order ' if fortran else ''}{found}, expected {dtype}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != info.file_size - fh.tell():
            raise ValueError(f"member {key!r}: its header's {shape} does not fill the declared size")
        out = np.empty(shape, dtype)
        if fh.readinto(memoryview(out).cast("B")) != nbytes:
            raise ValueError(f"member {key!r} is truncated")
    return out


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
