"""Install a model bundle (``sfpn_edge.bundle``) into the cache: verified, atomic, within limits.

The archive is read once, as a stream, through a cap on its decompressed size: ``bundle.json``
must come first; every later member must be a regular file it lists (plain name, listed size at
most ``MEMBER_MAX_BYTES``, listed sha256, once), so links, devices, ``..`` or absolute paths,
duplicates and bombs are refused before anything is read from them. Files land in temporary
siblings of the destinations, which replace them only when every file is there and the model's
own manifest and the nets' pinned digests check out: a bad bundle stores nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import lzma
import re
import tarfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Dict, Optional

from sfpn_edge import bounded_read, cache, models
from sfpn_edge.bundle import (BUNDLE_JSON, CODECS, DETECTOR_PREFIX, DETECTORS, FORMAT, JSON_MAX_BYTES,
                              MAX_MEMBERS, MEMBER_MAX_BYTES, MEMBER_NAME, MODEL_PREFIX, VERSION)
from sfpn_edge.errors import ModelError, SfpnError

HEADROOM = 64 << 10
"""Archive bytes allowed beyond the listed files' (tar headers, padding, read-ahead), per member and once."""
_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Capped:
    """A read-only file object over the decompressed archive that raises LimitError once more bytes
    were read than allowed (a decompression bomb, or data that ``bundle.json`` does not list)."""

    def __init__(self, fh: BinaryIO, allowed: int):
        self._fh, self._left, self.allowed = fh, allowed, allowed

    def allow(self, more: int) -> None:
        """Allow ``more`` bytes from here on (instead of what was left)."""
        self.allowed += more - self._left
        self._left = more

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(self._left + 1 if size is None or size < 0 else min(size, self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise bounded_read.LimitError(f"the archive holds more than the {self.allowed:,} bytes its "
                                          f"{BUNDLE_JSON} accounts for (a decompression bomb?)")
        return data


def install_bundle(bundle: Path, model_dest: Path, detector_dests: Optional[Dict[str, Path]] = None) -> Dict[str, Any]:
    """Install ``bundle``'s model into ``model_dest`` and each detector's nets it holds into
    ``detector_dests[name]`` (default: the cache's); ModelError, with nothing stored, for a bad bundle."""
    bundle, model_dest = Path(bundle), Path(model_dest)
    models.check_replaceable(model_dest)
    try:
        bounded_read.regular_file(bundle)
        with open(bundle, "rb") as raw, contextlib.ExitStack() as stack:
            head = raw.read(8)
            raw.seek(0)
            codec = next((c for c, (magic, _) in CODECS.items() if head.startswith(magic)), None)
            stream = _Capped(stack.enter_context(CODECS[codec][1](raw, "rb")) if codec else raw,
                             JSON_MAX_BYTES + HEADROOM)
            archive = stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))
            dests = {name: Path((detector_dests or {}).get(name) or default()) for name, (_, default) in DETECTORS.items()}
            return _install(bundle, archive, stream, stack, model_dest, dests)
    except bounded_read.LimitError as exc:
        raise ModelError(f"{bundle}: {exc}; nothing was stored") from None
    except FileNotFoundError:
        raise ModelError(f"{bundle}: no such file") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise ModelError(f"{bundle}: truncated or not a bundle ({exc}); nothing was stored") from None


def _install(bundle: Path, archive: tarfile.TarFile, stream: _Capped, stack: contextlib.ExitStack,
             model_dest: Path, detector_dests: Dict[str, Path]) -> Dict[str, Any]:
    members = iter(archive)
    first = next(members, None)
    if first is None or first.name != BUNDLE_JSON or not first.isreg() or first.size > JSON_MAX_BYTES:
        raise ModelError(f"{bundle}: not an sfpn-edge bundle (it does not start with {BUNDLE_JSON})")
    doc = _bundle_doc(bundle, _member_bytes(bundle, archive, first))
    listed: Dict[str, Dict[str, Any]] = doc["files"]
    stream.allow(sum(e["size"] for e in listed.values()) + HEADROOM * (len(listed) + 1))
    dirs = {MODEL_PREFIX: stack.enter_context(cache.atomic_dir(model_dest))}
    held = sorted({name.split("/")[1] for name in listed if name.startswith(DETECTOR_PREFIX)})
    for name in held:
        dirs[f"{DETECTOR_PREFIX}{name}/"] = stack.enter_context(cache.atomic_dir(detector_dests[name]))
    seen = set()
    for member in members:
        entry = _check_member(bundle, member, listed, seen)
        data = _member_bytes(bundle, archive, member)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ModelError(f"{bundle}: {member.name} does not match its sha256 in {BUNDLE_JSON} "
                             "(tampered or damaged); nothing was stored")
        prefix, _, name = member.name.rpartition("/")
        _write(dirs[prefix + "/"] / name, data)
    missing = sorted(set(listed) - seen)
    if missing:
        raise ModelError(f"{bundle}: truncated, lacks {', '.join(missing[:3])}{' …' * (len(missing) > 3)}; "
                         "nothing was stored")
    manifest = models.load_manifest(dirs[MODEL_PREFIX])
    if manifest["source_sha256"] != doc["source_sha256"]:
        raise ModelError(f"{bundle}: its model was converted from other weights than {BUNDLE_JSON} says")
    for name in models.listed_files(manifest):
        models.verify_file(dirs[MODEL_PREFIX] / name, manifest)
    for name in held:
        DETECTORS[name][0](dirs[f"{DETECTOR_PREFIX}{name}/"])
    return {"bundle": str(bundle), "sha256": cache.sha256_file(bundle), "model_dir": str(model_dest),
            "detector_dirs": {name: str(detector_dests[name]) for name in held}, "files": len(seen),
            "source_sha256": doc["source_sha256"], "authors_weights": doc["source_sha256"] == models.WEIGHTS_SHA256}


