"""fp32 ``model.onnx`` -> int8 plan for the native engine (``model_native_int8.npz``).

The plan format is the contract in the native engine's spec: uint8 NHWC buffers with a 1-pixel
border, per-channel activation scales, per-output-channel symmetric int8 weights, ReLU fused into
every op. Supported graphs are SqueezeNet-style:

* Conv (1x1 or 3x3, stride 1, "same" padding) + Relu                      -> ``conv``
* depthwise 3x3 conv + Relu, in any of the export's three forms             -> ``dwconv``
  ("replicate": Concat([x] * M) + depthwise conv; "gather": channel Gather + depthwise conv;
  unrewritten: grouped conv with 1 input channel and M filters per group)
* MaxPool (no padding, floor)                                                -> ``maxpool``
* Concat of conv outputs: one buffer that its producers write at channel offsets
* last Conv 1x1 + Relu + global AveragePool (+ Flatten)                      -> ``conv_gap``

A dwconv writes its output in the order filter-major (j * s + c); every tensor's physical channel
order is tracked and folded into its consumers' input-channel weights. Activation scales come
from running the fp32 model with onnxruntime on calibration crops; the biases are then corrected
op by op against the fp32 outputs on the same crops (:func:`correct_biases`). ``onnx`` (the ``convert``
extra) is imported inside the functions.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from sfpn_edge import cache, models
from sfpn_edge.backends.native_backend import PLAN_FORMAT, PLAN_VERSION
from sfpn_edge.converters import int8_gate
from sfpn_edge.converters.calibration_data import check_crops
from sfpn_edge.errors import ModelError

NATIVE_INT8 = "model_native_int8.npz"
DEFAULT_PERCENTILE = 100.0      # activation range: this percentile of each channel's values (100 = max)
# ... times a headroom. Per-channel maxima over the three example faces (the dataset-free calibration)
# are too tight for other faces and framings: clipped activations cost 0.5-0.7 point of CFP through the
# default detector. CFP FF / FP % end to end (BlazeFace chain, example crops; `sfpn-edge eval cfp
# --protocol both --crop detect --detector blazeface --backend native --precision int8 --threads 1`),
# fp32 96.37 / 87.61: headroom 1: 95.86 / 86.91; 1.5: 96.26 / 87.10; 2: 96.33 / 87.20; 3: 96.31 / 87.59;
# 4: 96.33 / 87.41 (fiducial crops, 1 -> 3: 95.73 / 86.70 -> 96.09 / 86.54). Calibrations on many faces
# (CFP, the user's photos) keep 1: there headroom only coarsens the steps.
DEFAULT_HEADROOM = 1.0
EXAMPLES_HEADROOM = 3.0
CALIBRATION_BATCH = 8
BIAS_CORRECTION_CROPS = 128     # crops the bias correction compares the engine with fp32 on
GAP_TAIL = ("Flatten", "Reshape", "Squeeze")

PathLike = Union[str, Path]


@dataclass
class _Layer:
    """One plan op plus its fp32 weights in physical input order, before quantization."""

    op: dict
    weight: Optional[np.ndarray] = None      # conv [N, k*k, K]; dwconv [M, 9, s]
    bias: Optional[np.ndarray] = None        # per physical output channel
    relu: str = ""                           # calibrated tensor (ONNX name) this op writes
    out_order: Optional[np.ndarray] = None   # ONNX channel held by each physical output channel


@dataclass
class _Structure:
    """The graph mapped onto plan buffers and ops (no calibration yet)."""

    input_name: str
    input_shape: Tuple[int, int, int]
    buffers: List[dict] = field(default_factory=list)
    layers: List[_Layer] = field(default_factory=list)


# --------------------------------------------------------------------------- public API


def build_plan(onnx_path: PathLike, crops: np.ndarray, mean: Sequence[float], source: str, *,
               percentile: float = DEFAULT_PERCENTILE, bias_correction: bool = True,
               headroom: float = DEFAULT_HEADROOM) -> Tuple[dict, Dict[str, np.ndarray]]:
    """The plan (JSON-able dict) and its arrays for the fp32 ONNX model at ``onnx_path``.

    ``crops`` float32 [N, 3, h, w] (RGB minus ``mean``) calibrate the activation scales: each
    channel's range is ``headroom`` times the ``percentile`` of its post-ReLU values (100 = the maximum).
    ``source`` says where the crops came from (recorded in the plan). ``bias_correction`` then
    corrects the biases on (up to ``BIAS_CORRECTION_CROPS`` of) the same crops.
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if not 1.0 <= headroom <= 16.0:
        raise ValueError(f"headroom must be in [1, 16], got {headroom!r}")
    check_crops(crops)
    model = _load(onnx_path)
    structure = _Planner(model).plan()
    if crops.shape[1:] != structure.input_shape:
        raise ValueError(f"calibration crops must be [N, {', '.join(map(str, structure.input_shape))}], "
                         f"got {list(crops.shape)}")
    relus = [layer.relu for layer in structure.layers if layer.relu]
    ranges = {name: r * headroom for name, r in activation_ranges(model, relus, crops, percentile).items()}
    ops, arrays = _quantize(structure, ranges, np.asarray(mean, np.float64))
    offset = [float(m) for m in mean]
    plan = {
        "format": PLAN_FORMAT, "version": PLAN_VERSION,
        "input": {"offset": offset, "pad": [int(np.rint(m)) for m in offset] + [0]},
        "buffers": structure.buffers, "ops": ops,
        "calibration": {"count": int(len(crops)), "source": source, "method": method_name(percentile),
                        "headroom": float(headroom)},
    }
    if bias_correction:
        correct_biases(plan, arrays, structure, ranges, model, crops[:BIAS_CORRECTION_CROPS])
    plan["calibration"]["bias_correction"] = min(len(crops), BIAS_CORRECTION_CROPS) if bias_correction else 0
    return plan, arrays


