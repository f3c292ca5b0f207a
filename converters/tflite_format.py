"""A minimal TFLite flatbuffer writer and reader (schema ``tflite/schema.fbs``, file id "TFL3").

Only the tables sfpn-edge writes are covered: Model, SubGraph, Tensor (with QuantizationParameters
and shape_signature), Buffer, OperatorCode, Operator and the builtin options of CONV_2D,
DEPTHWISE_CONV_2D, MAX_POOL_2D, AVERAGE_POOL_2D, CONCATENATION, MEAN, RELU, QUANTIZE and
DEQUANTIZE. Built with the ``flatbuffers`` runtime directly (no TensorFlow, no generated classes):
the slot numbers below are the field order of the schema, which only ever grows at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

FILE_ID = b"TFL3"
SCHEMA_VERSION = 3

# TensorType
FLOAT32, FLOAT16, INT32, INT8 = 0, 1, 2, 9
DTYPES = {FLOAT32: np.float32, FLOAT16: np.float16, INT32: np.int32, INT8: np.int8}

# BuiltinOperator -> (code, BuiltinOptions union index, options fields (name, slot, kind))
_CONV = (("padding", 0, "i8"), ("stride_w", 1, "i32"), ("stride_h", 2, "i32"), ("activation", 3, "i8"),
         ("dilation_w", 4, "i32"), ("dilation_h", 5, "i32"))
_DWCONV = (("padding", 0, "i8"), ("stride_w", 1, "i32"), ("stride_h", 2, "i32"), ("depth_multiplier", 3, "i32"),
           ("activation", 4, "i8"), ("dilation_w", 5, "i32"), ("dilation_h", 6, "i32"))
_POOL = (("padding", 0, "i8"), ("stride_w", 1, "i32"), ("stride_h", 2, "i32"), ("filter_w", 3, "i32"),
         ("filter_h", 4, "i32"), ("activation", 5, "i8"))
OPS: Dict[str, Tuple[int, int, tuple]] = {
    "AVERAGE_POOL_2D": (1, 5, _POOL),
    "CONCATENATION": (2, 10, (("axis", 0, "i32"), ("activation", 1, "i8"))),
    "CONV_2D": (3, 1, _CONV),
    "DEPTHWISE_CONV_2D": (4, 2, _DWCONV),
    "DEQUANTIZE": (6, 38, ()),
    "MAX_POOL_2D": (17, 5, _POOL),
    "RELU": (19, 0, ()),
    "MEAN": (40, 27, (("keep_dims", 0, "bool"),)),
    "QUANTIZE": (114, 89, ()),
}
_BY_CODE = {code: name for name, (code, _, _) in OPS.items()}
SAME, VALID = 0, 1           # Padding
NONE, RELU = 0, 1            # ActivationFunctionType


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point), per tensor or along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0


@dataclass
class Tensor:
    name: str
    shape: Tuple[int, ...]
    dtype: int = FLOAT32
    data: Optional[np.ndarray] = None          # constant tensors only
    quant: Optional[Quant] = None
    signature: Optional[Tuple[int, ...]] = None  # shape with -1 for dynamic dimensions


@dataclass
class Op:
    kind: str
    inputs: List[int]
    outputs: List[int]
    options: Dict[str, int] = field(default_factory=dict)


@dataclass
class Model:
    tensors: List[Tensor]
    ops: List[Op]
    inputs: List[int]
    outputs: List[int]
    description: str = ""


# --------------------------------------------------------------------------- writer


def encode(model: Model) -> bytes:
    """The .tflite bytes of ``model``."""
    import flatbuffers

    b = flatbuffers.Builder(1 << 20)

    def ints(values, dtype=np.int32) -> int:
        return b.CreateNumpyVector(np.asarray(values, dtype))

    def offsets(items: List[int]) -> int:
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    def raw_bytes(data: bytes) -> int:
        b.StartVector(1, len(data), 16)           # Buffer.data has force_align 16
        b.head -= len(data)
        b.Bytes[b.head:b.head + len(data)] = data
        return b.EndVector()

    buffers = [_table(b, 1, [])]                  # buffer 0: the empty sentinel
    tensors = []
    for tensor in model.tensors:
        buffer_index = 0
        if tensor.data is not None:
            payload = raw_bytes(np.ascontiguousarray(tensor.data, DTYPES[tensor.dtype]).tobytes())
            buffers.append(_table(b, 1, [(0, "off", payload)]))
            buffer_index = len(buffers) - 1
        quant = None
        if tensor.quant is not None:
            scale, zero = ints(tensor.quant.scale, np.float32), ints(tensor.quant.zero_point, np.int64)
            quant = _table(b, 7, [(2, "off", scale), (3, "off", zero), (6, "i32", tensor.quant.axis)])
        name, shape = b.CreateString(tensor.name), ints(tensor.shape)
        signature = ints(tensor.signature) if tensor.signature is not None else None
        fields = [(0, "off", shape), (1, "i8", tensor.dtype), (2, "u32", buffer_index), (3, "off", name)]
        fields += [(4, "off", quant)] if quant is not None else []
        fields += [(7, "off", signature)] if signature is not None else []
        tensors.append(_table(b, 8, fields))

    kinds = sorted({op.kind for op in model.ops}, key=lambda k: OPS[k][0])
    codes = [_table(b, 4, [(0, "i8", OPS[k][0]), (2, "i32", 1), (3, "i32", OPS[k][0])]) for k in kinds]
    operators = []
    for op in model.ops:
        _, union, schema = OPS[op.kind]
        unknown = set(op.options) - {name for name, _, _ in schema}
        if unknown:
            raise ValueError(f"{op.kind}: unknown options {sorted(unknown)}")
        options = _table(b, len(schema), [(slot, kind, op.options[name]) for name, slot, kind in schema
                                          if name in op.options]) if union else None
        op_inputs, op_outputs = ints(op.inputs), ints(op.outputs)
        fields = [(0, "u32", kinds.index(op.kind)), (1, "off", op_inputs), (2, "off", op_outputs)]
        fields += [(3, "u8", union), (4, "off", options)] if union else []
        operators.append(_table(b, 5, fields))

    tensor_vec, op_vec = offsets(tensors), offsets(operators)
    graph_in, graph_out, graph_name = ints(model.inputs), ints(model.outputs), b.CreateString("main")
    subgraph = _table(b, 5, [(0, "off", tensor_vec), (1, "off", graph_in), (2, "off", graph_out),
                             (3, "off", op_vec), (4, "off", graph_name)])
    code_vec, subgraph_vec, buffer_vec = offsets(codes), offsets([subgraph]), offsets(buffers)
    description = b.CreateString(model.description)
    root = _table(b, 5, [(0, "u32", SCHEMA_VERSION), (1, "off", code_vec), (2, "off", subgraph_vec),
                         (3, "off", description), (4, "off", buffer_vec)])
    b.Finish(root, file_identifier=FILE_ID)
    return bytes(b.Output())


def _table(b, num_fields: int, fields: list) -> int:
    """One table from (slot, kind, value) triples; scalars are always written (no defaults)."""
    b.StartObject(num_fields)
    for slot, kind, value in fields:
        if kind == "off":
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "i32":
            b.PrependInt32Slot(slot, int(value), int(value) + 1)
        elif kind == "u32":
            b.PrependUint32Slot(slot, int(value), int(value) + 1)
        elif kind == "i8":
            b.PrependInt8Slot(slot, int(value), int(value) + 1)
        elif kind == "u8":
            b.PrependUint8Slot(slot, int(value), int(value) + 1)
        elif kind == "bool":
            b.PrependBoolSlot(slot, bool(value), not bool(value))
        else:
            raise ValueError(f"unknown field kind {kind!r}")
    return b.EndObject()


# --------------------------------------------------------------------------- reader


def decode(data: bytes) -> Model:
    """The Model in ``data`` (the tables and options above; ValueError on anything else)."""
    from flatbuffers import encode as fb_encode
    from flatbuffers import number_types as N
    from flatbuffers.table import Table

    buf = bytearray(data)
    if len(buf) < 8 or bytes(buf[4:8]) != FILE_ID:
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")

    def slot(tab: Table, index: int) -> int:
        return tab.Offset(4 + 2 * index)

    def scalar(tab: Table, index: int, flags, default=0):
        o = slot(tab, index)
        return tab.Get(flags, tab.Pos + o) if o else default

    def vector(tab: Table, index: int, flags) -> np.ndarray:
        o = slot(tab, index)
        return tab.GetVectorAsNumpy(flags, o).copy() if o else np.zeros(0, N.to_numpy_type(flags))

    def child(tab: Table, index: int) -> Optional[Table]:
        o = slot(tab, index)
        return Table(buf, tab.Indirect(tab.Pos + o)) if o else None

    def children(tab: Table, index: int) -> List[Table]:
        o = slot(tab, index)
        if not o:
            return []
        start = tab.Vector(o)
        return [Table(buf, tab.Indirect(start + 4 * i)) for i in range(tab.VectorLen(o))]

    def text(tab: Table, index: int) -> str:
        o = slot(tab, index)
        return tab.String(tab.Pos + o).decode("utf-8") if o else ""

    root = Table(buf, fb_encode.Get(N.UOffsetTFlags.packer_type, buf, 0))
    codes = []
    for code in children(root, 1):
        value = max(scalar(code, 0, N.Int8Flags), scalar(code, 3, N.Int32Flags))
        if value not in _BY_CODE:
            raise ValueError(f"operator code {value} is not one sfpn-edge writes")
        codes.append(_BY_CODE[value])
    buffers = [vector(t, 0, N.Uint8Flags) for t in children(root, 4)]
    subgraphs = children(root, 2)
    if len(subgraphs) != 1:
        raise ValueError(f"expected one subgraph, found {len(subgraphs)}")
    graph = subgraphs[0]
    tensors = []
    for t in children(graph, 0):
        dtype = scalar(t, 1, N.Int8Flags)
        if dtype not in DTYPES:
            raise ValueError(f"tensor type {dtype} is not one sfpn-edge writes")
        shape = tuple(int(d) for d in vector(t, 0, N.Int32Flags))
        raw = buffers[scalar(t, 2, N.Uint32Flags)]
        values = np.frombuffer(raw.tobytes(), DTYPES[dtype]).reshape(shape) if raw.size else None
        q = child(t, 4)
        quant = None if q is None else Quant(vector(q, 2, N.Float32Flags), vector(q, 3, N.Int64Flags),
                                             scalar(q, 6, N.Int32Flags))
        signature = vector(t, 7, N.Int32Flags)
        tensors.append(Tensor(text(t, 3), shape, dtype, values, quant,
                              tuple(int(d) for d in signature) if signature.size else None))
    ops = []
    for o in children(graph, 3):
        kind = codes[scalar(o, 0, N.Uint32Flags)]
        options = {}
        table = child(o, 4)
        flags = {"i8": N.Int8Flags, "i32": N.Int32Flags, "bool": N.BoolFlags}
        for name, index, kind_ in OPS[kind][2] if table is not None else ():
            options[name] = int(scalar(table, index, flags[kind_]))
        ops.append(Op(kind, vector(o, 1, N.Int32Flags).tolist(), vector(o, 2, N.Int32Flags).tolist(), options))
    return Model(tensors, ops, vector(graph, 1, N.Int32Flags).tolist(), vector(graph, 2, N.Int32Flags).tolist(),
                 text(root, 3))
