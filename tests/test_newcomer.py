"""The newcomer path: package exports, py.typed, info with no backend, fetch-weights offline."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hidden_modules import hiding_env, run_cli, run_python
from sfpn_edge.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_package_exports_are_lazy(tmp_path):
    code = ("import json, sys, sfpn_edge\n"
            "light = [m for m in ('numpy', 'cv2', 'sfpn_edge.pipeline', 'sfpn_edge.gallery') if m in sys.modules]\n"
            "from sfpn_edge import FaceVerifier, FaceEmbedder, FaceGallery\n"
            "from sfpn_edge.pipeline import FaceVerifier as V\n"
            "from sfpn_edge.embed import FaceEmbedder as E\n"
            "from sfpn_edge.gallery import FaceGallery as G\n"
            "print(json.dumps([light, [FaceVerifier is V, FaceEmbedder is E, FaceGallery is G],"
            " sorted(set(sfpn_edge.__all__) & set(dir(sfpn_edge)))]))\n")
    out = run_python(hiding_env(tmp_path, []), "-c", code)
    light, same, listed = json.loads(out.stdout)
    assert light == [] and same == [True, True, True]
    assert listed == ["FaceEmbedder", "FaceGallery", "FaceVerifier", "__version__"]
    out = run_python(hiding_env(tmp_path, []), "-c", "import sfpn_edge; sfpn_edge.Nope")
    assert "has no attribute 'Nope'" in out.stderr


def test_py_typed_is_package_data(tmp_path):
    """setup.py's build_py (what goes into the wheel) copies py.typed beside the sources."""
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sfpn_edge" / "py.typed").is_file() and (tmp_path / "sfpn_edge" / "gallery.py").is_file()


def test_info_without_any_backend_exits_0_and_says_what_is_missing(tmp_path):
    env = hiding_env(tmp_path, ["onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime",
                                "sfpn_edge.kernels.engine"])
    proc = run_cli(env, "info")
    assert proc.returncode == 0, proc.stderr
    assert "backend onnxruntime: onnxruntime is not installed" in proc.stdout
    assert "auto -> no backend: nothing can run here" in proc.stdout and "pip install onnxruntime" in proc.stdout
    record = json.loads(run_cli(env, "info", "--json").stdout)
    assert record["choice"]["backend"] is None and record["choice_int8"]["backend"] is None
    assert record["available_targets"] == []
    assert not any(b["available"] for b in record["backends"].values())
    proc = run_cli(env, "info", "--target", "cpu")  # a target asked for by name stays an error
    assert proc.returncode == 2 and "no CPU backend is available" in proc.stderr


def test_fetch_weights_offline_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SFPN_EDGE_HOME", str(tmp_path / "home"))
    assert main(["fetch-weights", "--url", "http://127.0.0.1:9/SqueezeFacePoseNet_with_separable_DWC.mat"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No network here?" in err
    assert "--url /path/to/SqueezeFacePoseNet_with_separable_DWC.mat" in err and "--bundle FILE" in err
    assert main(["fetch-weights", "--url", str(tmp_path / "missing.mat")]) == 2
    assert "missing.mat: no such file" in capsys.readouterr().err
    fake = tmp_path / "weights.mat"  # a bare path is read as a file:// URL, then checked like any download
    fake.write_bytes(b"not the weights")
    assert main(["fetch-weights", "--url", str(fake), "--no-int8"]) == 2
    err = capsys.readouterr().err
    assert f"sha256 mismatch for {fake.as_uri()}" in err and "No network" not in err
    assert not (tmp_path / "home" / "models").exists()


def test_low_far_points_keep_their_false_accept_rate():
    import numpy as np

    from sfpn_edge.evaluate.low_far import measure

    rng = np.random.default_rng(0)
    people, paths, rows = 60, [], []
    for person in range(people):
        centre = rng.standard_normal(16)
        for kind, n in (("frontal", 3), ("profile", 2)):
            for i in range(n):
                paths.append(f"cfp/Data/Images/{person:03d}/{kind}/{i + 1:02d}.jpg")
                rows.append(centre + 0.6 * rng.standard_normal(16))
    vectors = np.array(rows, np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    result = measure(vectors, paths, fars=(1e-3, 1e-2))
    assert result["impostor_pairs"] == 180 * 120 - people * 6
    assert result["genuine_pairs"] == {"FP": people * 6, "FF": people * 3}
    low, high = result["points"]["0.001"], result["points"]["0.01"]
    assert low["far_measured"] <= 1e-3 and high["far_measured"] <= 1e-2  # rounded up, never above the target
    assert low["threshold"] > high["threshold"] and low["CFP-FP"] <= high["CFP-FP"]
    assert round(low["threshold"], 4) == low["threshold"]