def correct_biases(plan: dict, arrays: Dict[str, np.ndarray], structure: "_Structure",
                   ranges: Dict[str, np.ndarray], model, crops: np.ndarray) -> None:
    """Empirical bias correction, op by op in plan order (in place on ``arrays``).

    Quantized weights and activations shift each channel's mean output. For every conv/dwconv,
    the engine's output (with the earlier ops already corrected) is compared with the fp32
    model's ReLU output on ``crops``; the mean difference, divided by the fraction of positive
    fp32 outputs (a ReLU passes a bias shift only where it is open), is taken off the bias.
    Measured on 200 held-out CFP crops: mean cosine to fp32 0.99908 -> 0.99946.
    """
    from sfpn_edge.kernels.engine import Int8Engine

    names = [layer.relu for layer in structure.layers if layer.relu]
    means, open_ = _relu_means(model, names, crops)
    for i, layer in enumerate(structure.layers):
        op = layer.op
        if op["op"] not in ("conv", "dwconv"):
            continue
        width = op["cout"] if op["op"] == "conv" else op["channels"] * op["multiplier"]
        q = Int8Engine(plan, arrays).activations(crops, i)[..., op["dst_c0"]:op["dst_c0"] + width]
        s_y = _activation_scale(ranges[layer.relu])[layer.out_order]
        error = q.mean(axis=(0, 1, 2)) * s_y - means[layer.relu][layer.out_order]
        opened = open_[layer.relu][layer.out_order]
        shift = np.where(opened > 0.05, error / np.maximum(opened, 0.05), 0.0)
        arrays[f"op{i}.bias"] = (arrays[f"op{i}.bias"] - shift / s_y).astype(np.float32)


def save_plan(path: PathLike, plan: dict, arrays: Dict[str, np.ndarray]) -> Path:
    """Write ``plan`` and ``arrays`` as one .npz at ``path``, atomically (temp file + rename)."""
    buffer = io.BytesIO()
    blob = np.frombuffer(json.dumps(plan, sort_keys=True).encode("utf-8"), np.uint8)
    np.savez(buffer, plan=blob, **arrays)
    cache.atomic_write_bytes(Path(path), buffer.getvalue())
    Path(path).chmod(0o644)
    return Path(path)


