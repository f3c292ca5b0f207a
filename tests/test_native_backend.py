"""The native backend on the real DWC model: loading, agreement with fp32, and bad plan files."""
from __future__ import annotations

import io
import json
import shutil
import tracemalloc
import zipfile

import numpy as np
import pytest

from hostile_corpus import deep_json, zip_bomb
from sfpn_edge import models
from sfpn_edge.backends import open_model
from sfpn_edge.backends.native_backend import PLAN_VERSION, load_plan
from sfpn_edge.converters import native_export
from sfpn_edge.converters.calibration_data import calibration_crops, cfp_calibration_samples
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.errors import ModelError, SfpnError


@pytest.fixture(scope="module")
def native_dir(model_dir, cfp_root, tmp_path_factory):
    """A copy of the converted model with a native int8 plan calibrated on 32 CFP crops."""
    out = tmp_path_factory.mktemp("native") / "model"
    shutil.copytree(model_dir, out)
    mean = models.load_manifest(out)["mean"]
    crops = calibration_crops(cfp_calibration_samples(cfp_root, 32), 113, mean)
    native_export.export_native(out, crops, "CFP, 32 crops")
    return out


@pytest.fixture(scope="module")
def faces(cfp_root, native_dir):
    mean = models.load_manifest(native_dir)["mean"]
    return calibration_crops(cfp_calibration_samples(cfp_root, 300)[200:212], 113, mean)


def test_native_descriptors_follow_fp32(native_dir, faces):
    fp32 = FaceEmbedder(native_dir, "onnxruntime", "fp32", threads=1).embed(faces, normalize=True)
    native = FaceEmbedder(native_dir, "native", "int8", threads=1)
    got = native.embed(faces, normalize=True)
    cos = (fp32 * got).sum(1)
    assert cos.min() > 0.995, cos
    info = native.describe()
    assert info["backend"] == "native" and info["isa"] in ("avx512vnni", "portable")


def test_threads_and_code_paths_give_identical_descriptors(native_dir, faces):
    path = models.model_file(native_dir, "native", "int8")
    (want,) = open_model(path, "native", precision="int8", threads=1).run(faces)
    for threads, portable in [(2, False), (1, True), (2, True)]:
        (got,) = open_model(path, "native", precision="int8", threads=threads, portable=portable).run(faces)
        assert np.array_equal(got, want), (threads, portable)


def test_wrong_precision_or_device(native_dir):
    path = models.model_file(native_dir, "native", "int8")
    with pytest.raises(SfpnError, match="native runs int8 models, not 'fp32'"):
        open_model(path, "native", precision="fp32")
    with pytest.raises(SfpnError, match="CPU only"):
        open_model(path, "native", precision="int8", device="NPU")
    with pytest.raises(ModelError, match=".npz"):
        open_model(native_dir / "model.onnx", "native", precision="int8")


def _rewrite(src, dst, record=None, **arrays):
    """A copy of the plan file ``src`` with the plan record (a dict) and/or arrays replaced."""
    with np.load(src, allow_pickle=False) as npz:
        content = {k: npz[k] for k in npz.files}
    if record is not None:
        content["plan"] = np.frombuffer(json.dumps(record).encode(), np.uint8)
    content.update(arrays)
    np.savez(dst, **content)
    return dst


@pytest.mark.parametrize("damage, message", [
    ("text", "not a readable plan file"),
    ("truncated", "not a readable plan file"),
    ("no plan", "no 'plan' record"),
    ("not json", "not JSON"),
    ("other format", "not a sfpn-native-int8 plan"),
    ("newer version", "plan version"),
    ("bad op", "invalid plan"),
    ("bad weights", "invalid plan"),
    ("pickle", "not a readable plan file"),
])
def test_bad_plan_files_are_clear_errors(native_dir, tmp_path, damage, message):
    good = models.model_file(native_dir, "native", "int8")
    plan, _ = load_plan(good)
    bad = tmp_path / "model_native_int8.npz"
    if damage == "text":
        bad.write_text("not a zip file")
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "no plan":
        with np.load(good) as npz:
            np.savez(bad, **{k: npz[k] for k in npz.files if k != "plan"})
    elif damage == "not json":
        _rewrite(good, bad, plan=np.frombuffer(b"{not json", np.uint8))
    elif damage == "other format":
        _rewrite(good, bad, {**plan, "format": "something-else"})
    elif damage == "newer version":
        _rewrite(good, bad, {**plan, "version": PLAN_VERSION + 1})
    elif damage == "bad op":
        ops = [dict(op) for op in plan["ops"]]
        ops[3]["src"] = len(plan["buffers"]) + 5
        _rewrite(good, bad, {**plan, "ops": ops})
    elif damage == "bad weights":
        _rewrite(good, bad, **{"op2.w": np.zeros((3, 3), np.int8)})
    elif damage == "pickle":
        with zipfile.ZipFile(bad, "w") as z:   # an object array needs pickle: refused unread
            buf = io.BytesIO()
            np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
            z.writestr("plan.npy", buf.getvalue())
    with pytest.raises(ModelError, match=message):
        open_model(bad, "native", precision="int8")


