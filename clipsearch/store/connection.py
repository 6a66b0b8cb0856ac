"""Opening an index: the SQLite connection, its transactions, the writer lock and the migrations.

Every other part of the store (images.py, queries.py, tags.py) runs its SQL through one open
connection, so how that connection is made lives here once: WAL mode (so `find` reads while `index`
writes), a busy timeout, the checks that refuse another program's SQLite file before anything is
written to it, read-only commands that never create a file, and the index-wide writer lock
(`index.db.lock`, an OS lock, so a killed process never leaves it held). The tables themselves and
their migrations are schema.py's; this module only runs them.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import (
    BadInputError,
    ClipsearchError,
    IndexBusyError,
    IndexUnusableError,
    MissingIndexError,
)
from ..options import DB_ENV
from ..paths import decode_text
from .schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:  # imported when a write needs it: a query opens the index with sqlite3 alone (-60 ms)
    import sqlite_utils

LOCK_WAIT_ENV = "CLIPSEARCH_LOCK_WAIT"
DEFAULT_LOCK_WAIT = 10.0  # seconds a second writer waits for the first before giving up


class StoreError(IndexUnusableError):
    """The index cannot be used as asked; the message says why and what to do."""


class NewerSchemaError(StoreError):
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


_C = TypeVar("_C", bound="Connection")


class Connection:
    """One open index database: its connection, transactions, writer lock and schema version."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn  # autocommit (isolation_level None): a write outside `transaction()` commits at once
        self.path = path
        self._db: sqlite_utils.Database | None = None
        self._savepoints = 0
        self._lock_fd: int | None = None
        self._lock_depth = 0

    @classmethod
    def open(cls: type[_C], path: str | os.PathLike | None = None, create: bool = True) -> _C:
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

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement on the index's connection (inside `transaction()` when it is one of several)."""
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        """Run one statement for each of `rows`."""
        return self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """Rows as dicts, like sqlite-utils' `query`."""
        cursor = self.conn.execute(sql, params)
        names = [column[0] for column in cursor.description]
        for row in cursor:
            yield dict(zip(names, row))

    def close(self) -> None:
        self._release_lock()
        self.conn.close()

    def __enter__(self: _C) -> _C:
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
            for target in sorted(n for n in MIGRATIONS if version < n <= SCHEMA_VERSION):  # numbers may skip
                MIGRATIONS[target](self.db)
                self.db.table("schema_version").insert({"version": target})


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