def export_native(model_dir: PathLike, crops: np.ndarray, source: str, *,
                  percentile: float = DEFAULT_PERCENTILE, headroom: float = DEFAULT_HEADROOM) -> Path:
    """Add ``model_native_int8.npz`` to ``model_dir`` and record it in the manifest."""
    model_dir = Path(model_dir)
    manifest = models.load_manifest(model_dir)
    plan, arrays = build_plan(models.model_file(model_dir, "onnxruntime", "fp32"), crops, manifest["mean"],
                              source, percentile=percentile, headroom=headroom)
    path = save_plan(model_dir / NATIVE_INT8, plan, arrays)
    manifest["files"]["native"] = {"int8": NATIVE_INT8}
    manifest.setdefault("calibration", {})["native"] = describe(plan)
    models.write_manifest(model_dir, manifest)
    int8_gate.record(model_dir, crops)
    return path


def method_name(percentile: float) -> str:
    """The calibration method recorded in the plan: "max" or "percentile 99.99"."""
    return "max" if percentile == 100.0 else f"percentile {percentile:g}"


def describe(plan: dict) -> str:
    """One line for the manifest's calibration record."""
    record = plan["calibration"]
    return (f"native int8 plan: per-channel int8 weights, uint8 activations, ranges = {record.get('headroom', 1):g} x "
            f"per-channel {record['method']} over {record['count']} crops ({record['source']}), biases corrected "
            f"on {record['bias_correction']} of them")


