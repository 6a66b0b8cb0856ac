"""The index's tables, and the migrations that bring an older index up to date.

Migration N brings a database from schema N-1 to N; `Store.open` runs the missing ones in one
transaction. A new per-image field (say, a photo's OCR text) is one migration here plus its name
in IMAGE_COLUMNS, and a field on the record that carries it (`ImageRecord`, filled where the pixels are).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

SCHEMA_VERSION = 9
APPLICATION_ID = 0x636C6970  # "clip" in the SQLite header of every index this version creates
METADATA_COLUMNS = ("taken", "taken_source", "camera_make", "camera_model", "lat", "lon")
# Where a photo was taken, in words (store/places.py): what a query of image rows adds to its columns, and the
# joins that bring them (`geocoded` is 1 once the row's position was looked up, with or without a town found).
PLACE_SELECT = "places.city, places.county, places.region, places.country, places.country_code, " \
               "image_places.image_id IS NOT NULL AS geocoded"
PLACE_JOIN = "LEFT JOIN image_places ON image_places.image_id = images.id " \
             "LEFT JOIN places ON places.id = image_places.place_id"
IMAGE_COLUMNS = ("path", "size", "mtime_ns", "hash", "width", "height", "vector", "phash", "colourfulness",
                 "indexed_at", *METADATA_COLUMNS, "geometry")


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


def _add_photo_text_v6(db: sqlite_utils.Database) -> None:
    """The text read in photos (ocr/, store/text.py), one row per content hash and OCR version, and a full-text
    index over it (FTS5, accents folded: `cafe` finds `Café`).

    Keyed by content, not by image row, so a renamed, moved or copied photo keeps its text without being read
    again; rows whose content left the index are pruned by the next `ocr` run. A row with empty text records
    a photo that was read and holds none.
    """
    db.execute("CREATE TABLE photo_text (hash TEXT PRIMARY KEY, version TEXT NOT NULL, text TEXT NOT NULL, "
               "lines TEXT NOT NULL, read_at TEXT)")
    db.execute("CREATE VIRTUAL TABLE photo_text_fts USING fts5(text, content='photo_text', "
               "tokenize='unicode61 remove_diacritics 2')")
    db.execute("CREATE TRIGGER photo_text_added AFTER INSERT ON photo_text BEGIN "
               "INSERT INTO photo_text_fts (rowid, text) VALUES (NEW.rowid, NEW.text); END")
    db.execute("CREATE TRIGGER photo_text_removed AFTER DELETE ON photo_text BEGIN "
               "INSERT INTO photo_text_fts (photo_text_fts, rowid, text) VALUES ('delete', OLD.rowid, OLD.text); END")
    db.execute("CREATE TRIGGER photo_text_changed AFTER UPDATE ON photo_text BEGIN "
               "INSERT INTO photo_text_fts (photo_text_fts, rowid, text) VALUES ('delete', OLD.rowid, OLD.text); "
               "INSERT INTO photo_text_fts (rowid, text) VALUES (NEW.rowid, NEW.text); END")


def _add_places_v7(db: sqlite_utils.Database) -> None:
    """Where each photo with a GPS position was taken (store/places.py), looked up offline in GeoNames.

    `places` holds each town once (its names, and `folded`: the folded names `--place` matches);
    `image_places` says which photo is where, one small row per photo whose position was looked up
    (place_id NULL: no town near it), so filling them writes no image row (a 1 KB vector each). Rows
    indexed before have none until the next `index` run looks their positions up (without the model).
    A photo whose position changes, or that leaves the index, loses its row.
    """
    db.execute("CREATE TABLE places (id INTEGER PRIMARY KEY, names TEXT NOT NULL UNIQUE, folded TEXT NOT NULL, "
               "city TEXT, county TEXT, region TEXT, country TEXT, country_code TEXT)")
    db.execute("CREATE INDEX places_country ON places (country_code)")
    db.execute("CREATE TABLE image_places (image_id INTEGER PRIMARY KEY, place_id INTEGER)")
    db.execute("CREATE INDEX image_places_place ON image_places (place_id)")
    db.execute("CREATE INDEX images_position ON images (lat, lon)")
    db.execute("CREATE TRIGGER images_moved AFTER UPDATE OF lat, lon ON images "
               "WHEN OLD.lat IS NOT NEW.lat OR OLD.lon IS NOT NEW.lon BEGIN "
               "DELETE FROM image_places WHERE image_id = OLD.id; END")
    db.execute("CREATE TRIGGER images_unplaced AFTER DELETE ON images BEGIN "
               "DELETE FROM image_places WHERE image_id = OLD.id; END")


def _add_geometry_v8(db: sqlite_utils.Database) -> None:
    """The geometric fingerprint (fingerprint.geometry: trimmed borders, a sign hash whose mirrors and rotations
    are bit operations, sub-window hashes) that finds mirrored, rotated, bordered and cropped copies.
    NULL for rows indexed before; `fill_fingerprints` computes it from the files (no model needed)."""
    db.table("images").add_column("geometry", bytes)


def _add_vector_log_v9(db: sqlite_utils.Database) -> None:
    """A log of which images' vectors changed, so the vector files beside the index (vectors.py, ann.py)
    catch up by the changed rows instead of being rewritten whole.

    Triggers log every image id whose vector is inserted, replaced or deleted; each change to the images
    then adds a row with no image and the index's new change token (`generation`), marking where that
    state ends. Rows older than what the vector files hold are pruned by the next writer that updates them.
    """
    db.execute("CREATE TABLE vector_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, image_id INTEGER, generation TEXT)")
    db.execute("CREATE INDEX vector_log_generation ON vector_log (generation) WHERE generation IS NOT NULL")
    db.execute("CREATE TRIGGER vector_log_insert AFTER INSERT ON images BEGIN "
               "INSERT INTO vector_log (image_id) VALUES (NEW.id); END")
    db.execute("CREATE TRIGGER vector_log_update AFTER UPDATE OF id, vector ON images BEGIN "
               "INSERT INTO vector_log (image_id) VALUES (OLD.id); "
               "INSERT INTO vector_log (image_id) VALUES (NEW.id); END")
    db.execute("CREATE TRIGGER vector_log_delete AFTER DELETE ON images BEGIN "
               "INSERT INTO vector_log (image_id) VALUES (OLD.id); END")


# Migration N brings a database from schema N-1 to N.
MIGRATIONS = {1: _create_v1, 2: _add_fingerprints_v2, 3: _add_tags_v3, 4: _add_query_vectors_v4,
              5: _add_photo_metadata_v5, 6: _add_photo_text_v6, 7: _add_places_v7, 8: _add_geometry_v8,
              9: _add_vector_log_v9}
