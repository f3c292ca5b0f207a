"""Persistent face gallery: identities and their embeddings in SQLite, searched through a mapped matrix.

    with FaceGallery("people.db", model_sha256=sha, dim=1000) as gallery:
        gallery.enroll("ada", embeddings)             # [n, D] float32, one identity, atomic
        gallery.identify(probe, k=5)                  # [Match(name, score), ...] best first

The file is a SQLite database (stdlib ``sqlite3``, WAL journal) marked with our own
``application_id``: a ``meta`` table (format, model sha256, descriptor dim), ``identities``
and ``embeddings`` (L2-normalised float32 little-endian BLOBs, never pickle, each row with a
CRC-32 of its identity's name and vector: ``row_checksum``, and the sha256 of the photo it came
from when known, so a photo is never stored twice: ``enrolled_photos``). Every enrolment
or removal is one transaction, so a process killed at any moment loses at most the change in
flight; readers in other processes see committed states only and pick up changes on their
next search (``PRAGMA data_version``). A new file appears atomically, fully initialised.

Identities are matched through a ``sfpn_edge.score.Gallery`` (fp32, fp16 or int8 storage) over
one template per identity: the normalised mean of its embeddings (``template="mean"``, the default:
+6 points top-1 over ``"all"`` embeddings on CFP frontal enrolment / profile probes, see
``DEFAULT_TEMPLATE``) or every embedding (best one counts). With templates (format 5) the index is
the matrix file beside the db (``people.db.int8.matrix``, ``sfpn_edge.gallery_matrix``), mapped,
not loaded: triggers log the identity of every row change (``template_changes``), writers update
the file in place after each write, readers catch up on the log in memory, and a missing, stale or
damaged file is rebuilt (in memory when read-only); names and raw re-scoring read only the rows
found. ``"all"`` (and formats 1-4 opened read-only) read every row into memory.

Self-calibration (format 4): the gallery fits its own calibration on its stored embeddings
(``sfpn_edge.gallery_calibration``: centring from 50 photos, LDA once identities allow, thresholds
cross-fitted on its own photo pairs) and keeps it in the ``calibration`` table; rows stay as
enrolled, so refits are exact. ``recalibrate()`` refits (fit outside the write lock, stored in one
transaction); ``enroll``/``remove`` refit when ``refit_due()``. Searches calibrate probes and rows
unless opened with ``calibration=False``; ``operating_point(far)`` gives the gallery's own threshold
for its calibrated scores, ``identify_batch(calibrated=False)`` the raw scores of the same ranking.

Damage is refused, never served: only regular files are opened (a FIFO or device as the path
fails at once); opening for writing runs ``PRAGMA quick_check``; every embedding read is checked
(size, finite, unit norm, row checksum); ``check_gallery`` (``sfpn-edge gallery check``) runs all
of it on demand. Older files (format 1: no checksums; 2: no photo hashes; 3: no calibration; 4: no
change log) are read as they are
and upgraded in one transaction when opened for writing; ``open_gallery`` opens a file with the
model and size recorded in it (the ``sfpn-edge gallery`` commands, which need no model).

A ``postgresql://`` (or ``postgres://``) URL instead of a path opens the same gallery on a PostgreSQL
server with pgvector, for a fleet of devices (``sfpn_edge.gallery_pg``: the store primitives behind
``_open_store``, ``_transaction``, ``_snapshot``, ``_query``, ``_query_version`` and the vector
conversions; everything else is this class's logic), optionally with an offline cache: a gallery
file mirroring the server that answers reads while it is unreachable; any other ``scheme://`` is
refused.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from sfpn_edge import bounded_read, gallery_calibration, gallery_matrix, temp_files, thresholds
from sfpn_edge.calibration import Calibration, check_entry_version, from_entry
from sfpn_edge.errors import ModelError, SfpnError
from sfpn_edge.gallery_format import FORMAT, FORMAT_VERSION, GalleryError
from sfpn_edge.kernels.scoring import l2_normalize
from sfpn_edge.score import STORAGES, Gallery

APPLICATION_ID = 0x53465047  # "SFPG", stored in the SQLite header (offset 68)
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 30.0
MAX_NAME_CHARS = 256
UNIT_NORM_TOLERANCE = 1e-3  # stored embeddings are unit length; anything else is damage
SIDECARS = ("-wal", "-shm", "-journal")
TEMPLATES = ("mean", "all")
# CFP, 500 identities enrolled with their 10 frontal photos, probed with their 4 profiles (2,000
# probes, MTCNN pipeline, fp32): top-1 / top-5 identification 63.1 / 79.5 % with the normalised mean
# vs 57.3 / 76.7 % with all embeddings (max); with flip 64.4 / 80.2 vs 58.1 / 77.6 %. Measured by
#   python benchmarks/measure_pipeline.py --cfp ../shared/data/cfp --model DIR --cache /tmp/cfp_faces.npz
DEFAULT_TEMPLATE = "mean"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    enrolled REAL NOT NULL
);
CREATE TABLE embeddings (
    id INTEGER PRIMARY KEY,
    identity INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    source TEXT,
    vector BLOB NOT NULL,
    checksum INTEGER,
    photo_sha256 TEXT
);
CREATE INDEX embeddings_identity ON embeddings(identity);
CREATE INDEX embeddings_photo ON embeddings(photo_sha256);
"""
# Format 4: the gallery's own calibration (one row; no row: raw cosine) and, in meta, ``row_changes``
# (embeddings added or removed since creation: the refit policy compares it with the fit's).
_CALIBRATION_SCHEMA = """
CREATE TABLE IF NOT EXISTS calibration (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    entry TEXT NOT NULL,
    mean BLOB NOT NULL,
    projection BLOB,
    checksum INTEGER NOT NULL
)
"""
# Format 5: the identity of every embedding row added, removed or changed, in order (``seq``),
# logged by triggers (so by any writer, even a raw SQL edit), so the search matrix beside the file
# (``sfpn_edge.gallery_matrix``) catches up on them instead of being rebuilt; about the newest
# CHANGE_LOG_ROWS are kept. meta's ``gallery_id`` tells the matrix files of this gallery.
CHANGE_LOG_ROWS = 100_000
_CHANGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS template_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    identity INTEGER NOT NULL
)
"""
_CHANGE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS embedding_added AFTER INSERT ON embeddings BEGIN "
    "INSERT INTO template_changes (identity) VALUES (NEW.identity); END",
    "CREATE TRIGGER IF NOT EXISTS embedding_removed AFTER DELETE ON embeddings BEGIN "
    "INSERT INTO template_changes (identity) VALUES (OLD.identity); END",
    "CREATE TRIGGER IF NOT EXISTS embedding_changed AFTER UPDATE ON embeddings BEGIN "
    "INSERT INTO template_changes (identity) VALUES (OLD.identity), (NEW.identity); END",
    "CREATE TRIGGER IF NOT EXISTS change_log_trimmed AFTER INSERT ON template_changes WHEN NEW.seq % 1024 = 0 "
    f"BEGIN DELETE FROM template_changes WHERE seq <= NEW.seq - {CHANGE_LOG_ROWS}; END",
)
# A matrix file behind by more changed identities than this (and an eighth of its rows) is
# rebuilt rather than caught up; with more removed rows than MAX_TOMBSTONES (fp16/fp32: searched
# k + that many rows) too.
CATCH_UP_MIN = 4096
MAX_TOMBSTONES = 1024
MATRIX_CHUNK = 4096  # identities read per query while building a matrix
NAME_ATTEMPTS = 10  # searches retried when the gallery changed between search and name lookup
# Automatic refits after enrolments and removals: when the photos support another stage (none,
# centring, LDA) or REFIT_CHANGE more LDA dimensions, or REFIT_CHANGE of the photos fitted on were
# added or removed.
# A refit costs ~15 s on this 2-core box whatever the size (README, gallery section).
REFIT_CHANGE = 0.1


class EmbeddingError(GalleryError, ValueError):
    """Embeddings that cannot be stored or searched: wrong shape or type, NaN/inf, zero norm."""


@dataclass(frozen=True)
class Identity:
    """One enrolled person: name, number of stored embeddings, enrolment time (Unix seconds)."""

    name: str
    images: int
    enrolled: float


@dataclass(frozen=True)
class Match:
    """One identification candidate: identity name and cosine score (higher is closer)."""

    name: str
    score: float


class FaceGallery:
    """A gallery file bound to one embedding model (its sha256) and descriptor size.

    ``create=True`` makes the file when it does not exist; ``readonly=True`` never writes
    (opening fails if the file is missing); ``calibration=False`` ignores the gallery's own
    calibration in searches (raw cosine). An existing file that is not a gallery, or one made
    for another model or descriptor size, raises GalleryError before anything is written.
    ``offline_cache`` (``postgresql://`` galleries only): a local copy answering while the server is
    unreachable (``sfpn_edge.gallery_pg``).
    """

    def __init__(self, path: Union[str, os.PathLike], *, model_sha256: str, dim: int,
                 readonly: bool = False, create: bool = True, template: str = DEFAULT_TEMPLATE,
                 storage: str = "fp32", calibration: bool = True,
                 offline_cache: Optional[Union[str, os.PathLike]] = None):
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.model_sha256 = str(model_sha256)
        self.dim = dim
        self.readonly = readonly
        self.template = template
        self.storage = storage
        self.use_calibration = bool(calibration)
        if offline_cache is not None and not _server_url(path):
            raise ValueError("offline_cache is for postgresql:// galleries: a gallery file is local already")
        self._cache_path = None if offline_cache is None else Path(offline_cache)
        self._open_store(path, create)
        self._index: Optional[_Index] = None  # built lazily, rebuilt when the file changed
        self._version = None

    def __new__(cls, path, **kwargs):
        """A ``postgresql://`` URL opens the gallery on that server (``sfpn_edge.gallery_pg``)."""
        if cls is FaceGallery and _server_url(path):
            return super().__new__(_pg_gallery())
        return super().__new__(cls)

    # -- opening ---------------------------------------------------------------------------

    _DB_ERRORS: tuple = (sqlite3.DatabaseError,)

    def _open_store(self, path: Union[str, os.PathLike], create: bool) -> None:
        """Open (``create``: make) the file at ``path``, checked; upgraded when opened for writing."""
        self.path = Path(path)
        _check_header(self.path)
        if not self.path.exists():
            if self.readonly or not create:
                raise GalleryError(f"{self.path}: no such gallery (enrol someone first)")
            _create(self.path, self.model_sha256, self.dim)
        # First an immutable look (no locks, no -wal/-shm files: a refused file is left exactly
        # as it was; the meta table is written at creation, so it lives in the main file), then
        # the same check on the live connection, which also sees changes still in the WAL.
        uri = f"{self.path.resolve().as_uri()}?mode=ro&immutable=1"
        with contextlib.closing(self._open(uri)) as snapshot:
            self._check_meta(snapshot)
        self._db = self._connect()
        try:
            self.format_version = self._check_meta(self._db)
            if not self.readonly:
                temp_files.sweep(self.path)  # what writers killed mid-write left beside it
                self.quick_check()
                if self.format_version < FORMAT_VERSION:
                    self._upgrade()
        except BaseException:
            self._db.close()
            raise

    def _open(self, uri: str) -> sqlite3.Connection:
        try:
            return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise GalleryError(f"{self.path}: cannot open gallery ({exc})") from None

    def _connect(self) -> sqlite3.Connection:
        mode = "ro" if self.readonly else "rw"
        db = self._open(f"{self.path.resolve().as_uri()}?mode={mode}")
        try:
            db.execute("PRAGMA foreign_keys = ON")
            if not self.readonly:
                db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            db.close()
            raise GalleryError(f"{self.path}: cannot open gallery ({exc})") from None
        return db

    def _check_meta(self, db: sqlite3.Connection) -> int:
        """The format version of ``db``; GalleryError unless it is a gallery for this model and size."""
        try:
            self._check_ours(db)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except self._DB_ERRORS as exc:
            raise GalleryError(f"{self.path}: not a readable sfpn-edge gallery ({exc})") from None
        if meta.get("format") != FORMAT:
            raise GalleryError(f"{self.path}: not an sfpn-edge gallery (format {meta.get('format')!r})")
        version = meta.get("format_version", "")
        if not version.isdigit() or int(version) > FORMAT_VERSION:
            raise GalleryError(f"{self.path}: gallery format {version!r} is newer than this sfpn-edge "
                               f"understands ({FORMAT_VERSION}); upgrade sfpn-edge")
        if meta.get("descriptor_dim") != str(self.dim):
            raise GalleryError(f"{self.path}: holds {meta.get('descriptor_dim')}-d embeddings, this model "
                               f"makes {self.dim}-d ones")
        if meta.get("model_sha256") != self.model_sha256:
            raise GalleryError(f"{self.path}: enrolled with another model (sha256 "
                               f"{str(meta.get('model_sha256'))[:12]}…, this one {self.model_sha256[:12]}…); "
                               "re-enrol with this model or use the model the gallery was made with")
        return int(version)

    def _check_ours(self, db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            raise GalleryError(f"{self.path}: an SQLite database, but not an sfpn-edge gallery")

    def quick_check(self) -> None:
        """SQLite's ``PRAGMA quick_check`` (every page and b-tree well formed), else GalleryError."""
        try:
            rows = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            rows = [(str(exc),)]
        if rows != [("ok",)]:
            raise GalleryError(f"{self.path}: damaged gallery: PRAGMA quick_check failed ({rows[0][0]}); "
                               "restore a backup or enrol again into a new file")

    def _upgrade(self) -> None:
        """To the current format in one transaction: 1 -> 2 adds and fills the row checksums
        (rows checked first), 2 -> 3 adds the (unknown, NULL) photo hashes, 3 -> 4 the (empty)
        calibration table: the next enrolment or ``recalibrate`` fits it; 4 -> 5 the (empty)
        change log and the gallery id."""
        with self._transaction() as db:
            columns = [row[1] for row in db.execute("PRAGMA table_info(embeddings)")]
            if "checksum" not in columns:
                db.execute("ALTER TABLE embeddings ADD COLUMN checksum INTEGER")
            if self.format_version < 2:
                rows = db.execute("SELECT e.id, i.name, e.vector FROM embeddings e "
                                  "JOIN identities i ON i.id = e.identity").fetchall()
                for _, name, blob in rows:
                    self._vector(name, blob, None)
                db.executemany("UPDATE embeddings SET checksum = ? WHERE id = ?",
                               [(row_checksum(name, blob), row) for row, name, blob in rows])
            if "photo_sha256" not in columns:
                db.execute("ALTER TABLE embeddings ADD COLUMN photo_sha256 TEXT")
            db.execute("CREATE INDEX IF NOT EXISTS embeddings_photo ON embeddings(photo_sha256)")
            if self.format_version < 4:
                db.execute(_CALIBRATION_SCHEMA)
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('row_changes', '0')")
            if self.format_version < 5:
                db.execute(_CHANGES_SCHEMA)
                for trigger in _CHANGE_TRIGGERS:
                    db.execute(trigger)
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('gallery_id', ?)",
                           (gallery_matrix.new_gallery_id(),))
            db.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION),))
            db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        self.format_version = FORMAT_VERSION

    # -- writing ---------------------------------------------------------------------------

    def enroll(self, name: str, embeddings: np.ndarray, sources: Optional[Sequence[str]] = None,
               *, replace: bool = False, photo_sha256: Optional[Sequence[Optional[str]]] = None,
               calibrate: bool = True) -> Identity:
        """Add embeddings [n, D] (or [D]) under ``name`` in one transaction; return the identity.

        An existing name gets the new embeddings added, or replaced when ``replace``.
        ``photo_sha256``: the hex sha256 of each embedding's photo (``enrolled_photos`` finds them).
        ``calibrate``: refit the gallery's calibration afterwards when due (``refit_due``).
        """
        return self.enroll_many([(name, embeddings, sources, photo_sha256)], replace=replace, calibrate=calibrate)[0]

    def enroll_many(self, items: Iterable[tuple], *, replace: bool = False, calibrate: bool = True) -> List[Identity]:
        """``enroll`` for many ``(name, embeddings[, sources[, photo_sha256]])`` at once, in one transaction."""
        checked = []
        for item in items:
            name, embeddings, sources, hashes = (tuple(item) + (None, None))[:4]
            vectors = self._check_embeddings(embeddings)
            sources = list(sources) if sources is not None else [None] * len(vectors)
            hashes = [_photo_hash(h) for h in hashes] if hashes is not None else [None] * len(vectors)
            if len(sources) != len(vectors) or len(hashes) != len(vectors):
                raise EmbeddingError(f"{len(sources)} sources and {len(hashes)} photo hashes for "
                                     f"{len(vectors)} embeddings")
            checked.append((check_name(name), vectors, [None if s is None else _text(s) for s in sources], hashes))
        self._require_writable()
        with self._transaction() as db:
            enrolled = [self._insert(db, *item, replace) for item in checked]
        self._after_write(calibrate)
        return enrolled

    def _insert(self, db: sqlite3.Connection, name: str, vectors: np.ndarray, sources: list, hashes: list,
                replace: bool) -> Identity:
        row = db.execute("SELECT id, enrolled FROM identities WHERE name = ?", (name,)).fetchone()
        if row is not None and replace:
            _count_changes(db, _rows_of(db, name))
            db.execute("DELETE FROM identities WHERE id = ?", (row[0],))
            row = None
        if row is None:
            enrolled = time.time()
            ident = db.execute("INSERT INTO identities (name, enrolled) VALUES (?, ?) RETURNING id",
                               (name, enrolled)).fetchone()[0]
        else:
            ident, enrolled = row
        blobs = [v.astype("<f4").tobytes() for v in vectors]
        db.executemany("INSERT INTO embeddings (identity, source, vector, checksum, photo_sha256) "
                       "VALUES (?, ?, ?, ?, ?)",
                       [(ident, s, self._vector_param(b), row_checksum(name, b), h)
                        for b, s, h in zip(blobs, sources, hashes)])
        _count_changes(db, len(blobs))
        count = db.execute("SELECT COUNT(*) FROM embeddings WHERE identity = ?", (ident,)).fetchone()[0]
        return Identity(name, count, enrolled)

    def remove(self, name: str, *, calibrate: bool = True) -> bool:
        """Delete ``name`` and its embeddings; False when it was not enrolled (refit as ``enroll``)."""
        self._require_writable()
        with self._transaction() as db:
            _count_changes(db, _rows_of(db, name))
            removed = db.execute("DELETE FROM identities WHERE name = ?", (name,)).rowcount
        self._after_write(calibrate and removed > 0)
        return removed > 0

    def remove_many(self, names: Sequence[str], *, calibrate: bool = True) -> None:
        """Delete every one of ``names`` in one transaction; GalleryError (nothing deleted) if one is not enrolled."""
        self._require_writable()
        with self._transaction() as db:
            for name in names:
                _count_changes(db, _rows_of(db, name))
                if db.execute("DELETE FROM identities WHERE name = ?", (name,)).rowcount == 0:
                    raise GalleryError(f"{self.path}: {name!r} is not enrolled; nothing was removed")
        self._after_write(calibrate)

    def _after_write(self, calibrate: bool) -> None:
        """Refit when due, then bring the matrix file up to date (the write itself is committed: a
        damaged row or a full disk shows on the next search, not here)."""
        self._refit_if_due(calibrate)
        if self._matrix_path() is not None:
            with contextlib.suppress(GalleryError, OSError):
                self._current_index()

    # -- the gallery's own calibration -----------------------------------------------------

    def recalibrate(self) -> Optional[Calibration]:
        """Refit the gallery's own calibration on every stored embedding (``sfpn_edge.gallery_calibration``)
        and store it in one transaction: a process killed meanwhile leaves the previous one. None:
        too few photos (the gallery then scores raw cosine). Stored embeddings are never changed.

        The rows are read in one snapshot and fitted without holding the write lock (a refit takes
        seconds; other writers wait only for the store); a fit of an older snapshot than the stored
        one is not stored, the stored one is returned instead.
        """
        self._require_writable()
        with self._snapshot() as db:
            rows = db.execute("SELECT i.name, e.vector, e.checksum FROM embeddings e JOIN identities i "
                              "ON i.id = e.identity ORDER BY i.id, e.id").fetchall()
            changes = self._row_changes(db)
        cal = None
        if rows:
            vectors = np.stack([self._vector(*row) for row in rows])
            cal = gallery_calibration.fit_gallery(vectors, [row[0] for row in rows], model_sha256=self.model_sha256,
                                                  info={"row_changes": changes})
        with self._transaction() as db:
            try:
                stored = self.stored_calibration()
            except GalleryError:  # a damaged calibration row is what a refit replaces
                stored = None
            if stored is not None and stored.info.get("row_changes", -1) > changes:
                return stored  # another process stored a fit of newer rows meanwhile
            db.execute("DELETE FROM calibration")
            if cal is not None:
                db.execute("INSERT INTO calibration (id, entry, mean, projection, checksum) VALUES (1, ?, ?, ?, ?)",
                           _calibration_row(cal))
        self._after_write(False)
        return cal

    def refit_due(self) -> bool:
        """Whether an automatic refit is due: the stored photos support another stage than the one
        fitted, or ``REFIT_CHANGE`` of the photos fitted on were added or removed since, or the
        stored calibration is damaged."""
        if self.format_version < 4:
            return False
        counts = np.array([n for (n,) in self._query("SELECT COUNT(*) FROM embeddings GROUP BY identity")], int)
        plan = gallery_calibration.choose(int(counts.sum()), np.repeat(np.arange(len(counts)), counts), self.dim)
        try:
            cal = self.stored_calibration()
        except GalleryError:  # damaged: a refit replaces it
            return True
        if cal is None or plan is None:
            return (cal is None) != (plan is None)
        if plan.method != cal.method or (plan.dim or self.dim) >= (1 + REFIT_CHANGE) * cal.dim_out:
            return True
        fitted, changes = cal.info.get("row_changes"), self._row_changes()
        return not isinstance(fitted, int) or changes - fitted >= REFIT_CHANGE * cal.info.get("gallery_photos", 0)

    def _refit_if_due(self, calibrate: bool) -> None:
        if calibrate and self.refit_due():
            self.recalibrate()

    def stored_calibration(self) -> Optional[Calibration]:
        """The calibration stored in the file (None: not fitted), checked; whether or not it is used."""
        if self.format_version < 4:
            return None
        rows = self._query("SELECT entry, mean, projection, checksum FROM calibration WHERE id = 1")
        return _calibration_of(self, *rows[0]) if rows else None

    @property
    def calibration(self) -> Optional[Calibration]:
        """The calibration searches use: the stored one, unless opened with ``calibration=False``."""
        return self._current_index().calibration

    def operating_point(self, far: float) -> Optional[thresholds.OperatingPoint]:
        """The threshold at ``far`` cross-fitted on the gallery's own photo pairs, for its calibrated
        scores; None when it has none there (the caller's table then applies to raw scores)."""
        cal = self.calibration
        if cal is None or not cal.operating_points:
            return None
        points = cal.operating_points
        pairs = points[0]
        on = (f"the gallery's own photo pairs ({pairs['genuine_pairs']:,} genuine, {pairs['impostor_pairs']:,} "
              f"impostor, cross-fitted over {gallery_calibration.THRESHOLD_GROUPS} identity groups)")
        table = thresholds.OperatingPoints(
            {p["far"]: p["threshold"] for p in points},
            f"the gallery's own calibration ({cal.method}, {cal.dim_out}-d), thresholds cross-fitted on its "
            "photo pairs",
            {p["far"]: {gallery_calibration.PROTOCOL: p["tar"]} for p in points}, on)
        try:
            return table.at(far)
        except SfpnError:  # outside the FARs its impostor pairs can measure
            return None

    def calibration_summary(self, calibrated: Optional[bool] = None) -> dict:
        """What outputs say about the gallery's calibration: state (fitted, none, off), method, dims,
        provenance, its thresholds (own or why not); with ``calibrated``, which scores an answer
        holds ("calibrated": compared with the gallery's own threshold; "raw": ranked by the
        calibration, compared with the verifier's threshold)."""
        try:
            cal = self.stored_calibration()
        except GalleryError as exc:
            if self.use_calibration:
                raise
            return {"state": "off", "reason": str(exc)}  # not used, so not in the way
        if cal is None:
            photos = self._query("SELECT COUNT(*) FROM embeddings")[0][0]
            reason = (f"{photos} photos, centring needs {gallery_calibration.MIN_PHOTOS}"
                      if photos < gallery_calibration.MIN_PHOTOS
                      else "not fitted yet: run `sfpn-edge gallery recalibrate DB`")
            return {"state": "none", "reason": reason}
        info = cal.info
        summary = {"state": "fitted" if self.use_calibration else "off", **cal.summary(),
                   "model_sha256": info.get("model_sha256"),
                   "gallery_photos": info.get("gallery_photos"), "gallery_identities": info.get("gallery_identities"),
                   "identities_with_2_photos": info.get("identities_with_2_photos"),
                   "current": info.get("row_changes") == self._row_changes(),
                   "thresholds": info.get("thresholds"), "fit_seconds": info.get("fit_seconds")}
        if self.use_calibration and calibrated is not None:
            summary["scores"] = "calibrated" if calibrated else "raw"
        return summary

    def rename(self, old: str, new: str) -> Identity:
        """Give ``old``'s embeddings the name ``new`` (row checksums rewritten); GalleryError if
        ``old`` is not enrolled or ``new`` is taken."""
        check_name(new)
        self._require_writable()
        with self._transaction() as db:
            row = db.execute("SELECT id, enrolled FROM identities WHERE name = ?", (old,)).fetchone()
            if row is None:
                raise GalleryError(f"{self.path}: {old!r} is not enrolled")
            if db.execute("SELECT 1 FROM identities WHERE name = ?", (new,)).fetchone():
                raise GalleryError(f"{self.path}: {new!r} is already enrolled; remove it first")
            rows = db.execute("SELECT id, vector, checksum FROM embeddings WHERE identity = ?",
                              (row[0],)).fetchall()  # writable: upgraded, so every row has a checksum
            for _, vector, checksum in rows:
                self._vector(old, vector, checksum)
            db.execute("UPDATE identities SET name = ? WHERE id = ?", (new, row[0]))
            db.executemany("UPDATE embeddings SET checksum = ? WHERE id = ?",
                           [(row_checksum(new, self._blob(vector)), ident) for ident, vector, _ in rows])
        self._after_write(False)
        return Identity(new, len(rows), row[1])

    def _require_writable(self) -> None:
        if self.readonly:
            raise GalleryError(f"{self.path}: opened read-only")

    @contextlib.contextmanager
    def _transaction(self):
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise GalleryError(f"{self.path}: write failed, nothing changed ({exc})") from None
        finally:
            self._index = None

    @contextlib.contextmanager
    def _snapshot(self):
        """A read transaction: every query inside sees one committed state."""
        try:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise GalleryError(f"{self.path}: cannot read gallery ({exc})") from None

    # -- reading ---------------------------------------------------------------------------

    def identities(self) -> List[Identity]:
        """Every enrolled identity, by name."""
        rows = self._query(
            "SELECT i.name, COUNT(e.id), i.enrolled FROM identities i "
            "LEFT JOIN embeddings e ON e.identity = i.id GROUP BY i.id ORDER BY i.name")
        return [Identity(name, count, enrolled) for name, count, enrolled in rows]

    def __len__(self) -> int:
        return self._query("SELECT COUNT(*) FROM identities")[0][0]

    def __contains__(self, name: object) -> bool:
        return bool(self._query("SELECT 1 FROM identities WHERE name = ?", (name,)))

    def embeddings(self, name: str) -> np.ndarray:
        """The stored (normalised) embeddings of ``name``, [n, D]; KeyError if not enrolled."""
        rows = self._query(f"SELECT i.name, e.vector, {self._checksums} FROM embeddings e JOIN identities i "
                           "ON i.id = e.identity WHERE i.name = ? ORDER BY e.id", (name,))
        if not rows:
            raise KeyError(name)
        return np.stack([self._vector(*row) for row in rows])

    def enrolled_photos(self, photo_sha256: Iterable[str]) -> Dict[str, str]:
        """Which of these photo hashes are already stored: {sha256: identity name}."""
        wanted = sorted({_photo_hash(h) for h in photo_sha256})
        if self.format_version < 3 or not wanted:
            return {}
        found: Dict[str, str] = {}
        for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            part = wanted[start:start + 500]
            found.update(self._query(
                "SELECT e.photo_sha256, i.name FROM embeddings e JOIN identities i ON i.id = e.identity "
                f"WHERE e.photo_sha256 IN ({', '.join('?' * len(part))})", tuple(part)))
        return found

    def info(self) -> dict:
        """What the file holds: format, model, size, creation time, counts (no rows are read)."""
        meta = dict(self._query("SELECT key, value FROM meta"))
        photos = self._query("SELECT COUNT(*), COUNT(photo_sha256) FROM embeddings" if self.format_version >= 3
                             else "SELECT COUNT(*), 0 FROM embeddings")[0]
        return {"db": str(self.path), "format_version": self.format_version, "model_sha256": self.model_sha256,
                "descriptor_dim": self.dim, "created": meta.get("created"), "identities": len(self),
                "embeddings": photos[0], "photo_hashes": photos[1], "bytes": self._bytes(),
                "calibration": self.calibration_summary()}

    def identify(self, probe: np.ndarray, k: int = 5) -> List[Match]:
        """The ``k`` closest identities to one probe embedding [D], best first."""
        return self.identify_batch(np.asarray(probe)[None], k)[0]

    def identify_batch(self, probes: np.ndarray, k: int = 5, *, calibrated: Optional[bool] = None) -> List[List[Match]]:
        """``identify`` for probes [P, D]: one best-first list of at most ``k`` matches each.

        With the gallery's calibration, probes and templates are calibrated and ranked by their
        calibrated cosine; ``calibrated`` says which scores the matches carry: calibrated ones (for
        the gallery's own thresholds) or the raw cosine of the same candidates (for a threshold on
        raw scores; the order stays the calibrated one). None: calibrated when the calibration
        has thresholds of its own.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        probes = self._check_embeddings(probes)
        for _ in range(NAME_ATTEMPTS):
            out = self._identify_once(probes, int(k), calibrated)
            if out is not None:
                return out
            self._index = None
        raise GalleryError(f"{self.path}: the gallery changed during each of {NAME_ATTEMPTS} searches; try again")

    def _identify_once(self, probes: np.ndarray, k: int, calibrated: Optional[bool]) -> Optional[List[List[Match]]]:
        """``identify_batch`` on the current index; None when the gallery changed before the names
        of the rows found could be read (the matrix index reads them from the store)."""
        ix = self._current_index()
        if ix.search is None:
            return [[] for _ in probes]
        cal = ix.calibration
        k = min(k, ix.identities)
        # The k best identities' best rows are among the top (k-1)*m+1 rows (m = most rows
        # per identity), so this many rows always suffice; with templates m == 1; plus the
        # removed rows a matrix may still search (``skip``).
        rows = min(ix.rows, (k - 1) * ix.per_identity + 1 + ix.skip)
        idx, scores = ix.search.topk(probes if cal is None else cal.apply(probes), rows)
        names = ix.names(idx)
        if names is None:
            return None
        raw = cal is not None and not (bool(cal.operating_points) if calibrated is None else calibrated)
        out = []
        for probe, row_names, row_scores in zip(probes, names, scores.tolist()):
            seen, matches = set(), []
            for name, s in zip(row_names, row_scores):
                if name is not None and name not in seen:
                    seen.add(name)
                    matches.append(Match(name, float(ix.raw_score(probe, name)) if raw else float(s)))
                if len(matches) == k:
                    break
            out.append(matches)
        return out

    def _current_index(self) -> "_Index":
        version = self._query_version()
        if self._index is None or version != self._version:
            self._index = self._build_index()
            self._version = version
        return self._index

    def _query_version(self) -> int:
        return self._query("PRAGMA data_version")[0][0]

    def _build_index(self) -> Union["_Index", "_MatrixIndex"]:
        path = self._matrix_path()
        return self._memory_index() if path is None else self._matrix_index(path)

    def _memory_index(self) -> "_Index":
        """Every row read and checked, templates built and searched in memory."""
        rows = self._query(f"SELECT i.name, e.vector, {self._checksums} FROM embeddings e JOIN identities i "
                           "ON i.id = e.identity ORDER BY i.id, e.id")
        cal = self.stored_calibration() if self.use_calibration else None
        if not rows:
            return _Index(None, [], 0, 0, cal, np.zeros((0, self.dim), np.float32), {})
        row_names = [row[0] for row in rows]
        raw = np.empty((len(rows), self.dim), np.float32)  # filled in place: peak memory ~ one copy per step
        for k, row in enumerate(rows):
            raw[k] = self._vector(*row)
        del rows
        # Calibrated templates: the normalised mean of the calibrated rows (CFP 1:N, LDA: +0.1 to
        # +0.5 top-1 over calibrating the raw mean).
        vectors, names, per_identity = self._templates(row_names, raw if cal is None else cal.apply(raw))
        if self.template == "all":
            raw_rows = raw
        elif cal is None:
            raw_rows = vectors  # the raw templates themselves
        else:
            raw_rows = self._templates(row_names, raw)[0]
        del raw
        rows_of: Dict[str, List[int]] = {}
        for i, name in enumerate(row_names if self.template == "all" else names):
            rows_of.setdefault(name, []).append(i)
        return _Index(Gallery(np.ascontiguousarray(vectors, np.float32), storage=self.storage), names,
                      per_identity, len(rows_of), cal, raw_rows, rows_of)

    # -- the search matrix file (SQLite, template "mean", format 5) -------------------------

    def _matrix_path(self) -> Optional[Path]:
        """The search matrix beside the file (``sfpn_edge.gallery_matrix``); None: searched in memory
        (template "all", a format before 5)."""
        if self.template != "mean" or self.format_version < 5:
            return None
        return self.path.with_name(f"{self.path.name}.{self.storage}{'' if self.use_calibration else '-raw'}.matrix")

    def _matrix_index(self, path: Path) -> "_MatrixIndex":
        """The matrix of the current state: the file as it is, caught up on the identities changed
        since it was written, or rebuilt; kept in memory when the gallery is read-only, the file
        cannot be written or something other than a file is in its place."""
        matrix, writable = None, not self.readonly
        try:
            with (self._snapshot() if self.readonly else self._transaction()) as db:
                state = self._matrix_state(db)
                matrix, _ = gallery_matrix.load(path, gallery_id=state.gallery_id, storage=self.storage,
                                                dim=state.dim, writable=writable)
                if matrix is not None and not self._catch_up(db, matrix, state):
                    matrix = None
        except gallery_matrix.MatrixRefused:
            writable = False
        except OSError:
            matrix = None
        if matrix is None:
            with self._snapshot() as db:
                state = self._matrix_state(db)
                fields = dict(gallery_id=state.gallery_id, storage=self.storage, dim=state.dim, count=state.identities,
                              seq=state.seq, calibration=state.calibration_checksum)
                cal = state.calibration
                if writable:  # else, or when the directory refuses the file: in memory
                    with contextlib.suppress(OSError):
                        matrix = gallery_matrix.create(path, chunks=self._matrix_chunks(db, cal), **fields)
                if matrix is None:
                    matrix = gallery_matrix.create(None, chunks=self._matrix_chunks(db, cal), **fields)
        return _MatrixIndex(self, matrix, state)

    def _matrix_state(self, db: sqlite3.Connection) -> "_MatrixState":
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key = 'gallery_id'").fetchall())
        gallery_id = str(meta.get("gallery_id", ""))
        if not re.fullmatch(r"[0-9a-f]{32}", gallery_id):
            raise GalleryError(f"{self.path}: damaged gallery: gallery_id {gallery_id!r} in its meta table")
        seq, first = db.execute("SELECT COALESCE(MAX(seq), 0), COALESCE(MIN(seq), 1) FROM template_changes").fetchone()
        cal = self.stored_calibration() if self.use_calibration else None
        checksum = (db.execute("SELECT checksum FROM calibration WHERE id = 1").fetchone()[0] if cal is not None
                    else gallery_matrix.NO_CALIBRATION)
        identities = db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
        return _MatrixState(gallery_id, int(seq), int(first), cal, int(checksum), identities,
                            self.dim if cal is None else cal.dim_out, db.execute("PRAGMA data_version").fetchone()[0])

    def _catch_up(self, db: sqlite3.Connection, matrix: gallery_matrix.Matrix, state: "_MatrixState") -> bool:
        """Bring ``matrix`` to ``state`` from the change log; False: it must be rebuilt instead."""
        if matrix.calibration != state.calibration_checksum or matrix.seq > state.seq:
            return False
        if matrix.seq == state.seq:
            return True
        if matrix.seq < state.first_seq - 1:
            return False  # the log no longer reaches back to it
        changed = [i for (i,) in db.execute("SELECT DISTINCT identity FROM template_changes WHERE seq > ?",
                                            (matrix.seq,))]
        if len(changed) > max(CATCH_UP_MIN, matrix.live // 8):
            return False
        parts = list(self._matrix_chunks(db, state.calibration, changed))
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        templates = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, state.dim), np.float32)
        return matrix.update(np.array(changed, np.int64), ids, templates, state.seq, MAX_TOMBSTONES)

    def _matrix_chunks(self, db: sqlite3.Connection, cal: Optional[Calibration],
                       identities: Optional[List[int]] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """(identity ids, calibrated mean templates) of ``identities`` (None: all), rows checked,
        read ``MATRIX_CHUNK`` identities at a time."""
        if identities is None:
            identities = [i for (i,) in db.execute("SELECT id FROM identities ORDER BY id")]
        for start in range(0, len(identities), MATRIX_CHUNK):
            part = identities[start:start + MATRIX_CHUNK]
            found = []
            for sub in range(0, len(part), 500):  # SQLite's bound-parameter limit
                ids = part[sub:sub + 500]
                found += db.execute(f"SELECT e.identity, i.name, e.vector, {self._checksums} FROM embeddings e "
                                    "JOIN identities i ON i.id = e.identity WHERE e.identity IN "
                                    f"({', '.join('?' * len(ids))}) ORDER BY e.identity, e.id", tuple(ids)).fetchall()
            if not found:
                continue
            owner = np.array([row[0] for row in found], np.int64)
            raw = np.stack([self._vector(*row[1:]) for row in found])
            _, first = np.unique(owner, return_index=True)
            first = np.sort(first)
            yield owner[first], _normalise(np.add.reduceat(raw if cal is None else cal.apply(raw), first, axis=0))

    def _raw_template_score(self, probe: np.ndarray, name: str) -> float:
        """Raw cosine of a unit ``probe`` with ``name``'s raw template, from its stored rows."""
        rows = self.embeddings(name)
        return float(_normalise(rows.sum(axis=0, keepdims=True))[0] @ probe)

    def _templates(self, names: List[str], vectors: np.ndarray):
        """(rows to search, their names, most rows per name) for this gallery's template."""
        if self.template == "all":
            return vectors, names, int(max(np.unique(np.array(names, dtype=object), return_counts=True)[1]))
        _, start = np.unique(np.array(names, dtype=object), return_index=True)
        order = np.sort(start)  # rows are grouped by identity, in enrolment order
        return _normalise(np.add.reduceat(vectors, order, axis=0)), [names[i] for i in order], 1

    def _query(self, sql: str, params: tuple = ()) -> list:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise GalleryError(f"{self.path}: cannot read gallery ({exc})") from None

    def _row_changes(self, db: Optional[sqlite3.Connection] = None) -> Optional[int]:
        """meta's ``row_changes``, read in ``db``'s transaction (None: on its own)."""
        sql = "SELECT value FROM meta WHERE key = 'row_changes'"
        rows = self._query(sql) if db is None else db.execute(sql).fetchall()
        return int(rows[0][0]) if rows and str(rows[0][0]).isdigit() else None

    def _bytes(self) -> int:
        return self.path.stat().st_size

    def _blob(self, stored: bytes) -> bytes:
        """A stored vector as float32 little-endian bytes."""
        return stored

    def _vector_param(self, blob: bytes) -> bytes:
        """float32 little-endian bytes as the vector column takes them."""
        return blob

    def _foreign_key_check(self) -> list:
        return self._query("PRAGMA foreign_key_check")

    @property
    def _checksums(self) -> str:
        """The checksum column to select (format 1 files have none)."""
        return "e.checksum" if self.format_version >= 2 else "NULL"

    def _vector(self, name: str, blob: bytes, checksum: Optional[int]) -> np.ndarray:
        """A stored embedding of ``name``, checked: size, row checksum (format 2), finite, unit norm."""
        damaged = f"{self.path}: damaged gallery: an embedding of {name!r}"
        blob = self._blob(blob)
        if not isinstance(name, str) or not isinstance(blob, bytes) or len(blob) != 4 * self.dim:
            raise GalleryError(f"{damaged} is not {self.dim} float32 values")
        if self.format_version >= 2 and checksum != row_checksum(name, blob):
            raise GalleryError(f"{damaged} fails its row checksum")
        vector = np.frombuffer(blob, "<f4").astype(np.float32)
        if not np.isfinite(vector).all():
            raise GalleryError(f"{damaged} holds NaN or infinity")
        norm = float(np.linalg.norm(vector.astype(np.float64)))
        if abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
            raise GalleryError(f"{damaged} is not unit length (norm {norm:.6g})")
        return vector

    def _check_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        array = np.asarray(embeddings)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.dim or array.shape[0] == 0:
            raise EmbeddingError(f"expected embeddings of shape [n, {self.dim}], got {np.shape(embeddings)}")
        if not np.issubdtype(array.dtype, np.floating):
            raise EmbeddingError(f"embeddings must be floating point, got {array.dtype}")
        with np.errstate(over="ignore"):  # beyond float32: becomes inf, refused just below
            array = np.ascontiguousarray(array, np.float32)
        if not np.isfinite(array).all():
            raise EmbeddingError("embeddings contain NaN or infinity (or values beyond float32)")
        unit = _normalise(array)
        if (np.abs(np.linalg.norm(unit.astype(np.float64), axis=1) - 1.0) > UNIT_NORM_TOLERANCE).any():
            raise EmbeddingError("an embedding is all zeros: it has no direction to compare")
        return unit

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "FaceGallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FaceGallery {self.path} template={self.template} storage={self.storage}>"


