"""The index: one SQLite file holding a vector and file facts per image.

WAL mode lets `find` read while `index` writes; every write is a transaction,
so a killed indexer loses at most the batch in flight. Vectors are stored
L2-normalised as float16 (half the disk and load time of float32, ranking
unchanged at CLIP's precision). This module never imports torch.

Writers (index, dedupe moves and undo, tagging) also take one index-wide lock
(`Store.writer`, a lock file beside the database), so two of them never
interleave: a second writer waits briefly, then gets `IndexBusyError`.

Paths are stored exactly, bytes that are not UTF-8 included (paths.py). The
tables and their migrations are schema.py's; the tag tables are read and
written by tags.py; the query cache file is vectors.py's.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    BadInputError,
    ClipsearchError,
    IndexBusyError,
    IndexUnusableError,
    MissingIndexError,
)
from ..options import DB_ENV
from ..paths import decode_text, is_utf8, scope_sql, sql_text
from . import vectors as vectorcache
from .schema import APPLICATION_ID, IMAGE_COLUMNS, METADATA_COLUMNS, MIGRATIONS, SCHEMA_VERSION
from .vectors import Vectors

if TYPE_CHECKING:  # imported when a write needs it: a query opens the index with sqlite3 alone (-60 ms)
    import sqlite_utils

VECTOR_DTYPE = np.dtype("<f2")
LOCK_WAIT_ENV = "CLIPSEARCH_LOCK_WAIT"
DEFAULT_LOCK_WAIT = 10.0  # seconds a second writer waits for the first before giving up


class StoreError(IndexUnusableError):
    """The index cannot be used as asked; the message says why and what to do."""


class NewerSchemaError(StoreError):
    pass


class ModelMismatchError(StoreError):
    pass


def storage_error(exc: sqlite3.Error, path: Path) -> ClipsearchError | None:
    """What an SQLite failure means for the user, or None when it is not about the file (a bug)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return IndexBusyError(f"The index {path} is busy: another program is writing to it. Wait for it to finish, "
                              "then run this again.")
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return StoreError(f"Cannot write to the index {path}: it is read-only. Check the permissions of the file and "
                          f"of its folder (SQLite also writes {path.name}-wal and {path.name}-shm beside it).")
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return StoreError(f"The disk holding {path} is full; this step was not written and the index is as it was. "
                          "Free some space and run the command again.")
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in text or "malformed" in text:
        return StoreError(f"{path} is not a clipsearch index (not a readable SQLite file: {exc}). Pass another --db.")
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_IOERR")) or "unable to open" in text:
        return StoreError(f"Cannot open the index {path} ({exc}). SQLite needs to read it and to create "
                          f"{path.name}-wal and {path.name}-shm beside it: check that {path.parent} is writable.")
    return None


def default_db_path() -> Path:
    """$CLIPSEARCH_DB, else $XDG_DATA_HOME/clipsearch/index.db (~/.local/share by default)."""
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "clipsearch" / "index.db"


