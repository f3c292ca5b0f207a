"""The hostile corpus end to end (issue 20): each case runs the real CLI in a fresh process on a
file generated here, and must end with exit status 2 and a one-line error within 10 s and 300 MB
peak RSS, with nothing tampered accepted. Unit tests of each guard live beside its module; this
file proves the whole command stays within the limits.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import cv2
import numpy as np
import pytest

import hostile_corpus

TIME_LIMIT_S = 10.0
RSS_LIMIT_MB = 300
ADDRESS_LIMIT = 8 << 30  # a runaway case is stopped by the kernel long before it hurts the machine


class Ctx:
    """What a case builds on: a temp dir, a private model directory (with a native plan), the
    MTCNN nets and a real photo."""

    def __init__(self, tmp: Path, model: Path, mtcnn: Path, photo: Path):
        self.tmp, self.model, self.mtcnn, self.photo = tmp, model, mtcnn, photo

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def model_copy(self) -> Path:
        copy = self.tmp / "model"
        shutil.copytree(self.model, copy)
        return copy

    def edit_manifest(self, model: Path, edit: Callable[[dict], None]) -> Path:
        manifest = json.loads((model / "manifest.json").read_text())
        edit(manifest)
        (model / "manifest.json").write_text(json.dumps(manifest))
        return model

    def verify(self, a, b=None, *extra, model=None, mtcnn=None) -> List:
        return ["verify", a, self.photo if b is None else b, "--model", model or self.model,
                "--detector", "mtcnn", "--detector-weights", mtcnn or self.mtcnn, *extra]

    def gallery(self) -> Path:
        db = self.tmp / "people.db"
        assert run_cli(["enroll", "--db", db, "--name", "ada", self.photo, *self.paths()]).returncode == 0
        return db

    def paths(self) -> List:
        return ["--model", self.model, "--detector", "mtcnn", "--detector-weights", self.mtcnn]


def _fifo(ctx: Ctx) -> Path:
    os.mkfifo(ctx.tmp / "photo.jpg")
    return ctx.tmp / "photo.jpg"


def _zero(ctx: Ctx) -> Path:
    (ctx.tmp / "zero.jpg").symlink_to("/dev/zero")
    return ctx.tmp / "zero.jpg"


def _truncated(ctx: Ctx) -> Path:
    ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(ctx.photo)))
    return ctx.file("cut.jpg", hostile_corpus.truncated_jpeg(jpeg.tobytes(), 0.6))


def _plan_member(ctx: Ctx, edit: Callable[[Dict[str, np.ndarray]], None]) -> Path:
    model = ctx.model_copy()
    with np.load(model / "model_native_int8.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    np.savez(model / "model_native_int8.npz", **arrays)
    return model


def _flip_weight(arrays: Dict[str, np.ndarray]) -> None:
    name = next(k for k, v in arrays.items() if v.dtype == np.int8)
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] ^= 0x40


def _plan_kind_as_list(arrays: Dict[str, np.ndarray]) -> None:
    plan = json.loads(arrays["plan"].tobytes())
    plan["ops"][0]["op"] = [plan["ops"][0]["op"]]
    arrays["plan"] = np.frombuffer(json.dumps(plan).encode(), dtype=np.uint8)


def _zip_bomb(ctx: Ctx) -> Path:
    model = ctx.model_copy()
    header = b"\x93NUMPY\x01\x00" + b"{'descr': '|i1', 'fortran_order': False, 'shape': (3221225472,), }".ljust(118) + b"\n"
    hostile_corpus.zip_bomb(model / "model_native_int8.npz", "w0.npy", header, 3 << 30)
    return model


def _resign(model: Path) -> Path:
    """The manifest rewritten to vouch for the files as they are now: the file's own checks must hold."""
    from sfpn_edge import models

    models.write_manifest(model, models.load_manifest(model))
    return model


def _swapped_pnet(ctx: Ctx) -> Path:
    nets = ctx.tmp / "mtcnn"
    shutil.copytree(ctx.mtcnn, nets)
    shutil.copy(nets / "onet.onnx", nets / "pnet.onnx")
    record = json.loads((nets / "weights.json").read_text())
    record["files"] = {**record["files"], "pnet.onnx": record["files"]["onet.onnx"]}
    (nets / "weights.json").write_text(json.dumps(record))
    return nets


def _corrupt_gallery(ctx: Ctx) -> Path:
    db = ctx.gallery()
    data = bytearray(db.read_bytes())
    page = 4096
    for at in range(page, len(data), page):  # every page but the header: b-tree pages scrambled
        data[at:at + 64] = bytes(64)
    db.write_bytes(bytes(data))
    return db


