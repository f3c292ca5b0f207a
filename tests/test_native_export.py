"""The native int8 plan: structure, equivalence of the export forms, accuracy of the independent
numpy executor (tests/native_reference.py) against fp32 ONNX Runtime, bad input, atomic writes."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from native_reference import native_reference
from sfpn_edge import models
from sfpn_edge.backends.native_backend import load_plan
from sfpn_edge.converters import native_export
from sfpn_edge.converters.calibration_data import calibration_crops, cfp_calibration_samples
from sfpn_edge.errors import ModelError

onnx = pytest.importorskip("onnx")

CALIBRATION = 32  # CFP images: stable ranges, quick in CI
FIRES = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]


def fp32(onnx_path, batch: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def mean(model_dir) -> list:
    return models.load_manifest(model_dir)["mean"]


@pytest.fixture(scope="module")
def crops(cfp_root, mean) -> np.ndarray:
    return calibration_crops(cfp_calibration_samples(cfp_root, CALIBRATION), 113, mean)


@pytest.fixture(scope="module")
def dwc_plan(model_dir, crops, mean, tmp_path_factory):
    plan, arrays = native_export.build_plan(model_dir / "model.onnx", crops, mean, "CFP test subset")
    path = native_export.save_plan(tmp_path_factory.mktemp("native") / native_export.NATIVE_INT8, plan, arrays)
    return path, plan, arrays


@pytest.fixture(scope="module")
def dwc_graph(dwc_mat):
    from sfpn_edge.converters.layergraph import build_graph, read_mat

    return build_graph(read_mat(dwc_mat))


def written_ranges(plan: dict) -> dict:
    """buffer -> list of (first, last + 1) channel ranges written, checking every op reads written data."""
    written = {0: [(0, 4)]}

    def ready(buffer: int, first: int, count: int) -> bool:
        done = set().union(*(range(a, b) for a, b in written.get(buffer, [])))
        return set(range(first, first + count)) <= done

    for op in plan["ops"]:
        if op["op"] == "maxpool":
            assert ready(op["src"], 0, plan["buffers"][op["src"]]["c"]), op
            written[op["dst"]] = [(0, plan["buffers"][op["dst"]]["c"])]
            continue
        assert ready(op["src"], op["src_c0"], op.get("cin", op.get("channels"))), op
        if op["op"] != "conv_gap":
            count = op["cout"] if op["op"] == "conv" else op["channels"] * op["multiplier"]
            written.setdefault(op["dst"], []).append((op["dst_c0"], op["dst_c0"] + count))
    return written


def test_plan_structure_of_the_dwc_model(dwc_plan, mean):
    path, plan, arrays = dwc_plan
    assert plan["format"] == "sfpn-native-int8" and plan["version"] == 1
    assert plan["input"] == {"offset": mean, "pad": [131, 104, 91, 0]}
    assert plan["calibration"] == {"count": CALIBRATION, "source": "CFP test subset", "method": "max",
                                   "headroom": 1.0, "bias_correction": CALIBRATION}
    assert plan["buffers"][0] == {"h": 113, "w": 113, "c": 4}
    assert all(b["c"] % 16 == 0 for b in plan["buffers"][1:])
    kinds = [op["op"] for op in plan["ops"]]
    assert kinds.count("maxpool") == 3 and kinds.count("dwconv") == 8 and kinds[-1] == "conv_gap"
    assert len(kinds) == 1 + 3 + 8 * 3 + 1
    first = plan["ops"][0]
    assert first == {"op": "conv", "kernel": 3, "src": 0, "src_c0": 0, "cin": 4, "dst": 1, "dst_c0": 0, "cout": 64}
    dws = [op for op in plan["ops"] if op["op"] == "dwconv"]
    assert [(op["channels"], op["multiplier"]) for op in dws] == [(s, 4) for s, _ in FIRES]
    for op, (s, e) in zip(dws, FIRES):   # the dwconv fills the fire's concat buffer after expand1x1
        assert op["dst_c0"] == e and plan["buffers"][op["dst"]]["c"] == e + 4 * s
    assert plan["ops"][-1] == {"op": "conv_gap", "src": plan["ops"][-2]["dst"], "src_c0": 0, "cin": 512, "cout": 1000}
    for buffer, ranges in written_ranges(plan).items():   # every channel written exactly once
        covered = np.concatenate([np.arange(a, b) for a, b in ranges])
        assert np.array_equal(np.sort(covered), np.arange(plan["buffers"][buffer]["c"])), buffer
    loaded, loaded_arrays = load_plan(path)
    assert loaded == json.loads(json.dumps(plan)) and loaded_arrays.keys() == arrays.keys()


def test_plan_arrays(dwc_plan, dwc_graph):
    _, plan, arrays = dwc_plan
    for i, op in enumerate(plan["ops"]):
        if op["op"] == "maxpool":
            assert f"op{i}.w" not in arrays
            continue
        w, scale, bias = arrays[f"op{i}.w"], arrays[f"op{i}.scale"], arrays[f"op{i}.bias"]
        if op["op"] == "dwconv":
            assert w.shape == (op["multiplier"], 9, op["channels"])
            peak, outputs = np.abs(w).max(axis=1), w.shape[0] * w.shape[2]
        else:
            assert w.shape == (op["cout"], op.get("kernel", 1) ** 2, op["cin"])
            peak, outputs = np.abs(w).max(axis=(1, 2)), w.shape[0]
        assert w.dtype == np.int8 and w.min() >= -127 and (peak == 127).all()   # symmetric per output channel
        assert scale.dtype == bias.dtype == np.float32 and scale.shape == bias.shape == (outputs,)
        assert np.isfinite(scale).all() and np.isfinite(bias).all() and (scale > 0).all()
    assert not arrays["op0.w"][:, :, 3].any()   # buffer 0's fourth channel is padding
    conv10 = dwc_graph.nodes[-3]                 # conv_gap: real-unit bias, natural output order
    last = len(plan["ops"]) - 1
    assert conv10.name == "conv10" and np.allclose(arrays[f"op{last}.bias"], conv10.weights["B"])


def test_reference_descriptors_match_fp32(dwc_plan, model_dir, example_crops, cfp_root, mean, crops, tmp_path):
    """int8 plan (numpy executor) vs fp32 ORT on the authors' crops and CFP faces outside calibration."""
    from sfpn_edge.samples import Sample

    held_out = cfp_calibration_samples(cfp_root, CALIBRATION + 16)[CALIBRATION:]
    batch = np.concatenate([calibration_crops([Sample(p) for p in example_crops], 113, mean),
                            calibration_crops(held_out, 113, mean)])
    want = fp32(model_dir / "model.onnx", batch)
    cos = cosine(native_reference(dwc_plan[0], batch), want)
    # measured: min 0.9988, median 0.9992 (32 calibration images)
    assert cos.min() > 0.995 and np.median(cos) > 0.998
    plan, arrays = native_export.build_plan(model_dir / "model.onnx", crops, mean, "x", bias_correction=False)
    plain = cosine(native_reference(native_export.save_plan(tmp_path / "plain.npz", plan, arrays), batch), want)
    assert np.mean(1 - cos) < 0.9 * np.mean(1 - plain)   # bias correction brings the plan closer to fp32


