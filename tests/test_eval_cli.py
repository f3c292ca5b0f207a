"""``sfpn-edge eval pairs`` end to end on an LFW-style tree built from CFP images, and its errors."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sfpn_edge.cache import sha256_file
from sfpn_edge.cli import main
from sfpn_edge.embed import FaceEmbedder
from sfpn_edge.evaluate import metrics

# (CFP identity, frontal image numbers) -> LFW-style person folders. 014/profile/03.jpg is one of
# CFP's 13 single-channel greyscale JPEGs: it becomes Celeb_014_0003.jpg.
PEOPLE = {"001": [1, 2, 3], "002": [1, 2, 3], "003": [1, 2, 3], "004": [1, 2], "005": [1, 2], "014": [1, 2]}
PAIRS = """2 3
Celeb_001 1 2
Celeb_002 1 3
Celeb_003 2 3
Celeb_001 1 Celeb_002 2
Celeb_002 3 Celeb_003 1
Celeb_003 3 Celeb_001 3
Celeb_004 1 2
Celeb_005 1 2
Celeb_014 1 3
Celeb_004 2 Celeb_005 1
Celeb_005 2 Celeb_014 3
Celeb_014 2 Celeb_004 1
"""


def _name(person: str, number: int) -> str:
    return f"Celeb_{person}/Celeb_{person}_{number:04d}.jpg"


@pytest.fixture
def lfw_tree(cfp_root, tmp_path) -> Path:
    root = tmp_path / "lfw"
    for person, numbers in PEOPLE.items():
        (root / f"Celeb_{person}").mkdir(parents=True)
        for n in numbers:
            shutil.copy(cfp_root / "Data" / "Images" / person / "frontal" / f"{n:02d}.jpg", root / _name(person, n))
    shutil.copy(cfp_root / "Data" / "Images" / "014" / "profile" / "03.jpg", root / _name("014", 3))
    assert cv2.imread(str(root / _name("014", 3)), cv2.IMREAD_UNCHANGED).ndim == 2
    (root / "pairs.txt").write_text(PAIRS)
    return root


def _run(*argv) -> int:
    return main(["eval", "pairs", *map(str, argv), "--no-progress"])


def _reference_scores(root: Path, model_dir: Path) -> np.ndarray:
    """Independent path: cv2.imread + cv2.resize to 113, RGB minus mean, embed, cosine."""
    embedder = FaceEmbedder(model_dir)
    mean = np.array(embedder.mean, np.float32)

    def desc(rel):
        img = cv2.imread(str(root / rel), cv2.IMREAD_COLOR)
        crop = cv2.resize(img, (113, 113), interpolation=cv2.INTER_LINEAR)[..., ::-1].astype(np.float32) - mean
        d = embedder.embed(np.ascontiguousarray(crop.transpose(2, 0, 1)[None]))[0]
        return d / np.linalg.norm(d)

    scores = []
    for line in PAIRS.splitlines()[1:]:
        p = line.split()
        a, b = ((p[0], p[1]), (p[0], p[2])) if len(p) == 3 else ((p[0], p[1]), (p[2], p[3]))
        a, b = (f"{name}/{name}_{int(n):04d}.jpg" for name, n in (a, b))
        scores.append(float(desc(a) @ desc(b)))
    return np.array(scores)


def test_eval_pairs_full_crop_matches_independent_reference(lfw_tree, model_dir, tmp_path, capsys):
    out, plots = tmp_path / "result.json", tmp_path / "plots"
    assert _run("--root", lfw_tree, "--pairs", lfw_tree / "pairs.txt", "--crop", "full",
                "--model", model_dir, "--threads", 2, "--json", out, "--plots", plots) == 0
    table = capsys.readouterr().out
    assert "pairs.txt" in table and "accuracy %" in table and "EER %" in table

    report = json.loads(out.read_text())
    cfg = report["config"]
    assert cfg["crop"] == "full" and cfg["flip"] is False and cfg["backend"] == "onnxruntime"
    assert cfg["model_sha256"] == sha256_file(model_dir / "model.onnx")
    assert report["images"] == {"total": 16, "embedded": 16, "unusable": 0, "face_sources": {}, "found_by": {},
                                "seconds": report["images"]["seconds"],
                                "cpu_seconds": report["images"]["cpu_seconds"]}
    assert report["skipped"] == {"images": [], "pairs": {"pairs.txt": 0}}

    labels = np.array(([True] * 3 + [False] * 3) * 2)
    ref = _reference_scores(lfw_tree, model_dir)
    expected = metrics.verification_metrics(ref, labels, np.repeat([1, 2], 6))
    got = report["results"]["pairs.txt"]
    assert got["pairs"] == 12 and got["genuine_pairs"] == 6
    assert got["auc"] == pytest.approx(expected["auc"], abs=1e-9)
    assert got["eer"] == pytest.approx(expected["eer"], abs=0.02)
    assert got["genuine_scores"]["mean"] == pytest.approx(expected["genuine_scores"]["mean"], abs=5e-3)
    assert got["impostor_scores"]["mean"] == pytest.approx(expected["impostor_scores"]["mean"], abs=5e-3)
    assert got["accuracy"]["folds"] == [1, 2] and len(got["accuracy"]["per_fold"]) == 2
    assert sum(got["histogram"]["genuine"]) == 6 and sum(got["histogram"]["impostor"]) == 6

    written = sorted(p.name for p in plots.iterdir())
    assert written == ["det.png", "hist_pairs_txt.png", "roc.png"]
    for name in written:
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_eval_pairs_unreadable_images_are_counted(lfw_tree, model_dir, tmp_path, capsys):
    (lfw_tree / _name("002", 3)).write_bytes(b"this is not an image")
    jpeg = (lfw_tree / _name("005", 2)).read_bytes()
    (lfw_tree / _name("005", 2)).write_bytes(jpeg[: len(jpeg) // 2])  # truncated
    args = ("--root", lfw_tree, "--pairs", lfw_tree / "pairs.txt", "--crop", "full", "--model", model_dir)

    # By default (1 % limit) this many skipped pairs is an error naming the files.
    assert _run(*args) == 2
    err = capsys.readouterr().err
    assert "4 of 12 pairs" in err and "Celeb_002_0003.jpg" in err and err.count("\n") == 1

    out = tmp_path / "r.json"
    assert _run(*args, "--max-skipped", 0.5, "--json", out) == 0
    assert "2 unusable image(s)" in capsys.readouterr().out
    report = json.loads(out.read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]["images"]}
    assert set(skipped) == {"Celeb_002_0003.jpg", "Celeb_005_0002.jpg"}
    assert "not a supported image" in skipped["Celeb_002_0003.jpg"]
    assert "truncated" in skipped["Celeb_005_0002.jpg"]
    # Pairs using them: Celeb_002 1-3, 002:3 vs 003:1, Celeb_005 1-2, 005:2 vs 014:3.
    assert report["skipped"]["pairs"] == {"pairs.txt": 4}
    assert report["results"]["pairs.txt"]["pairs"] == 8
    assert report["images"]["unusable"] == 2


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (lambda root: (root / "pairs.txt").write_text(""), (), "pairs.txt is empty"),
        (lambda root: (root / "pairs.txt").write_text("2 3\nCeleb_001 1 2\n"), (), "header promises"),
        (lambda root: None, ("--crop", "fiducials"), "no landmarks"),
        (lambda root: shutil.rmtree(root / "Celeb_001"), ("--max-skipped", 0.01), "Celeb_001_0001.jpg: no such file"),
    ],
)
def test_eval_pairs_bad_input_is_one_line_exit_2(lfw_tree, model_dir, capsys, setup, extra, message):
    setup(lfw_tree)
    rc = _run("--root", lfw_tree, "--pairs", lfw_tree / "pairs.txt", "--crop", "full", "--model", model_dir, *extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.startswith("sfpn-edge eval: error:") and err.count("\n") == 1


def test_eval_missing_root_and_model(tmp_path, capsys):
    assert _run("--root", tmp_path / "none", "--pairs", tmp_path / "p.txt") == 2
    assert "image root not found" in capsys.readouterr().err
    assert main(["eval", "cfp", "--root", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "CFP root not found" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("1 1\nA 1 2\nA 1 B 1\n")
    assert _run("--root", tmp_path, "--pairs", tmp_path / "p.txt", "--crop", "full",
                "--model", tmp_path / "nomodel") == 2
    assert "no model at" in capsys.readouterr().err


def test_eval_cfp_bad_folds_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "cfp", "--root", ".", "--folds", "1,x"])
    assert exc.value.code == 2
    assert "comma-separated fold numbers" in capsys.readouterr().err


def test_eval_pairs_detect_crop(lfw_tree, model_dir, mtcnn_dir, tmp_path):
    out = tmp_path / "r.json"
    assert _run("--root", lfw_tree, "--pairs", lfw_tree / "pairs.txt", "--crop", "detect",
                "--detector", "mtcnn", "--detector-weights", mtcnn_dir, "--model", model_dir, "--json", out) == 0
    report = json.loads(out.read_text())
    sources = report["images"]["face_sources"]
    assert sum(sources.values()) == 16 and set(sources) <= {"detected", "padded", "whole-image"}
    assert report["config"]["margin"] == pytest.approx(FaceEmbedder(model_dir).manifest["crop_margin"])
    assert report["results"]["pairs.txt"]["pairs"] == 12


def test_eval_pairs_one_fold_json_to_stdout(lfw_tree, model_dir, capsys):
    pairs = lfw_tree / "pairsDevTest.txt"
    pairs.write_text("2\nCeleb_001 1 2\nCeleb_003 1 3\nCeleb_001 1 Celeb_002 2\nCeleb_002 1 Celeb_003 2\n")
    assert _run("--root", lfw_tree, "--pairs", pairs, "--crop", "full", "--model", model_dir, "--json", "-") == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds only the JSON document
    result = report["results"]["pairsDevTest.txt"]
    assert result["accuracy"] is None  # one fold: no held-out threshold, so no accuracy
    assert result["pairs"] == 4 and 0.0 <= result["auc"] <= 1.0


def test_progress_bar_overwrites_one_line():
    import io

    from sfpn_edge.cli.evaluate import _ProgressBar

    buf = io.StringIO()
    bar = _ProgressBar(buf, width=10)
    bar(5, 10)
    bar(6, 10)  # within 0.2 s of the last draw: skipped
    bar(10, 10)
    out = buf.getvalue()
    assert out.count("\r") == 2 and out.endswith("\n") and out.count("\n") == 1
    assert "[#####.....] 5/10 images" in out and "[##########] 10/10 images" in out
