"""Remembered queries: the text vectors an index has embedded before, so asking again needs no model.

A query's text vector costs a model load (seconds) the first time; kept here, in the index's
`query_vectors` table, the same text asked again ranks at once. Best effort by design: a read-only
index or a busy writer only means the model runs again, never that the query fails or waits.
The newest REMEMBERED_QUERIES texts are kept.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from ..paths import is_utf8
from .connection import Connection, now

REMEMBERED_QUERIES = 1000


class QueryCache(Connection):
    """The remembered query vectors of an open index (a part of `Store`)."""

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