def test_export_forms_give_the_same_plan(dwc_graph, model_dir, crops, mean, tmp_path):
    """gather and unrewritten grouped convs land in the same physical order as replicate."""
    from sfpn_edge.converters.onnx_export import export_onnx

    few = crops[:8]
    build = lambda path: native_export.build_plan(path, few, mean, "x", bias_correction=False)  # noqa: E731
    plans = [build(model_dir / "model.onnx")]
    for name, options in (("gather", {"rewrite": "gather"}), ("plain", {"depthwise_rewrite": False})):
        path = export_onnx(dwc_graph, tmp_path / f"{name}.onnx", **options)
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert ("Gather" in ops) == (name == "gather")
        plans.append(build(path))
    (ref_plan, ref), others = plans[0], plans[1:]
    for plan, arrays in others:
        assert plan["ops"] == ref_plan["ops"] and plan["buffers"] == ref_plan["buffers"]
        for key, value in ref.items():   # calibration maxima differ by float rounding (~1e-7)
            if value.dtype == np.int8:
                diff = np.abs(arrays[key].astype(int) - value)
                assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, key
            else:
                np.testing.assert_allclose(arrays[key], value, rtol=1e-3, atol=1e-6, err_msg=key)


def test_synthetic_base_model(tmp_path, crops):
    """Dense 3x3 expand convs become kernel-3 convs writing the concat buffer's second half."""
    from sfpn_edge.converters.synthetic import write_synthetic_model

    manifest = write_synthetic_model(tmp_path / "base", "base")
    few = crops[:8]
    plan, arrays = native_export.build_plan(tmp_path / "base" / "model.onnx", few, manifest["mean"], "x")
    kinds = [op["op"] for op in plan["ops"]]
    assert "dwconv" not in kinds and len(kinds) == 29
    expand3 = [op for op in plan["ops"] if op["op"] == "conv" and op["kernel"] == 3][1:]
    assert [(op["cin"], op["cout"], op["dst_c0"]) for op in expand3] == [(s, e, e) for s, e in FIRES]
    path = native_export.save_plan(tmp_path / "base.npz", plan, arrays)
    assert cosine(native_reference(path, few), fp32(tmp_path / "base" / "model.onnx", few)).min() > 0.999


