"""sfpn-edge verify / embed / enroll / identify on real CFP photos: output, JSON, exit codes, bad input."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from sfpn_edge.cli import main


def photo(cfp_root, person: int, kind: str = "frontal", n: int = 1):
    return cfp_root / "Data" / "Images" / f"{person:03d}" / kind / f"{n:02d}.jpg"


@pytest.fixture
def cli(model_dir, mtcnn_dir, capsys):
    """Run ``sfpn-edge ARGS --model ... --detector-weights ... --threads 1``: (exit code, stdout, stderr)."""
    def run(*args, json_out=False):
        argv = [str(a) for a in args] + ["--model", str(model_dir), "--detector", "mtcnn", "--detector-weights", str(mtcnn_dir),
                                         "--threads", "1"] + (["--json"] if json_out else [])
        code = main(argv)
        out, err = capsys.readouterr()
        return code, (json.loads(out) if json_out and code == 0 else out), err
    return run


def assert_one_line_error(code, out, err, *needles):
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_verify_human_and_json(cli, cfp_root):
    a, b, c = photo(cfp_root, 1, n=1), photo(cfp_root, 1, n=3), photo(cfp_root, 2, n=1)
    code, out, _ = cli("verify", a, b)
    assert code == 0 and out.startswith("same person: score")
    assert "threshold from" in out and "timings: decode" in out and str(a) in out
    code, record, _ = cli("verify", a, c, json_out=True)
    assert code == 0 and record["same"] is False and record["score"] < record["threshold"]
    assert record["far"] == 1e-3 and record["a"] == str(a) and len(record["faces"]) == 2
    assert set(record["timings_ms"]) == {"decode", "detect", "crop", "quality", "embed", "score", "total"}
    code, loose, _ = cli("verify", a, c, "--threshold", "-1", json_out=True)
    assert code == 0 and loose["same"] is True and loose["threshold_source"] == "given threshold"
    assert loose["score"] == pytest.approx(record["score"], abs=1e-6)
    code, at_1e2, _ = cli("verify", a, c, "--far", "0.01", json_out=True)
    assert code == 0 and at_1e2["far"] == 0.01 and at_1e2["threshold"] < record["threshold"]


def test_embed_writes_normalised_rows_in_order(cli, cfp_root, tmp_path):
    images = [photo(cfp_root, 3), photo(cfp_root, 3, "profile"), photo(cfp_root, 4)]
    out = tmp_path / "emb.npy"
    code, record, _ = cli("embed", *images, "--out", out, json_out=True)
    assert code == 0 and record["shape"] == [3, 1000] and record["out"] == str(out)
    emb = np.load(out, allow_pickle=False)
    assert emb.shape == (3, 1000) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # same person (frontal vs profile) beats another person
    code, text, _ = cli("embed", images[0], "--out", tmp_path / "one.npy")
    assert code == 0 and "wrote 1 x 1000 embeddings" in text
    np.testing.assert_allclose(np.load(tmp_path / "one.npy")[0], emb[0], atol=1e-6)


def test_enroll_identify_round_trip(cli, cfp_root, tmp_path):
    db = tmp_path / "people.db"
    for person in (20, 21, 22, 23):
        code, record, _ = cli("enroll", "--db", db, "--name", f"person{person}",
                              *[photo(cfp_root, person, n=n) for n in (1, 2, 3)], json_out=True)
        assert code == 0 and record["images"] == 3 and record["identities"] == person - 19
    code, text, _ = cli("enroll", "--db", db, "--name", "person22", photo(cfp_root, 22, n=4))
    assert code == 0 and "4 stored" in text and "4 identities" in text
    code, record, _ = cli("identify", "--db", db, photo(cfp_root, 22, n=8), "--top", "3", json_out=True)
    assert code == 0 and record["match"] == "person22" and record["identities"] == 4
    assert [c["name"] for c in record["candidates"]][0] == "person22" and len(record["candidates"]) == 3
    scores = [c["score"] for c in record["candidates"]]
    assert scores == sorted(scores, reverse=True)
    code, text, _ = cli("identify", "--db", db, photo(cfp_root, 22, "profile", 2), "--template", "all",
                        "--storage", "int8")
    assert "1. person22" in text and code == (0 if "match: person22" in text else 1)  # exit 1: no match
    code, text, _ = cli("identify", "--db", db, photo(cfp_root, 30))
    assert code == 1 and "no match" in text  # a stranger: nobody reaches the FAR 1e-3 threshold (exit 1)


def bad_files(tmp_path, cfp_root):
    good = photo(cfp_root, 1).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "folder.jpg").mkdir()
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((200, 200, 3), 90, np.uint8))
    # A PNG header claiming 100000 x 100000 pixels: refused before any decoding.
    huge = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    huge[16:24] = (100000).to_bytes(4, "big") * 2
    (tmp_path / "huge.png").write_bytes(bytes(huge))
    return {
        "truncated.jpg": "truncated", "text.png": "not a supported image", "folder.jpg": "directory",
        "blank.png": "no face found", "huge.png": "too large", "missing.jpg": "no such file",
    }


def test_bad_photos_exit_2_with_one_line(cli, cfp_root, tmp_path):
    good = photo(cfp_root, 1)
    for name, message in bad_files(tmp_path, cfp_root).items():
        assert_one_line_error(*cli("verify", good, tmp_path / name), name, message)
        assert_one_line_error(*cli("embed", good, tmp_path / name, "--out", tmp_path / "e.npy"), message)
        assert not (tmp_path / "e.npy").exists()


def test_bad_input_never_touches_the_gallery(cli, cfp_root, tmp_path):
    db = tmp_path / "g.db"
    assert cli("enroll", "--db", db, "--name", "ada", photo(cfp_root, 40), photo(cfp_root, 40, n=2))[0] == 0
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for name, message in bad_files(tmp_path, cfp_root).items():
        assert_one_line_error(*cli("enroll", "--db", db, "--name", "bob", photo(cfp_root, 41), tmp_path / name),
                              message)
        assert_one_line_error(*cli("identify", "--db", db, tmp_path / name), message)
    assert_one_line_error(*cli("enroll", "--db", db, "--name", "", photo(cfp_root, 41)), "name")
    code, record, _ = cli("identify", "--db", db, photo(cfp_root, 40, n=5), json_out=True)
    assert code == 0 and record["identities"] == 1 and record["candidates"][0]["name"] == "ada"
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    # Files that are not our galleries: refused, left byte-for-byte as they were.
    (tmp_path / "random.db").write_bytes(os.urandom(4096))
    import sqlite3
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE people (name TEXT)")
    other.commit()
    other.close()
    for name, message in (("random.db", "not an SQLite database"), ("other.db", "not an sfpn-edge gallery")):
        path = tmp_path / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert_one_line_error(*cli("enroll", "--db", path, "--name", "x", photo(cfp_root, 41)), message)
        assert_one_line_error(*cli("identify", "--db", path, photo(cfp_root, 41)), message)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert_one_line_error(*cli("identify", "--db", tmp_path / "none.db", photo(cfp_root, 41)), "no such gallery")
    assert not (tmp_path / "none.db").exists()
    assert_one_line_error(*cli("identify", "--db", tmp_path, photo(cfp_root, 41)), "directory")


def test_gallery_from_another_model_is_refused(cli, cfp_root, tmp_path, model_dir):
    from sfpn_edge.gallery import FaceGallery

    db = tmp_path / "other-model.db"
    with FaceGallery(db, model_sha256="f" * 64, dim=1000) as g:
        g.enroll("ada", np.ones((1, 1000), np.float32))
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    assert_one_line_error(*cli("enroll", "--db", db, "--name", "bob", photo(cfp_root, 41)), "another model")
    assert_one_line_error(*cli("identify", "--db", db, photo(cfp_root, 41)), "another model")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


def test_model_resolution_and_missing_model(cfp_root, tmp_path, monkeypatch, capsys, model_dir, mtcnn_dir):
    a = photo(cfp_root, 1)
    monkeypatch.setenv("SFPN_EDGE_HOME", str(tmp_path / "empty-home"))
    monkeypatch.delenv("SFPN_EDGE_MODEL", raising=False)
    assert main(["verify", str(a), str(a)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fetch-weights" in err and "empty-home" in err
    monkeypatch.setenv("SFPN_EDGE_MODEL", str(tmp_path / "nowhere"))
    assert main(["verify", str(a), str(a)]) == 2
    assert "SFPN_EDGE_MODEL" in capsys.readouterr().err
    monkeypatch.setenv("SFPN_EDGE_MODEL", str(model_dir))
    assert main(["verify", str(a), str(a), "--detector", "mtcnn", "--detector-weights", str(mtcnn_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] > 0.999


def test_help_and_module_entry_point(capsys):
    for command in ("verify", "embed", "enroll", "identify"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0 and "--json" in out and "--model" in out and "--threads" in out
    proc = subprocess.run([sys.executable, "-m", "sfpn_edge", "verify", "only-one.jpg"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
