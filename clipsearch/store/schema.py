"""The index's tables, and the migrations that bring an older index up to date.

Migration N brings a database from schema N-1 to N; `Store.open` runs the missing ones in one
transaction. A new per-image field (say, a photo's OCR text) is one migration here plus its name
in IMAGE_COLUMNS, and a field on the record that carries it (`ImageRecord`, filled where the pixels are).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

SCHEMA_VERSION = 5
APPLICATION_ID = 0x636C6970  # "clip" in the SQLite header of every index this version creates
METADATA_COLUMNS = ("taken", "taken_source", "camera_make", "camera_model", "lat", "lon")
IMAGE_COLUMNS = ("path", "size", "mtime_ns", "hash", "width", "height", "vector", "phash", "colourfulness",
                 "indexed_at", *METADATA_COLUMNS)


def _create_v1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("images").create(
        {
            "id": int, "path": str, "size": int, "mtime_ns": int, "hash": str,
            "width": int, "height": int, "vector": bytes, "indexed_at": str,
        },
        pk="id",
        not_null={"path", "size", "mtime_ns", "hash", "vector"},
    )
    db.table("images").create_index(["path"], unique=True)
    db.table("images").create_index(["hash"])
    # Files that could not be read, so an unchanged broken file is not retried every run.
    db.table("failures").create({"path": str, "size": int, "mtime_ns": int, "reason": str}, pk="path")


def _add_fingerprints_v2(db: sqlite_utils.Database) -> None:
    """Pixel fingerprints for dedupe; NULL for rows indexed before, filled in by `fill_fingerprints`."""
    db.table("images").add_column("phash", bytes)
    db.table("images").add_column("colourfulness", float)


def _add_tags_v3(db: sqlite_utils.Database) -> None:
    """Tags per image, and which images were tagged with which model, vocabulary and settings.

    source is 'auto' (zero-shot, with a score), 'manual' (the user's) or 'rejected'
    (an auto tag the user removed, so auto tagging does not bring it back).
    Triggers drop an image's tags when it leaves the index, and its auto tags
    when its content (vector) changes.
    """
    db.execute(
        "CREATE TABLE tags (image_id INTEGER NOT NULL, tag TEXT NOT NULL, score REAL, source TEXT NOT NULL, "
        "model TEXT, vocabulary TEXT, tagged_at TEXT, PRIMARY KEY (image_id, tag))"
    )
    db.execute("CREATE INDEX tags_tag ON tags (tag)")
    db.execute(
        "CREATE TABLE tag_runs (image_id INTEGER PRIMARY KEY, model TEXT NOT NULL, vocabulary TEXT NOT NULL, "
        "settings TEXT NOT NULL, tagged_at TEXT)"
    )
    # Text vectors of a vocabulary's tags, so later runs need neither the prompts' embedding nor the model.
    db.execute(
        "CREATE TABLE tag_vectors (model TEXT NOT NULL, vocabulary TEXT NOT NULL, tag TEXT NOT NULL, "
        "vector BLOB NOT NULL, PRIMARY KEY (model, vocabulary, tag))"
    )
    db.execute(
        "CREATE TRIGGER images_deleted AFTER DELETE ON images BEGIN "
        "DELETE FROM tags WHERE image_id = OLD.id; DELETE FROM tag_runs WHERE image_id = OLD.id; END"
    )
    db.execute(
        "CREATE TRIGGER images_changed AFTER UPDATE OF vector ON images WHEN OLD.vector IS NOT NEW.vector BEGIN "
        "DELETE FROM tags WHERE image_id = OLD.id AND source = 'auto'; "
        "DELETE FROM tag_runs WHERE image_id = OLD.id; END"
    )


def _add_query_vectors_v4(db: sqlite_utils.Database) -> None:
    """Text queries already embedded, so asking again needs no model at all (see `remembered_queries`);
    and a random identity of the index, so its vector cache cannot be mistaken for another index's.
    """
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('index_id', lower(hex(randomblob(16))))")
    db.execute(
        "CREATE TABLE query_vectors (model TEXT NOT NULL, precision TEXT NOT NULL, text TEXT NOT NULL, "
        "vector BLOB NOT NULL, asked_at TEXT, PRIMARY KEY (model, precision, text))"
    )


def _add_photo_metadata_v5(db: sqlite_utils.Database) -> None:
    """Date taken (and where it came from), camera and GPS position from EXIF (metadata.py).

    NULL for rows indexed before; `indexer.fill_metadata` reads them from the
    files' headers without the model.
    """
    for name, kind in (("taken", str), ("taken_source", str), ("camera_make", str), ("camera_model", str),
                       ("lat", float), ("lon", float)):
        db.table("images").add_column(name, kind)
    db.execute("CREATE INDEX images_taken ON images (taken)")
    db.execute("CREATE INDEX images_camera ON images (camera_make, camera_model)")


# Migration N brings a database from schema N-1 to N.
MIGRATIONS = {1: _create_v1, 2: _add_fingerprints_v2, 3: _add_tags_v3, 4: _add_query_vectors_v4,
              5: _add_photo_metadata_v5}
