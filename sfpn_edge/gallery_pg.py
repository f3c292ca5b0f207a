"""The gallery on PostgreSQL + pgvector: one gallery for a fleet of devices (``postgresql://…``).

``FaceGallery("postgresql://user@host/db", ...)`` returns a ``PgGallery``: FaceGallery's logic
(enrolment, removal, rename, self-calibration, identify) over the same tables on the server, in
the connection's schema. Embeddings are ``vector(D)`` columns (normalised; read back in binary as
the same float32s, so the row checksums are the SQLite gallery's). Binding checks (format, model sha256, descriptor
size) run before anything is written. Every write is one transaction holding a transaction-level
advisory lock (SQLite's BEGIN IMMEDIATE: writers from many devices are serialised) and bumps meta's
``data_version``, which other devices compare to refresh their in-memory index.

Searches run in memory over the fetched rows, as on SQLite: identify ranks calibrated templates,
which the server cannot index (the calibration changes with every refit), and the fetch happens
only when the gallery changed. Reads lost to a dropped connection are retried (``RETRY_DELAYS``,
2 s in all) on a new connection, then fail with a GalleryError naming the server (never its
password); a write is never retried: lost before COMMIT it changed nothing, lost during COMMIT
its outcome is unknown, and the error says which.

``offline_cache=PATH``: each time the index is (re)built, the server's gallery (identities,
embeddings with their checksums, calibration row, row_changes), read in one snapshot, is written
to PATH as a gallery file (the SQLite format, bound to the same model and size) recording the
server's name and ``data_version`` (a new file beside it, fsynced, then ``os.replace``: a process
killed meanwhile leaves the previous cache), and that file is what the device searches (its search
matrix, built in chunks as a read-only gallery file's: the rows are never all in memory). While the
server is unreachable (at opening, or a read after its retries) the reads (identify, identities,
calibration, ...) answer from the cache, opened read-only and checked (``PRAGMA quick_check``,
binding, server name), with the same code, so with the same answers; ``offline`` then says which
cache and how old. While offline a read tries the server once (no retries), at most every
``OFFLINE_RETRY_S`` (between attempts the cache answers at once), and, answered by it, leaves the
cache. Writes always try the server and are never queued: they fail as without a cache. No cache
yet, or one that cannot be used (damaged, another model, size or server): GalleryError saying so; a missing or
refused cache is rewritten by the next read from the server. A cache that cannot be written (say
an unwritable directory) fails that read, naming the file: never a device silently without one.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict

from sfpn_edge.gallery_format import FORMAT, FORMAT_VERSION, GalleryError

LOCK_KEY = 0x53465047  # pg_advisory_xact_lock key of gallery writers ("SFPG")
RETRY_DELAYS = (0.1, 0.3, 0.6, 1.0)  # seconds before each retry of a read
CACHE_FETCH_ROWS = 2000  # embeddings per round trip while writing the offline cache
OFFLINE_RETRY_S = 10.0  # answering from the offline cache, the server is tried again this often
CONNECT_TIMEOUT_S = 5

_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    enrolled DOUBLE PRECISION NOT NULL
);
CREATE TABLE embeddings (
    id BIGSERIAL PRIMARY KEY,
    identity BIGINT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    source TEXT,
    vector vector({dim}) NOT NULL,
    checksum BIGINT NOT NULL,
    photo_sha256 TEXT
);
CREATE INDEX embeddings_identity ON embeddings(identity);
CREATE INDEX embeddings_photo ON embeddings(photo_sha256);
CREATE TABLE calibration (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    entry TEXT NOT NULL,
    mean BYTEA NOT NULL,
    projection BYTEA,
    checksum BIGINT NOT NULL
)
"""


def server_name(url: str) -> str:
    """``url`` without its password: ``postgresql://user@host:port/db``."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(unparsable URL)"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


class ServerUnreachable(GalleryError):
    """The server could not be reached: connecting failed, or a read's connection was lost after its retries."""


@dataclass(frozen=True)
class OfflineCache:
    """The offline cache a server gallery answers from: its file, the server's ``data_version`` it
    mirrors and when it was written (Unix seconds)."""

    path: Path
    data_version: int
    written: float

    @property
    def age_s(self) -> float:
        """Seconds since the cache was written (the last change seen on the server, or the device's first read)."""
        return max(0.0, time.time() - self.written)


