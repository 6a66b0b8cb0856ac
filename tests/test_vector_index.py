"""The vector index (store/vector_index.py, vectors.py, ann.py): exact and approximate ranking agree, filters
never lose results, the files follow the index incrementally, and a stale, foreign or damaged file is never used."""

import json
import shutil
import time

import numpy as np
import pytest

from clipsearch.store import ImageRecord, Store, encode_vector, vector_index
from clipsearch.store import ann as annfile
from clipsearch.store import vectors as vectorfile
from tests.conftest import TINY_MODEL

DIM = 32


def clustered(count: int, seed: int, topics: int = 12) -> np.ndarray:
    """Unit vectors around a few topics, as real CLIP vectors gather (uniform random ones have no neighbours)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((topics, DIM))
    rows = centres[rng.integers(0, topics, count)] + 0.35 * rng.standard_normal((count, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def records(vectors: np.ndarray, start: int = 0) -> list[ImageRecord]:
    return [ImageRecord(f"/photos/{(start + i) // 100:03d}/{start + i:05d}.jpg", 1000, 1, f"hash{start + i}", 64, 48,
                        encode_vector(v)) for i, v in enumerate(vectors)]


@pytest.fixture
def big(tmp_path, monkeypatch):
    """A 3,000-image index above a lowered switch-over size, its IVF built."""
    monkeypatch.setenv(vector_index.APPROXIMATE_FROM_ENV, "1000")
    store = Store.open(tmp_path / "index.db")
    store.set_model("test/clustered", DIM)
    store.write(records(clustered(3000, seed=1)))
    with store.writer():
        vector_index.refresh(store, background=False)
    yield store
    store.close()


def exact_top(store: Store, query: np.ndarray, k: int, allowed=None) -> list[int]:
    return [i for i, _ in vector_index.open_index(store).search(query, k, allowed, exact=True)]


def test_exact_and_approximate_give_the_same_top_results(big):
    index = vector_index.open_index(big)
    assert index.kind == "approximate" and index.ann is not None and index.ann.rows == 3000
    queries = clustered(20, seed=2)
    overlap = []
    for query in queries:
        approximate = [i for i, _ in index.search(query, 10)]
        exact = exact_top(big, query, 10)
        assert approximate[0] == exact[0]
        overlap.append(len(set(approximate) & set(exact)) / 10)
    assert np.mean(overlap) >= 0.95
    scores = [s for _, s in index.search(queries[0], 10)]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)


def test_the_cells_a_query_scans_are_measured_on_the_library(big):
    index = vector_index.open_index(big)
    assert index.ann is not None
    assert 1 <= index.ann.probes <= index.ann.cells // 4 and index.ann.recall >= annfile.RECALL_TARGET
    described = vector_index.describe(big)
    assert described["probes"] == index.ann.probes and described["calibrated_recall"] == index.ann.recall
    assert f"{index.ann.probes} searched per query" in described["summary"]


def test_vectors_without_neighbourhoods_are_ranked_exactly(tmp_path, monkeypatch):
    """Uniform random vectors have no neighbourhoods for cells to capture: the index built over them misses
    most of the ten best, so calibration turns it off and every query ranks all rows (right, if slower)."""
    monkeypatch.setenv(vector_index.APPROXIMATE_FROM_ENV, "1000")
    rng = np.random.default_rng(5)
    uniform = rng.standard_normal((3000, DIM)).astype(np.float32)
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    with Store.open(tmp_path / "index.db") as store:
        store.set_model("test/uniform", DIM)
        store.write(records(uniform))
        with store.writer():
            vector_index.refresh(store, background=False)
        current = vector_index.sync(store)
        ann = annfile.read(annfile.ann_path(store.path), current)
        assert ann is not None and ann.probes == 0 and ann.recall < annfile.RECALL_TARGET  # built, then judged
        index = vector_index.open_index(store)
        assert index.kind == "exact"
        assert vector_index.describe(store)["summary"].startswith("exact: the approximate index found only")
        query = uniform[7]
        assert index.search(query, 10) == index.search(query, 10, exact=True)
        with store.writer():
            assert vector_index.maintain(store, background=False) is None  # not rebuilt at every run


def test_an_index_written_before_calibration_scans_the_default_cells_until_measured(big):
    path = annfile.ann_path(big.path)
    data = path.read_bytes()
    trailer = json.loads(data[-annfile.TRAILER_BYTES:].decode())
    del trailer["probes"], trailer["recall"]
    path.write_bytes(data[:-annfile.TRAILER_BYTES] + json.dumps(trailer).encode().ljust(annfile.TRAILER_BYTES))
    index = vector_index.open_index(big)
    assert index.kind == "approximate" and index.ann is not None
    assert index.ann.probes == annfile.DEFAULT_PROBES and index.ann.recall is None
    before = data[:-annfile.TRAILER_BYTES]
    with big.writer():
        assert vector_index.maintain(big, background=False) == "calibrate"  # the next index run measures it
    assert path.read_bytes()[:-annfile.TRAILER_BYTES] == before  # the trailer only
    index = vector_index.open_index(big)
    assert index.ann is not None and index.ann.recall is not None and 1 <= index.ann.probes <= index.ann.cells // 4


def test_a_small_library_ranks_exactly(tmp_path):
    with Store.open(tmp_path / "index.db") as store:
        store.set_model("test/clustered", DIM)
        vectors = clustered(200, seed=3)
        store.write(records(vectors))
        index = vector_index.open_index(store)
        assert index.kind == "exact" and vector_index.describe(store)["kind"] == "exact"
        expected = np.argsort(-(vectors.astype(np.float16).astype(np.float32) @ vectors[7]), kind="stable")[:5]
        ids = {store.id_for_path(f"/photos/000/{i:05d}.jpg"): i for i in range(100)} | {
            store.id_for_path(f"/photos/001/{i:05d}.jpg"): i for i in range(100, 200)}
        assert [ids[i] for i, _ in index.search(vectors[7], 5)] == list(expected)


def test_filtered_queries_return_every_result_that_exists(big, monkeypatch):
    query = clustered(1, seed=4)[0]
    everything = exact_top(big, query, 3000)
    far = everything[-40:]  # the images least like the query: the IVF's nearest cells hold none of them
    index = vector_index.open_index(big)
    for few in (100_000, 5):  # ranked exactly; through the IVF with an IDSelector (then exactly when it falls short)
        monkeypatch.setattr(vector_index, "FEW_CANDIDATES", few)
        found = index.search(query, 100, np.array(far))
        assert sorted(i for i, _ in found) == sorted(far)
        assert [i for i, _ in found] == exact_top(big, query, 100, np.array(far))
    many = np.array(everything[::2])
    assert len(index.search(query, 50, many)) == 50
    assert {i for i, _ in index.search(query, 50, many)} <= set(many.tolist())
    assert index.search(query, 10, np.array([], dtype=np.int64)) == []


def test_incremental_add_and_remove_without_rebuild(big):
    ivf = annfile.ann_path(big.path)
    before = (ivf.stat().st_ino, ivf.stat().st_mtime_ns)
    file_id = vector_index.sync(big).file_id
    added = clustered(30, seed=5)
    big.write(records(added, start=5000))
    gone = [f"/photos/{i // 100:03d}/{i:05d}.jpg" for i in range(0, 3000, 300)]
    gone_ids = {big.id_for_path(p) for p in gone}
    big.remove(gone)
    with big.writer():
        assert vector_index.refresh(big, background=False).file_id == file_id, "appended, not rewritten"
    assert (ivf.stat().st_ino, ivf.stat().st_mtime_ns) == before, "the IVF was neither rebuilt nor rewritten"
    index = vector_index.open_index(big)
    assert index.kind == "approximate" and index.ann is not None and index.ann.rows == 3000
    new_id = big.id_for_path("/photos/050/05003.jpg")
    assert index.search(added[3], 1)[0][0] == new_id, "a row the IVF does not cover yet is found"
    returned = {i for q in clustered(10, seed=6) for i, _ in index.search(q, 100)}
    assert not returned & gone_ids, "removed images are masked"
    assert len(index) == 3000 + 30 - 10
    assert big.execute("SELECT count(*) FROM vector_log").fetchone()[0] <= 2, "the log is pruned"


@pytest.mark.parametrize("overfetch", [10_000, 3])  # dead rows dropped from what is found / live rows selected
def test_removed_photos_are_never_found_even_when_they_match_best(big, monkeypatch, overfetch):
    monkeypatch.setattr(vector_index, "OVERFETCH_DEAD", overfetch)
    vectors = clustered(3000, seed=1)
    gone = [f"/photos/{i // 100:03d}/{i:05d}.jpg" for i in range(0, 40)]
    tail = clustered(30, seed=8)
    big.write(records(tail, start=5000))  # appended after the IVF was written: ranked exactly
    with big.writer():
        vector_index.refresh(big, background=False)
    tail_gone = [f"/photos/{i // 100:03d}/{i:05d}.jpg" for i in range(5000, 5020)]
    gone_ids = {big.id_for_path(p) for p in gone + tail_gone}
    big.remove(gone + tail_gone)
    with big.writer():
        vector_index.refresh(big, background=False)
    indexed = {row[0] for row in big.execute("SELECT id FROM images")}
    index = vector_index.open_index(big)
    assert index.kind == "approximate" and index.vectors.dead == 60
    for query in [*vectors[:40:7], *tail[:20:5]]:  # each the vector of a removed photo: its best match
        for exact in (False, True):
            found = [i for i, _ in index.search(query, 10, exact=exact)]
            assert len(found) == 10 and set(found) <= indexed and not set(found) & gone_ids
    kept_tail = {big.id_for_path(f"/photos/{i // 100:03d}/{i:05d}.jpg") for i in range(5020, 5030)}
    for row in range(20, 30):  # the tail's live rows are still found behind its dead ones
        assert index.search(tail[row], 1)[0][0] in kept_tail
    assert [i for i, _ in index.search(vectors[100], 20)] == exact_top(big, vectors[100], 20)


def test_live_rows_behind_many_removed_ones_in_the_unindexed_tail_are_found(big, monkeypatch):
    monkeypatch.setattr(vector_index, "RERANK", 10)  # candidates fetched: fewer than the removed rows
    rng = np.random.default_rng(9)
    centre = clustered(1, seed=9)[0]
    near = centre + rng.standard_normal((30, DIM)).astype(np.float32) * np.linspace(0.002, 0.02, 30)[:, None]
    near /= np.linalg.norm(near, axis=1, keepdims=True)  # rows 0-19 nearest the centre, then 20-29
    big.write(records(near, start=7000))
    with big.writer():
        vector_index.refresh(big, background=False)
    big.remove([f"/photos/{i // 100:03d}/{i:05d}.jpg" for i in range(7000, 7020)])
    with big.writer():
        vector_index.refresh(big, background=False)
    kept = {big.id_for_path(f"/photos/{i // 100:03d}/{i:05d}.jpg") for i in range(7020, 7030)}
    assert {i for i, _ in vector_index.open_index(big).search(centre, 5)} <= kept


def test_many_additions_extend_the_ivf_and_drift_rebuilds_it(big):
    big.write(records(clustered(1200, seed=7), start=5000))
    with big.writer():
        assert vector_index.maintain(big, background=False) == "extend"
    extended = annfile.read(annfile.ann_path(big.path), vector_index.sync(big))
    assert extended is not None and (extended.rows, extended.trained_rows) == (4200, 3000)
    big.write(records(clustered(2000, seed=8), start=10000))
    with big.writer():
        assert vector_index.maintain(big, background=False) == "build", "trained on less than half of the rows"
    ann = annfile.read(annfile.ann_path(big.path), vector_index.sync(big))
    assert ann is not None and ann.trained_rows == 6200


def test_a_stale_or_foreign_file_is_never_used(big, tmp_path, monkeypatch):
    # stale: the index changed since the vector file was written; the next query catches up first
    big.write(records(clustered(1, seed=9) * -1, start=9000))
    assert vectorfile.read(big.cache_path, big.identity(), DIM) is None
    assert vector_index.open_index(big).search(clustered(1, seed=9)[0] * -1, 1)[0][0] == big.id_for_path(
        "/photos/090/09000.jpg")
    # foreign: another index's files copied beside this one
    with Store.open(tmp_path / "other.db") as other:
        other.set_model("test/clustered", DIM)
        other.write(records(clustered(1500, seed=10)))
        with other.writer():
            vector_index.refresh(other, background=False)
        for suffix in (".vectors", ".vectors.ids", ".ivf"):
            shutil.copy(str(other.path) + suffix, str(big.path) + suffix)
    index = vector_index.open_index(big)
    assert len(index) == 3001 and index.ann is None, "the copied IVF belongs to another vector file"
    assert index.search(clustered(1, seed=9)[0] * -1, 1)[0][0] == big.id_for_path("/photos/090/09000.jpg")


def test_a_damaged_file_is_rebuilt(big):
    ivf = annfile.ann_path(big.path)
    ivf.write_bytes(ivf.read_bytes()[:5000])
    assert vector_index.open_index(big).ann is None, "a damaged IVF is not used: ranking is exact meanwhile"
    with big.writer():
        assert vector_index.maintain(big, background=False) == "build"
    assert vector_index.open_index(big).kind == "approximate"
    big.cache_path.write_bytes(b"damaged")
    index = vector_index.open_index(big)
    assert len(index) == 3000 and index.search(clustered(1, seed=2)[0], 3)


def test_exact_option_and_info_show_the_index_kind(cli, small_library, tmp_path, monkeypatch):
    db = tmp_path / "index.db"
    monkeypatch.setenv(vector_index.APPROXIMATE_FROM_ENV, "5")
    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL, "--quiet").exit_code == 0
    deadline = time.monotonic() + 60  # `index` started the IVF build in a child process
    while not annfile.ann_path(db).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    info = json.loads(cli("info", "--db", db, "--json").stdout)
    assert info["vector_index"]["kind"] == "approximate"
    assert "approximate (faiss IVF" in cli("info", "--db", db).stdout
    approximate = json.loads(cli("find", "a red circle", "--db", db, "--json", "--top", "5").stdout)
    exact = json.loads(cli("find", "a red circle", "--db", db, "--json", "--top", "5", "--exact").stdout)
    assert [h["path"] for h in approximate] == [h["path"] for h in exact]
    photo = exact[0]["path"]
    similar = json.loads(cli("similar", photo, "--db", db, "--json", "--exact").stdout)
    assert similar and photo not in [h["path"] for h in similar]
    monkeypatch.setenv(vector_index.APPROXIMATE_FROM_ENV, "1000")
    info = json.loads(cli("info", "--db", db, "--json").stdout)
    assert info["vector_index"]["kind"] == "exact"