def test_photo_pipeline_on_the_native_backend(native_dir, mtcnn_dir, cfp_root):
    """FaceVerifier with backend="native": MTCNN's nets run on ONNX Runtime, the face model native."""
    from sfpn_edge.detect.mtcnn import MTCNN
    from sfpn_edge.pipeline import FaceVerifier

    image = str(cfp_root / "Data" / "Images" / "001" / "frontal" / "01.jpg")
    detector = MTCNN(mtcnn_dir, "native", threads=1)
    assert detector.pnet.name == "onnxruntime"
    verifier = FaceVerifier(native_dir, "native", "int8", detector=detector, threads=1)
    assert verifier.embedder.backend == "native"
    result = verifier.verify(image, image)
    assert result.score > 0.999 and result.same


# ---------------------------------------------------------------- hostile plan files (no model needed)

PLAN = {"format": "sfpn-native-int8", "version": PLAN_VERSION, "ops": [{"op": "conv_gap"}]}


def _plan_file(path, record=PLAN, **arrays):
    raw = record if isinstance(record, bytes) else json.dumps(record).encode()
    np.savez(path, plan=np.frombuffer(raw, np.uint8), **arrays)
    return path


def _npy(array_header: dict, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, array_header)
    return buf.getvalue() + data


def test_zip_bomb_member_is_refused_before_decompression(tmp_path):
    """Before: every member was decompressed in full (a 4.8 MB file held 4 GiB)."""
    nbytes = 256 << 20
    header = _npy({"descr": "|i1", "fortran_order": False, "shape": (nbytes,)}, b"")
    bomb = zip_bomb(tmp_path / "model_native_int8.npz", "op0.w.npy", header, nbytes)
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    with pytest.raises(ModelError, match="declare 268,435,5"):
        load_plan(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize("members, message", [
    ({"evil.npy": np.zeros(3, np.int8).tobytes()}, "unexpected member 'evil.npy'"),
    ({"op1.w.npy": _npy({"descr": "<f8", "fortran_order": False, "shape": (2,)}, bytes(16))}, "expected int8"),
    ({"op1.w.npy": _npy({"descr": "|i1", "fortran_order": True, "shape": (2, 2)}, bytes(4))}, "Fortran"),
    ({"op1.w.npy": _npy({"descr": "|i1", "fortran_order": False, "shape": (1000, 1000)}, bytes(10))},
     "does not fill"),
    ({"op1.scale.npy": _npy({"descr": "|O", "fortran_order": False, "shape": (1,)}, bytes(8))}, "expected float32"),
], ids=["name", "dtype", "order", "size", "pickle"])
def test_plan_members_checked_before_allocation(tmp_path, members, message):
    path = _plan_file(tmp_path / "plan.npz")
    with zipfile.ZipFile(path, "a") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelError, match=message):
        load_plan(path)


@pytest.mark.parametrize("record, message", [
    (b'{"format": "sfpn-native-int8", "x": ' + deep_json(100_000).encode() + b"}", "nested more than"),
    ({**PLAN, "ops": [{"op": ["conv"]}]}, "op 0 must be an object whose 'op' is a string, got list"),
    ({**PLAN, "ops": [["conv"]]}, "op 0 must be an object"),
    (json.dumps({**PLAN, "scale": float("nan")}).encode(), "not a JSON number"),
], ids=["deep", "kind-list", "op-list", "nan"])
def test_hostile_plan_records(tmp_path, record, message):
    """Before: RecursionError, TypeError (unhashable list) or a NaN accepted."""
    with pytest.raises(ModelError, match=message):
        load_plan(_plan_file(tmp_path / "plan.npz", record))