def _tensors(model, names: Sequence[str], crops: np.ndarray):
    """Yield (name, value) of each tensor in ``names`` for ``CALIBRATION_BATCH`` crops at a time:
    a copy of ``model`` (an onnx ModelProto) with them as extra outputs runs in onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())   # a copy: the caller's stays as it was
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names if n not in present)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    for start in range(0, len(crops), CALIBRATION_BATCH):
        yield from zip(names, session.run(list(names), {input_name: crops[start:start + CALIBRATION_BATCH]}))


def _relu_means(model, names: Sequence[str], crops: np.ndarray) -> Tuple[dict, dict]:
    """Per-channel mean and fraction of positive values of each tensor in ``names`` over ``crops``."""
    sums: Dict[str, np.ndarray] = {}
    positive: Dict[str, np.ndarray] = {}
    count: Dict[str, int] = {}
    for name, value in _tensors(model, names, crops):
        sums[name] = sums.get(name, 0.0) + value.sum(axis=(0, 2, 3), dtype=np.float64)
        positive[name] = positive.get(name, 0.0) + (value > 0).sum(axis=(0, 2, 3))
        count[name] = count.get(name, 0) + value.shape[0] * value.shape[2] * value.shape[3]
    return ({n: sums[n] / count[n] for n in names}, {n: positive[n] / count[n] for n in names})


def activation_ranges(model, names: Sequence[str], crops: np.ndarray, percentile: float) -> Dict[str, np.ndarray]:
    """Per-channel ``percentile`` of the values of each tensor in ``names`` over ``crops``.

    Exact: the k largest values of each channel are kept, k = floor((1 - percentile / 100) *
    values) + 1. A channel positive on fewer values than that falls back to its maximum.
    """
    top: Dict[str, np.ndarray] = {}
    for name, value in _tensors(model, names, crops):
        keep = int((1.0 - percentile / 100.0) * len(crops) * value[0, 0].size) + 1
        values = value.transpose(1, 0, 2, 3).reshape(value.shape[1], -1)
        if name in top:
            values = np.concatenate([top[name], values], axis=1)
        top[name] = np.partition(values, -keep, axis=1)[:, -keep:] if values.shape[1] > keep else values
    ranges = {}
    for name, kept in top.items():
        kth = kept.min(axis=1).astype(np.float64)
        ranges[name] = np.where(kth > 0, kth, kept.max(axis=1))
    return ranges


# --------------------------------------------------------------------------- graph -> buffers + ops


def _load(onnx_path: PathLike):
    import onnx

    try:
        return onnx.load(str(onnx_path))
    except Exception as exc:  # OSError, protobuf DecodeError, ...
        raise ModelError(f"{onnx_path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


class _Planner:
    """Walks the ONNX nodes in order and maps them onto plan buffers and ops."""

    def __init__(self, model):
        import onnx
        from onnx import numpy_helper, shape_inference

        graph = model.graph
        if len(graph.input) != 1 or len(graph.output) != 1:
            raise ModelError("the native engine needs a model with one input and one output")
        self.nodes = list(graph.node)
        self.consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.consumers: Dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.attrs = {n.name or n.output[0]: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                      for n in self.nodes}
        inferred = shape_inference.infer_shapes(model).graph
        self.shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim[1:])
                       for v in [*inferred.input, *inferred.value_info, *inferred.output]}
        self.input_name = graph.input[0].name
        self.output_name = graph.output[0].name
        self.hosts = self._concat_hosts()
        self.structure = _Structure(self.input_name, self.shapes.get(self.input_name, ()))
        self.slots: Dict[str, Tuple[int, int]] = {self.input_name: (0, 0)}   # tensor -> (buffer, first channel)
        self.pos: Dict[str, np.ndarray] = {}      # tensor -> physical channel of each ONNX channel
        self.views: Dict[str, Tuple[str, np.ndarray]] = {}   # replicate/gather output -> (source, index)
        self.done: set = set()

    def plan(self) -> _Structure:
        """Buffers and unquantized ops of the whole graph (ModelError naming the node when unsupported)."""
        c, h, w = self._shape(self.input_name, "graph input")
        if c != 3:
            raise ModelError(f"graph input '{self.input_name}': the native engine needs 3 channels, got {c}")
        self.structure.buffers.append({"h": h, "w": w, "c": 4})
        for node in self.nodes:
            if id(node) not in self.done:
                self._visit(node)
        layers = self.structure.layers
        if not layers or layers[-1].op["op"] != "conv_gap":
            raise ModelError("the native engine needs the graph to end in Conv 1x1 + Relu + global AveragePool")
        return self.structure

    def _visit(self, node) -> None:
        kind = node.op_type
        if kind == "Conv":
            self._conv(node)
        elif kind == "Concat" and len(node.input) > 1 and len(set(node.input)) == 1:
            channels = self._shape(node.input[0], _name(node))[0]
            self.views[node.output[0]] = (node.input[0], np.arange(channels * len(node.input)) % channels)
        elif kind == "Concat":
            self._concat(node)
        elif kind == "Gather":
            self._gather(node)
        elif kind == "MaxPool":
            self._maxpool(node)
        elif kind == "Relu":
            raise ModelError(f"node '{_name(node)}': a Relu the native engine can fuse must follow a Conv")
        else:
            raise ModelError(f"node '{_name(node)}': op {kind} is not supported by the native engine")

    # ----------------------------------------------------------------- ops

    def _conv(self, node) -> None:
        name, attrs = _name(node), self.attrs[_name(node)]
        weight, bias = self._conv_params(node)
        k = weight.shape[2]
        if attrs.get("group", 1) == 1:
            if k not in (1, 3):
                raise ModelError(f"node '{name}': {k}x{k} convolution (the native engine has 1x1 and 3x3)")
        elif weight.shape[1] != 1:
            raise ModelError(f"node '{name}': grouped conv with {weight.shape[1]} input channels per group "
                             "(the native engine has depthwise only)")
        elif k != 3:
            raise ModelError(f"node '{name}': {k}x{k} grouped conv (the native engine's depthwise is 3x3)")
        relu = self._single_consumer(node.output[0], "Relu", f"node '{name}': Conv not followed by Relu")
        self.done.add(id(relu))
        out = relu.output[0]
        pool = self._gap(out)
        if pool is not None:
            self._conv_gap(node, weight, bias, pool)
        elif attrs.get("group", 1) == 1:
            self._dense(node, weight, bias, out)
        else:
            self._depthwise(node, weight, bias, out)

    def _conv_params(self, node) -> Tuple[np.ndarray, np.ndarray]:
        name, attrs = _name(node), self.attrs[_name(node)]
        if len(node.input) < 2 or node.input[1] not in self.consts or (len(node.input) > 2 and node.input[2]
                                                                        and node.input[2] not in self.consts):
            raise ModelError(f"node '{name}': Conv weights and bias must be constants")
        weight = self.consts[node.input[1]].astype(np.float64)
        bias = (self.consts[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2]
                else np.zeros(weight.shape[0]))
        if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
            raise ModelError(f"node '{name}': the native engine needs a square 2-D kernel, got {list(weight.shape[2:])}")
        k = weight.shape[2]
        if any(s != 1 for s in attrs.get("strides", [1, 1])) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise ModelError(f"node '{name}': stride/dilation other than 1 (the native engine has stride 1 only)")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or \
                list(attrs.get("pads", [0] * 4)) != [(k - 1) // 2] * 4:
            raise ModelError(f"node '{name}': padding must be 'same' ({(k - 1) // 2} on every side)")
        return weight, bias

    def _dense(self, node, weight: np.ndarray, bias: np.ndarray, out: str) -> None:
        op, w = self._conv_input(node, weight)
        cout = weight.shape[0]
        _require16(cout, f"node '{_name(node)}': {cout} output channels")
        buffer, c0 = self._slot(out, node)
        self._same_size(node, op["src"], buffer)
        self.pos[out] = c0 + np.arange(cout)
        op = {"op": "conv", "kernel": weight.shape[2], **op, "dst": buffer, "dst_c0": c0, "cout": cout}
        self.structure.layers.append(_Layer(op, w, bias, out, np.arange(cout)))

    def _conv_gap(self, node, weight: np.ndarray, bias: np.ndarray, pool) -> None:
        if weight.shape[2] != 1 or self.attrs[_name(node)].get("group", 1) != 1:
            raise ModelError(f"node '{_name(node)}': the last conv before the global pool must be a plain 1x1 conv")
        op, w = self._conv_input(node, weight)
        self.structure.layers.append(_Layer({"op": "conv_gap", **op, "cout": weight.shape[0]}, w, bias))

    def _depthwise(self, node, weight: np.ndarray, bias: np.ndarray, out: str) -> None:
        name, group, cout = _name(node), self.attrs[_name(node)]["group"], weight.shape[0]
        src, index = node.input[0], np.arange(cout) // (cout // group)
        if src in self.views:
            src, view = self.views[src]
            index = view[index]
        channels = self._shape(src, name)[0]
        multiplier = cout // channels
        if cout % channels or (np.bincount(index, minlength=channels) != multiplier).any():
            raise ModelError(f"node '{name}': depthwise conv must apply the same number of filters to every channel")
        _require16(channels, f"node '{name}': {channels} depthwise channels")
        buffer, c0 = self._source(src, name)
        phys = self.pos[src][index] - c0
        filt = np.empty(cout, np.int64)
        filt[np.argsort(index, kind="stable")] = np.arange(cout) % multiplier
        slot = filt * channels + phys
        w = np.empty((multiplier, 9, channels))
        w[filt, :, phys] = weight.reshape(cout, 9)
        dst, d0 = self._slot(out, node)
        self._same_size(node, buffer, dst)
        self.pos[out] = d0 + slot
        order = np.empty(cout, np.int64)
        order[slot] = np.arange(cout)
        op = {"op": "dwconv", "src": buffer, "src_c0": c0, "channels": channels, "multiplier": multiplier,
              "dst": dst, "dst_c0": d0}
        self.structure.layers.append(_Layer(op, w, bias[order], out, order))

    def _maxpool(self, node) -> None:
        name, attrs = _name(node), self.attrs[_name(node)]
        kernel, strides = list(attrs.get("kernel_shape", [])), list(attrs.get("strides", [1, 1]))
        if (len(kernel) != 2 or kernel[0] != kernel[1] or len(strides) != 2 or strides[0] != strides[1]
                or any(attrs.get("pads", [0] * 4)) or attrs.get("ceil_mode", 0) or len(node.output) > 1
                or any(d != 1 for d in attrs.get("dilations", [1, 1]))
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            raise ModelError(f"node '{name}': MaxPool must be square, unpadded, floor mode")
        src, out = node.input[0], node.output[0]
        buffer, c0 = self._source(src, name)
        if buffer == 0 or c0 or self._shape(src, name)[0] != self.structure.buffers[buffer]["c"]:
            raise ModelError(f"node '{name}': MaxPool must read a whole activation buffer")
        if out in self.hosts:
            raise ModelError(f"node '{name}': a MaxPool output cannot be part of a Concat")
        dst, _ = self._slot(out, node)
        self.pos[out] = self.pos[src]
        op = {"op": "maxpool", "src": buffer, "dst": dst, "kernel": kernel[0], "stride": strides[0]}
        self.structure.layers.append(_Layer(op))

    def _concat(self, node) -> None:
        if self.attrs[_name(node)].get("axis") != 1:
            raise ModelError(f"node '{_name(node)}': only channel Concat (axis 1) is supported")
        for src in node.input:
            if src not in self.pos:
                raise ModelError(f"node '{_name(node)}': Concat input '{src}' is not a Conv+Relu output")
        self.pos[node.output[0]] = np.concatenate([self.pos[src] for src in node.input])

    def _gather(self, node) -> None:
        if self.attrs[_name(node)].get("axis", 0) != 1 or node.input[1] not in self.consts:
            raise ModelError(f"node '{_name(node)}': only a constant channel Gather (axis 1) is supported")
        index = self.consts[node.input[1]].astype(np.int64)
        channels = self._shape(node.input[0], _name(node))[0]
        if index.ndim != 1 or index.min(initial=0) < -channels or index.max(initial=0) >= channels:
            raise ModelError(f"node '{_name(node)}': Gather indices must be a 1-D list of channels")
        self.views[node.output[0]] = (node.input[0], index % channels)

    # ----------------------------------------------------------------- helpers

    def _conv_input(self, node, weight: np.ndarray) -> Tuple[dict, np.ndarray]:
        """The op's source fields and the weights [N, k*k, K] in the source's physical channel order."""
        name, src = _name(node), node.input[0]
        cout, cin, k = weight.shape[:3]
        taps = weight.reshape(cout, cin, k * k).transpose(0, 2, 1)
        if src == self.input_name:
            w = np.zeros((cout, k * k, 4))
            w[:, :, :cin] = taps
            return {"src": 0, "src_c0": 0, "cin": 4}, w
        buffer, c0 = self._source(src, name)
        if cin % 4:
            raise ModelError(f"node '{name}': {cin} input channels (the native engine needs a multiple of 4)")
        w = np.empty((cout, k * k, cin))
        w[:, :, self.pos[src] - c0] = taps
        return {"src": buffer, "src_c0": c0, "cin": cin}, w

    def _source(self, src: str, name: str) -> Tuple[int, int]:
        """(buffer, first channel) of an already written tensor occupying a contiguous channel range."""
        if src in self.views:
            raise ModelError(f"node '{name}': a replicating Concat/Gather may only feed a depthwise conv")
        if src not in self.pos:
            raise ModelError(f"node '{name}': input '{src}' is not produced by an op the native engine runs")
        pos = self.pos[src]
        c0 = int(pos.min())
        if (np.sort(pos) != c0 + np.arange(len(pos))).any():
            raise ModelError(f"node '{name}': input '{src}' does not occupy one channel range of a buffer")
        return self._slot(src, None)[0], c0

    def _slot(self, tensor: str, node) -> Tuple[int, int]:
        """(buffer, first channel) where ``tensor`` lives; a new buffer unless a Concat hosts it."""
        if tensor not in self.slots:
            if tensor in self.hosts:
                concat, index = self.hosts[tensor]
                buffer, c0 = self._slot(concat.output[0], node)
                offset = sum(self._shape(src, _name(concat))[0] for src in concat.input[:index])
                self.slots[tensor] = (buffer, c0 + offset)
            else:
                c, h, w = self._shape(tensor, _name(node))
                _require16(c, f"node '{_name(node)}': {c} channels in buffer '{tensor}'")
                self.structure.buffers.append({"h": h, "w": w, "c": c})
                self.slots[tensor] = (len(self.structure.buffers) - 1, 0)
        return self.slots[tensor]

    def _concat_hosts(self) -> Dict[str, tuple]:
        """Input tensor -> (Concat node, input index) for every channel-stacking Concat."""
        hosts: Dict[str, tuple] = {}
        for node in self.nodes:
            if node.op_type != "Concat" or len(set(node.input)) == 1:
                continue
            for index, src in enumerate(node.input):
                if src in hosts:
                    raise ModelError(f"node '{_name(node)}': '{src}' feeds more than one Concat slot")
                hosts[src] = (node, index)
        return hosts

    def _gap(self, tensor: str):
        """The global average pool reading ``tensor`` (marking it and its Flatten tail done), else None."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type not in ("AveragePool", "GlobalAveragePool"):
            return None
        pool, attrs = users[0], self.attrs[_name(users[0])]
        h, w = self._shape(tensor, _name(pool))[1:]
        if pool.op_type == "AveragePool" and (list(attrs.get("kernel_shape", [])) != [h, w]
                                              or any(attrs.get("pads", [0] * 4))):
            raise ModelError(f"node '{_name(pool)}': AveragePool must cover the whole {h}x{w} map (global)")
        self.done.add(id(pool))
        out = pool.output[0]
        while out != self.output_name:
            users = self.consumers.get(out, [])
            if len(users) != 1 or users[0].op_type not in GAP_TAIL:
                raise ModelError(f"node '{_name(pool)}': the global pool must end the graph (only Flatten may follow)")
            self.done.add(id(users[0]))
            out = users[0].output[0]
        return pool

    def _single_consumer(self, tensor: str, op_type: str, message: str):
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op_type or tensor == self.output_name:
            raise ModelError(message)
        return users[0]

    def _same_size(self, node, src: int, dst: int) -> None:
        a, b = self.structure.buffers[src], self.structure.buffers[dst]
        if (a["h"], a["w"]) != (b["h"], b["w"]):
            raise ModelError(f"node '{_name(node)}': output size differs from input size")

    def _shape(self, tensor: str, where: str) -> Tuple[int, int, int]:
        shape = self.shapes.get(tensor, ())
        if len(shape) != 3 or min(shape) < 1:
            raise ModelError(f"node '{where}': tensor '{tensor}' has no static [C, H, W] shape")
        return shape


