import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from clipsearch.store import (
    SCHEMA_VERSION,
    ImageRecord,
    MissingIndexError,
    ModelMismatchError,
    NewerSchemaError,
    Store,
    StoreError,
    default_db_path,
    encode_vector,
)


def unit(seed: int, dim: int = 8) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def record(path: str, seed: int, content_hash: str | None = None) -> ImageRecord:
    return ImageRecord(path, 100 + seed, 1_000 + seed, content_hash or f"hash{seed}", 640, 480,
                       encode_vector(unit(seed)))


def test_default_location_follows_xdg_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "clipsearch" / "index.db"
    monkeypatch.setenv("CLIPSEARCH_DB", str(tmp_path / "elsewhere.db"))
    assert default_db_path() == tmp_path / "elsewhere.db"


def test_new_index_has_schema_wal_and_tables(tmp_path):
    with Store.open(tmp_path / "new" / "index.db") as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {"images", "failures", "meta", "schema_version"} <= set(store.db.table_names())
        assert store.model() is None


def test_missing_index_is_not_created_by_readers(tmp_path):
    with pytest.raises(MissingIndexError, match="clipsearch index"):
        Store.open(tmp_path / "nothing.db", create=False)
    assert not (tmp_path / "nothing.db").exists()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "index.db"
    Store.open(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION + 1])
    with pytest.raises(NewerSchemaError, match="newer clipsearch"):
        Store.open(path)


def test_other_sqlite_files_are_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE photos (x)")
    with pytest.raises(StoreError, match="not a clipsearch index"):
        Store.open(path)
    (tmp_path / "text.db").write_text("hello, I am not SQLite at all" * 100)
    with pytest.raises(StoreError, match="not a clipsearch index"):
        Store.open(tmp_path / "text.db")


def test_model_is_recorded_and_mismatches_refused(tmp_path):
    with Store.open(tmp_path / "index.db") as store:
        store.set_model("org/model-a", 8)
        assert store.model() == ("org/model-a", 8)
        store.check_model("org/model-a")
        with pytest.raises(ModelMismatchError, match="built with model 'org/model-a'"):
            store.check_model("org/model-b")


def test_write_replace_remove_and_scoped_vectors(tmp_path):
    with Store.open(tmp_path / "index.db") as store:
        store.set_model("m", 8)
        store.write([record("/photos/a/1.jpg", 1), record("/photos/a/2.jpg", 2), record("/photos/ab/3.jpg", 3)])
        store.write([record("/photos/a/2.jpg", 4)])  # same path again: replaced, not duplicated
        assert store.count() == 3

        everything = store.vectors()
        assert everything.matrix.shape == (3, 8)
        row = list(everything.ids).index(store.id_for_path("/photos/a/2.jpg"))
        assert np.allclose(everything.matrix[row], unit(4), atol=1e-3)

        # "/photos/a" must not include its sibling "/photos/ab".
        assert store.paths("/photos/a") == ["/photos/a/1.jpg", "/photos/a/2.jpg"]
        assert len(store.vectors("/photos/a")) == 2
        assert store.count("/photos/ab") == 1

        known = store.vector_for_hash("hash1")
        assert (known["width"], known["height"]) == (640, 480)
        assert store.remove(["/photos/a/1.jpg", "/not/there.jpg"]) == 1
        assert store.count() == 2


def test_file_rows_and_dates_are_looked_up_by_exact_bytes(tmp_path):
    odd = os.fsdecode(b"/photos/bad\xff\xfe.jpg")  # not valid UTF-8
    lookalike = os.fsencode(odd).decode("utf-8", "replace")  # what a lossy decoding would make of it
    with Store.open(tmp_path / "index.db") as store:
        store.set_model("m", 8)
        store.write([record(odd, 1), record("/photos/ok.jpg", 2)])
        assert store.file_row(odd) == {"id": store.id_for_path(odd), "path": odd, "size": 101, "mtime_ns": 1_001,
                                       "width": 640, "height": 480}
        assert store.file_row(lookalike) is None and store.file_row("/photos") is None
        paths = [odd, "/photos/ok.jpg", lookalike] + [f"/gone/{i}.jpg" for i in range(600)]  # more than a chunk
        assert store.mtimes(paths) == {odd: 1_001, "/photos/ok.jpg": 1_002}


def test_vector_cache_follows_every_change(tmp_path):
    with Store.open(tmp_path / "index.db") as store:
        store.set_model("m", 8)
        store.write([record("/p/1.jpg", 1), record("/p/2.jpg", 2)])
        first = store.vectors()
        assert store.cache_path.exists()
        again = store.vectors()  # served from the cache
        assert (again.ids == first.ids).all() and np.array_equal(again.matrix, first.matrix)

        store.write([record("/p/2.jpg", 7)])  # same path, new vector
        changed = store.vectors()
        row = list(changed.ids).index(store.id_for_path("/p/2.jpg"))
        assert np.allclose(changed.matrix[row], unit(7), atol=1e-3)
        store.remove(["/p/1.jpg"])
        assert len(store.vectors()) == 1

        store.cache_path.write_bytes(b"damaged")
        assert len(store.vectors()) == 1, "a damaged cache is rebuilt, never trusted"


def test_vector_cache_of_another_index_is_never_used(tmp_path):
    """Two indexes with the same history: one's cache copied beside the other must not rank the other."""
    stores = []
    for name, seed in (("a.db", 1), ("b.db", 50)):
        store = Store.open(tmp_path / name)
        store.set_model("m", 8)
        store.write([record("/p/1.jpg", seed), record("/p/2.jpg", seed + 1)])
        stores.append(store)
    a, b = stores
    a.vectors()
    shutil.copy(a.cache_path, b.cache_path)
    assert np.allclose(b.vectors().matrix[0], unit(50), atol=1e-3), "b ranks with its own vectors"
    for store in stores:
        store.close()


def test_failures_are_kept_until_the_file_is_indexed(tmp_path):
    with Store.open(tmp_path / "index.db") as store:
        store.set_model("m", 8)
        store.write([], [("/p/bad.jpg", 10, 20, "corrupt image")])
        assert store.failures_under(["/p"]) == {"/p/bad.jpg": (10, 20, "corrupt image")}
        store.write([record("/p/bad.jpg", 1)])
        assert store.failures_under(["/p"]) == {}


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from clipsearch.store import Store, ImageRecord, encode_vector
    store = Store.open(sys.argv[1])
    store.set_model("m", 8)
    vector = encode_vector(np.ones(8, dtype=np.float32) / np.sqrt(8))
    batch = 0
    while True:
        store.write([ImageRecord(f"/p/{batch}/{i}.jpg", 1, 1, f"h{batch}-{i}", 1, 1, vector) for i in range(50)])
        batch += 1
        print(batch, flush=True)
""")


def test_database_survives_kill_9_mid_write(tmp_path):
    path = tmp_path / "index.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = 0
    deadline = time.time() + 60
    while committed < 20 and time.time() < deadline:
        committed = int(writer.stdout.readline() or committed)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()

    with Store.open(path) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = store.count()
        assert count % 50 == 0, "a batch is stored whole or not at all"
        assert count >= committed * 50