class _CacheFile(FaceGallery):
    """The offline cache of a ``postgresql://`` gallery (``sfpn_edge.gallery_pg``): a gallery file
    mirroring the server, whose meta names the server (``cache_of``) and the ``data_version`` it
    mirrors; searched as any gallery file opened read-only (online and offline: same answers)."""

    @staticmethod
    def write(path: Path, model_sha256: str, dim: int, identities: list, embeddings: list, calibration: list,
              meta: List[Tuple[str, str]]) -> None:
        """A cache at ``path`` holding these rows (the tables' columns in order, vectors as float32
        little-endian bytes) and ``meta``: written beside it, fsynced, then put in its place with
        ``os.replace`` (a process killed meanwhile leaves the previous file)."""
        tmp = lock = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock, tmp = temp_files.temp_beside(path)  # held until the file is in place
            with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as db:
                db.execute("PRAGMA synchronous = OFF")  # fsynced once, below, before it replaces the old file
                db.execute("BEGIN")
                _create_schema(db, model_sha256, dim)
                db.executemany("INSERT INTO identities (id, name, enrolled) VALUES (?, ?, ?)", identities)
                db.executemany("INSERT INTO embeddings (id, identity, source, vector, checksum, photo_sha256) "
                               "VALUES (?, ?, ?, ?, ?, ?)", embeddings)
                db.executemany("INSERT INTO calibration (id, entry, mean, projection, checksum) VALUES (?, ?, ?, ?, ?)",
                               calibration)
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta)
                db.execute("COMMIT")
            os.fsync(lock)
            temp_files.replace(tmp, path)
            tmp = None
        except (sqlite3.Error, OSError) as exc:
            raise GalleryError(f"{path}: cannot write the offline cache ({exc})") from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if lock is not None:
                os.close(lock)