def test_activation_ranges_are_exact_percentiles():
    """max and percentile of each channel's values, checked against a full sort."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 7])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(0).normal(size=(20, 3, 5, 7)).astype(np.float32)
    x[:, 1] = -1.0                      # never positive
    x[:, 2] = 0.0
    x[3, 2, 0, 0] = 2.5                 # positive once: below the percentile, falls back to the max
    values = np.sort(np.maximum(x, 0).transpose(1, 0, 2, 3).reshape(3, -1), axis=1)[:, ::-1]
    for percentile in (100.0, 99.0, 90.0):
        got = native_export.activation_ranges(model, ["y"], x, percentile)["y"]
        rank = int((1 - percentile / 100) * values.shape[1])
        assert got[0] == values[0, rank] and got[1] == 0.0 and got[2] == 2.5
    assert [o.name for o in model.graph.output] == ["y"]   # the caller's model is untouched


def test_export_native_records_the_plan(model_dir, crops, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    path = native_export.export_native(copy, crops[:4], "four crops", percentile=99.9)
    manifest = models.load_manifest(copy)
    assert models.model_file(copy, "native", "int8") == path == copy / "model_native_int8.npz"
    assert "percentile 99.9" in manifest["calibration"]["native"] and "four crops" in manifest["calibration"]["native"]
    assert load_plan(path)[0]["calibration"]["method"] == "percentile 99.9"
    assert path.stat().st_mode & 0o777 == 0o644


def mutated(model_dir, tmp_path, edit) -> str:
    """model.onnx with ``edit(model)`` applied, saved under tmp_path."""
    model = onnx.load(str(model_dir / "model.onnx"))
    edit(model)
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    return str(path)


def node(model, name: str):
    return next(n for n in model.graph.node if n.name == name)


def set_attr(model, name: str, attr: str, value) -> None:
    from onnx import helper

    target = node(model, name)
    kept = [a for a in target.attribute if a.name != attr]
    del target.attribute[:]
    target.attribute.extend(kept + [helper.make_attribute(attr, value)])


def five_by_five(model) -> None:
    """fire2's depthwise conv with 5x5 filters (pad 2)."""
    from onnx import numpy_helper

    conv = node(model, "fire2-expand3x3-groupedconv")
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(np.zeros((64, 1, 5, 5), np.float32) + 0.1, init.name))
    set_attr(model, conv.name, "kernel_shape", [5, 5])
    set_attr(model, conv.name, "pads", [2, 2, 2, 2])


def no_relu(model) -> None:
    node(model, "fire2-relu_squeeze1x1").op_type = "Sigmoid"


def unknown_op(model) -> None:
    node(model, "pool1").op_type = "LpPool"


def strided(model) -> None:
    set_attr(model, "fire2-squeeze1x1", "strides", [2, 2])


@pytest.mark.parametrize("edit, message", [
    (no_relu, "node 'fire2-squeeze1x1': Conv not followed by Relu"),
    (unknown_op, "node 'pool1': op LpPool is not supported"),
    (strided, "node 'fire2-squeeze1x1': stride"),
    (five_by_five, "node 'fire2-expand3x3-groupedconv': 5x5 grouped conv"),
])
def test_unsupported_graph_names_the_node(model_dir, crops, mean, tmp_path, edit, message):
    path = mutated(model_dir, tmp_path, edit)
    with pytest.raises(ModelError, match=message):
        native_export.build_plan(path, crops[:2], mean, "x")


def test_bad_calibration_input(model_dir, crops, mean, tmp_path):
    onnx_path = model_dir / "model.onnx"
    with pytest.raises(ValueError, match="NaN"):
        native_export.build_plan(onnx_path, np.full((2, 3, 113, 113), np.nan, np.float32), mean, "x")
    with pytest.raises(ModelError, match="constant"):
        native_export.build_plan(onnx_path, np.zeros((2, 3, 113, 113), np.float32), mean, "x")
    with pytest.raises(ValueError, match=r"must be \[N, 3, 113, 113\]"):
        native_export.build_plan(onnx_path, crops[:2, :, :96, :96].copy(), mean, "x")
    with pytest.raises(ValueError, match="percentile"):
        native_export.build_plan(onnx_path, crops[:2], mean, "x", percentile=0.0)
    for headroom in (0.5, 17.0, float("nan")):
        with pytest.raises(ValueError, match="headroom"):
            native_export.build_plan(onnx_path, crops[:2], mean, "x", headroom=headroom)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x01not a model at all")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        native_export.build_plan(garbage, crops[:2], mean, "x")


def test_save_is_atomic(dwc_plan, tmp_path, monkeypatch):
    """A failure mid-write leaves no plan file (and an existing one untouched)."""
    import os

    _, plan, arrays = dwc_plan
    dest = tmp_path / native_export.NATIVE_INT8

    def broken(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        native_export.save_plan(dest, plan, arrays)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    native_export.save_plan(dest, plan, arrays)
    before = dest.read_bytes()
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        native_export.save_plan(dest, {**plan, "ops": []}, arrays)
    assert dest.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [dest.name]