class _Connection:
    """A psycopg connection (autocommit) taking the gallery's SQLite-style ``?`` parameters."""

    def __init__(self, url: str, readonly: bool):
        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        if readonly:
            self.conn.execute("SET default_transaction_read_only = on")

    def execute(self, sql: str, params: tuple = ()):
        return self.conn.execute(sql.replace("?", "%s"), params, binary=True)  # vectors as bytes

    def executemany(self, sql: str, rows: list) -> None:
        with self.conn.cursor(binary=True) as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)

    def close(self) -> None:
        self.conn.close()


def _or_cache(name: str) -> Callable:
    """FaceGallery's read ``name`` on the server or, while it is unreachable, on the offline cache."""
    def answer(self, *args, **kwargs):
        try:
            result = getattr(super(PgStore, self), name)(*args, **kwargs)
        except ServerUnreachable as exc:
            return getattr(self._use_cache(exc), name)(*args, **kwargs)
        self._leave_cache()
        return result
    answer.__name__ = name
    answer.__doc__ = f"FaceGallery.{name}, from the offline cache while the server is unreachable."
    return answer


class PgStore:
    """FaceGallery's store primitives on a PostgreSQL server with pgvector (``gallery._pg_gallery``
    mixes them into FaceGallery)."""

    _DB_ERRORS = (psycopg.Error,)
    _cache_file: type  # the offline cache's gallery-file class (``gallery._pg_gallery`` sets it)
    identify_batch = _or_cache("identify_batch")
    identities = _or_cache("identities")
    embeddings = _or_cache("embeddings")
    stored_calibration = _or_cache("stored_calibration")
    calibration_summary = _or_cache("calibration_summary")
    __len__ = _or_cache("__len__")
    __contains__ = _or_cache("__contains__")
    _index_or_cache = _or_cache("_current_index")

    @property
    def calibration(self):
        """The calibration searches use (the offline cache's while the server is unreachable)."""
        return self._index_or_cache().calibration

    def _open_store(self, url: str, create: bool) -> None:
        self._url, self.path, self._conn = url, server_name(url), None
        self._create_missing, self._checked, self._offline = create, False, None
        self._searched = self._searched_state = None  # the cache file the online index searches, what it holds
        self._retry_at = 0.0  # offline: reads answer from the cache until then (time.monotonic)
        self.format_version = FORMAT_VERSION  # the server's, once checked
        try:
            self._check_server()
        except ServerUnreachable as exc:
            self._use_cache(exc)

    def _check_server(self) -> None:
        """Opening's checks on the server (``create``: the gallery made when missing); ServerUnreachable
        when it cannot be reached. Opened offline, the first read or write runs them."""
        try:
            if not self._has_meta():
                if self.readonly or not self._create_missing:
                    raise GalleryError(f"{self.path}: no such gallery (enrol someone first)")
                self._create()
            self.format_version = self._check_meta(self._db)
        except psycopg.OperationalError as exc:
            self._drop()
            self._retry_at = time.monotonic() + OFFLINE_RETRY_S
            raise ServerUnreachable(f"{self.path}: cannot open gallery: server unreachable ({_reason(exc)})") from None
        except psycopg.Error as exc:
            self._drop()
            raise GalleryError(f"{self.path}: cannot open gallery ({_reason(exc)})") from None
        self._checked = True

    @property
    def _db(self) -> _Connection:
        """The live connection, made again after one was lost."""
        if self._conn is None or self._conn.conn.closed:
            self._conn = _Connection(self._url, self.readonly)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    @property
    def offline(self) -> Optional[OfflineCache]:
        """The offline cache the reads answer from while the server is unreachable; None: the server."""
        return None if self._offline is None else self._offline_state

    def _use_cache(self, unreachable: ServerUnreachable):
        """The offline cache, opened read-only and checked, else ``unreachable`` saying why it cannot answer."""
        if self._cache_path is None:
            raise unreachable
        if self._offline is None:
            if not self._cache_path.exists():
                self._index = None  # the next read from the server rebuilds it, and writes the cache
                raise ServerUnreachable(f"{unreachable}; no offline cache yet at {self._cache_path} (written "
                                        "by the first read from the server)") from None
            try:
                self._offline, self._offline_state = self._open_cache()
            except GalleryError as exc:
                self._index = None  # the next read from the server rebuilds it, and rewrites the cache
                raise GalleryError(f"{unreachable}; the offline cache cannot be used: {exc}") from None
            if self._searched is not None and self._searched_state == self._offline_state:
                self._offline.close()  # checked; the file the online index searched, index built: that one
                self._offline = self._searched
        return self._offline

    def _leave_cache(self) -> None:
        if self._offline is not None and self._offline is not self._searched:
            self._offline.close()
        self._offline = None

    def _build_index(self):
        """The in-memory index; with an offline cache, the cache is written first and searched as a
        gallery file is (its search matrix, built in chunks: the rows are never all in memory), and
        kept open for the names of the rows found and, offline, to answer with that same index."""
        if self._cache_path is None:
            return super()._build_index()
        self._close_searched()
        self._write_cache()
        self._searched, self._searched_state = self._open_cache(check=False)  # just written and fsynced
        return self._searched._build_index()

    def _close_searched(self) -> None:
        if self._searched is not None:
            self._searched.close()
            self._searched = None

    def _write_cache(self) -> None:
        """The server's gallery, read in one snapshot (the embeddings streamed through a server-side
        cursor, never all in memory), as the offline cache file, put in place atomically."""
        with self._snapshot() as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            identities = db.execute("SELECT id, name, enrolled FROM identities").fetchall()
            calibration = db.execute("SELECT id, entry, mean, projection, checksum FROM calibration").fetchall()
            with db.conn.cursor(name="sfpn_cache", binary=True) as rows:
                rows.itersize = CACHE_FETCH_ROWS
                rows.execute("SELECT id, identity, source, vector, checksum, photo_sha256 FROM embeddings")
                embeddings = ((i, owner, source, self._blob(vector), checksum, photo)
                              for i, owner, source, vector, checksum, photo in rows)
                self._cache_file.write(self._cache_path, self.model_sha256, self.dim, identities, embeddings,
                                       calibration, [("row_changes", meta.get("row_changes", "0")),
                                                     ("cache_of", self.path),
                                                     ("cache_data_version", meta.get("data_version", "")),
                                                     ("cache_written", repr(time.time()))])

    def _open_cache(self, check: bool = True) -> tuple:
        """(The offline cache file opened read-only, what it holds), checked (``check``: quick_check;
        model, size, this server), else GalleryError."""
        path = self._cache_path
        cache = self._cache_file(path, model_sha256=self.model_sha256, dim=self.dim, readonly=True, create=False,
                                 template=self.template, storage=self.storage, calibration=self.use_calibration)
        try:
            if check:
                cache.quick_check()
            meta = dict(cache._query("SELECT key, value FROM meta"))
            if meta.get("cache_of") != self.path or not str(meta.get("cache_data_version")).isdigit():
                raise GalleryError(f"{path}: not an offline cache of {self.path}")
            try:
                written = float(meta.get("cache_written", ""))
            except ValueError:
                raise GalleryError(f"{path}: damaged offline cache: cache_written {meta.get('cache_written')!r}") \
                    from None
        except BaseException:
            cache.close()
            raise
        return cache, OfflineCache(path, int(meta["cache_data_version"]), written)

    def _has_meta(self) -> bool:
        return self._db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]

    def _create(self) -> None:
        """The schema and meta rows in one transaction (a concurrent creator waits, then finds them)."""
        with self._db.conn.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_KEY,))
            if self._has_meta():
                return
            for statement in _SCHEMA.format(dim=self.dim).split(";"):
                self._db.execute(statement)
            self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                ("format", FORMAT), ("format_version", str(FORMAT_VERSION)),
                ("model_sha256", self.model_sha256), ("descriptor_dim", str(self.dim)),
                ("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), ("row_changes", "0"),
                ("data_version", "0")])

    def _check_ours(self, db: _Connection) -> None:
        if db.execute("SELECT to_regclass('embeddings') IS NULL OR to_regclass('identities') IS NULL")\
                .fetchone()[0]:
            raise GalleryError(f"{self.path}: a database, but not an sfpn-edge gallery")

    def quick_check(self) -> None:
        """The server checks its own pages; this checks the schema: the vector column's size."""
        rows = self._query("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                           "WHERE attrelid = 'embeddings'::regclass AND attname = 'vector'")
        if rows != [(f"vector({self.dim})",)]:
            raise GalleryError(f"{self.path}: damaged gallery: embeddings.vector is {rows}, not vector({self.dim})")

    def _matrix_path(self) -> None:
        """No matrix file: a server gallery is searched in memory over the fetched rows."""
        return None

    def _foreign_key_check(self) -> list:
        return self._query("SELECT e.id FROM embeddings e LEFT JOIN identities i ON i.id = e.identity "
                           "WHERE i.id IS NULL")

    def _bytes(self) -> int:
        return int(self._query("SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest(?::text[]) t",
                               (["meta", "identities", "embeddings", "calibration"],))[0][0])

    def _blob(self, stored: bytes) -> bytes:
        """pgvector's binary form (int16 dim, int16 unused, big-endian float32s) as little-endian float32s."""
        if not isinstance(stored, bytes) or len(stored) != 4 + 4 * self.dim:
            raise GalleryError(f"{self.path}: damaged gallery: a vector is not {self.dim} float32 values")
        return np.frombuffer(stored, ">f4", offset=4).astype("<f4").tobytes()

    def _vector_param(self, blob: bytes) -> str:
        """pgvector's text form; shortest round-trip decimals, so the server holds exactly these floats."""
        return "[" + ",".join(map(repr, np.frombuffer(blob, "<f4").tolist())) + "]"

    def _query(self, sql: str, params: tuple = (), *, now: bool = False) -> list:
        """A read, retried on a new connection when the connection is lost. While the reads answer
        from the offline cache it is tried once, and only every ``OFFLINE_RETRY_S`` (a camera loop
        does not wait for a silent host on every frame) unless ``now`` (a write's first step)."""
        if self._offline is not None and not now and time.monotonic() < self._retry_at:
            raise ServerUnreachable(f"{self.path}: gallery server unreachable (answering from the offline cache; "
                                    f"next attempt in {self._retry_at - time.monotonic():.0f} s)")
        if not self._checked:
            self._check_server()
        delays = RETRY_DELAYS if self._offline is None else ()
        for delay in delays + (None,):
            try:
                rows = self._db.execute(sql, params).fetchall()
                self._leave_cache()  # the server answers again
                return rows
            except psycopg.OperationalError as exc:
                self._drop()
                if delay is None:
                    self._retry_at = time.monotonic() + OFFLINE_RETRY_S
                    attempts = len(delays) + 1
                    raise ServerUnreachable(f"{self.path}: gallery server unreachable after {attempts} "
                                            f"attempt{'s' if attempts > 1 else ''} ({_reason(exc)})") from None
                time.sleep(delay)
            except psycopg.Error as exc:
                raise GalleryError(f"{self.path}: cannot read gallery ({_reason(exc)})") from None

    def _query_version(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE key = 'data_version'")[0][0])

    @contextlib.contextmanager
    def _transaction(self):
        committing = False
        self._query("SELECT 1", now=True)  # a connection lost since the last call is replaced before writing
        try:
            with self._db.conn.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_KEY,))
                yield self._db
                self._db.execute("UPDATE meta SET value = CAST(value AS BIGINT) + 1 WHERE key = 'data_version'")
                committing = True
        except psycopg.Error as exc:
            self._drop()
            if committing:
                raise GalleryError(f"{self.path}: connection lost while committing: the change may or may not "
                                   f"have been stored; check before repeating it ({_reason(exc)})") from None
            raise GalleryError(f"{self.path}: write failed, nothing changed ({_reason(exc)})") from None
        finally:
            self._index = None

    @contextlib.contextmanager
    def _snapshot(self):
        try:
            with self._db.conn.transaction():
                self._db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                yield self._db
        except psycopg.OperationalError as exc:
            self._drop()
            self._retry_at = time.monotonic() + OFFLINE_RETRY_S
            raise ServerUnreachable(f"{self.path}: gallery server unreachable ({_reason(exc)})") from None
        except psycopg.Error as exc:
            self._drop()
            raise GalleryError(f"{self.path}: cannot read gallery ({_reason(exc)})") from None

    def close(self) -> None:
        self._leave_cache()
        self._close_searched()
        self._drop()


def read_meta(url: str) -> dict:
    """The meta table of the gallery at ``url``, descriptor_dim checked."""
    name = server_name(url)
    try:
        with contextlib.closing(_Connection(url, readonly=True)) as db:
            if not db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]:
                raise GalleryError(f"{name}: no such gallery")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except psycopg.OperationalError as exc:
        raise GalleryError(f"{name}: gallery server unreachable ({_reason(exc)})") from None
    except psycopg.Error as exc:
        raise GalleryError(f"{name}: not a readable sfpn-edge gallery ({_reason(exc)})") from None
    dim = meta.get("descriptor_dim", "")
    if not dim.isdigit() or not 0 < int(dim) <= 2000:
        raise GalleryError(f"{name}: damaged gallery: descriptor_dim {dim!r} in its meta table")
    return meta


def _reason(exc: psycopg.Error) -> str:
    """The first line of a driver error (libpq messages name host and user, never the password)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
