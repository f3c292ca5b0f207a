"""Every face of a group photo (embed / identify, Python and CLI) and the quality gate, on CFP photos
pasted side by side on one canvas."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sfpn_edge.cli import main
from sfpn_edge.errors import ImageError, SfpnError
from sfpn_edge.gallery import FaceGallery
from sfpn_edge.pipeline import FaceVerifier

PEOPLE = (10, 11, 12)


def photo(cfp_root, person: int, kind: str = "frontal", n: int = 1):
    return cfp_root / "Data" / "Images" / f"{person:03d}" / kind / f"{n:02d}.jpg"


def group(cfp_root, scales=(1.0, 0.8, 0.6)):
    """The frontal photos of PEOPLE side by side on a grey canvas (scaled: distinct sizes), and the
    x range of each tile."""
    tiles = [cv2.resize(cv2.imread(str(photo(cfp_root, p))), None, fx=s, fy=s) for p, s in zip(PEOPLE, scales)]
    height = max(t.shape[0] for t in tiles) + 60
    canvas = np.full((height, sum(t.shape[1] for t in tiles) + 60 * (len(tiles) + 1), 3), 190, np.uint8)
    x, spans = 60, []
    for tile in tiles:
        canvas[30:30 + tile.shape[0], x:x + tile.shape[1]] = tile
        spans.append((x, x + tile.shape[1]))
        x += tile.shape[1] + 60
    return canvas, spans


@pytest.fixture(scope="module")
def every(model_dir, mtcnn_dir):
    from sfpn_edge.detect.mtcnn import MTCNN

    return FaceVerifier(model_dir, detector=MTCNN(mtcnn_dir, threads=1), threads=1, face_policy="all", flip=False)


def test_every_face_of_a_group_photo_embedded_largest_first(every, cfp_root):
    canvas, spans = group(cfp_root)
    ((desc, faces),) = every.embed_photos([canvas])
    assert desc.shape == (3, 1000) and len(faces) == 3
    centres = [(f.face.box[0] + f.face.box[2]) / 2 for f in faces]
    owner = [next(i for i, (a, b) in enumerate(spans) if a <= c < b) for c in centres]
    assert sorted(owner) == [0, 1, 2]  # one face per tile
    areas = [f.face.area for f in faces]
    assert areas == sorted(areas, reverse=True)  # largest first
    assert all(f.n_faces == 3 and f.quality.passed for f in faces)
    alone = every.embed_photos([photo(cfp_root, PEOPLE[i]) for i in owner])
    for i, (single, _) in enumerate(alone):
        assert float(desc[i] @ single[0]) > 0.9  # each face's descriptor is its own photo's
        assert float(desc[i] @ single[0]) > max(float(desc[j] @ single[0]) for j in range(3) if j != i)
    largest = FaceVerifier(every.model, detector=every.detector, threads=1)
    one, found = largest.embed_image(canvas)
    assert found.n_faces >= 1 and float(one @ desc[0]) > 0.99
    with pytest.raises(SfpnError, match="face policy 'all'"):
        every.verify(canvas, canvas)
    with pytest.raises(SfpnError, match="face policy 'all'"):
        every.embed_images([canvas])


def test_identify_every_face(every, cfp_root, tmp_path):
    canvas, spans = group(cfp_root, (1.0, 1.0, 1.0))
    with FaceGallery(tmp_path / "g.db", model_sha256=every.model_sha256, dim=every.descriptor_dim) as gallery:
        for person in PEOPLE[1:]:
            desc, _ = FaceVerifier(every.model, detector=every.detector, threads=1, flip=every.flip).embed_images(
                [photo(cfp_root, person, n=n) for n in (2, 3)])
            gallery.enroll(f"p{person}", desc)
        results = every.identify(canvas, gallery, k=2)
    tiles = [r.face.face.box[0] for r in results]
    expected = {0: None, 1: "p11", 2: "p12"}  # person 10 is not enrolled
    assert [r.match for r in results] == [expected[int(np.searchsorted([s[0] for s in spans], x, "right")) - 1]
                                          for x in tiles]
    assert all(r.threshold == every.threshold and len(r.candidates) == 2 for r in results)
    assert results[1].to_dict()["face"]["quality"]["passed"] is True
    with FaceGallery(tmp_path / "empty.db", model_sha256=every.model_sha256, dim=every.descriptor_dim) as empty:
        with pytest.raises(SfpnError, match="empty"):
            every.identify(canvas, empty)


@pytest.fixture
def cli(model_dir, mtcnn_dir, capsys):
    def run(*args, json_out=False):
        argv = [str(a) for a in args] + ["--model", str(model_dir), "--detector", "mtcnn", "--detector-weights", str(mtcnn_dir),
                                         "--threads", "1"] + (["--json"] if json_out else [])
        code = main(argv)
        out, err = capsys.readouterr()
        return code, (json.loads(out) if json_out and code == 0 else out), err
    return run


def test_cli_embed_and_identify_every_face(cli, cfp_root, tmp_path):
    canvas, _ = group(cfp_root)
    image = tmp_path / "group.png"
    cv2.imwrite(str(image), canvas)
    single = photo(cfp_root, 20)
    code, record, _ = cli("embed", single, image, "--out", tmp_path / "e.npy", "--face-policy", "all", json_out=True)
    assert code == 0 and record["shape"] == [4, 1000] and record["face_policy"] == "all"
    assert [[f["row"] for f in item["faces"]] for item in record["images"]] == [[0], [1, 2, 3]]
    assert all("quality" in f and f["quality"]["passed"] for item in record["images"] for f in item["faces"])
    assert np.load(tmp_path / "e.npy").shape == (4, 1000)
    code, legacy, _ = cli("embed", single, image, "--out", tmp_path / "l.npy", json_out=True)
    assert code == 0 and legacy["shape"] == [2, 1000] and legacy["images"][1]["faces_in_image"] == 3
    assert legacy["images"][1]["quality"]["gate"] == "standard" and "box" in legacy["images"][1]
    np.testing.assert_allclose(np.load(tmp_path / "l.npy")[1], np.load(tmp_path / "e.npy")[1], atol=1e-5)
    db = tmp_path / "g.db"
    assert cli("enroll", "--db", db, "--name", "p12", *[photo(cfp_root, 12, n=n) for n in (2, 3)])[0] == 0
    code, record, _ = cli("identify", "--db", db, image, "--face-policy", "all", json_out=True)
    assert code == 0 and [r["match"] for r in record["results"]] == [None, None, "p12"]
    assert all(set(r) == {"face", "match", "score", "candidates"} for r in record["results"])
    code, text, _ = cli("identify", "--db", db, image, "--face-policy", "all")
    assert code == 0 and text.count("match: p12") == 1 and "3 face(s)" in text
    code, text, _ = cli("identify", "--db", db, image)  # the largest face is nobody enrolled: exit 1
    assert code == 1 and "no match" in text and "2 other face(s) ignored" in text
    with pytest.raises(SystemExit) as usage:  # verify compares one face per photo: no "all"
        cli("verify", image, image, "--face-policy", "all")
    assert usage.value.code == 2


def test_min_quality_refuses_with_one_line_and_reports_otherwise(cli, cfp_root, tmp_path):
    good, profile = photo(cfp_root, 30), photo(cfp_root, 30, "profile", 1)
    soft = tmp_path / "soft.png"
    cv2.imwrite(str(soft), cv2.GaussianBlur(cv2.imread(str(good)), (0, 0), 4.0))
    code, record, _ = cli("verify", good, soft, "--threshold", "0.5", json_out=True)
    assert code == 0 and record["faces"][0]["quality"]["passed"] is True
    low = record["faces"][1]["quality"]
    assert low["passed"] is False and low["reasons"][0].startswith("blur")
    code, out, err = cli("verify", good, soft, "--threshold", "0.5", "--min-quality", "standard")
    assert code == 2 and err.count("\n") == 1 and f"{soft}: low-quality face (blur" in err
    db = tmp_path / "g.db"
    code, _, err = cli("enroll", "--db", db, "--name", "x", good, soft, "--min-quality", "standard")
    assert code == 2 and "low-quality" in err
    assert not db.exists()  # nothing enrolled: a failed enrolment creates no file
    code, record, _ = cli("verify", good, profile, "--threshold", "0.5", "--min-quality", "standard", json_out=True)
    assert code == 0 and abs(record["faces"][1]["quality"]["yaw_deg"]) > 30  # profiles pass the standard gate
    code, _, err = cli("verify", good, profile, "--threshold", "0.5", "--min-quality", "frontal")
    assert code == 2 and "yaw" in err
    with pytest.raises(SystemExit):
        cli("verify", good, good, "--min-quality", "best")


def test_quality_gate_in_the_api(model_dir, every, cfp_root):
    with pytest.raises(SfpnError, match="quality gate"):
        FaceVerifier(model_dir, detector=every.detector, min_quality="best")
    strict = FaceVerifier(model_dir, detector=every.detector, threads=1, min_quality="standard")
    image = cv2.imread(str(photo(cfp_root, 30)))
    assert strict.embed_image(image)[1].quality.passed
    with pytest.raises(ImageError, match=r"image 1: low-quality face \(blur"):
        strict.embed_image(cv2.GaussianBlur(image, (0, 0), 4.0))