def _name(node) -> str:
    return node.name or node.output[0]


def _require16(count: int, what: str) -> None:
    if count % 16:
        raise ModelError(f"{what}: the native engine needs a multiple of 16")


# --------------------------------------------------------------------------- quantization


def _quantize(structure: _Structure, ranges: Dict[str, np.ndarray], mean: np.ndarray
              ) -> Tuple[List[dict], Dict[str, np.ndarray]]:
    """Plan ops and arrays: input scales folded into the weights, symmetric per output channel."""
    scales = [np.ones(4)] + [np.zeros(b["c"]) for b in structure.buffers[1:]]   # per physical channel
    ops: List[dict] = []
    arrays: Dict[str, np.ndarray] = {}
    for i, layer in enumerate(structure.layers):
        op = layer.op
        ops.append(op)
        if op["op"] == "maxpool":
            scales[op["dst"]] = scales[op["src"]].copy()
            continue
        depthwise = op["op"] == "dwconv"
        s_x = scales[op["src"]][op["src_c0"]:op["src_c0"] + (op["channels"] if depthwise else op["cin"])]
        w, s_w = _symmetric(layer.weight * s_x, axis=1 if depthwise else (1, 2))
        scale, bias = s_w, layer.bias
        if op["op"] != "conv_gap":
            s_y = _activation_scale(ranges[layer.relu])[layer.out_order]
            if op["src"] == 0:   # real input = q - offset
                bias = bias - s_w * (w[:, :, :3] @ mean).sum(axis=1)
            scale, bias = s_w / s_y, bias / s_y
            scales[op["dst"]][op["dst_c0"]:op["dst_c0"] + len(s_y)] = s_y
        arrays.update({f"op{i}.w": w, f"op{i}.scale": scale.astype(np.float32),
                       f"op{i}.bias": bias.astype(np.float32)})
    return ops, arrays


def _symmetric(weight: np.ndarray, axis) -> Tuple[np.ndarray, np.ndarray]:
    """int8 weights in -127..127 and one scale per slice left after reducing ``axis`` (flattened)."""
    peak = np.abs(weight).max(axis=axis, keepdims=True)
    s_w = np.where(peak > 0, peak / 127.0, 1.0)
    return np.clip(np.rint(weight / s_w), -127, 127).astype(np.int8), s_w.reshape(-1)


def _activation_scale(ranges: np.ndarray) -> np.ndarray:
    """s_y = range / 255; a channel that is never positive gets 1."""
    return np.where(ranges > 0, ranges / 255.0, 1.0)
