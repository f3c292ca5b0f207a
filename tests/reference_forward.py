"""Independent numpy forward pass of a MATLAB LayerGraph (tests only).

Written from MATLAB's layer definitions and the LayerGraphSpec (MATLAB-shaped weights, HWC
activations, float64), deliberately sharing nothing with the converter's IR or the ONNX graph:
its own graph walk, its own 'same' padding, its own weight-layout handling.
"""
from __future__ import annotations

import math
from typing import Dict, List

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sfpn_edge.converters.layergraph import LayerGraphSpec, LayerSpec

HEAD = ("SoftmaxLayer", "ClassificationOutputLayer")


def reference_forward(spec: LayerGraphSpec, batch: np.ndarray) -> np.ndarray:
    """Descriptors [N, D] (float64) for ``batch`` float32 [N, 3, H, W] (NCHW like the ONNX input)."""
    layers = {layer.props["Name"]: layer for layer in spec.layers}
    sources: Dict[str, Dict[str, str]] = {}
    for src, dst in spec.connections:
        name, _, port = dst.partition("/")
        sources.setdefault(name, {})[port or "in1"] = src
    head_inputs = [sources[n]["in1"] for n, layer in layers.items() if layer.class_name == HEAD[0]]
    descriptor = head_inputs[0] if head_inputs else _sink(layers, spec)
    x = np.asarray(batch, np.float64).transpose(0, 2, 3, 1)      # NHWC
    cache: Dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name not in cache:
            layer = layers[name]
            ins = [value(sources[name][port]) for port in sorted(sources.get(name, {}), key=lambda p: int(p[2:]))]
            cache[name] = _apply(layer, ins, x)
        return cache[name]

    out = value(descriptor)
    return out.reshape(out.shape[0], -1)


def _sink(layers: Dict[str, LayerSpec], spec: LayerGraphSpec) -> str:
    used = {src for src, _ in spec.connections}
    return next(name for name in layers if name not in used)


def _apply(layer: LayerSpec, ins: List[np.ndarray], image: np.ndarray) -> np.ndarray:
    kind, p = layer.class_name, layer.props
    if kind == "ImageInputLayer":
        return image
    if kind == "ReLULayer":
        return np.maximum(ins[0], 0.0)
    if kind == "DropoutLayer":
        return ins[0]
    if kind == "DepthConcatenationLayer":
        return np.concatenate(ins, axis=3)
    if kind in ("Convolution2DLayer", "GroupedConvolution2DLayer"):
        return _conv(layer, ins[0])
    if kind in ("MaxPooling2DLayer", "AveragePooling2DLayer"):
        k = _vec(p["PoolSize"])
        windows = _windows(ins[0], layer, k, _vec(p["Stride"]), (1, 1),
                              -np.inf if kind == "MaxPooling2DLayer" else 0.0)
        return windows.max(axis=(4, 5)) if kind == "MaxPooling2DLayer" else windows.mean(axis=(4, 5))
    raise AssertionError(f"reference has no {kind}")


def _conv(layer: LayerSpec, x: np.ndarray) -> np.ndarray:
    p = layer.props
    kh, kw = _vec(p["FilterSize"])
    weights = np.asarray(p["Weights"]["Value"], np.float64)
    bias = np.asarray(p["Bias"]["Value"], np.float64).ravel(order="F")
    windows = _windows(x, layer, (kh, kw), _vec(p["Stride"]), _vec(p.get("DilationFactor", [1, 1])), 0.0)
    # windows: N, Ho, Wo, C, kh, kw
    if layer.class_name == "Convolution2DLayer":
        w = weights.reshape(kh, kw, x.shape[3], -1, order="F")
        out = np.einsum("nhwcij,ijcf->nhwf", windows, w, optimize=True)
    else:
        groups = int(np.ravel(p["NumGroups"])[0])
        per_group = int(np.ravel(p["NumChannelsPerGroup"])[0])
        filters = int(np.ravel(p["NumFiltersPerGroup"])[0])
        w = weights.reshape(kh, kw, per_group, filters, groups, order="F")   # MATLAB's 5-D layout
        outs = [np.einsum("nhwcij,ijcf->nhwf", windows[:, :, :, g * per_group:(g + 1) * per_group],
                          w[..., g], optimize=True) for g in range(groups)]
        out = np.concatenate(outs, axis=3)                                # channel g * F + f
    return out + bias


def _windows(x: np.ndarray, layer: LayerSpec, k, stride, dilation, fill: float):
    """Padded sliding windows [N, Ho, Wo, C, kh, kw] with MATLAB's padding rules."""
    n, h, w, c = x.shape
    mode = str(layer.props.get("PaddingMode", "manual")).lower()
    if mode == "same":
        pads = []
        for size, kk, s, d in zip((h, w), k, stride, dilation):
            total = max((math.ceil(size / s) - 1) * s + (kk - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))        # MATLAB: extra row/col bottom/right
    else:
        t, b, l, r = np.ravel(layer.props["PaddingSize"]).astype(int)    # [top bottom left right]
        pads = [(t, b), (l, r)]
    padded = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=fill)
    span = [(kk - 1) * d + 1 for kk, d in zip(k, dilation)]
    win = sliding_window_view(padded, span, axis=(1, 2))
    win = win[:, ::stride[0], ::stride[1], :, ::dilation[0], ::dilation[1]]
    return win


def _vec(value) -> tuple:
    flat = [int(v) for v in np.ravel(value)]
    return tuple(flat * 2) if len(flat) == 1 else tuple(flat)