@functools.lru_cache(maxsize=None)
def _pg_gallery() -> type:
    """FaceGallery over the PostgreSQL store (imports psycopg: only once a URL is opened)."""
    from sfpn_edge.gallery_pg import PgStore
    return type("PgGallery", (PgStore, FaceGallery), {"__doc__": PgStore.__doc__, "_cache_file": _CacheFile})


def open_gallery(path: Union[str, os.PathLike], *, readonly: bool = True) -> FaceGallery:
    """An existing gallery opened with the model sha256 and descriptor size recorded in it."""
    if _server_url(path):
        from sfpn_edge.gallery_pg import read_meta
        meta = read_meta(str(path))
    else:
        meta = _read_meta(Path(path))
    return FaceGallery(path, model_sha256=meta.get("model_sha256", ""), dim=int(meta["descriptor_dim"]),
                       readonly=readonly, create=False, template="all")


def _read_meta(path: Path) -> dict:
    """The meta table of the gallery at ``path`` (immutable read), descriptor_dim checked."""
    _check_header(path)
    if not path.exists():
        raise GalleryError(f"{path}: no such gallery")
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as exc:
        raise GalleryError(f"{path}: not a readable sfpn-edge gallery ({exc})") from None
    dim = meta.get("descriptor_dim", "")
    if not dim.isdigit() or not 0 < int(dim) <= 1 << 20:
        raise GalleryError(f"{path}: damaged gallery: descriptor_dim {dim!r} in its meta table")
    return meta