def _zero_blob(ctx: Ctx) -> Path:
    db = ctx.gallery()
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE embeddings SET vector = zeroblob(length(vector))")
    con.close()
    return db


def _fifo_db(ctx: Ctx) -> Path:
    os.mkfifo(ctx.tmp / "fifo.db")
    return ctx.tmp / "fifo.db"


BIG = 8 * 4681, 8 * 7 * 48  # 37,448 x 2,688 = 100.7 MP, 48 x 32,767 JPEG blocks (progressive)

# case -> (argv builder, words the one-line error must contain)
CASES: Dict[str, tuple] = {
    "fifo photo": (lambda c: c.verify(_fifo(c)), "FIFO"),
    "/dev/zero photo": (lambda c: c.verify(_zero(c)), "device"),
    "png bomb 30000^2": (lambda c: c.verify(c.file("b.png", hostile_corpus.png_bomb(30000, 30000))), "pixels"),
    "tiff bomb 30000^2": (lambda c: c.verify(c.file("b.tif", hostile_corpus.tiff_bomb(30000, 30000))), "pixels"),
    "webp bomb 16000^2": (lambda c: c.verify(c.file("b.webp", hostile_corpus.webp_bomb(16000, 16000))), "pixels"),
    "100 MP baseline jpeg, no face": (lambda c: c.verify(c.file("big.jpg", hostile_corpus.flat_jpeg(10000, 10000))),
                                      "face"),
    "100 MP progressive jpeg": (lambda c: c.verify(c.file("p.jpg", hostile_corpus.flat_jpeg(*BIG, progressive=True))),
                                "coefficients"),
    "truncated jpeg": (lambda c: c.verify(_truncated(c)), "corrupt"),
    "--threads 5000": (lambda c: c.verify(c.photo, None, "--threads", "5000"), "threads"),
    "deep manifest": (lambda c: c.verify(c.photo, model=_deep_manifest(c)), "deep"),
    "NaN mean": (lambda c: c.verify(c.photo, model=_nan_mean(c)), "NaN"),
    "threshold 2.5": (lambda c: c.verify(c.photo, model=c.edit_manifest(c.model_copy(), lambda m: m.update(
        thresholds={"operating_points": [{"far": 1e-3, "threshold": 2.5}]}))), "operating point"),
    "FAR 0 operating point": (lambda c: c.verify(c.photo, model=c.edit_manifest(c.model_copy(), lambda m: m.update(
        thresholds={"operating_points": [{"far": 0.0, "threshold": 0.8}]}))), "operating point"),
    "native weights altered": (lambda c: c.verify(c.photo, None, "--backend", "native",
                                                  model=_plan_member(c, _flip_weight)), "sha256"),
    "native op kind a list": (lambda c: c.verify(c.photo, None, "--backend", "native",
                                                 model=_plan_member(c, _plan_kind_as_list)), "sha256"),
    "native npz zip bomb": (lambda c: c.verify(c.photo, None, "--backend", "native", model=_zip_bomb(c)), "sha256"),
    "native op kind a list, digests rewritten": (lambda c: c.verify(c.photo, None, "--backend", "native",
                                                                 model=_resign(_plan_member(c, _plan_kind_as_list))),
                                                 "invalid plan"),
    "native npz zip bomb, digests rewritten": (lambda c: c.verify(c.photo, None, "--backend", "native",
                                                               model=_resign(_zip_bomb(c))), "plan"),
    "onnx model swapped": (lambda c: c.verify(c.photo, None, "--backend", "onnxruntime", model=_swap_onnx(c)),
                           "sha256"),
    "O-Net over P-Net, record rewritten": (lambda c: c.verify(c.photo, mtcnn=_swapped_pnet(c)), "pinned"),
    "fifo gallery": (lambda c: ["identify", "--db", _fifo_db(c), c.photo, *c.paths()], "FIFO"),
    "corrupt gallery pages": (lambda c: ["identify", "--db", _corrupt_gallery(c), c.photo, *c.paths()], "gallery"),
    "all-zero embedding blobs": (lambda c: ["identify", "--db", _zero_blob(c), c.photo, *c.paths()], "embedding"),
    "non-UTF-8 name": (lambda c: ["enroll", "--db", c.tmp / "n.db", "--name", b"caf\xe9", c.photo, *c.paths()],
                       "UTF-8"),
}


def _deep_manifest(ctx: Ctx) -> Path:
    model = ctx.model_copy()
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["thresholds"] = "DEEP"
    text = json.dumps(manifest).replace('"DEEP"', hostile_corpus.deep_json(100000))
    (model / "manifest.json").write_text(text)
    return model


def _nan_mean(ctx: Ctx) -> Path:
    model = ctx.model_copy()
    text = (model / "manifest.json").read_text()
    manifest = json.loads(text)
    manifest["mean"] = [float("nan")] * 3
    (model / "manifest.json").write_text(json.dumps(manifest))  # json.dumps writes the bare NaN
    return model