def _bundle_doc(bundle: Path, data: bytes) -> Dict[str, Any]:
    """The validated ``bundle.json``."""
    try:
        doc = bounded_read.parse_json(data, max_bytes=JSON_MAX_BYTES, max_depth=4)
    except bounded_read.LimitError as exc:
        raise ModelError(f"{bundle}: {BUNDLE_JSON} is unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"{bundle}: not an sfpn-edge bundle ({BUNDLE_JSON} is not one)")
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise ModelError(f"{bundle}: bundle version {doc.get('version')!r} is newer than this sfpn-edge "
                         f"understands ({VERSION}); upgrade sfpn-edge")
    files = doc.get("files")
    ok = (isinstance(doc.get("source_sha256"), str) and _HEX64.fullmatch(doc["source_sha256"])
          and isinstance(files, dict) and 0 < len(files) <= MAX_MEMBERS and MODEL_PREFIX + models.MANIFEST in files
          and all(MEMBER_NAME.fullmatch(name) and isinstance(e, dict) and isinstance(e.get("sha256"), str)
                  and _HEX64.fullmatch(e["sha256"]) and type(e.get("size")) is int
                  and 0 <= e["size"] <= MEMBER_MAX_BYTES for name, e in files.items()))
    if not ok:
        raise ModelError(f"{bundle}: {BUNDLE_JSON} does not describe a bundle (files with plain names, sizes "
                         f"at most {MEMBER_MAX_BYTES:,} bytes and sha256, model/{models.MANIFEST} among them)")
    return doc


def _check_member(bundle: Path, member: tarfile.TarInfo, listed: Dict[str, Dict[str, Any]],
                  seen: set) -> Dict[str, Any]:
    """The ``bundle.json`` entry of ``member``, or ModelError saying why the member is refused."""
    name = repr(member.name)
    if member.issym() or member.islnk():
        raise ModelError(f"{bundle}: member {name} is a link; refused, nothing was stored")
    if not member.isreg():
        raise ModelError(f"{bundle}: member {name} is not a regular file (device, FIFO or folder); refused")
    if not MEMBER_NAME.fullmatch(member.name):
        raise ModelError(f"{bundle}: member {name} is not a plain model/ or detectors/<name>/ file name "
                         "(path traversal?); refused, nothing was stored")
    if member.name in seen:
        raise ModelError(f"{bundle}: member {name} appears twice; refused, nothing was stored")
    if member.name not in listed:
        raise ModelError(f"{bundle}: member {name} is not listed in {BUNDLE_JSON}; refused, nothing was stored")
    if member.size != listed[member.name]["size"]:
        raise ModelError(f"{bundle}: member {name} is {member.size:,} bytes, {BUNDLE_JSON} says "
                         f"{listed[member.name]['size']:,}; refused, nothing was stored")
    seen.add(member.name)
    return listed[member.name]


def _write(path: Path, data: bytes) -> None:
    try:
        with open(path, "xb") as fh:
            fh.write(data)
    except OSError as exc:
        raise SfpnError(f"cannot write {path}: {exc.strerror or exc}; nothing was stored") from None


def _member_bytes(bundle: Path, archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The content of ``member`` (size already bounded), ModelError when the archive ends early."""
    src = archive.extractfile(member)
    data = src.read(member.size + 1) if src is not None else b""
    if len(data) != member.size:
        raise ModelError(f"{bundle}: member {member.name!r} is truncated; nothing was stored")
    return data