def check_gallery(path: Union[str, os.PathLike]) -> dict:
    """Check a gallery file without its model; a summary, or GalleryError naming the failed check.

    Checks: regular SQLite file with our application id; ``PRAGMA quick_check``; meta (format,
    version, model, descriptor size); ``PRAGMA foreign_key_check``; every embedding row (size,
    checksum, finite, unit norm); the calibration row (checksum, arrays, digest, model). Read-only:
    an old file is checked, not upgraded.
    """
    with open_gallery(path) as gallery:
        gallery.quick_check()
        if gallery._foreign_key_check():
            raise GalleryError(f"{gallery.path}: damaged gallery: PRAGMA foreign_key_check found embeddings "
                               "without an identity")
        rows = gallery._build_index().rows
        gallery.stored_calibration()
        return {"db": str(gallery.path), "format_version": gallery.format_version, "model_sha256": gallery.model_sha256,
                "descriptor_dim": gallery.dim, "identities": len(gallery), "embeddings": rows,
                "checks": ["header", "quick_check", "meta", "foreign_key_check", "rows", "calibration"]}


@dataclass(frozen=True)
class _Index:
    """The in-memory search state: index (None: empty gallery) over templates or rows, their names,
    most rows per name, identities, the calibration in use, and raw rows for raw re-scoring."""

    search: Optional[Gallery]
    names_of_rows: List[str]
    per_identity: int
    identities: int
    calibration: Optional[Calibration]
    raw_rows: np.ndarray
    rows_of: Dict[str, List[int]]
    skip = 0

    @property
    def rows(self) -> int:
        return len(self.names_of_rows)

    def names(self, idx: np.ndarray) -> List[List[str]]:
        """The names of rows ``idx`` [P, r]."""
        return [[self.names_of_rows[i] for i in row] for row in idx.tolist()]

    def raw_score(self, probe: np.ndarray, name: str) -> float:
        """Raw cosine of a unit ``probe`` with ``name``'s template (its best row with template "all")."""
        return float((self.raw_rows[self.rows_of[name]] @ probe).max())


