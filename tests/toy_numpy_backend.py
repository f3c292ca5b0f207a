"""A toy backend for the registry tests: model.onnx run by a small NumPy interpreter.

Registered from outside sfpn-edge, as a user's plugin would be (``SFPN_EDGE_PLUGINS=toy_numpy_backend``
with this folder on ``PYTHONPATH``, or by importing it). It knows the seven ONNX ops the converter
writes for SqueezeFacePoseNet: Conv (grouped too), Relu, Concat, MaxPool, AveragePool, Flatten.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sfpn_edge.backends import BackendSpec, TensorSpec, register
from sfpn_edge.backends.base import BackendBase, check_model_file


def available_devices() -> List[str]:
    return ["CPU"]


class NumpyBackend(BackendBase):
    name = "numpy"

    def __init__(self, path: Path, *, device: str = "CPU", precision: str = "fp32", threads: int = 1,
                 cache_dir=None):
        import onnx
        from onnx import numpy_helper

        path = check_model_file(path, (".onnx",))
        super().__init__(path, device, precision, threads)
        graph = onnx.load(str(path)).graph
        self.weights: Dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes = [(n.op_type, list(n.input), list(n.output),
                       {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}) for n in graph.node]
        self.inputs = [TensorSpec(i.name, np.dtype(np.float32), (None, 3, 113, 113))
                       for i in graph.input if i.name not in self.weights]
        self.output_names = [o.name for o in graph.output]

    def run(self, *inputs: np.ndarray) -> list:
        values = dict(self.weights)
        values.update({spec.name: a for spec, a in zip(self.inputs, self.check_inputs(inputs))})
        for op, ins, outs, attrs in self.nodes:
            values[outs[0]] = getattr(self, "_" + op.lower())(*[values[i] for i in ins], **attrs)
        return [values[name].astype(np.float32) for name in self.output_names]

    @staticmethod
    def _conv(x, w, b, group=1, pads=(0, 0, 0, 0), strides=(1, 1), **_):
        n, c, _, _ = x.shape
        o, cg, k, _ = w.shape
        x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        h, wd = (x.shape[2] - k) // strides[0] + 1, (x.shape[3] - k) // strides[1] + 1
        xg = x.reshape(n, group, cg, x.shape[2], x.shape[3])
        wg = w.reshape(group, o // group, cg, k, k)
        out = np.zeros((n, group, o // group, h, wd), np.float32)
        for dy in range(k):
            for dx in range(k):
                tap = xg[:, :, :, dy:dy + h * strides[0]:strides[0], dx:dx + wd * strides[1]:strides[1]]
                out += np.einsum("ngchw,goc->ngohw", tap, wg[:, :, :, dy, dx], optimize=True)
        return out.reshape(n, o, h, wd) + b.reshape(1, o, 1, 1)

    @staticmethod
    def _relu(x, **_):
        return np.maximum(x, 0)

    @staticmethod
    def _concat(*xs, axis=1, **_):
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def _maxpool(x, kernel_shape=(3, 3), strides=(2, 2), **_):
        win = sliding_window_view(x, tuple(kernel_shape), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
        return win.max(axis=(4, 5))

    @staticmethod
    def _averagepool(x, kernel_shape=(13, 13), **_):
        return sliding_window_view(x, tuple(kernel_shape), axis=(2, 3)).mean(axis=(4, 5))

    @staticmethod
    def _flatten(x, axis=1, **_):
        return x.reshape(x.shape[0], -1)


register(BackendSpec("numpy", f"{__name__}:NumpyBackend", ("fp32",), files="onnxruntime",
                     summary="NumPy interpreter of model.onnx (a test plugin)"))
