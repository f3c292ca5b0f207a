"""Backends on small ONNX graphs built here: numerics, shapes, threads, caching and bad input."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from sfpn_edge.backends import Backend, open_model, specs
from sfpn_edge.errors import ModelError, SfpnError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(7)
W = RNG.standard_normal((4, 3)).astype(np.float32)  # 1x1 conv, 3 -> 4 channels
B = RNG.standard_normal(4).astype(np.float32)

BACKENDS = [spec.name for spec in specs() if spec.graph_backend is None]  # run any ONNX graph


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def pnet_like(tmp_path_factory) -> Path:
    """MTCNN-style net: NHWC input with dynamic N/H/W, two outputs."""
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["conv"]),
        helper.make_node("Sigmoid", ["conv"], ["prob"]),
        helper.make_node("ReduceSum", ["conv", "axes"], ["total"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "pnet_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 4, "H", "W"]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", "H", "W"])],
        [numpy_helper.from_array(W.reshape(4, 3, 1, 1), "w"), numpy_helper.from_array(B, "b"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    return _save(graph, tmp_path_factory.mktemp("models") / "pnet_like.onnx")


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])], "add",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 3])],
    )
    return _save(graph, tmp_path_factory.mktemp("models") / "add.onnx")


def reference(image: np.ndarray) -> tuple:
    conv = np.einsum("nhwc,oc->nohw", image.astype(np.float64), W) + B[None, :, None, None]
    return 1 / (1 + np.exp(-conv)), conv.sum(axis=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 12, 12, 3), (3, 20, 31, 3)])
def test_multi_output_dynamic_hw_matches_reference(pnet_like, backend, shape):
    model = open_model(pnet_like, backend, threads=1)
    assert isinstance(model, Backend)
    assert model.input_names == ["image"] and model.output_names == ["prob", "total"]
    assert model.inputs[0].shape == (None, None, None, 3)
    image = RNG.standard_normal(shape).astype(np.float32)
    prob, total = model.run(image)
    want_prob, want_total = reference(image)
    assert prob.dtype == np.float32 and prob.shape == want_prob.shape
    np.testing.assert_allclose(prob, want_prob, atol=1e-5)
    np.testing.assert_allclose(total, want_total, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_inputs_in_order(two_inputs, backend):
    model = open_model(two_inputs, backend)
    a, b = np.ones((2, 3), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
    (out,) = model.run(a, b)
    np.testing.assert_array_equal(out, a + b)
    with pytest.raises(ValueError, match="takes 2 input"):
        model.run(a)
    with pytest.raises(ValueError, match=r"expected shape \[2, 3\]"):
        model.run(a, np.ones((3, 3), np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, 8, 8, 3), np.float64), "dtype float32"),
        (np.zeros((8, 8, 3), np.float32), "4 dimensions"),
        (np.zeros((1, 8, 8, 4), np.float32), "expected shape"),
        (np.zeros((0, 8, 8, 3), np.float32), "expected shape"),
        ([[1.0, 2.0, 3.0]], "numpy array"),
    ],
)
def test_bad_input_is_a_value_error(pnet_like, backend, bad, message):
    model = open_model(pnet_like, backend)
    with pytest.raises(ValueError, match=message):
        model.run(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input_is_accepted(pnet_like, backend):
    model = open_model(pnet_like, backend)
    image = RNG.standard_normal((2, 9, 9, 3)).astype(np.float32)
    (prob, _) = model.run(image[:, ::-1])
    np.testing.assert_allclose(prob, reference(image[:, ::-1])[0], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_callers_get_their_own_results(pnet_like, backend):
    model = open_model(pnet_like, backend, threads=1)
    images = [RNG.standard_normal((1, 10 + i, 10, 3)).astype(np.float32) for i in range(8)]
    want = [reference(im)[0] for im in images]
    errors = []

    def worker(k):
        try:
            for _ in range(20):
                i = (k * 3 + _) % len(images)
                np.testing.assert_allclose(model.run(images[i])[0], want[i], atol=1e-5)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_model_cache_cold_then_warm(pnet_like, backend, tmp_path):
    image = RNG.standard_normal((1, 12, 12, 3)).astype(np.float32)
    cold = open_model(pnet_like, backend, threads=1, cache_dir=tmp_path)
    assert cold.cache_hit is False and any(tmp_path.iterdir())
    warm = open_model(pnet_like, backend, threads=1, cache_dir=tmp_path)
    assert warm.cache_hit is True and warm.describe()["cache_hit"] is True
    np.testing.assert_array_equal(warm.run(image)[0], cold.run(image)[0])
    assert open_model(pnet_like, backend).cache_hit is None


def test_onnxruntime_damaged_cache_entry_is_rebuilt(pnet_like, tmp_path):
    open_model(pnet_like, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("ort-*.onnx")
    entry.write_bytes(b"not a model")
    again = open_model(pnet_like, cache_dir=tmp_path)
    assert again.cache_hit is False
    image = RNG.standard_normal((1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(again.run(image)[0], reference(image)[0], atol=1e-5)


def test_onnxruntime_options_are_explicit(pnet_like):
    model = open_model(pnet_like, "onnxruntime", threads=2)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    info = model.describe()
    assert info["providers"] == ["CPUExecutionProvider"] and info["threads"] == 2


@pytest.mark.parametrize("precision, hint", [("fp32", "f32"), ("int8", "f32"), ("fp16", "f32"), ("bf16", "bf16")])
def test_openvino_pins_inference_precision(pnet_like, precision, hint):
    from sfpn_edge import platform_info

    model = open_model(pnet_like, "openvino", precision=precision, threads=1)
    info = model.describe()
    plat = platform_info.detect()
    if hint == "bf16" and not any(plat.has(f) for f in ("avx512_bf16", "amx_bf16", "bf16")):
        hint = "f32"  # asked for, but a CPU without bf16 instructions compiles the model in f32
    assert info["inference_precision_hint"] == hint
    assert info["inference_num_threads"] == 1 and info["precision"] == precision


def test_openvino_static_batch_reshape(pnet_like):
    model = open_model(pnet_like, "openvino", batch=2)
    assert model.inputs[0].shape == (2, None, None, 3)
    with pytest.raises(ValueError, match="expected shape"):
        model.run(np.zeros((1, 8, 8, 3), np.float32))
    assert model.run(np.zeros((2, 8, 8, 3), np.float32))[0].shape == (2, 4, 8, 8)


def test_missing_and_corrupt_files_are_model_errors(tmp_path, pnet_like):
    with pytest.raises(ModelError, match="not found"):
        open_model(tmp_path / "absent.onnx")
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(ModelError, match="expected a"):
        open_model(tmp_path / "model.txt")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00garbage" * 50)
    for backend in BACKENDS:
        with pytest.raises(ModelError, match="cannot (load|read) garbage.onnx"):
            open_model(garbage, backend)
    xml = tmp_path / "lonely.xml"
    xml.write_text('<?xml version="1.0"?><net name="x" version="11"><layers/></net>')
    with pytest.raises(ModelError, match="lonely.bin is missing"):
        open_model(xml, "openvino")
    xml.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(ModelError, match="no inputs or no outputs"):
        open_model(xml, "openvino")


def test_bad_options_are_clear_errors(pnet_like):
    with pytest.raises(SfpnError, match="unknown backend 'tflite'"):
        open_model(pnet_like, "tflite")
    with pytest.raises(SfpnError, match="precision must be one of"):
        open_model(pnet_like, precision="int4")
    with pytest.raises(SfpnError, match="Cast nodes"):
        open_model(pnet_like, "onnxruntime", precision="fp16")
    with pytest.raises(SfpnError, match="no device 'GPU'"):
        open_model(pnet_like, "onnxruntime", device="GPU")
    with pytest.raises(SfpnError, match="removed from OpenVINO after 2022.3"):
        open_model(pnet_like, "openvino", device="MYRIAD")
    with pytest.raises(SfpnError, match=r"NPU is not available here; available: \["):
        open_model(pnet_like, "openvino", device="NPU")
    for threads in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be"):
            open_model(pnet_like, threads=threads)