class _MatrixState(NamedTuple):
    """What a matrix must reflect: the gallery's id, the change log's newest and oldest seq, the
    calibration in use and its checksum, identities, template size; the store's data_version then."""

    gallery_id: str
    seq: int
    first_seq: int
    calibration: Optional[Calibration]
    calibration_checksum: int
    identities: int
    dim: int
    version: int


class _MatrixIndex:
    """The search state over a matrix (``sfpn_edge.gallery_matrix``): its rows searched where they
    are (mapped), names read from the store for the rows found, raw scores from their stored rows."""

    per_identity = 1

    def __init__(self, gallery: FaceGallery, matrix: gallery_matrix.Matrix, state: _MatrixState):
        self.gallery, self.matrix, self.calibration, self.version = gallery, matrix, state.calibration, state.version
        self.identities, self.rows = matrix.live, matrix.count
        self.search = matrix.gallery() if matrix.live else None
        self.skip = 0 if matrix.storage == "int8" else matrix.tombstones  # int8: removed rows score -1e30

    def names(self, idx: np.ndarray) -> Optional[List[List[Optional[str]]]]:
        """Names of rows ``idx`` [P, r] (None: removed), read in one snapshot; None when the
        gallery changed since the matrix was made (a row's identity id may name someone else)."""
        ids = self.matrix.ids[idx]
        wanted = sorted({int(i) for i in np.unique(ids) if i >= 0})
        with self.gallery._snapshot() as db:
            if db.execute("PRAGMA data_version").fetchone()[0] != self.version:
                return None
            found: Dict[int, str] = {}
            for start in range(0, len(wanted), 500):
                part = wanted[start:start + 500]
                found.update(db.execute(f"SELECT id, name FROM identities WHERE id IN ({', '.join('?' * len(part))})",
                                        tuple(part)).fetchall())
        return [[found.get(i) for i in row] for row in ids.tolist()]

    def raw_score(self, probe: np.ndarray, name: str) -> float:
        return self.gallery._raw_template_score(probe, name)


