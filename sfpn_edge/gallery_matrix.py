"""The SQLite gallery's search matrix on disk: one template per identity, memory-mapped.

``people.db.int8.matrix`` (``.fp16``/``.fp32`` for those storages; ``-raw`` before ``.matrix`` when
searched without the gallery's calibration) beside ``people.db`` holds exactly what
``score.Gallery`` searches, as columns a search maps instead of loading rows from the db:

    header (4 KiB)  magic, version, template dim, storage, the gallery's id (meta ``gallery_id``),
                    capacity, count, tombstones, the change-log seq and calibration checksum it
                    reflects, CRC-32 of the data, CRC-32 of the header
    centre, turn    [dim], [dim, dim] float32 (int8 only: the centre and rotation of the residual
                    codes; stored, so opening costs no QR decomposition)
    ids             [capacity] int64: the db's identity id of each row (-1: removed)
    scale, rowsum, bias [capacity] (int8 only), rows [capacity, dim] int8 / fp16 / fp32

Names stay in the db (looked up for the answers only). A new file is filled beside the old one
and renamed into place (``create``); an update (``Matrix.update``) tombstones removed rows and
appends new ones in place, then rewrites the header: a process killed in between leaves a data
CRC that fails, so the file is rebuilt, never served. ``load`` returns None (and why) for anything
else: short, foreign, another version, size or storage, a failed CRC. A path that is not a
regular file (a FIFO) is never opened nor replaced (``MatrixRefused``).
"""
from __future__ import annotations

import contextlib
import os
import stat
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np

from sfpn_edge import temp_files
from sfpn_edge.score import Gallery, rotation

MAGIC = b"SFPGMTX\0"
VERSION = 1
HEADER_BYTES = 4096
ALIGN = 64
_HEAD = struct.Struct("<8sII8s16sqqqqqI")  # magic .. data crc; then the header's own CRC-32
_COLUMNS = {"int8": (("ids", "<i8"), ("scale", "<f4"), ("rowsum", "<i4"), ("bias", "<f4"), ("rows", "i1")),
            "fp16": (("ids", "<i8"), ("rows", "<f2")),
            "fp32": (("ids", "<i8"), ("rows", "<f4"))}
_FIXED = ("center", "turn")  # whole regions, not rows
NO_CALIBRATION = -1
REMOVED_BIAS = np.float32(-1e30)  # a removed int8 row's offset: it scores below every real row


class MatrixRefused(Exception):
    """Something other than a regular file is at the matrix path: left alone, searched in memory."""


def new_gallery_id() -> str:
    """A fresh gallery id for meta ``gallery_id`` (32 hex digits)."""
    return uuid.uuid4().hex