def lock_wait() -> float:
    """Seconds a writer waits for another: $CLIPSEARCH_LOCK_WAIT (a number, 0 or more), else the default."""
    text = os.environ.get(LOCK_WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_LOCK_WAIT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:  # also NaN
        raise BadInputError(f"{LOCK_WAIT_ENV}={text!r} is not a number of seconds; set it to 0 or more "
                            f"(e.g. {LOCK_WAIT_ENV}=30), or unset it for the default of {DEFAULT_LOCK_WAIT:g}.")
    return seconds


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()


def decode_vectors(blobs: list[bytes], dim: int) -> np.ndarray:
    """Many stored vectors as one float32 matrix (n x dim)."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).reshape(len(blobs), dim).astype(np.float32)


@dataclass
class ImageRecord:
    path: str
    size: int
    mtime_ns: int
    hash: str
    width: int
    height: int
    vector: bytes
    phash: bytes | None = None  # perceptual hash and colourfulness (fingerprint.py); None until computed
    colourfulness: float | None = None
    # Photo metadata (metadata.py); taken_source is NULL only for rows indexed before it existed.
    taken: str | None = None
    taken_source: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass
class StoredFile:
    id: int
    size: int
    mtime_ns: int


REMEMBERED_QUERIES = 1000


class Store:
    """An open index database. Use `Store.open(path)`; close it (or use `with`) when done."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn  # autocommit (isolation_level None): a write outside `transaction()` commits at once
        self.path = path
        self._db: sqlite_utils.Database | None = None
        self._savepoints = 0
        self._lock_fd: int | None = None
        self._lock_depth = 0

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, create: bool = True) -> Store:
        """Open (and, if `create`, create or migrate) the index at `path` or the default location.

        Nothing is written to an existing file (not even the switch to WAL mode)
        before it is known to be a clipsearch index, and without `create` a file
        that is not one yet (an empty file, say) is left exactly as it was.
        """
        path = Path(path).expanduser() if path else default_db_path()
        if not path.exists():
            if not create:
                raise MissingIndexError(f"No index at {path}. Build one first: clipsearch index DIR")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"Cannot create the folder {path.parent} for the index: {exc.strerror or exc}. "
                                 "Pass --db with a place you can write to.") from None
        try:
            connection = sqlite3.connect(path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise storage_error(exc, path) or StoreError(f"Cannot open {path}: {exc}") from None
        connection.text_factory = decode_text
        store = cls(connection, path)
        try:
            store._check_ours()
            if not create and store.schema_version() == 0:  # an empty or new SQLite file: only `index` makes it ours
                raise MissingIndexError(f"No index at {path}. Build one first: clipsearch index DIR")
            connection.execute("PRAGMA busy_timeout = 30000")
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode = wal")
            connection.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: safe against kill -9
            connection.execute("PRAGMA recursive_triggers = on")  # as sqlite-utils sets it: REPLACE fires triggers
            store._migrate(create)
        except sqlite3.Error as exc:
            connection.close()
            raise storage_error(exc, path) or StoreError(f"Cannot use {path}: {exc}") from None
        except BaseException:
            connection.close()
            raise
        return store

    def _check_ours(self) -> None:
        """Refuse, reading only, an SQLite file that some other program made.

        Another program's file has its tables, or marks itself in its header
        (application_id, user_version) before it has any: neither is ours to write.
        """
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        application_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
        user_version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if tables and not {"schema_version", "images"} <= tables:
            why = f"its tables ({', '.join(sorted(tables)[:5])}) are not an index's"
        elif application_id not in (0, APPLICATION_ID):
            why = f"its header marks it as another program's file (application_id {application_id:#x})"
        elif not tables and user_version:
            why = f"its header marks it as another program's file (user_version {user_version})"
        else:
            return
        raise StoreError(f"{self.path} is an SQLite file but not a clipsearch index: {why}. It was left untouched. "
                         "Pass another --db.")

    @property
    def db(self) -> sqlite_utils.Database:
        """The same connection through sqlite-utils, for schema changes and upserts (imported on first use)."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """Rows as dicts, like sqlite-utils' `query`."""
        cursor = self.conn.execute(sql, params)
        names = [column[0] for column in cursor.description]
        for row in cursor:
            yield dict(zip(names, row))

    def close(self) -> None:
        self._release_lock()
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; a locked, read-only or full database becomes a clear error, having written nothing."""
        try:
            with self._atomic():
                yield
        except sqlite3.Error as exc:
            error = storage_error(exc, self.path)
            if error is None:
                raise
            raise error from exc

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        """BEGIN ... COMMIT, or a savepoint inside an open transaction (as sqlite-utils' `atomic`)."""
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
            try:
                yield
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            return
        self._savepoints += 1
        name = f"clipsearch_{self._savepoints}"
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # a failed statement may have ended the transaction already
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self.conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self.conn.execute(f"RELEASE SAVEPOINT {name}")

    # -- the writer lock ----------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def writer(self, wait: float | None = None) -> Iterator[None]:
        """Hold the index-wide writer lock (re-entrant within this Store).

        Waits up to `wait` seconds ($CLIPSEARCH_LOCK_WAIT, default 10) for
        another writer to finish, then raises IndexBusyError. The lock is an OS
        lock on `index.db.lock`, so a killed process never leaves it held.
        """
        if self._lock_depth == 0:
            self._acquire_lock(lock_wait() if wait is None else wait)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self._release_lock()

    def _acquire_lock(self, wait: float) -> None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"Cannot write beside the index {self.path} ({self.lock_path}: "
                             f"{exc.strerror or exc}). Check that its folder is writable.") from None
        deadline = time.monotonic() + wait
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                raise IndexBusyError(
                    f"The index {self.path} is busy: another clipsearch (index, dedupe or tag) is writing to it. "
                    "Wait for it to finish, then run this again.")
            time.sleep(0.05)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the OS lock
            self._lock_fd = None
            self._lock_depth = 0

    # -- schema -------------------------------------------------------------

    def schema_version(self) -> int:
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
                                 ).fetchone():
            return 0
        row = self.conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def _migrate(self, create: bool) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise NewerSchemaError(
                f"{self.path} was written by a newer clipsearch (index schema {version}; this version "
                f"reads up to {SCHEMA_VERSION}). Upgrade clipsearch (pipx upgrade clipsearch) or pass another --db."
            )
        if version == SCHEMA_VERSION:
            return
        if version == 0 and not create:
            raise MissingIndexError(f"No index at {self.path}. Build one first: clipsearch index DIR")
        with self.transaction():
            if not self.db["schema_version"].exists():
                self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # `file` and others can tell it is ours
                self.db.table("schema_version").create({"version": int})
            for target in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[target](self.db)
                self.db.table("schema_version").insert({"version": target})

    # -- settings -----------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])

    # -- model --------------------------------------------------------------

    def model(self) -> tuple[str, int] | None:
        """(model id, embedding size) of the vectors in this index, or None while it is empty."""
        values = dict(self.conn.execute("SELECT key, value FROM meta"))
        if "model" not in values:
            return None
        return values["model"], int(values["dim"])

    def check_model(self, model_id: str) -> None:
        recorded = self.model()
        if recorded and recorded[0] != model_id:
            raise ModelMismatchError(
                f"The index {self.path} was built with model '{recorded[0]}', not '{model_id}'. "
                f"Vectors of different models cannot be compared. Use --model '{recorded[0]}', "
                f"or keep a separate index for the other model with --db."
            )

    def set_model(self, model_id: str, dim: int) -> None:
        self.check_model(model_id)
        with self.transaction():
            self.db.table("meta").upsert_all(
                [{"key": "model", "value": model_id}, {"key": "dim", "value": str(dim)}], pk="key"
            )

    # -- files --------------------------------------------------------------

    def paths(self, folder: str | None = None) -> list[str]:
        where, params = scope_sql(folder)
        return [row[0] for row in self.conn.execute(f"SELECT path FROM images {where} ORDER BY path", params)]

    def count(self, folder: str | None = None) -> int:
        where, params = scope_sql(folder)
        return self.conn.execute(f"SELECT count(*) FROM images {where}", params).fetchone()[0]

    def files_under(self, folders: Iterable[str]) -> dict[str, StoredFile]:
        """Indexed files under any of `folders`: path -> id, size, mtime."""
        found = {}
        for folder in folders:
            where, params = scope_sql(folder)
            for id_, path, size, mtime_ns in self.conn.execute(
                f"SELECT id, path, size, mtime_ns FROM images {where}", params
            ):
                found[path] = StoredFile(id_, size, mtime_ns)
        return found

    def failures_under(self, folders: Iterable[str]) -> dict[str, tuple[int, int, str]]:
        """Files that failed before: path -> (size, mtime_ns, reason)."""
        found = {}
        for folder in folders:
            where, params = scope_sql(folder)
            for path, size, mtime_ns, reason in self.conn.execute(
                f"SELECT path, size, mtime_ns, reason FROM failures {where}", params
            ):
                found[path] = (size, mtime_ns, reason)
        return found

    def failure_count(self) -> int:
        """How many files could not be read (they are retried when they change)."""
        return int(self.conn.execute("SELECT count(*) FROM failures").fetchone()[0])

    def known_hashes(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT DISTINCT hash FROM images")}

    def vector_for_hash(self, content_hash: str) -> dict | None:
        """Stored vector, size, fingerprints and metadata for content with this hash, to reuse for renamed or
        copied files (the same bytes carry the same EXIF)."""
        rows = list(self.query(
            f"SELECT vector, width, height, phash, colourfulness, {', '.join(METADATA_COLUMNS)} FROM images "
            "WHERE hash = ? ORDER BY phash IS NULL, taken_source IS NULL LIMIT 1", [content_hash]
        ))
        return rows[0] if rows else None

    def rows_for_hashes_of(self, paths: Iterable[str]) -> dict[str, dict]:
        """hash -> what `vector_for_hash` returns, for the content these indexed paths hold now.

        Taken when an index run starts, so a copy of a file that the same run
        changes can still reuse the old content's vector.
        """
        found: dict[str, dict] = {}
        for path in paths:
            for row in self.query(
                f"SELECT hash, vector, width, height, phash, colourfulness, {', '.join(METADATA_COLUMNS)} FROM images "
                "WHERE path = CAST(? AS TEXT)",
                [sql_text(path)],
            ):
                found[row.pop("hash")] = row
        return found

    def missing_fingerprints(self, folder: str | None = None) -> list[tuple[int, str]]:
        """(id, path) of images indexed before fingerprints existed."""
        where, params = scope_sql(folder)
        where = f"{where} AND phash IS NULL" if where else "WHERE phash IS NULL"
        return [(row[0], row[1]) for row in self.conn.execute(f"SELECT id, path FROM images {where}", params)]

    def set_fingerprints(self, rows: list[tuple[int, bytes, float]]) -> None:
        """Store (id, phash, colourfulness) for existing images, in one transaction."""
        with self.transaction():
            self.conn.executemany(
                "UPDATE images SET phash = ?, colourfulness = ? WHERE id = ?", [(p, c, i) for i, p, c in rows]
            )

    def missing_metadata(self, folder: str | None = None) -> list[tuple[int, str, int]]:
        """(id, path, mtime_ns) of images indexed before photo metadata existed."""
        where, params = scope_sql(folder)
        where = f"{where} AND taken_source IS NULL" if where else "WHERE taken_source IS NULL"
        return [tuple(row) for row in self.conn.execute(f"SELECT id, path, mtime_ns FROM images {where}", params)]

    def set_metadata(self, rows: list[tuple[int, dict]]) -> None:
        """Store (id, {column: value}) photo metadata for existing images, in one transaction."""
        assignments = ", ".join(f"{name} = ?" for name in METADATA_COLUMNS)
        with self.transaction():
            self.conn.executemany(
                f"UPDATE images SET {assignments} WHERE id = ?",
                [[values.get(name) for name in METADATA_COLUMNS] + [image_id] for image_id, values in rows],
            )

    def ids_matching(self, after: str | None = None, before: str | None = None, camera: str | None = None,
                     folder: str | None = None) -> set[int]:
        """Ids of images taken at or after `after` and before `before` (ISO text), by a camera containing `camera`."""
        where, params = scope_sql(folder)
        conditions = [where.removeprefix("WHERE ")] if where else []
        if after:
            conditions.append("taken >= ?")
            params.append(after)
        if before:
            conditions.append("taken < ?")
            params.append(before)
        if camera:
            # Match the few distinct cameras (read from their index), then select their rows through it.
            wanted = camera.lower()
            cameras = [(make, model) for make, model in self.conn.execute(
                "SELECT DISTINCT camera_make, camera_model FROM images WHERE camera_make IS NOT NULL "
                "OR camera_model IS NOT NULL") if wanted in f"{make or ''} {model or ''}".lower()]
            if not cameras:
                return set()
            conditions.append("(" + " OR ".join("(camera_make IS ? AND camera_model IS ?)" for _ in cameras) + ")")
            params.extend(value for pair in cameras for value in pair)
        clause = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        return {row[0] for row in self.conn.execute(f"SELECT id FROM images {clause}", params)}

    def date_range(self, folder: str | None = None) -> tuple[str | None, str | None]:
        """Earliest and latest date taken of the images (under `folder`)."""
        where, params = scope_sql(folder)
        return tuple(self.conn.execute(f"SELECT min(taken), max(taken) FROM images {where}", params).fetchone())

    def record_run(self, folders: Iterable[str]) -> None:
        """Remember the folders indexed and when, for `info`."""
        import json

        known = set(self.indexed_folders()) | set(folders)
        with self.transaction():
            self.db.table("meta").upsert_all([{"key": "folders", "value": json.dumps(sorted(known))},
                                        {"key": "last_index_run", "value": now()}], pk="key")

    def indexed_folders(self) -> list[str]:
        import json

        row = self.conn.execute("SELECT value FROM meta WHERE key = 'folders'").fetchone()
        return json.loads(row[0]) if row else []

    def write(self, records: list[ImageRecord], failures: Sequence[tuple[str, int, int, str]] = ()) -> None:
        """Store a batch of images (replacing rows of the same path) and failures, in one transaction."""
        rows = [{**record.__dict__, "indexed_at": now()} for record in records]
        with self.transaction():
            if rows:
                self._upsert_images(rows)
                self.conn.executemany("DELETE FROM failures WHERE path = CAST(? AS TEXT)",
                                         [[sql_text(r["path"])] for r in rows])
            self._bump_generation()
            if failures:
                self.conn.executemany("DELETE FROM images WHERE path = CAST(? AS TEXT)",
                                         [[sql_text(f[0])] for f in failures])
                self.conn.executemany(
                    "INSERT OR REPLACE INTO failures (path, size, mtime_ns, reason) VALUES (CAST(? AS TEXT), ?, ?, ?)",
                    [(sql_text(p), s, m, r) for p, s, m, r in failures])

    def _upsert_images(self, rows: list[dict]) -> None:
        """Insert rows, or update the row of the same path in place (keeping its id, so its tags stay)."""
        columns = ", ".join(IMAGE_COLUMNS)
        values = ", ".join(["CAST(? AS TEXT)"] + ["?"] * (len(IMAGE_COLUMNS) - 1))
        updates = ", ".join(f"{c} = excluded.{c}" for c in IMAGE_COLUMNS[1:])
        self.conn.executemany(
            f"INSERT INTO images ({columns}) VALUES ({values}) ON CONFLICT(path) DO UPDATE SET {updates}",
            [[sql_text(row["path"])] + [row.get(c) for c in IMAGE_COLUMNS[1:]] for row in rows])

    def remove(self, paths: Iterable[str]) -> int:
        """Forget these files (images and failures); returns how many images left the index."""
        rows = [[sql_text(p)] for p in paths]
        if not rows:
            return 0
        with self.transaction():
            before = self.conn.execute("SELECT total_changes()").fetchone()[0]
            self.conn.executemany("DELETE FROM images WHERE path = CAST(? AS TEXT)", rows)
            removed = self.conn.execute("SELECT total_changes()").fetchone()[0] - before
            self._bump_generation()
            self.conn.executemany("DELETE FROM failures WHERE path = CAST(? AS TEXT)", rows)
        return removed

    # -- vectors ------------------------------------------------------------

    def _bump_generation(self) -> None:
        """Mark every change to the images with a new random token, so a vector cache knows it is stale.

        Random rather than a counter: two copies of one index that each change
        once must not end up with the same token.
        """
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', lower(hex(randomblob(8)))) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        )

    def identity(self) -> str:
        """This index and its current state: what a vector cache must be tagged with to be used."""
        values = dict(self.conn.execute("SELECT key, value FROM meta WHERE key IN ('index_id', 'generation')"))
        return f"{values.get('index_id', '')}:{values.get('generation', '0')}"

    @property
    def cache_path(self) -> Path:
        return vectorcache.cache_path(self.path)

    def vectors(self, folder: str | None = None) -> Vectors:
        """All stored vectors (or those under `folder`) as one matrix, for ranking.

        The whole index comes from the memory-mapped query cache (vectors.py),
        which `refresh_vector_cache` rewrites first if it is stale; a folder's rows
        come from the database.
        """
        if folder is None and self.model():
            return self.refresh_vector_cache()
        return self._vectors_from_rows(folder)[1]

    def refresh_vector_cache(self) -> Vectors:
        """Bring the query cache up to date now, rewriting it only if it is stale, and return its vectors.

        Writers call it after a change (index, moves, undo), so the next search does not pay for the rebuild.
        """
        recorded = self.model()
        cached = vectorcache.read(self.cache_path, self.identity(), recorded[1] if recorded else 0)
        if cached is not None:
            return cached
        identity, vectors = self._vectors_from_rows(None)
        vectorcache.write(self.cache_path, identity, vectors)
        return vectors

    def _vectors_from_rows(self, folder: str | None) -> tuple[str, Vectors]:
        """The vectors under `folder` (all if None) read from the database, and the index state they belong to."""
        recorded = self.model()
        dim = recorded[1] if recorded else 0
        where, params = scope_sql(folder)
        with self.transaction():  # one snapshot for the change token and the rows
            identity = self.identity()
            ids, blobs = [], []
            for id_, blob in self.conn.execute(f"SELECT id, vector FROM images {where} ORDER BY id", params):
                ids.append(id_)
                blobs.append(blob)
        return identity, Vectors(np.array(ids, dtype=np.int64), decode_vectors(blobs, dim))

    def remembered_queries(self, model: str, precision: str, texts: list[str]) -> dict[str, np.ndarray]:
        """Vectors of texts this index has embedded before with this model and precision: text -> unit vector."""
        found: dict[str, np.ndarray] = {}
        texts = [text for text in texts if is_utf8(text)]  # a query made of undecodable bytes is not remembered
        for start in range(0, len(texts), 500):
            chunk = texts[start:start + 500]
            for text, blob in self.conn.execute(
                f"SELECT text, vector FROM query_vectors WHERE model = ? AND precision = ? AND text IN "
                f"({','.join('?' * len(chunk))})", [model, precision, *chunk]
            ):
                found[text] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return found

    def remember_queries(self, model: str, precision: str, vectors: dict[str, np.ndarray]) -> None:
        """Keep these text vectors (the newest REMEMBERED_QUERIES of them); best effort.

        A query must not fail or wait because its vector cannot be kept: a
        read-only index or a busy writer just means the model runs again next time.
        """
        self.conn.execute("PRAGMA busy_timeout = 200")
        try:
            with self._atomic():
                self.conn.executemany(
                    "INSERT OR REPLACE INTO query_vectors (model, precision, text, vector, asked_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(model, precision, text, np.asarray(v, dtype="<f4").tobytes(), now())
                     for text, v in vectors.items() if is_utf8(text)],
                )
                self.conn.execute(
                    "DELETE FROM query_vectors WHERE rowid NOT IN "
                    "(SELECT rowid FROM query_vectors ORDER BY asked_at DESC, rowid DESC LIMIT ?)",
                    [REMEMBERED_QUERIES],
                )
        except (sqlite3.Error, UnicodeEncodeError):
            pass
        finally:
            self.conn.execute("PRAGMA busy_timeout = 30000")

    def vector_for_path(self, path: str) -> np.ndarray | None:
        recorded = self.model()
        row = self.conn.execute("SELECT vector FROM images WHERE path = CAST(? AS TEXT)", [sql_text(path)]).fetchone()
        if row is None or recorded is None:
            return None
        return decode_vectors([row[0]], recorded[1])[0]

    def id_for_path(self, path: str) -> int | None:
        row = self.conn.execute("SELECT id FROM images WHERE path = CAST(? AS TEXT)", [sql_text(path)]).fetchone()
        return row[0] if row else None

    def file_row(self, path: str) -> dict | None:
        """id, path, size, mtime_ns, width and height of the image at exactly `path`, or None."""
        rows = list(self.query("SELECT id, path, size, mtime_ns, width, height FROM images "
                                  "WHERE path = CAST(? AS TEXT)", [sql_text(path)]))
        return rows[0] if rows else None

    def mtimes(self, paths: Sequence[str]) -> dict[str, int]:
        """path -> modification time (ns) recorded for each of these paths that is indexed."""
        found: dict[str, int] = {}
        for start in range(0, len(paths), 500):
            chunk = [sql_text(path) for path in paths[start:start + 500]]
            marks = ",".join(["CAST(? AS TEXT)"] * len(chunk))
            found.update(self.conn.execute(f"SELECT path, mtime_ns FROM images WHERE path IN ({marks})", chunk))
        return found

    def file_table(self, folder: str | None = None) -> dict[str, list]:
        """Facts of every image (or those under `folder`) as columns, ordered by id like `vectors()`."""
        where, params = scope_sql(folder)
        names = ["id", "path", "size", "mtime_ns", "hash", "width", "height", "phash", "colourfulness",
                 *METADATA_COLUMNS]
        rows = self.conn.execute(f"SELECT {', '.join(names)} FROM images {where} ORDER BY id", params).fetchall()
        return {name: [row[i] for row in rows] for i, name in enumerate(names)}

    def rows_for_paths(self, paths: Iterable[str]) -> list[dict]:
        """Whole rows (vector included) of these paths, to keep in a dedupe manifest."""
        found: list[dict] = []
        for path in paths:
            found.extend(self.query("SELECT * FROM images WHERE path = CAST(? AS TEXT)", [sql_text(path)]))
        return found

    def restore_rows(self, rows: list[dict]) -> None:
        """Put back rows that `rows_for_paths` returned (ids may have been reused: SQLite picks).

        Their tags go back with `tagstore.TagStore.restore`, in the same transaction when wanted.
        """
        with self.transaction():
            self._upsert_images(rows)
            self._bump_generation()

    def image_rows(self, ids: list[int]) -> dict[int, dict]:
        """File facts (no vector) of the given image ids, for output."""
        found = {}
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start:start + 500]]
            marks = ",".join("?" * len(chunk))
            for row in self.query(
                f"SELECT id, path, size, mtime_ns, hash, width, height, {', '.join(METADATA_COLUMNS)} FROM images "
                f"WHERE id IN ({marks})", chunk
            ):
                found[row["id"]] = row
        return found


def _try_lock(fd: int) -> bool:
    """Take an exclusive OS lock on `fd` without waiting: flock on POSIX, msvcrt on Windows."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]  # Windows only
            return True
        except OSError:
            return False
    except OSError:
        return False


def now() -> str:
    """The time rows are stamped with: UTC, to the second."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
