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
    assert models.load_manifest(target)["files"]["litert"] == {"fp32": "model.tflite", "fp16": "model_fp16.tflite"}
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