def _rows_of(db: sqlite3.Connection, name: str) -> int:
    return db.execute("SELECT COUNT(*) FROM embeddings e JOIN identities i ON i.id = e.identity "
                      "WHERE i.name = ?", (name,)).fetchone()[0]


def _count_changes(db: sqlite3.Connection, rows: int) -> None:
    """Add ``rows`` (embeddings added or removed) to meta's ``row_changes``, in the caller's transaction."""
    db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'row_changes'", (rows,))


def _calibration_row(cal: Calibration) -> tuple:
    """(entry JSON, mean, projection, checksum) for the calibration table: float32 little-endian BLOBs."""
    entry = json.dumps({k: v for k, v in cal.entry().items() if k != "files"}, sort_keys=True).encode()
    mean = cal.mean.astype("<f4").tobytes()
    projection = None if cal.projection is None else np.ascontiguousarray(cal.projection, "<f4").tobytes()
    return entry.decode(), mean, projection, _calibration_checksum(entry, mean, projection)


def _calibration_checksum(entry: bytes, mean: bytes, projection: Optional[bytes]) -> int:
    return zlib.crc32(projection or b"", zlib.crc32(mean, zlib.crc32(entry + b"\0")))


def _calibration_of(gallery: "FaceGallery", entry: str, mean: bytes, projection: Optional[bytes],
                    checksum: int) -> Calibration:
    """The stored calibration row, checked (checksum, sizes, digest, model), else GalleryError."""
    damaged = f"{gallery.path}: damaged gallery: its calibration"
    if not isinstance(entry, str) or not isinstance(mean, bytes) or not isinstance(projection, (bytes, type(None))):
        raise GalleryError(f"{damaged} row has the wrong types")
    if checksum != _calibration_checksum(entry.encode(), mean, projection):
        raise GalleryError(f"{damaged} fails its checksum; run `sfpn-edge gallery recalibrate`")
    try:
        record = json.loads(entry)
        check_entry_version(record, damaged)
        dim_in, dim_out = int(record["dim_in"]), int(record["dim_out"])
        if dim_in != gallery.dim or len(mean) != 4 * dim_in or (
                projection is not None and len(projection) != 4 * dim_in * dim_out):
            raise GalleryError(f"{damaged} does not fit {gallery.dim}-d embeddings")
        cal = from_entry(record, np.frombuffer(mean, "<f4").astype(np.float32),
                         None if projection is None else np.frombuffer(projection, "<f4").astype(np.float32)
                         .reshape(dim_in, dim_out), damaged)
    except (ValueError, KeyError, TypeError, ModelError) as exc:
        raise GalleryError(f"{damaged} cannot be read ({exc})") from None
    if cal.model_sha256 != gallery.model_sha256:
        raise GalleryError(f"{damaged} was fitted for another model; run `sfpn-edge gallery recalibrate`")
    return cal


