"""``sfpn-edge calibrate`` end to end on a CFP subset: calibrate -> bake -> evaluate, and bad input."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from sfpn_edge.cli import main

CAL_IDS = range(1, 25)        # 24 calibration identities, 6 images each (4 frontal + 2 profile)
EVAL_IDS = range(101, 111)    # 10 other identities for the pairs evaluation


def cfp_image(root, ident: int, pose: str, k: int):
    return root / "Data" / "Images" / f"{ident:03d}" / pose / f"{k:02d}.jpg"


@pytest.fixture()
def own_model(model_dir, tmp_path):
    return shutil.copytree(model_dir, tmp_path / "model")


@pytest.fixture()
def cal_list(cfp_root, tmp_path):
    """List file of absolute image paths plus a 'path,identity' labels file."""
    paths = [cfp_image(cfp_root, i, pose, k) for i in CAL_IDS
             for pose, ks in (("frontal", (1, 2, 3, 4)), ("profile", (1, 2))) for k in ks]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(str(p) for p in paths) + "\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{p},person{p.parent.parent.name}\n" for p in paths))
    return listing, labels


@pytest.fixture()
def pairs_root(cfp_root, tmp_path):
    """An LFW-style pairs file over symlinks to CFP images (2 folds x 5 same + 5 different)."""
    root = tmp_path / "lfw"
    for i in EVAL_IDS:
        (root / f"p{i}").mkdir(parents=True)
        (root / f"p{i}" / f"p{i}_0001.jpg").symlink_to(cfp_image(cfp_root, i, "frontal", 1))
        (root / f"p{i}" / f"p{i}_0002.jpg").symlink_to(cfp_image(cfp_root, i, "profile", 1))
    ids = list(EVAL_IDS)
    lines = ["2 5"]
    for fold in range(2):
        half = ids[5 * fold:5 * fold + 5]
        lines += [f"p{i} 1 2" for i in half]
        lines += [f"p{a} 1 p{b} 2" for a, b in zip(half, half[1:] + half[:1])]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return root, pairs


def run_json(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def run_error(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err and err.count("\n") == 1
    return err


def test_calibrate_bake_evaluate(own_model, cal_list, pairs_root, capsys):
    listing, labels = cal_list
    result = run_json(capsys, ["calibrate", "--model", str(own_model), "--images", str(listing), "--labels",
                               str(labels), "--method", "lda", "--pca-dim", "64", "--dim", "16", "--crop", "full",
                               "--thresholds", "--bake", "--threads", "1", "--json"])
    cal = result["calibration"]
    assert (cal["method"], cal["dim_in"], cal["dim_out"]) == ("lda", 1000, 16)
    assert cal["identities"] == 24 and result["images"] == {"total": 144, "used": 144, "skipped": 0,
                                                           "face_sources": {}, "found_by": {}}
    assert cal["shrinkage"] == 0.5 and cal["crop"] == "full" and len(cal["model_sha256"]) == 64
    fars = [p["far"] for p in result["operating_points"]]
    assert 1e-2 in fars and all(p["crop"] == "full" for p in result["operating_points"])
    manifest = json.loads((own_model / "manifest.json").read_text())
    entry = manifest["descriptor_calibration"]
    assert entry["baked"] == {"onnxruntime": "model_cal.onnx", "openvino": "model_cal.xml"}
    assert (own_model / "model_cal.onnx").is_file() and (own_model / "model_cal.bin").is_file()
    assert entry["images"] == 144 and entry["source"] == str(listing) and entry["created"]

    root, pairs = pairs_root
    common = ["eval", "pairs", "--root", str(root), "--pairs", str(pairs), "--crop", "full", "--model",
              str(own_model), "--threads", "1", "--no-progress", "--json", "-"]
    raw = run_json(capsys, common)
    calibrated = run_json(capsys, common + ["--calibration", str(own_model)])
    assert raw["config"]["calibration"] is None
    record = calibrated["config"]["calibration"]
    assert record["protocol"] == "stored" and record["method"] == "lda" and record["dim_out"] == 16
    assert record["digest"] == entry["digest"][:16]
    r_raw, r_cal = raw["results"]["pairs.txt"], calibrated["results"]["pairs.txt"]
    assert r_raw["pairs"] == r_cal["pairs"] == 20
    # calibrated cosines live in another space: centred descriptors spread impostors around 0
    assert r_cal["impostor_scores"]["mean"] < r_raw["impostor_scores"]["mean"] - 0.2


def test_same_images_calibrate_int8(own_model, cal_list, tmp_path, capsys):
    listing, _ = cal_list
    short = tmp_path / "few.txt"
    short.write_text("\n".join(listing.read_text().splitlines()[:12]) + "\n")
    result = run_json(capsys, ["calibrate", "--model", str(own_model), "--images", str(short), "--method", "center",
                               "--crop", "full", "--int8", "--threads", "1", "--json"])  # stdout stays pure JSON
    manifest = json.loads((own_model / "manifest.json").read_text())
    assert result["int8_files"]["onnxruntime"]["int8"] == "model_int8.onnx"
    assert (own_model / "model_int8.onnx").is_file() and manifest["files"]["openvino"]["int8"] == "model_int8.xml"
    assert manifest["calibration"]["count"] == 12 and "sfpn-edge calibrate" in manifest["calibration"]["source"]
    assert manifest["descriptor_calibration"]["method"] == "center"


def test_refuses_too_little_data_before_embedding(own_model, cal_list, capsys):
    listing, labels = cal_list
    base = ["calibrate", "--model", str(own_model), "--images", str(listing), "--crop", "full"]
    err = run_error(capsys, base + ["--labels", str(labels), "--method", "lda", "--pca-dim", "64", "--dim", "30"])
    assert "needs at least 31 identities, got 24" in err
    err = run_error(capsys, base + ["--method", "pca", "--dim", "200"])
    assert "needs at least 201 face images, got 144" in err
    err = run_error(capsys, base + ["--method", "wccn"])
    assert "needs identity labels" in err
    err = run_error(capsys, base + ["--thresholds"])
    assert "--thresholds needs identities" in err
    assert "descriptor_calibration" not in json.loads((own_model / "manifest.json").read_text())


def test_bad_image_sets(own_model, tmp_path, cfp_root, capsys):
    mixed = tmp_path / "mixed"
    (mixed / "a").mkdir(parents=True)
    shutil.copy(cfp_image(cfp_root, 1, "frontal", 1), mixed / "a" / "1.jpg")
    shutil.copy(cfp_image(cfp_root, 1, "frontal", 2), mixed / "2.jpg")
    base = ["calibrate", "--model", str(own_model), "--crop", "full"]
    assert "mixes images" in run_error(capsys, base + ["--images", str(mixed)])
    (tmp_path / "empty").mkdir()
    assert "no images found" in run_error(capsys, base + ["--images", str(tmp_path / "empty")])
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{mixed / '2.jpg'},x\n")
    assert "no identity for 1 image" in run_error(capsys, base + ["--images", str(mixed), "--labels", str(labels)])
    assert "no such folder" in run_error(capsys, base + ["--images", str(tmp_path / "missing")])


def test_images_without_a_face_are_counted_and_skipped(own_model, mtcnn_dir, cfp_root, tmp_path, capsys):
    folder = tmp_path / "people"
    for i in (1, 2):
        (folder / f"id{i}").mkdir(parents=True)
        shutil.copy(cfp_image(cfp_root, i, "frontal", 1), folder / f"id{i}" / "face.jpg")
    cv2.imwrite(str(folder / "id2" / "wall.png"), np.full((200, 200, 3), 128, np.uint8))
    result = run_json(capsys, ["calibrate", "--model", str(own_model), "--images", str(folder), "--method",
                               "center", "--detector", "mtcnn", "--detector-weights", str(mtcnn_dir), "--threads", "1", "--json"])
    assert result["images"]["total"] == 3 and result["images"]["used"] == 2 and result["images"]["skipped"] == 1
    assert result["skipped"][0]["path"].endswith("wall.png") and "no face" in result["skipped"][0]["reason"]
    assert result["calibration"]["labels"] == "one folder per identity"


def test_calibration_for_other_weights_is_refused(own_model, pairs_root, tmp_path, capsys):
    from sfpn_edge.calibration import save_calibration
    from sfpn_edge.evaluate.calibrate_fit import fit

    x = np.random.default_rng(0).uniform(0, 1, (20, 1000)).astype(np.float32)
    foreign = tmp_path / "foreign"
    save_calibration(fit(x, None, "center", info={"model_sha256": "cd" * 32}), foreign)
    root, pairs = pairs_root
    err = run_error(capsys, ["eval", "pairs", "--root", str(root), "--pairs", str(pairs), "--crop", "full",
                             "--model", str(own_model), "--calibration", str(foreign)])
    assert "made for another model" in err
    err = run_error(capsys, ["eval", "pairs", "--root", str(root), "--pairs", str(pairs), "--crop", "full",
                             "--model", str(own_model), "--calibration", str(tmp_path)])
    assert "holds no calibration" in err
