"""The image rows of an index: file facts, vectors, fingerprints, photo metadata, failures, filters.

One row per indexed file (schema.py's `images` table), plus the files that failed to read and the
index-wide settings (`meta`: the model, the folders indexed, the change token a vector cache is
checked against). Vectors are stored L2-normalised as float16 (half the disk and load time of
float32, ranking unchanged at CLIP's precision); the memory-mapped copy a query ranks against is
vectors.py's. Folder scopes are SQL ranges built here (`scope_sql`), for tags.py too. This module
never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import folder_range, sql_text
from . import vectors as vectorcache
from .connection import Connection, StoreError, now
from .schema import IMAGE_COLUMNS, METADATA_COLUMNS, PLACE_JOIN, PLACE_SELECT
from .vectors import VectorFile, Vectors

VECTOR_DTYPE = np.dtype("<f2")


class ModelMismatchError(StoreError):
    pass



def scope_sql(folder: str | None, column: str = "path") -> tuple[str, list[str | bytes]]:
    """A WHERE clause (and its parameters) selecting the rows under `folder`; none for the whole index."""
    if folder is None:
        return "", []
    low, high = folder_range(folder)
    return (f"WHERE {column} >= CAST(? AS TEXT) AND {column} < CAST(? AS TEXT)",
            [sql_text(low), sql_text(high)])


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
    geometry: bytes | None = None  # geometric fingerprint (fingerprint.geometry); None until computed


@dataclass
class StoredFile:
    id: int
    size: int
    mtime_ns: int



class Images(Connection):
    """The image rows, failures and settings of an open index (a part of `Store`)."""

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
            f"SELECT vector, width, height, phash, colourfulness, geometry, {', '.join(METADATA_COLUMNS)} FROM images "
            "WHERE hash = ? ORDER BY phash IS NULL, geometry IS NULL, taken_source IS NULL LIMIT 1", [content_hash]
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
                f"SELECT hash, vector, width, height, phash, colourfulness, geometry, {', '.join(METADATA_COLUMNS)} "
                "FROM images "
                "WHERE path = CAST(? AS TEXT)",
                [sql_text(path)],
            ):
                found[row.pop("hash")] = row
        return found

    def missing_fingerprints(self, folder: str | None = None) -> list[tuple[int, str]]:
        """(id, path) of images indexed before fingerprints existed."""
        where, params = scope_sql(folder)
        missing = "(phash IS NULL OR geometry IS NULL)"
        where = f"{where} AND {missing}" if where else f"WHERE {missing}"
        return [(row[0], row[1]) for row in self.conn.execute(f"SELECT id, path FROM images {where}", params)]

    def set_fingerprints(self, rows: list[tuple[int, bytes, float, bytes | None]]) -> None:
        """Store (id, phash, colourfulness, geometry) for existing images, in one transaction."""
        with self.transaction():
            self.conn.executemany(
                "UPDATE images SET phash = ?, colourfulness = ?, geometry = ? WHERE id = ?",
                [(p, c, g, i) for i, p, c, g in rows],
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
                     folder: str | None = None, *, place: str | None = None, country: str | None = None,
                     near: tuple[float, float, float] | None = None) -> set[int]:
        """Ids of images taken at or after `after` and before `before` (ISO text), by a camera containing `camera`,
        at a place whose folded names contain `place`, in `country` (ISO code), within near's (lat, lon, metres)."""
        from .places import place_conditions, within

        where, params = scope_sql(folder)
        conditions = [where.removeprefix("WHERE ")] if where else []
        found = place_conditions(self.conn, place, country, near)
        if found is None:
            return set()
        conditions.extend(found[0])
        params.extend(found[1])
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
        if near:
            return within(self.conn.execute(f"SELECT id, lat, lon FROM images {clause}", params), near)
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
            # rowcount: the rows of these statements only, not those their triggers change (tags, vector log)
            removed = self.conn.executemany("DELETE FROM images WHERE path = CAST(? AS TEXT)", rows).rowcount
            self._bump_generation()
            self.conn.executemany("DELETE FROM failures WHERE path = CAST(? AS TEXT)", rows)
        return removed

    # -- vectors ------------------------------------------------------------

    def _bump_generation(self) -> None:
        """Mark every change to the images with a new random token, so a vector cache knows it is stale.

        Random rather than a counter: two copies of one index that each change
        once must not end up with the same token. The token also marks the vector log (schema.py's
        vector_log), so vector files of an older state catch up by the rows changed since.
        """
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', lower(hex(randomblob(8)))) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        )
        self.conn.execute("INSERT INTO vector_log (generation) SELECT value FROM meta WHERE key = 'generation'")

    def identity(self) -> str:
        """This index and its current state: what a vector cache must be tagged with to be used."""
        values = dict(self.conn.execute("SELECT key, value FROM meta WHERE key IN ('index_id', 'generation')"))
        return f"{values.get('index_id', '')}:{values.get('generation', '0')}"

    @property
    def cache_path(self) -> Path:
        return vectorcache.cache_path(self.path)

    def vectors(self, folder: str | None = None, float32: bool = True) -> Vectors:
        """All stored vectors (or those under `folder`) in image id order, for dedupe and tagging.

        The whole index comes from the memory-mapped vector file (vectors.py), which is brought up to
        date first if it is behind: as float32 (a copy), or as its float16 rows, uncopied, if not `float32`
        (dedupe at a million images: 1 GB mapped instead of 2 GB copied). A folder's rows come from the
        database, as float32. Queries rank through vector_index.py instead, which never copies the rows.
        """
        if folder is None and self.model():
            from . import vector_index

            return vector_index.sync(self).vectors(float32)
        return self._vectors_from_rows(folder)[1]

    def refresh_vector_cache(self) -> VectorFile:
        """Bring the vector file up to date now (by the rows changed since, when it can) and start bringing the
        approximate index up to date in the background if the library is large (vector_index.refresh).

        Writers call it after a change (index, moves, undo), so the next search does not pay for it.
        """
        from . import vector_index

        return vector_index.refresh(self)

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
                 *METADATA_COLUMNS, "geometry"]
        rows = self.conn.execute(f"SELECT {', '.join(names)} FROM images {where} ORDER BY id", params).fetchall()
        return {name: [row[i] for row in rows] for i, name in enumerate(names)}

    def column_chunks(self, columns: Sequence[str], folder: str | None = None,
                      size: int = 65_536) -> Iterator[list[tuple]]:
        """The values of `columns` (SQL expressions) of every image (or those under `folder`) in id order, `size`
        rows at a time: dedupe builds arrays over a million images without a Python object per value at once."""
        where, params = scope_sql(folder)
        cursor = self.conn.execute(f"SELECT {', '.join(columns)} FROM images {where} ORDER BY id", params)
        while rows := cursor.fetchmany(size):
            yield rows

    def same_hash_ids(self, folder: str | None = None) -> list[list[int]]:
        """Ids of the images sharing a content hash (under `folder`): one list per hash two or more images hold."""
        where, params = scope_sql(folder)
        found = self.conn.execute(f"SELECT group_concat(id) FROM images {where} GROUP BY hash HAVING count(*) > 1",
                                  params)
        return [[int(i) for i in ids.split(",")] for (ids,) in found]

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
                f"SELECT images.id AS id, path, size, mtime_ns, hash, width, height, {', '.join(METADATA_COLUMNS)}, "
                f"{PLACE_SELECT} FROM images {PLACE_JOIN} WHERE images.id IN ({marks})", chunk
            ):
                found[row["id"]] = row
        return found

