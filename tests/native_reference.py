"""Independent numpy executor of a native int8 plan (tests only): the oracle for the C engine.

Written from the plan spec alone: uint8 NHWC buffers with a 1-pixel border, exact integer
accumulation (float matmuls of integers are exact while every partial sum stays below 2**24 in
float32 / 2**53 in float64, whatever the summation order), float32 requantization
``rint(float32(scale) * float32(acc) + bias)`` clamped to 0..255. The C engine fuses the
multiply-add, so its bytes may differ from these by 1.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def native_reference(plan_path: Union[str, Path], batch: np.ndarray) -> np.ndarray:
    """Descriptors float32 [N, D] of ``batch`` float32 [N, 3, H, W] (RGB minus mean)."""
    with np.load(plan_path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    plan = json.loads(arrays.pop("plan").tobytes().decode("utf-8"))
    buffers = _allocate(plan, len(batch))
    _write_input(buffers[0], plan["input"], batch)
    for i, op in enumerate(plan["ops"]):
        if op["op"] == "conv_gap":
            return _conv_gap(buffers[op["src"]], op, arrays[f"op{i}.w"], arrays[f"op{i}.scale"], arrays[f"op{i}.bias"])
        if op["op"] == "maxpool":
            _interior(buffers[op["dst"]])[:] = _maxpool(_interior(buffers[op["src"]]), op["kernel"], op["stride"])
            continue
        acc = (_conv_acc if op["op"] == "conv" else _dwconv_acc)(buffers[op["src"]], op, arrays[f"op{i}.w"])
        width = acc.shape[-1]
        _interior(buffers[op["dst"]])[..., op["dst_c0"]:op["dst_c0"] + width] = _requantize(
            acc, arrays[f"op{i}.scale"], arrays[f"op{i}.bias"])
    raise ValueError("plan has no conv_gap op")


def _allocate(plan: dict, n: int) -> List[np.ndarray]:
    """Zeroed [N, h+2, w+2, c] uint8 buffers; buffer 0's border is the input pad."""
    out = [np.zeros((n, b["h"] + 2, b["w"] + 2, b["c"]), np.uint8) for b in plan["buffers"]]
    out[0][:] = np.asarray(plan["input"]["pad"], np.uint8)
    return out


def _interior(buffer: np.ndarray) -> np.ndarray:
    return buffer[:, 1:-1, 1:-1]


def _write_input(buffer: np.ndarray, spec: Dict, batch: np.ndarray) -> None:
    offset = np.asarray(spec["offset"], np.float32)
    q = np.clip(np.rint(batch.transpose(0, 2, 3, 1) + offset), 0, 255)
    _interior(buffer)[..., :3] = q.astype(np.uint8)
    _interior(buffer)[..., 3] = 0


def _windows(buffer: np.ndarray, c0: int, cin: int, k: int, dtype=np.float64) -> np.ndarray:
    """[N, h, w, k*k, cin] copies of each pixel's k x k neighbourhood (tap t = dy * k + dx)."""
    pad = (k - 1) // 2
    h, w = buffer.shape[1] - 2, buffer.shape[2] - 2
    src = buffer[:, 1 - pad:1 + h + pad, 1 - pad:1 + w + pad, c0:c0 + cin].astype(dtype)
    taps = [src[:, dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)]
    return np.stack(taps, axis=3)


def _conv_acc(buffer: np.ndarray, op: Dict, w: np.ndarray) -> np.ndarray:
    """Exact int32 accumulators [N, h, w, cout]."""
    k = op["kernel"]
    exact = np.float32 if k * k * op["cin"] * 255 * 127 < 2 ** 24 else np.float64
    cols = _windows(buffer, op["src_c0"], op["cin"], k, exact)
    n, h, wd = cols.shape[:3]
    acc = cols.reshape(n * h * wd, -1) @ w.reshape(len(w), -1).astype(exact).T
    return acc.reshape(n, h, wd, -1).astype(np.int32)


def _dwconv_acc(buffer: np.ndarray, op: Dict, w: np.ndarray) -> np.ndarray:
    """[N, h, w, M * s] accumulators in the order j * s + c."""
    cols = _windows(buffer, op["src_c0"], op["channels"], 3, np.float32)     # [N, h, w, 9, s]; 9 taps: exact
    acc = np.einsum("nhwtc,jtc->nhwjc", cols, w.astype(np.float32))                   # [N, h, w, M, s]
    return acc.reshape(*acc.shape[:3], -1).astype(np.int32)


def _requantize(acc: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    y = np.rint(scale.astype(np.float32) * acc.astype(np.float32) + bias.astype(np.float32))
    return np.clip(y, 0, 255).astype(np.uint8)


def _maxpool(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    win = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return win.max(axis=(-2, -1))


def _conv_gap(buffer: np.ndarray, op: Dict, w: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    acc = _conv_acc(buffer, {**op, "kernel": 1}, w).astype(np.float32)
    y = np.maximum(scale.astype(np.float32) * acc + bias.astype(np.float32), np.float32(0))
    return y.reshape(len(y), -1, y.shape[-1]).mean(axis=1, dtype=np.float64).astype(np.float32)