def _swap_onnx(ctx: Ctx) -> Path:
    model = ctx.model_copy()
    shutil.copy(ctx.mtcnn / "onet.onnx", model / "model.onnx")
    return model


def _args(argv: List) -> List:
    return [a if isinstance(a, bytes) else str(a) for a in argv]  # bytes: a non-UTF-8 argument as is


def run_cli(argv: List, timeout: float = 120.0) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "sfpn_edge"] + _args(argv)
    return subprocess.run(args, capture_output=True, text=True, errors="backslashreplace", timeout=timeout,
                          env=_env())


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("SFPN_EDGE_MODEL", None)
    return env


# A small launcher forks the CLI and reports its exit status and peak RSS. Linux counts a forked
# child's inherited memory in its ru_maxrss, so the CLI must not be forked from the (large) test
# process itself; forked from the launcher it inherits ~10 MB (an over-estimate, never under).
_LAUNCHER = """
import json, os, resource, sys
limit, report = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "sfpn_edge"] + sys.argv[3:])
_, raw, usage = os.wait4(pid, 0)
with open(report, "w") as fh:
    json.dump({"status": os.waitstatus_to_exitcode(raw), "maxrss_kb": usage.ru_maxrss}, fh)
"""


def run_limited(argv: List, tmp: Path):
    """Run the CLI; return (exit status, stdout, stderr, seconds, peak RSS in MB). A case over the
    time limit is killed (status None)."""
    report = tmp / "report.json"
    args = [sys.executable, "-c", _LAUNCHER, str(ADDRESS_LIMIT), str(report)] + _args(argv)
    start = time.monotonic()
    with open(tmp / "stdout", "w+b") as out, open(tmp / "stderr", "w+b") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=_env(),
                                start_new_session=True)
        try:
            proc.wait(timeout=TIME_LIMIT_S + 5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        seconds = time.monotonic() - start
        out.seek(0), err.seek(0)
        text = out.read().decode(errors="backslashreplace"), err.read().decode(errors="backslashreplace")
    if not report.is_file():
        return None, text[0], text[1], seconds, float("nan")
    result = json.loads(report.read_text())
    return result["status"], text[0], text[1], seconds, result["maxrss_kb"] / 1024


@pytest.fixture(scope="module")
def hostile_model(model_dir, example_crops, tmp_path_factory) -> Path:
    """The converted model with a native int8 plan (calibrated on the three example crops)."""
    from sfpn_edge.converters import native_export
    from sfpn_edge.converters.calibration_data import Sample, calibration_crops
    from sfpn_edge import models

    out = tmp_path_factory.mktemp("hostile") / "model"
    shutil.copytree(model_dir, out)
    mean = models.load_manifest(out)["mean"]
    native_export.export_native(out, calibration_crops([Sample(p) for p in example_crops], 113, mean),
                                "the three example crops")
    return out


@pytest.fixture(scope="module")
def good_photo(cfp_root) -> Path:
    return cfp_root / "Data" / "Images" / "001" / "frontal" / "01.jpg"


def test_a_good_photo_passes_the_same_harness(hostile_model, mtcnn_dir, good_photo, tmp_path):
    """The limits hold for a real verify too, so a failure below is the case's, not the harness's."""
    ctx = Ctx(tmp_path, hostile_model, mtcnn_dir, good_photo)
    for backend in ("onnxruntime", "native"):
        status, out, err, seconds, rss = run_limited(ctx.verify(good_photo, None, "--backend", backend), tmp_path)
        assert status == 0, err
        assert "same person" in out.lower() and seconds < TIME_LIMIT_S and rss < RSS_LIMIT_MB, (out, seconds, rss)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero")
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_case_ends_with_one_line_error(case, hostile_model, mtcnn_dir, good_photo, tmp_path):
    build, needle = CASES[case]
    ctx = Ctx(tmp_path, hostile_model, mtcnn_dir, good_photo)
    argv = build(ctx)
    status, out, err, seconds, rss = run_limited(argv, tmp_path)
    print(f"{case}: exit {status}, {seconds:.2f} s, peak RSS {rss:.0f} MB")
    lines = err.strip().splitlines()
    assert status == 2, f"{case}: exit {status}, stderr {err[-2000:]!r}"
    assert len(lines) == 1 and lines[0].startswith("sfpn-edge ") and needle.lower() in lines[0].lower(), lines
    assert seconds < TIME_LIMIT_S, f"{case}: {seconds:.1f} s"
    assert rss < RSS_LIMIT_MB, f"{case}: peak RSS {rss:.0f} MB"
