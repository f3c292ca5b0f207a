"""The YuNet adapter: row parsing through the real cv2.FaceDetectorYN, with a tiny synthetic model.

The synthetic ONNX graph has YuNet's input and twelve outputs (cls/obj/bbox/kps at strides 8,
16, 32): its stride-8 face score is the brightness of each 8x8 cell, box and landmark offsets
are constants, so OpenCV's own decoder yields one face at a known place. A real YuNet model
(OpenCV model zoo) is tested too when $SFPN_YUNET_MODEL points at one.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sfpn_edge.detect import Detector, pad_image
from sfpn_edge.detect.yunet import YuNet
from sfpn_edge.errors import ImageError, ModelError
from sfpn_edge.io import read_image

BBOX = np.array([0.5, 0.5, np.log(4.0), np.log(5.0)], np.float32)  # centre offset, log w/h in strides
KPS = np.array([0.1, 0.2, 0.9, 0.2, 0.5, 0.5, 0.2, 0.8, 0.8, 0.8], np.float32)  # 5 (x, y) in strides


@pytest.fixture(scope="module")
def fake_yunet(tmp_path_factory) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(BBOX, "bbox_c"), numpy_helper.from_array(KPS, "kps_c"),
             numpy_helper.from_array(np.array([1, 1, -1], np.int64), "flat"),
             numpy_helper.from_array(np.array(1 / 255.0, np.float32), "unit"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = []
    for s in (8, 16, 32):
        nodes += [
            helper.make_node("AveragePool", ["input"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("ReduceMean", [f"pool{s}"], [f"grey{s}"], axes=[1], keepdims=1),
            helper.make_node("Mul", [f"grey{s}", "unit" if s == 8 else "zero"], [f"score{s}"]),
            helper.make_node("Reshape", [f"score{s}", "flat"], [f"row{s}"]),
            helper.make_node("Transpose", [f"row{s}"], [f"cls_{s}"], perm=[0, 2, 1]),
            helper.make_node("Identity", [f"cls_{s}"], [f"obj_{s}"]),
            helper.make_node("Mul", [f"cls_{s}", "zero"], [f"none{s}"]),
            helper.make_node("Add", [f"none{s}", "bbox_c"], [f"bbox_{s}"]),
            helper.make_node("Add", [f"none{s}", "kps_c"], [f"kps_{s}"]),
        ]
    outputs = [helper.make_tensor_value_info(f"{k}_{s}", TensorProto.FLOAT, [1, None, None])
               for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]
    graph = helper.make_graph(nodes, "fake_yunet",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, None, None])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("yunet") / "fake_yunet.onnx"
    onnx.save(model, str(path))
    return path


def test_adapter_maps_rows_to_faces(fake_yunet):
    detector = YuNet(fake_yunet, score_threshold=0.5)
    assert isinstance(detector, Detector)
    image = np.zeros((200, 300, 3), np.uint8)
    row, col = 5, 7
    image[8 * row:8 * row + 8, 8 * col:8 * col + 8] = 255  # one bright stride-8 cell: the "face"
    (face,) = detector.detect(image)
    cx, cy = (col + BBOX[0]) * 8, (row + BBOX[1]) * 8
    w, h = np.exp(BBOX[2]) * 8, np.exp(BBOX[3]) * 8
    np.testing.assert_allclose(face.box, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), atol=1e-3)
    np.testing.assert_allclose(face.landmarks, (KPS.reshape(5, 2) + (col, row)) * 8, atol=1e-3)
    assert face.landmarks[0, 0] < face.landmarks[1, 0]  # subject's right eye = image-left, first
    assert face.score == pytest.approx(1.0, abs=1e-4)
    # Another image size on the same detector (the adapter resets the input size each call).
    assert detector.detect(np.zeros((64, 96, 3), np.uint8)) == []


def test_refuses_missing_or_bogus_model_and_bad_images(tmp_path, fake_yunet):
    with pytest.raises(ModelError, match="not found"):
        YuNet(tmp_path / "none.onnx")
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match="cannot load"):
        YuNet(bogus)
    with pytest.raises(ImageError):
        YuNet(fake_yunet).detect(np.zeros((20, 20), np.uint8))


def test_real_yunet_model(example_crops):
    model = os.environ.get("SFPN_YUNET_MODEL")
    if not model or not Path(model).is_file():
        pytest.skip("set SFPN_YUNET_MODEL to a YuNet .onnx (OpenCV model zoo) to test a real model")
    detector = YuNet(model)
    for path in example_crops:
        padded, _ = pad_image(read_image(path), 0.5)
        faces = detector.detect(padded)
        assert faces and faces[0].score > 0.7
        eye_l, eye_r, nose, mouth_l, mouth_r = faces[0].landmarks
        assert eye_l[0] < nose[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
    assert detector.detect(np.zeros((240, 320, 3), np.uint8)) == []
