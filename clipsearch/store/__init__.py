"""The index: one SQLite file holding a vector and file facts per image.

WAL mode lets `find` read while `index` writes; every write is a transaction,
so a killed indexer loses at most the batch in flight. Writers (index, dedupe
moves and undo, tagging) also take one index-wide lock (`Store.writer`, a lock
file beside the database), so two of them never interleave: a second writer
waits briefly, then gets `IndexBusyError`.

`Store` is the one object callers hold; each concern is its own module:
connection.py (opening, transactions, the writer lock, running migrations),
images.py (image rows, filters, fingerprints, metadata, failures, vectors),
queries.py (remembered query vectors). The tables and their migrations are
schema.py's; the tag tables are read and written by tags.py, the place tables by places.py; the query cache
file is vectors.py's. Paths are stored exactly, bytes that are not UTF-8
included (paths.py).
"""

from __future__ import annotations

from ..errors import MissingIndexError
from .connection import (
    DEFAULT_LOCK_WAIT,
    LOCK_WAIT_ENV,
    NewerSchemaError,
    StoreError,
    default_db_path,
    lock_wait,
    now,
    storage_error,
)
from .images import (
    VECTOR_DTYPE,
    ImageRecord,
    Images,
    ModelMismatchError,
    StoredFile,
    decode_vectors,
    encode_vector,
    scope_sql,
)
from .queries import REMEMBERED_QUERIES, QueryCache
from .schema import APPLICATION_ID, IMAGE_COLUMNS, METADATA_COLUMNS, MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "APPLICATION_ID", "DEFAULT_LOCK_WAIT", "IMAGE_COLUMNS", "LOCK_WAIT_ENV", "METADATA_COLUMNS", "MIGRATIONS",
    "REMEMBERED_QUERIES", "SCHEMA_VERSION", "VECTOR_DTYPE", "ImageRecord", "MissingIndexError",
    "ModelMismatchError", "NewerSchemaError", "Store", "StoreError", "StoredFile", "decode_vectors",
    "default_db_path", "encode_vector", "lock_wait", "now", "scope_sql", "storage_error",
]


class Store(Images, QueryCache):
    """An open index database. Use `Store.open(path)`; close it (or use `with`) when done."""
