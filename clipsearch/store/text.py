"""The text read in photos: the SQL behind `clipsearch ocr` and `find --text`.

ocr/ reads the pictures; this module only stores and searches what it read.
Text is kept per content hash (a renamed or copied photo shares it) and per OCR
version (a new model or setting reads photos again); an FTS5 index over it, kept
in step by triggers (schema 6), answers text queries with BM25 ranks.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BadInputError
from . import Store, now
from .images import scope_sql

SNIPPET_WORDS = 12  # words around the match in a snippet
# FTS5 syntax: a query using any of it is passed on as written; plain words are quoted one by one, so
# `--text 4.50` or `--text wi-fi` work without the user knowing FTS5's rules for barewords.
_SYNTAX = re.compile(r'["*()^:+]|\b(AND|OR|NOT|NEAR)\b')


class TextQueryError(BadInputError):
    """A text query that FTS5 cannot parse; the message shows how to write it."""


@dataclass(frozen=True)
class Unread:
    """A photo whose content has not been read with the current OCR version."""

    hash: str
    path: str


def fts_query(text: str) -> str:
    """The FTS5 query for `--text`: as written when it uses FTS5 syntax ("a phrase", prefix*, OR, NOT),
    else each word quoted (every word must match, in any order)."""
    words = text.split()
    if not words:
        raise TextQueryError("--text needs words to look for, e.g. --text parking")
    if _SYNTAX.search(text):
        return text
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


class TextStore:
    """The photo text of one open index. Cheap to make: it holds nothing but the Store."""

    def __init__(self, store: Store):
        self.store = store

    def unread(self, version: str, folder: str | None = None) -> list[Unread]:
        """One photo (the first path) per content not yet read with `version`, under `folder`, in path order."""
        where, params = scope_sql(folder, "images.path")
        where = (where + " AND" if where else "WHERE") + (
            " NOT EXISTS (SELECT 1 FROM photo_text t WHERE t.hash = images.hash AND t.version = ?)")
        rows = self.store.execute(f"SELECT hash, min(path) FROM images {where} GROUP BY hash ORDER BY min(path)",
                                  [*params, version])
        return [Unread(digest, path) for digest, path in rows]

    def count_read(self, version: str | None = None, folder: str | None = None) -> tuple[int, int]:
        """(images read, images with text) under `folder`: read with `version`, or with any when None."""
        where, params = scope_sql(folder, "images.path")
        condition = "AND t.version = ?" if version else ""
        row = self.store.execute(
            f"SELECT count(*), coalesce(sum(t.text != ''), 0) FROM images JOIN photo_text t ON t.hash = images.hash "
            f"{condition} {where}", [*([version] if version else []), *params]).fetchone()
        return int(row[0]), int(row[1])

    def save(self, results: Iterable[tuple[str, list[dict[str, Any]]]], version: str) -> None:
        """Store what was read, per content hash: its lines ({"text", "confidence", "box"}); one transaction."""
        stamp = now()
        with self.store.transaction():
            self.store.executemany(
                "INSERT INTO photo_text (hash, version, text, lines, read_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (hash) DO UPDATE SET version = excluded.version, text = excluded.text, "
                "lines = excluded.lines, read_at = excluded.read_at",
                [(digest, version, "\n".join(line["text"] for line in lines), json.dumps(lines, ensure_ascii=False),
                  stamp) for digest, lines in results])

    def prune(self) -> int:
        """Forget the text of content no image in the index has any more; returns how many were dropped."""
        with self.store.transaction():
            return self.store.execute(
                "DELETE FROM photo_text WHERE hash NOT IN (SELECT hash FROM images)").rowcount

    def lines_of(self, image_id: int) -> list[dict[str, Any]]:
        """The lines read in one image, as stored (top to bottom); [] when none or not read."""
        row = self.store.execute("SELECT t.lines FROM images JOIN photo_text t ON t.hash = images.hash "
                                 "WHERE images.id = ?", [image_id]).fetchone()
        return json.loads(row[0]) if row else []

    def matching(self, query: str, folder: str | None = None) -> dict[int, float]:
        """Images whose text matches `query` (`fts_query`): id -> BM25 rank (lower is better, as SQLite gives it)."""
        query = fts_query(query)
        where, params = scope_sql(folder, "images.path")
        sql = (f"SELECT images.id, bm25(photo_text_fts) FROM photo_text_fts "
               f"JOIN photo_text t ON t.rowid = photo_text_fts.rowid JOIN images ON images.hash = t.hash "
               f"{where} {'AND' if where else 'WHERE'} photo_text_fts MATCH ?")
        return {int(image_id): float(rank) for image_id, rank in self._run(sql, [*params, query], query)}

    def snippets(self, query: str, ids: Sequence[int]) -> dict[int, str]:
        """Per image of `ids` whose text matches `query`: a snippet around the match, the matched words in
        [brackets], one line."""
        query = fts_query(query)
        found: dict[int, str] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            sql = (f"SELECT images.id, snippet(photo_text_fts, 0, '[', ']', '…', {SNIPPET_WORDS}) FROM photo_text_fts "
                   f"JOIN photo_text t ON t.rowid = photo_text_fts.rowid JOIN images ON images.hash = t.hash "
                   f"WHERE photo_text_fts MATCH ? AND images.id IN ({','.join('?' * len(chunk))})")
            for image_id, snippet in self._run(sql, [query, *chunk], query):
                found[int(image_id)] = " ".join(snippet.split())
        return found

    def _run(self, sql: str, params: list[Any], query: str) -> list[tuple[Any, ...]]:
        try:
            return self.store.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "fts5" not in str(exc) and "no such column" not in str(exc) and "unterminated" not in str(exc):
                raise
            raise TextQueryError(
                f"--text {query!r} is not a text query SQLite understands ({exc}). Write words (all must match), "
                "\"a phrase\" in double quotes, prefix* for words starting so, OR, NOT; put a word with "
                "punctuation in double quotes: --text '\"4.50\"'.") from None
