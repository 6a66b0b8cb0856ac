"""The tag tables of an index: the SQL behind zero-shot and manual tags.

tags/auto.py decides which tags an image gets; this module only stores and reads
them, so the store's images.py stays about image rows. The tables themselves
are created by the store's migrations (schema 3), with triggers that drop an
image's tags when it leaves the index and its auto tags when its content changes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..paths import sql_text
from . import Store, now
from .images import scope_sql


class TagStore:
    """The tags of one open index. Cheap to make: it holds nothing but the Store."""

    def __init__(self, store: Store):
        self.store = store

    def carry_tags(self, gone_paths: Iterable[str]) -> None:
        """Before these files leave the index, give their tags to indexed files with the same content.

        A renamed or moved photo is a new row (same hash, reused vector), so
        without this its manual tags would be lost; auto tags and the tagging
        record go along too when the new row has not been tagged yet.
        """
        carry = (
            "FROM images gone JOIN {table} t ON t.image_id = gone.id "
            "JOIN images kept ON kept.hash = gone.hash AND kept.id != gone.id WHERE gone.path = CAST(? AS TEXT)"
        )
        with self.store.transaction():
            for path in map(sql_text, gone_paths):
                self.store.execute(
                    "INSERT OR REPLACE INTO tags (image_id, tag, score, source, model, vocabulary, tagged_at) "
                    "SELECT kept.id, t.tag, t.score, t.source, t.model, t.vocabulary, t.tagged_at "
                    + carry.format(table="tags") + " AND t.source != 'auto'", [path])
                self.store.execute(
                    "INSERT OR IGNORE INTO tags (image_id, tag, score, source, model, vocabulary, tagged_at) "
                    "SELECT kept.id, t.tag, t.score, t.source, t.model, t.vocabulary, t.tagged_at "
                    + carry.format(table="tags")
                    + " AND t.source = 'auto' AND kept.id NOT IN (SELECT image_id FROM tag_runs)", [path])
                self.store.execute(
                    "INSERT OR IGNORE INTO tag_runs (image_id, model, vocabulary, settings, tagged_at) "
                    "SELECT kept.id, t.model, t.vocabulary, t.settings, t.tagged_at " + carry.format(table="tag_runs"),
                    [path])

    def tag_rows(self, image_id: int) -> list[dict]:
        """An image's tag rows as stored (manual and rejected ones included), to keep in a dedupe manifest."""
        return list(self.store.query(
            "SELECT tag, score, source, model, vocabulary, tagged_at FROM tags WHERE image_id = ?", [image_id]))

    def untagged(self, run_key: tuple[str, str, str], folder: str | None = None) -> list[int]:
        """Ids of images not yet tagged with this (model, vocabulary version, settings)."""
        where, params = scope_sql(folder)
        where = (where + " AND" if where else "WHERE") + (
            " NOT EXISTS (SELECT 1 FROM tag_runs r WHERE r.image_id = images.id AND r.model = ? "
            "AND r.vocabulary = ? AND r.settings = ?)"
        )
        rows = self.store.execute(f"SELECT id FROM images {where} ORDER BY id", [*params, *run_key])
        return [row[0] for row in rows]

    def tag_vectors(self, model: str, vocabulary: str, tags: list[str]) -> np.ndarray | None:
        """Cached unit vectors of `tags` (in that order) for this model and vocabulary version, if all are there."""
        found = {tag: blob for tag, blob in self.store.execute(
            "SELECT tag, vector FROM tag_vectors WHERE model = ? AND vocabulary = ?", [model, vocabulary])}
        if any(tag not in found for tag in tags):
            return None
        return np.stack([np.frombuffer(found[tag], dtype="<f4") for tag in tags]).astype(np.float32)

    def save_tag_vectors(self, model: str, vocabulary: str, tags: list[str], vectors: np.ndarray) -> None:
        with self.store.transaction():
            self.store.executemany(
                "INSERT OR REPLACE INTO tag_vectors (model, vocabulary, tag, vector) VALUES (?, ?, ?, ?)",
                [(model, vocabulary, tag, np.asarray(v, dtype="<f4").tobytes()) for tag, v in zip(tags, vectors)],
            )

    def write_auto_tags(self, results: dict[int, list[tuple[str, float]]], run_key: tuple[str, str, str]) -> None:
        """Replace the auto tags of these images, leaving manual and rejected tags alone; one transaction."""
        model, vocabulary, settings = run_key
        stamp = now()
        ids = [[image_id] for image_id in results]
        with self.store.transaction():
            self.store.executemany("DELETE FROM tags WHERE image_id = ? AND source = 'auto'", ids)
            self.store.executemany(
                "INSERT OR IGNORE INTO tags (image_id, tag, score, source, model, vocabulary, tagged_at) "
                "VALUES (?, ?, ?, 'auto', ?, ?, ?)",
                [(image_id, tag, score, model, vocabulary, stamp) for image_id, tags in results.items()
                 for tag, score in tags],
            )
            self.store.executemany(
                "INSERT OR REPLACE INTO tag_runs (image_id, model, vocabulary, settings, tagged_at) "
                "VALUES (?, ?, ?, ?, ?)", [(image_id, model, vocabulary, settings, stamp) for image_id in results]
            )

    def set_manual_tags(self, image_id: int, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Add manual tags; remove tags (an auto tag removed stays away: it is marked rejected)."""
        stamp = now()
        with self.store.transaction():
            self.store.executemany(
                "INSERT OR REPLACE INTO tags (image_id, tag, score, source, tagged_at) "
                "VALUES (?, ?, NULL, 'manual', ?)",
                [(image_id, tag, stamp) for tag in add],
            )
            self.store.executemany(
                "INSERT OR REPLACE INTO tags (image_id, tag, score, source, tagged_at) "
                "VALUES (?, ?, NULL, 'rejected', ?)", [(image_id, tag, stamp) for tag in remove],
            )

    def tags_of(self, ids: Iterable[int]) -> dict[int, list[dict]]:
        """Visible tags (auto and manual) of these images, best first."""
        found: dict[int, list[dict]] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for row in self.store.query(
                f"SELECT image_id, tag, score, source FROM tags WHERE source != 'rejected' AND image_id IN "
                f"({','.join('?' * len(chunk))}) ORDER BY source = 'auto', score DESC, tag", chunk
            ):
                found.setdefault(row["image_id"], []).append(row)
        return found

    def tags_by_path(self, folder: str | None = None) -> dict[str, list[str]]:
        """Visible tags of every tagged image (under `folder`): path -> tags, best first."""
        where, params = scope_sql(folder)
        found: dict[str, list[str]] = {}
        for path, tag in self.store.execute(
            f"SELECT images.path, tags.tag FROM tags JOIN images ON images.id = tags.image_id {where} "
            f"{'AND' if where else 'WHERE'} tags.source != 'rejected' "
            f"ORDER BY images.path, tags.source = 'auto', tags.score DESC, tags.tag", params
        ):
            found.setdefault(path, []).append(tag)
        return found

    def tag_counts(self, folder: str | None = None) -> list[dict]:
        """Each visible tag with how many images have it (auto, manual), most used first."""
        where, params = scope_sql(folder)
        join = f"JOIN images ON images.id = tags.image_id {where}" if where else ""
        return list(self.store.query(
            f"SELECT tag, count(*) AS images, sum(source = 'auto') AS auto, sum(source = 'manual') AS manual "
            f"FROM tags {join} {'AND' if where else 'WHERE'} source != 'rejected' GROUP BY tag "
            f"ORDER BY images DESC, tag", params
        ))

    def images_with_tags(self, tags: Iterable[str], folder: str | None = None) -> dict[int, float]:
        """Images having every one of `tags`: id -> ranking score (manual tags count as 1.0; the lowest wins)."""
        tags = list(dict.fromkeys(tags))
        where, params = scope_sql(folder)
        scope = f"AND image_id IN (SELECT id FROM images {where})" if where else ""
        rows = self.store.execute(
            f"SELECT image_id, min(CASE WHEN source = 'manual' THEN 1.0 ELSE score END), count(*) FROM tags "
            f"WHERE source != 'rejected' AND tag IN ({','.join('?' * len(tags))}) {scope} GROUP BY image_id",
            [*tags, *params],
        )
        return {image_id: score for image_id, score, count in rows if count == len(tags)}

    def restore(self, rows: list[dict], tag_rows: list[list[dict]]) -> None:
        """Put back image rows (`Store.restore_rows`) and their tag rows (`tag_rows`), in one transaction."""
        with self.store.transaction():
            self.store.restore_rows(rows)
            for row, tags in zip(rows, tag_rows):
                image_id = self.store.id_for_path(row["path"])
                self.store.db.table("tags").upsert_all([{**tag, "image_id": image_id} for tag in tags],
                                                 pk=("image_id", "tag"))

    def tagged_count(self) -> int:
        """How many images have at least one visible tag."""
        return self.store.execute(
            "SELECT count(DISTINCT image_id) FROM tags WHERE source != 'rejected'").fetchone()[0]

    def runs_with_other_vocabulary(self, model: str, vocabulary: str) -> int:
        """How many images were tagged with this model but another vocabulary version."""
        return self.store.execute("SELECT count(*) FROM tag_runs WHERE model = ? AND vocabulary != ?",
                                     [model, vocabulary]).fetchone()[0]
