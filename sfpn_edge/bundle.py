"""Model bundles: a converted model directory (and the detector nets) in one tar archive, so a
device never converts or downloads (no mat-io, onnx, OpenVINO or pip there).

    make_bundle(model_dir, "sfpn.tar.gz", {"blazeface": dir, "mtcnn": dir})  # desktop: ``sfpn-edge bundle``
    install_bundle("sfpn.tar.gz", dest)                      # device: ``fetch-weights --bundle``

Layout: ``bundle.json`` first, then ``model/<file>`` for every file of the model directory and
``detectors/<name>/<file>`` for each detector's verified nets (``DETECTORS``). ``bundle.json`` records each member's size and sha256 and
the source weights' sha256. Installing is in ``sfpn_edge.bundle_install``.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple

from sfpn_edge import __version__, bounded_read, cache, models
from sfpn_edge.detect import blazeface_weights, weights
from sfpn_edge.errors import ModelError, SfpnError

DETECTORS: Dict[str, Tuple[Callable[[Optional[Path]], Dict[str, Path]], Callable[[], Path]]] = {
    "mtcnn": (weights.net_paths, weights.default_dir),        # (verified files of a dir, cache dir)
    "blazeface": (blazeface_weights.verified_files, blazeface_weights.default_dir),
}

FORMAT = "sfpn-edge-bundle"
VERSION = 1
BUNDLE_JSON = "bundle.json"
MODEL_PREFIX = "model/"
DETECTOR_PREFIX = "detectors/"
MEMBER_NAME = re.compile(r"(model|detectors/(mtcnn|blazeface))/[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MEMBER_MAX_BYTES = 64 << 20
MAX_MEMBERS = 256
JSON_MAX_BYTES = 1 << 20

# codec -> (magic bytes, open a raw binary file object for "rb" / "wb" through it)
CODECS: Dict[str, Tuple[bytes, Callable[[BinaryIO, str], BinaryIO]]] = {
    "gz": (b"\x1f\x8b", lambda fh, mode: gzip.GzipFile(filename="", fileobj=fh, mode=mode, mtime=0)),
    "xz": (b"\xfd7zXZ\x00", lambda fh, mode: lzma.LZMAFile(fh, mode)),
    "bz2": (b"BZh", lambda fh, mode: bz2.BZ2File(fh, mode)),
}
SUFFIXES = {".tar": None, ".tar.gz": "gz", ".tgz": "gz", ".tar.xz": "xz", ".tar.bz2": "bz2"}


def codec_for(out: Path) -> Optional[str]:
    """The compression ``out``'s suffix asks for (None: plain tar), else SfpnError."""
    for suffix, codec in SUFFIXES.items():
        if out.name.endswith(suffix) and len(out.name) > len(suffix):
            return codec
    raise SfpnError(f"{out}: a bundle's name ends in {', '.join(SUFFIXES)}")


def make_bundle(model_dir: Path, out: Path, detectors: Optional[Dict[str, Path]] = None) -> Dict[str, Any]:
    """Write ``out`` (atomically) from the files of ``model_dir``, checked against its manifest's
    digests, and the verified nets of each ``detectors`` entry (name -> dir); returns what was written."""
    model_dir, out = Path(model_dir), Path(out)
    codec = codec_for(out)
    manifest = models.load_manifest(model_dir)
    if out.resolve().parent == model_dir.resolve():
        raise SfpnError(f"{out}: write the bundle outside the model directory")
    members = _model_members(model_dir, manifest)
    for name, folder in sorted((detectors or {}).items()):
        nets = [*DETECTORS[name][0](Path(folder)).values(), Path(folder) / weights.RECORD]
        members += [(f"{DETECTOR_PREFIX}{name}/{p.name}", _read(p)) for p in nets]
    doc = {"format": FORMAT, "version": VERSION, "sfpn_edge": __version__, "variant": manifest["variant"],
           "source_sha256": manifest["source_sha256"],
           "files": {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in members}}
    _write_tar(out, codec, [(BUNDLE_JSON, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()), *members])
    return {"bundle": str(out), "sha256": cache.sha256_file(out), "bytes": out.stat().st_size,
            "files": sorted(doc["files"]), "source_sha256": doc["source_sha256"],
            "detectors": sorted(detectors or {})}


def _model_members(model_dir: Path, manifest: Dict[str, Any]) -> List[Tuple[str, bytes]]:
    """(``model/<name>``, bytes) for every non-hidden file of ``model_dir``, each listed model file
    matching the manifest's sha256 (a damaged directory is refused, not bundled)."""
    digests = manifest.get(models.DIGESTS)
    if digests is None:
        raise ModelError(f"{model_dir}: its manifest records no file digests (converted before they existed); "
                         "run `sfpn-edge fetch-weights --force` or re-convert, then bundle")
    members = []
    for path in sorted(p for p in model_dir.iterdir() if not p.name.startswith(".")):
        if not MEMBER_NAME.fullmatch(MODEL_PREFIX + path.name) or path.is_symlink() or not path.is_file():
            raise ModelError(f"{path}: a bundle holds plain files only (no links, folders or odd names)")
        data = _read(path)
        expected = digests.get(path.name)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise ModelError(f"{path}: sha256 differs from the manifest's: the file was changed or damaged; "
                             "run `sfpn-edge fetch-weights --force` or re-convert")
        members.append((MODEL_PREFIX + path.name, data))
    missing = sorted(set(models.listed_files(manifest)) - {name[len(MODEL_PREFIX):] for name, _ in members})
    if missing:
        raise ModelError(f"{model_dir}: the manifest lists {', '.join(missing)}, which is missing")
    if len(members) + 4 > MAX_MEMBERS:
        raise ModelError(f"{model_dir}: more than {MAX_MEMBERS - 4} files")
    return members


def _read(path: Path) -> bytes:
    try:
        return bounded_read.read_bytes(path, MEMBER_MAX_BYTES)
    except (OSError, bounded_read.LimitError) as exc:
        raise ModelError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None


def _write_tar(out: Path, codec: Optional[str], members: List[Tuple[str, bytes]]) -> None:
    """``members`` as a tar (through ``codec``) with fixed metadata, fsynced, renamed onto ``out``."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise SfpnError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as raw:
            stream = CODECS[codec][1](raw, "wb") if codec else raw
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as archive:
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    archive.addfile(info, io.BytesIO(data))
            if codec:
                stream.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except OSError as exc:
        raise SfpnError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