def _server_url(path: object) -> bool:
    """Whether ``path`` is a ``postgresql://`` (or ``postgres://``) URL; GalleryError for any other
    ``scheme://`` (never taken as a file name)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", path) if isinstance(path, str) else None
    if match is None:
        return False
    if match.group(1).lower() not in ("postgresql", "postgres"):
        raise GalleryError(f"{match.group(1)}:// galleries are not supported: give a file path or a "
                           "postgresql:// URL")
    return True


def _normalise(x: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows (the scoring kernel: subnormal rows too; zero rows stay zero)."""
    return l2_normalize(np.ascontiguousarray(x, np.float32))


def _photo_hash(value: Optional[str]) -> Optional[str]:
    """A photo's sha256 as 64 lower-case hex digits (None: unknown), else EmbeddingError."""
    if value is None:
        return None
    text = str(value).lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise EmbeddingError(f"a photo hash must be 64 hex digits (sha256), got {value!r}")
    return text


def row_checksum(name: str, blob: bytes) -> int:
    """CRC-32 of one embedding row: its identity's name (UTF-8, NUL-terminated) and vector bytes."""
    return zlib.crc32(blob, zlib.crc32(name.encode("utf-8") + b"\0"))


def _text(source: object) -> str:
    """``source`` as storable text: undecodable file-name bytes (surrogate escapes) become \\x escapes."""
    text = str(source)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_name(name: str) -> str:
    """Return ``name`` if it can name an identity, else raise GalleryError."""
    if not isinstance(name, str) or not name.strip():
        raise GalleryError("an identity name must be a non-empty string")
    if len(name) > MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
        raise GalleryError(f"an identity name must be at most {MAX_NAME_CHARS} printable characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise GalleryError(f"identity name {name!r} is not valid UTF-8 text (undecodable bytes)") from None
    return name


def _check_header(path: Path) -> None:
    """Refuse a path that exists and is not an SQLite database with our application id (or whose
    journal files are not regular files): never opening a FIFO or device, which could hang."""
    for name in [path] + [path.with_name(path.name + suffix) for suffix in SIDECARS]:
        try:
            bounded_read.regular_file(name)
        except FileNotFoundError:
            continue
        except bounded_read.LimitError as exc:
            raise GalleryError(f"{name}: {exc}; a gallery is an SQLite file") from None
        except OSError as exc:
            raise GalleryError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if not path.exists():
        return
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise GalleryError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not header.startswith(SQLITE_MAGIC) or len(header) < 100:
        raise GalleryError(f"{path}: not an sfpn-edge gallery (not an SQLite database)")
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise GalleryError(f"{path}: an SQLite database, but not an sfpn-edge gallery")


def _create(path: Path, model_sha256: str, dim: int) -> None:
    """Build a complete empty gallery beside ``path`` and link it into place (never clobbers)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock, tmp = temp_files.temp_beside(path)  # held until the file is in place
    except OSError as exc:
        raise GalleryError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("BEGIN")
            _create_schema(db, model_sha256, dim)
            db.execute("COMMIT")
            db.execute("PRAGMA journal_mode = WAL")
        finally:
            db.close()
        os.fsync(lock)
        _publish(tmp, path)
    except (sqlite3.Error, OSError) as exc:
        raise GalleryError(f"cannot create {path}: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(lock)
    _check_header(path)


def _create_schema(db: sqlite3.Connection, model_sha256: str, dim: int) -> None:
    """A new gallery's header, tables, triggers and meta rows in ``db`` (an empty file), in the
    caller's transaction."""
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = %d" % FORMAT_VERSION)
    for statement in (_SCHEMA + ";" + _CALIBRATION_SCHEMA + ";" + _CHANGES_SCHEMA).split(";"):
        if statement.strip():
            db.execute(statement)
    for trigger in _CHANGE_TRIGGERS:
        db.execute(trigger)
    db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
        ("format", FORMAT), ("format_version", str(FORMAT_VERSION)),
        ("model_sha256", model_sha256), ("descriptor_dim", str(dim)),
        ("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), ("row_changes", "0"),
        ("gallery_id", gallery_matrix.new_gallery_id()),
    ])


def _publish(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path`` atomically without replacing a file another process made first."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # someone created it meanwhile: we open theirs, checked like any other file
    except OSError:  # file system without hard links
        if not path.exists():
            os.replace(tmp, path)
