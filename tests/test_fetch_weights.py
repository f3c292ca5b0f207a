"""``sfpn-edge fetch-weights`` with file:// URLs (no test touches the network)."""
from __future__ import annotations

import json

import pytest

from sfpn_edge import models
from sfpn_edge.cli import main
from sfpn_edge.converters.fetch import fetch_weights
from sfpn_edge.errors import SfpnError


@pytest.fixture()
def home(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SFPN_EDGE_HOME", str(root))
    return root


def files_under(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_default_url_is_the_authors_pinned_file():
    assert models.WEIGHTS_URL.startswith("https://")
    assert "HalmstadUniversityBiometrics/SqueezeFacePoseNet-Lightweight-Face-Recognition" in models.WEIGHTS_URL
    assert models.WEIGHTS_URL.endswith("/" + models.WEIGHTS_FILE)


def test_fetch_convert_store_then_reuse(capsys, home, dwc_mat):
    url = dwc_mat.as_uri()
    assert main(["fetch-weights", "--url", url, "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)["fetched"]
    assert item["reused"] is False and item["source_file"] == dwc_mat.name
    target = models.default_model_dir()
    assert target == home / "models" / "squeezefaceposenet-dwc" and item["model_dir"] == str(target)
    assert models.load_manifest(target)["source_sha256"] == models.WEIGHTS_SHA256
    for backend, precision in [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"), ("litert", "fp32"),
                               ("litert", "fp16")]:
        assert models.model_file(target, backend, precision).is_file()
    assert (home / "weights" / f"{models.WEIGHTS_SHA256}.mat").read_bytes() == dwc_mat.read_bytes()

    # Cached: no download needed (an unreachable URL proves it), human output says so.
    assert main(["fetch-weights", "--url", (home / "absent.mat").as_uri()]) == 0
    assert "already present" in capsys.readouterr().out

    # A directory converted before the TFLite files existed gets them, from the cached weights.
    manifest = models.load_manifest(target)
    tflite = {name: (target / name).read_bytes() for name in manifest["files"].pop("litert").values()}
    for name in tflite:
        (target / name).unlink()
    models.write_manifest(target, manifest)
    assert main(["fetch-weights", "--url", (home / "absent.mat").as_uri()]) == 0
    capsys.readouterr()
    assert models.load_manifest(target)["files"]["litert"] == {"fp32": "model.tflite", "fp16": "model_fp16.tflite",
                                                               "int8": "model_int8.tflite"}  # int8 rebuilt too
    assert {name: (target / name).read_bytes() for name in tflite} == tflite

    # --force with a bad source fails cleanly and keeps the good model.
    before = files_under(home)
    assert main(["fetch-weights", "--url", (home / "absent.mat").as_uri(), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfpn-edge fetch-weights: error: cannot download") and err.count("\n") == 1
    assert files_under(home) == before


@pytest.mark.parametrize("damage", ["truncate", "alter"])
def test_damaged_download_stores_nothing(capsys, home, tmp_path, dwc_mat, damage):
    data = bytearray(dwc_mat.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "mirror" / dwc_mat.name
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    assert main(["fetch-weights", "--url", bad.as_uri()]) == 2
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and "nothing was stored" in err and err.count("\n") == 1
    assert files_under(home) == []
    assert not models.default_model_dir().exists()


def test_api_error_type(home, tmp_path):
    with pytest.raises(SfpnError, match="cannot download"):
        fetch_weights((tmp_path / "nothing.mat").as_uri())
    assert files_under(home) == []


def test_fetch_writes_int8_without_a_dataset_then_native_int8_verify_works(capsys, home, dwc_mat, mtcnn_dir):
    """fetch-weights from a local file (the example crops beside it, as in the authors' repository):
    ORT / OpenVINO int8 and the native plan appear, calibrated on the augmented example crops."""
    assert main(["fetch-weights", "--url", dwc_mat.as_uri(), "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)["fetched"]
    record = item["int8"]["calibration"]
    assert record["scheme"] == "example-augmented" and record["count"] == 3 * 64 and "no dataset" in record["source"]
    target = models.default_model_dir()
    manifest = models.load_manifest(target)
    assert manifest["calibration"] == record and {"onnxruntime", "openvino", "native"} <= set(record)
    for backend in ("onnxruntime", "openvino", "native"):
        assert models.model_file(target, backend, "int8").is_file()
    assert (target / "manifest.json").stat().st_mode & 0o777 == 0o644
    crop = dwc_mat.parent / "image_example1.png"
    assert main(["verify", str(crop), str(crop), "--backend", "native", "--precision", "int8",
                 "--detector", "mtcnn", "--detector-weights", str(mtcnn_dir), "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["same"] is True and result["score"] > 0.999
    other = dwc_mat.parent / "image_example2.png"
    assert main(["verify", str(crop), str(other), "--backend", "native", "--precision", "int8",
                 "--detector", "mtcnn", "--detector-weights", str(mtcnn_dir), "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["same"] is False


def test_missing_example_crops_keep_fp32_and_say_why(capsys, home, tmp_path, dwc_mat):
    lone = tmp_path / "lone" / dwc_mat.name
    lone.parent.mkdir()
    lone.write_bytes(dwc_mat.read_bytes())
    assert main(["fetch-weights", "--url", lone.as_uri()]) == 0
    out = capsys.readouterr().out
    assert "int8 not built" in out and "image_example1.png" in out and "--calibration-images" in out
    files = models.load_manifest(models.default_model_dir())["files"]
    assert "int8" not in files["onnxruntime"] and "native" not in files
    assert main(["fetch-weights", "--url", lone.as_uri(), "--no-int8", "--force"]) == 0
    assert "int8" not in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ({}, "no images"),
    ({"notes.txt": b"hello"}, "no images"),
    ({f"{i}.png": None for i in range(3)}, "faces found in 0 of 3 images"),
])
def test_bad_calibration_images_exit_2_and_store_nothing(capsys, home, tmp_path, dwc_mat, mtcnn_dir, content, message):
    import cv2
    import numpy as np

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in content.items():
        if data is None:  # a valid image without a face
            cv2.imwrite(str(folder / name), np.full((120, 160, 3), 90, np.uint8))
        else:
            (folder / name).write_bytes(data)
    assert main(["fetch-weights", "--url", dwc_mat.as_uri(), "--calibration-images", str(folder),
                 "--detector-weights", str(mtcnn_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "--calibration-images" in err, err
    assert not models.default_model_dir().exists()


def test_calibration_images_use_the_users_photos(capsys, home, dwc_mat, mtcnn_dir, cfp_root, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for person in range(1, 11):
        src = cfp_root / "Data" / "Images" / f"{person:03d}" / "frontal" / "01.jpg"
        (photos / f"{person}.jpg").write_bytes(src.read_bytes())
    (photos / "blank.png").write_bytes((dwc_mat.parent / "LICENSE.txt").read_bytes())  # not an image: skipped
    assert main(["fetch-weights", "--url", dwc_mat.as_uri(), "--calibration-images", str(photos),
                 "--detector-weights", str(mtcnn_dir), "--json"]) == 0
    record = models.load_manifest(models.default_model_dir())["calibration"]
    assert record["scheme"] == "user-photos" and record["count"] == 20  # 10 faces + mirrored copies
    assert "10 photos" in record["source"] and "1 without a face" in record["source"]
    assert json.loads(capsys.readouterr().out)["fetched"][0]["int8"]["calibration"] == record
