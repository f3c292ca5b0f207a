"""``sfpn-edge bundle`` and ``fetch-weights --bundle``: a round trip onto a machine without the
converters, installing over a cache, and hostile archives (each refused in one line, nothing stored)."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from hidden_modules import hiding_env, run_cli, run_python
from sfpn_edge import bundle, cache, models
from sfpn_edge.cli import main
from sfpn_edge.detect import weights

CONVERSION_ONLY = ["openvino", "matio", "onnx", "nncf", "scipy", "sfpn_edge.converters"]


@pytest.fixture(scope="module")
def bundle_tar(model_dir, mtcnn_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "sfpn.tar"
    assert main(["bundle", str(model_dir), str(out), "--detector-weights", str(mtcnn_dir)]) == 0
    return out


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SFPN_EDGE_HOME", str(root))
    return root


def contents(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def members(path: Path) -> list:
    with tarfile.open(path) as archive:
        return [(info, archive.extractfile(info).read() if info.isreg() else b"") for info in archive]


def write_tar(path: Path, items: list, mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as archive:
        for info, data in items:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def test_bundle_lists_every_file_with_its_sha256(bundle_tar, model_dir, mtcnn_dir, tmp_path):
    items = members(bundle_tar)
    assert items[0][0].name == bundle.BUNDLE_JSON
    doc = json.loads(items[0][1])
    expected = {f"model/{p.name}": p for p in model_dir.iterdir()}
    expected.update({f"detectors/mtcnn/{p.name}": p for p in mtcnn_dir.iterdir()})
    names = [i.name for i, _ in items[1:]]
    assert len(names) == len(set(names)) and set(names) == set(doc["files"]) == set(expected)
    assert {n: e["sha256"] for n, e in doc["files"].items()} == {n: cache.sha256_file(p) for n, p in expected.items()}
    assert doc["source_sha256"] == models.load_manifest(model_dir)["source_sha256"] == models.WEIGHTS_SHA256
    again = tmp_path / "again.tar"
    assert main(["bundle", str(model_dir), str(again), "--detector-weights", str(mtcnn_dir)]) == 0
    assert again.read_bytes() == bundle_tar.read_bytes()   # reproducible: fixed metadata


def test_round_trip_on_a_machine_without_converters(bundle_tar, model_dir, mtcnn_dir, blazeface_dir, tmp_path,
                                                    cfp_root):
    gz = tmp_path / "sfpn.tar.xz"
    assert main(["bundle", str(model_dir), str(gz), "--detector-weights", str(mtcnn_dir),
                 "--detector-weights", str(blazeface_dir)]) == 0
    home = tmp_path / "pi-cache"
    env = hiding_env(tmp_path, CONVERSION_ONLY, SFPN_EDGE_HOME=str(home))
    assert run_python(env, "-c", "import matio").returncode == 1
    proc = run_cli(env, "fetch-weights", "--bundle", gz, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["authors_weights"] is True and result["model_dir"] == str(home / "models" / models.DEFAULT_MODEL)
    assert contents(home / "models" / models.DEFAULT_MODEL) == contents(model_dir)
    assert contents(home / "detectors" / "mtcnn") == contents(mtcnn_dir)
    assert contents(home / "detectors" / "blazeface") == contents(blazeface_dir)
    photos = [cfp_root / "Data" / "Images" / "001" / "frontal" / f"{n:02d}.jpg" for n in (1, 3)]
    for detector in ("blazeface", "mtcnn"):                 # the default, and the other one bundled
        proc = run_cli(env, "verify", *photos, "--backend", "onnxruntime", "--detector", detector,
                       "--threads", "1", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["same"] is True


@pytest.mark.parametrize("suffix", [".tgz", ".tar.bz2"])
def test_every_compression_round_trips(suffix, model_dir, home, tmp_path):
    out = tmp_path / f"sfpn{suffix}"
    assert main(["bundle", str(model_dir), str(out), "--no-detector"]) == 0
    assert out.read_bytes()[:3] == (b"BZh" if suffix == ".tar.bz2" else b"\x1f\x8b\x08")
    assert main(["fetch-weights", "--bundle", str(out), "--out", str(tmp_path / "installed")]) == 0
    assert contents(tmp_path / "installed") == contents(model_dir)
    assert not (home / "detectors").exists()


def test_installing_imports_no_converter_and_no_mat_io(bundle_tar, tmp_path):
    code = ("import json, sys\nfrom sfpn_edge.cli import main\n"
            f"rc = main(['fetch-weights', '--bundle', {str(bundle_tar)!r}, '--json'])\n"
            "sys.stdout.flush()\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('matio', 'onnx', 'openvino', "
            "'nncf', 'scipy') or m.startswith('sfpn_edge.converters'))), file=sys.stderr)\n"
            "raise SystemExit(rc)\n")
    proc = run_python(hiding_env(tmp_path, [], SFPN_EDGE_HOME=str(tmp_path / "home")), "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


def test_install_over_an_existing_cache(bundle_tar, model_dir, home, tmp_path, capsys):
    assert main(["fetch-weights", "--bundle", str(bundle_tar)]) == 0
    out = capsys.readouterr().out
    assert "the authors' pinned weights" in out and "MTCNN nets ->" in out
    installed = models.default_model_dir()
    (installed / "stale.onnx").write_bytes(b"old")
    (installed / "model.onnx").write_bytes(b"damaged")
    assert main(["fetch-weights", "--bundle", str(bundle_tar)]) == 0
    assert contents(installed) == contents(model_dir)
    good = contents(home)
    items = _flip_last_byte(members(bundle_tar), "detectors/mtcnn/pnet.onnx")
    assert main(["fetch-weights", "--bundle", str(write_tar(tmp_path / "bad.tar", items))]) == 2
    assert "does not match its sha256" in capsys.readouterr().err
    assert contents(home) == good
    assert weights.net_paths() and sorted(p.name for p in home.iterdir()) == ["detectors", "models"]


def _retarget(items, name, **changes):
    for info, _ in items:
        if info.name == name:
            for key, value in changes.items():
                setattr(info, key, value)
    return items


def _with_doc(items, edit):
    doc = json.loads(items[0][1])
    edit(doc)
    return [(items[0][0], json.dumps(doc).encode()), *items[1:]]


def _file(name, data=b"x", **attrs):
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _flip_last_byte(items, name):
    return [(i, d[:-1] + bytes([d[-1] ^ 1]) if i.name == name else d) for i, d in items]


def _relist(items, name, data):
    """``items`` with ``name``'s content and its bundle.json entry both replaced."""
    items = _with_doc(items, lambda d: d["files"][name].update(size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    return [(i, data if i.name == name else d) for i, d in items]


def _pax_bomb(items, where, nbytes):
    """A pax header of ``nbytes`` (zeros compress to almost nothing) on member ``where``."""
    items[where][0].pax_headers = {"comment": "0" * nbytes}
    return items


HOSTILE = {  # case -> (rewrite the good members, text in the one-line error)
    "tampered": (lambda m: _flip_last_byte(m, "model/model.onnx"), "does not match its sha256"),
    "tampered, bundle.json too": (lambda m: _relist(m, "model/model.onnx", b"not a model"),
                                  "differs from the manifest"),
    "other weights": (lambda m: _with_doc(m, lambda d: d.update(source_sha256="0" * 64)), "other weights"),
    "missing member": (lambda m: [x for x in m if x[0].name != "model/model.onnx"], "lacks model/model.onnx"),
    "unlisted member": (lambda m: m + [_file("model/extra.onnx")], "not listed in bundle.json"),
    "duplicate member": (lambda m: m + [x for x in m if x[0].name == "model/manifest.json"], "appears twice"),
    "dot-dot path": (lambda m: m[:1] + [_file("model/../../escaped")] + m[1:], "path traversal"),
    "absolute path": (lambda m: m[:1] + [_file("/tmp/sfpn-escaped")] + m[1:], "path traversal"),
    "symlink": (lambda m: _retarget(m, "model/model.onnx", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "is a link"),
    "hard link": (lambda m: _retarget(m, "model/model.xml", type=tarfile.LNKTYPE, linkname="model/model.onnx"),
                  "is a link"),
    "device": (lambda m: m[:1] + [_file("model/null", b"", type=tarfile.CHRTYPE, devmajor=1, devminor=3)] + m[1:],
               "not a regular file"),
    "fifo": (lambda m: m + [_file("model/fifo", b"", type=tarfile.FIFOTYPE)], "not a regular file"),
    "size differs": (lambda m: _with_doc(m, lambda d: d["files"]["model/model.onnx"].update(size=5)),
                     "bundle.json says"),
    "oversized member": (lambda m: _with_doc(m, lambda d: d["files"]["model/model.onnx"].update(size=1 << 40)),
                         "does not describe a bundle"),
    "newer format": (lambda m: _with_doc(m, lambda d: d.update(version=99)), "newer than this sfpn-edge"),
    "no bundle.json": (lambda m: m[1:], "does not start with bundle.json"),
    "bomb before bundle.json": (lambda m: _pax_bomb(m, 0, 8 << 20), "decompression bomb"),
    "bomb after bundle.json": (lambda m: _pax_bomb(m, 2, 48 << 20), "decompression bomb"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bundle_is_refused_and_stores_nothing(case, bundle_tar, home, tmp_path, capsys):
    rewrite, needle = HOSTILE[case]
    bad = write_tar(tmp_path / "bad.tar.gz", rewrite(members(bundle_tar)), "w:gz")
    assert main(["fetch-weights", "--bundle", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfpn-edge fetch-weights: error: ") and err.count("\n") == 1 and needle in err, err
    assert {p.relative_to(home).as_posix() for p in home.rglob("*")} <= {"models", "detectors"}
    assert not Path("/tmp/sfpn-escaped").exists()


@pytest.mark.parametrize("case", ["truncated plain", "truncated gzip", "not an archive", "empty", "another tar.gz"])
def test_truncated_or_wrong_file_is_refused(case, bundle_tar, mtcnn_sdist, home, tmp_path, capsys):
    data = bundle_tar.read_bytes()
    bad = tmp_path / "bad.tar"
    if case == "truncated plain":
        bad.write_bytes(data[: len(data) // 2])
    elif case == "truncated gzip":
        write_tar(tmp_path / "good.tar.gz", members(bundle_tar), "w:gz")
        bad.write_bytes((tmp_path / "good.tar.gz").read_bytes()[:-4096])
    elif case == "not an archive":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(4096))
    elif case == "empty":
        bad.write_bytes(b"")
    else:
        bad = mtcnn_sdist
    assert main(["fetch-weights", "--bundle", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and ("not a bundle" in err or "not an sfpn-edge bundle"
                                                                 in err or "truncated" in err), err
    assert {p.relative_to(home).as_posix() for p in home.rglob("*")} <= {"models", "detectors"}


def test_bundle_refuses_bad_sources(model_dir, tmp_path, capsys):
    copy = tmp_path / "model"
    copy.mkdir()
    for path in model_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "model.onnx").write_bytes(b"damaged")
    cases = [([str(copy), str(tmp_path / "b.tar")], "sha256 differs from the manifest"),
             ([str(model_dir), str(tmp_path / "b.zip")], "a bundle's name ends in"),
             ([str(tmp_path / "absent"), str(tmp_path / "b.tar")], "not a model directory"),
             ([str(model_dir), str(model_dir / "b.tar")], "outside the model directory"),
             ([str(model_dir), str(tmp_path / "b.tar"), "--detector-weights", str(tmp_path)], "holds no verified detector nets")]
    for argv, needle in cases:
        assert main(["bundle", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert not list(tmp_path.glob("b.*")) and not list(tmp_path.glob(".b.*")) and not (model_dir / "b.tar").exists()


def test_bundle_flag_refuses_conversion_options_and_foreign_folders(bundle_tar, home, tmp_path, capsys):
    assert main(["fetch-weights", "--bundle", str(bundle_tar), "--detector", "mtcnn"]) == 2
    assert "leave out --detector" in capsys.readouterr().err
    assert not home.exists()
    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "letter.txt").write_text("keep me")
    assert main(["fetch-weights", "--bundle", str(bundle_tar), "--out", str(mine)]) == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert contents(mine) == {"letter.txt": b"keep me"} and not home.exists()