def _layout(storage: str, dim: int, capacity: int) -> Tuple[dict, int]:
    """{column: (offset, dtype, shape)} and the file size for ``capacity`` rows."""
    offset, columns = HEADER_BYTES, {}
    if storage == "int8":
        for name, shape in (("center", (dim,)), ("turn", (dim, dim))):
            columns[name] = (offset, np.dtype("<f4"), shape)
            offset += -(-4 * int(np.prod(shape)) // ALIGN) * ALIGN
    for name, dtype in _COLUMNS[storage]:
        shape = (capacity, dim) if name == "rows" else (capacity,)
        dtype = np.dtype(dtype)
        columns[name] = (offset, dtype, shape)
        offset += -(-dtype.itemsize * int(np.prod(shape)) // ALIGN) * ALIGN
    return columns, offset


@dataclass
class Matrix:
    """Templates of one gallery state: columns over a file map (``path``) or in memory (None)."""

    path: Optional[Path]
    storage: str
    dim: int
    gallery_id: str
    capacity: int
    count: int
    tombstones: int
    seq: int
    calibration: int
    columns: dict
    data: np.ndarray  # the whole file's bytes (a map) or a stand-in holding the header

    @property
    def ids(self) -> np.ndarray:
        """The db identity id of each of the ``count`` rows (-1: removed)."""
        return self.columns["ids"][: self.count]

    @property
    def live(self) -> int:
        return self.count - self.tombstones

    def gallery(self) -> Gallery:
        """The rows as a searchable ``score.Gallery`` (no copy). Removed int8 rows score -1e30."""
        cols = {name: col for name, col in self.columns.items() if name not in _FIXED + ("ids",)}
        return Gallery.over(cols, self.count, self.storage, self.columns.get("center"), self.columns.get("turn"))

    def update(self, removed: np.ndarray, ids: np.ndarray, templates: np.ndarray, seq: int,
               tombstone_limit: int) -> bool:
        """Tombstone the rows of identity ids ``removed``, append ``templates`` [m, dim] of ``ids``,
        record ``seq``; written through to the file when mapped writable. False (nothing changed):
        no room for them, or more than ``tombstone_limit`` removed rows would remain."""
        slots = np.flatnonzero(np.isin(self.ids, removed)) if len(removed) else np.zeros(0, np.int64)
        if self.count + len(ids) > self.capacity or self.tombstones + len(slots) > tombstone_limit:
            return False
        cols = self.columns
        cols["ids"][slots] = -1
        if self.storage == "int8":
            cols["scale"][slots], cols["rowsum"][slots], cols["bias"][slots] = 0, 0, REMOVED_BIAS
        else:
            cols["rows"][slots] = 0
        if len(ids):
            encoder = Gallery(storage=self.storage, dim=self.dim, center=cols.get("center"), turn=cols.get("turn"))
            _put(cols, self.count, np.asarray(ids, np.int64), encoder.encode(templates))
        self.count, self.tombstones, self.seq = self.count + len(ids), self.tombstones + len(slots), seq
        self._seal()
        return True

    def _seal(self) -> None:
        """Header (with the data CRC) into the map; written to the file data first, header last."""
        to_file = self.path is not None and getattr(self.data, "mode", None) == "r+"
        if to_file:
            self.data.flush()
        self.data[:HEADER_BYTES] = np.frombuffer(_header(self), np.uint8)
        if to_file:
            self.data.flush()


def _put(cols: dict, start: int, ids: np.ndarray, encoded: dict) -> None:
    stop = start + len(ids)
    cols["ids"][start:stop] = ids
    for name, value in encoded.items():
        cols[name][start:stop] = value


def _data_crc(matrix: Matrix) -> int:
    crc = 0
    for name, col in matrix.columns.items():
        crc = zlib.crc32(col if name in _FIXED else col[: matrix.count], crc)
    return crc


def _header(m: Matrix) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, m.dim, m.storage.encode(), bytes.fromhex(m.gallery_id), m.capacity,
                      m.count, m.tombstones, m.seq, m.calibration, _data_crc(m))
    head += struct.pack("<I", zlib.crc32(head))
    return head + bytes(HEADER_BYTES - len(head))


def _views(data: np.ndarray, storage: str, dim: int, capacity: int) -> dict:
    layout, _ = _layout(storage, dim, capacity)
    return {name: data[off:off + dtype.itemsize * int(np.prod(shape))].view(dtype).reshape(shape)
            for name, (off, dtype, shape) in layout.items()}


def _regular_or_missing(path: Path) -> bool:
    """True if ``path`` is a regular file, False if missing; MatrixRefused for anything else."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise MatrixRefused(f"{path}: not a regular file; left alone, the gallery is searched in memory")
    return True


def load(path: Path, *, gallery_id: str, storage: str, dim: int, writable: bool
         ) -> Tuple[Optional[Matrix], str]:
    """The matrix at ``path`` mapped (``writable``: updates go to the file; else copy-on-write, the
    file is never written), checked; or (None, why it cannot be used). MatrixRefused: not a file."""
    if not _regular_or_missing(path):
        return None, "missing"
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        return None, f"cannot open ({exc.strerror or exc})"
    with open(fd, "r+b" if writable else "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise MatrixRefused(f"{path}: not a regular file; left alone, the gallery is searched in memory")
        head = fh.read(_HEAD.size + 4)
        size = os.fstat(fh.fileno()).st_size
        if len(head) < _HEAD.size + 4:
            return None, "truncated header"
        fields = _HEAD.unpack(head[:_HEAD.size])
        if fields[0] != MAGIC:
            return None, "not a gallery matrix file"
        if struct.unpack("<I", head[_HEAD.size:])[0] != zlib.crc32(head[:_HEAD.size]):
            return None, "header fails its CRC"
        _, version, fdim, fstorage, fid, capacity, count, tombstones, seq, calibration, crc = fields
        if version != VERSION:
            return None, f"matrix format {version}, this sfpn-edge writes {VERSION}"
        if fid.hex() != gallery_id:
            return None, "made for another gallery"
        if fstorage.rstrip(b"\0").decode(errors="replace") != storage or fdim != dim:
            return None, "another storage or template size"
        if not 0 <= tombstones <= count <= capacity or size != _layout(storage, dim, capacity)[1]:
            return None, "truncated or the wrong size"
        data = np.memmap(fh, np.uint8, "r+" if writable else "c", shape=(size,))
    matrix = Matrix(path, storage, dim, gallery_id, capacity, count, tombstones, seq, calibration,
                    _views(data, storage, dim, capacity), data)
    if _data_crc(matrix) != crc:
        return None, "data fails its CRC"
    return matrix, "ok"


def create(path: Optional[Path], *, gallery_id: str, storage: str, dim: int, count: int, seq: int,
           calibration: int, chunks: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Matrix:
    """A matrix of ``count`` rows from ``chunks`` of (identity ids, templates [m, dim]), with room to
    grow by a quarter (at least 1024 rows). ``path``: written beside it, fsynced and renamed into
    place (OSError: nothing replaced); None: in memory."""
    capacity = count + max(count // 4, 1024)
    size = _layout(storage, dim, capacity)[1]
    if path is None:
        return _fill(None, np.zeros(size, np.uint8), storage, dim, gallery_id, capacity, seq, calibration, chunks)
    fd, tmp = temp_files.temp_beside(path)
    try:
        with open(fd, "r+b") as fh:  # closed (its lock released) only after the rename
            # Allocated, not sparse: a full disk fails here (OSError: kept in memory), never later
            # as a SIGBUS while writing into the map.
            os.posix_fallocate(fh.fileno(), 0, size)
            data = np.memmap(fh, np.uint8, "r+", shape=(size,))
            matrix = _fill(path, data, storage, dim, gallery_id, capacity, seq, calibration, chunks)
            os.fsync(fh.fileno())
            temp_files.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return matrix


def _fill(path: Optional[Path], data: np.ndarray, storage: str, dim: int, gallery_id: str, capacity: int,
          seq: int, calibration: int, chunks: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Matrix:
    cols = _views(data, storage, dim, capacity)
    encoder, count = Gallery(storage=storage, dim=dim), 0
    for ids, templates in chunks:
        if count + len(ids) > capacity:
            raise ValueError(f"more rows than the {capacity} announced")
        _put(cols, count, np.asarray(ids, np.int64), encoder.encode(templates))
        count += len(ids)
    if storage == "int8":
        cols["center"][:] = encoder.center if encoder.center is not None else 0
        cols["turn"][:] = encoder.turn if encoder.turn is not None else rotation(dim)
    matrix = Matrix(path, storage, dim, gallery_id, capacity, count, 0, seq, calibration, cols, data)
    matrix._seal()
    return matrix
