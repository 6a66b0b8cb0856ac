"""dedupe: tiers on a generated library with known duplicates, keep policy, moves and undo."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsearch.dedupe.groups import DedupeOptions, KeepPolicy, find_duplicates, neighbour_pairs
from clipsearch.indexing.job import IndexOptions, fill_fingerprints, index_folders
from clipsearch.store import Store
from clipsearch_dev import scenes

from .conftest import TINY_MODEL


@pytest.fixture(scope="module")
def duplicate_library(tmp_path_factory, encoder):
    """(library folder, truth, index path) for 6 families + 12 unrelated photos + 3 RAW+JPEG pairs."""
    folder = tmp_path_factory.mktemp("dupes") / "library"
    files = scenes.write_duplicate_library(folder, families=6, unrelated=12, raw_pairs=3, seed=5)
    db_path = folder.parent / "index.db"
    with Store.open(db_path) as store:
        index_folders([folder], store, encoder=encoder, options=IndexOptions(batch_size=32))
    return folder, files, db_path


@pytest.fixture
def writable_library(duplicate_library, tmp_path):
    """A copy of the library and its index (paths inside rewritten) that a test may change."""
    folder, files, db_path = duplicate_library
    copy = tmp_path / "library"
    shutil.copytree(folder, copy)
    db_copy = tmp_path / "index.db"
    shutil.copy(db_path, db_copy)
    with Store.open(db_copy) as store:
        store.db.execute("UPDATE images SET path = replace(path, ?, ?)", [str(folder), str(copy)])
        store.db.conn.commit()
        store.set_meta("folders", json.dumps([str(copy)]))  # the folders it covers: where undo may write
    relocated = [scenes.LibraryFile(copy / f.path.relative_to(folder), f.family, f.kind) for f in files]
    return copy, relocated, db_copy


def _groups(db_path, **options):
    with Store.open(db_path) as store:
        return find_duplicates(store, options=DedupeOptions(**options))


def _by_tier(groups, tier):
    return [{m.path for m in g.members} for g in groups if g.tier == tier]


def test_each_tier_finds_what_it_should_and_nothing_else(duplicate_library):
    _, files, db_path = duplicate_library
    groups = _groups(db_path)
    kind = {str(f.path): f for f in files}

    exact = _by_tier(groups, "exact")
    assert sorted(sorted(kind[p].kind for p in g) for g in exact) == [["exact", "original"]] * 6

    near = _by_tier(groups, "near")
    assert len(near) == 6
    for group in near:
        families = {kind[p].family for p in group}
        assert len(families) == 1 and -1 not in families
        # The exact pair takes part through the copy it keeps, so one of the two is here.
        assert {kind[p].kind for p in group} | {"exact", "original"} == {"original", *scenes.NEAR_KINDS}
        assert len(group) == len(scenes.NEAR_KINDS)
    assert not _by_tier(groups, "similar"), "similar shots only with --similar"

    grouped = {p for g in exact + near for p in g}
    for f in files:
        if f.kind in ("grey", "burst", "lookalike", "unrelated", "raw", "raw-jpeg"):
            assert str(f.path) not in grouped, f"{f.kind} {f.path.name} was grouped"


def test_similar_tier_adds_bursts_and_never_pairs_raw_with_its_jpeg(duplicate_library):
    _, files, db_path = duplicate_library
    groups = _groups(db_path, similar=True)
    near_keeps = {g.keep.path: g for g in groups if g.tier == "near"}
    similar = [g for g in groups if g.tier == "similar"]
    for f in files:
        if f.kind == "burst":
            holding = [g for g in similar if str(f.path) in {m.path for m in g.members}]
            assert holding, f"{f.path.name} is in no similar group"
    # Similar groups join the near tier's kept files, never the files a near group already dropped.
    near_dropped = {m.path for g in near_keeps.values() for m in g.others}
    assert not near_dropped & {m.path for g in similar for m in g.members}
    for group in groups:
        stems = [(Path(m.path).parent, Path(m.path).stem) for m in group.members]
        assert len(stems) == len(set(stems)), f"RAW+JPEG siblings grouped: {group}"


def test_raw_files_are_indexed_through_their_preview(duplicate_library):
    _, files, db_path = duplicate_library
    with Store.open(db_path) as store:
        raws = [f for f in files if f.kind == "raw"]
        for raw in raws:
            assert store.id_for_path(str(raw.path)) is not None
        row = store.rows_for_paths([str(raws[0].path)])[0]
        assert (row["width"], row["height"]) == (640, 480)  # the embedded preview, not the TIFF thumbnail


def test_keep_policy_and_its_alternatives(duplicate_library):
    folder, _, db_path = duplicate_library
    near = [g for g in _groups(db_path) if g.tier == "near"]
    # The camera original is kept over its PNG, WebP, q95 and rotated renditions, whatever their size.
    assert near and all("/originals/" in g.keep.path for g in near)
    # The rotated rendition carries the camera's EXIF too: then the earlier date taken (or, on the same date, the
    # older file) wins, and the reason names only that criterion.
    assert all(g.reason == "older file (same date taken)" or g.reason == f"taken first ({g.keep.taken})"
               for g in near), [g.reason for g in near]

    newest = next(g for g in _groups(db_path, keep=KeepPolicy.newest) if g.tier == "near")
    assert newest.keep.mtime_ns == max(m.mtime_ns for m in newest.members)

    preferred = [g for g in _groups(db_path, prefer=(str(folder / "originals"),)) if g.tier == "exact"]
    assert all("/originals/" in g.keep.path and g.reason == "in a preferred folder" for g in preferred)


def test_fingerprints_are_filled_in_for_images_indexed_before_dedupe(writable_library):
    _, _, db_path = writable_library
    before = _groups(db_path)
    with Store.open(db_path) as store:
        store.db.execute("UPDATE images SET phash = NULL, colourfulness = NULL")
        store.db.conn.commit()
        assert not [g for g in find_duplicates(store) if g.tier == "near"], "no hash, no near-identical"
        assert fill_fingerprints(store) == []
        assert store.missing_fingerprints() == []
        after = find_duplicates(store)
    def summary(groups):
        return [(g.tier, g.keep.path, len(g.others)) for g in groups]

    assert summary(after) == summary(before)


def test_schema_1_index_is_migrated(tmp_path):
    import sqlite_utils

    from clipsearch.store import MIGRATIONS, SCHEMA_VERSION

    db = sqlite_utils.Database(tmp_path / "old.db")
    db["schema_version"].create({"version": int})
    MIGRATIONS[1](db)
    db["schema_version"].insert({"version": 1})
    db.close()
    with Store.open(tmp_path / "old.db") as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert {"phash", "colourfulness", "taken", "camera_make", "lat"} <= set(store.db["images"].columns_dict)
        assert {"tags", "tag_runs", "tag_vectors"} <= set(store.db.table_names())


def test_inverted_file_search_finds_the_pairs_exact_search_finds():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3000, 64)).astype(np.float32)
    copies = base[:300] + 0.15 * rng.standard_normal((300, 64)).astype(np.float32)
    matrix = np.vstack([base, copies])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    exact = set(zip(*[a.tolist() for a in neighbour_pairs(matrix, 0.9)[:2]]))
    approximate_rows, approximate_cols, sims = neighbour_pairs(matrix, 0.9, exact_limit=0)
    approximate = set(zip(approximate_rows.tolist(), approximate_cols.tolist()))
    assert len(exact) >= 300
    assert approximate <= exact and len(approximate) >= 0.99 * len(exact)
    assert (sims >= 0.9).all()


def test_cells_compared_on_principal_components_find_what_whole_rows_find():
    """At 512 dimensions the cells are compared on principal components plus the rest's length first
    (vector_index._cell_pairs): a bound, so no pair above the threshold in the cells searched is lost."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4000, 512)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noise = rng.standard_normal((400, 512)).astype(np.float32)
    copies = base[:400] + 0.3 * noise / np.linalg.norm(noise, axis=1, keepdims=True)  # cosine ~0.96
    matrix = np.vstack([base, copies]).astype(np.float16)  # as the vector file holds them
    matrix /= np.linalg.norm(matrix.astype(np.float32), axis=1, keepdims=True).astype(np.float16)
    exact = set(zip(*[a.tolist() for a in neighbour_pairs(matrix, 0.93)[:2]]))
    rows, cols, sims = neighbour_pairs(matrix, 0.93, exact_limit=0)
    approximate = set(zip(rows.tolist(), cols.tolist()))
    assert len(exact) >= 390
    assert approximate <= exact and len(approximate) >= 0.98 * len(exact)
    assert (sims >= 0.93).all()


def test_cli_json_and_paths(duplicate_library, cli):
    _, _files, db_path = duplicate_library
    result = cli("dedupe", "--db", db_path, "--json")
    assert result.exit_code == 0
    groups = json.loads(result.stdout)
    assert {g["tier"] for g in groups} == {"exact", "near"}
    for group in groups:
        assert group["keep"] in [m["path"] for m in group["members"]]
        assert sum(m["keep"] for m in group["members"]) == 1
    paths = cli("dedupe", "--db", db_path, "--paths").stdout.split()
    assert len(paths) == len(set(paths)) == sum(len(g["members"]) - 1 for g in groups)
    # Tiers nest: an exact group's kept file may go in the near tier, but every near group keeps one.
    survivors = {m["path"] for g in groups for m in g["members"]} - set(paths)
    assert survivors == {g["keep"] for g in groups if g["tier"] == "near"}


def test_cli_scope_and_nothing_found(duplicate_library, cli):
    folder, _, db_path = duplicate_library
    result = cli("dedupe", "--db", db_path, "--in", folder / "other")
    assert result.exit_code == 1 and "No duplicates" in result.stderr
    result = cli("dedupe", "--db", db_path, "--in", folder / "originals", "--json")
    assert json.loads(result.stdout) == []


def _disk_state(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def _index_matches_disk(db_path: Path, folder: Path) -> None:
    with Store.open(db_path) as store:
        indexed = set(store.paths(str(folder)))
        for path in indexed:
            assert os.path.isfile(path), f"index lists {path}, which is not there"
    on_disk = {p for p in _disk_state(folder)}
    assert indexed == on_disk


def test_move_to_and_undo_round_trip(writable_library, cli, tmp_path):
    folder, _, db_path = writable_library
    before = _disk_state(folder)
    groups = json.loads(cli("dedupe", "--db", db_path, "--json").stdout)
    extra = [m["path"] for g in groups for m in g["members"] if not m["keep"]]
    review = tmp_path / "review"

    declined = cli("dedupe", "--db", db_path, "--move-to", review, input="n\n")
    assert declined.exit_code == 1 and "Nothing was moved" in declined.stderr
    assert _disk_state(folder) == before

    assert cli("tag", "add", extra[0], "grandma", "--db", db_path).exit_code == 0
    moved = cli("dedupe", "--db", db_path, "--move-to", review, "--yes")
    assert moved.exit_code == 0, moved.stderr
    for path in extra:
        assert not os.path.exists(path)
        assert (review / os.path.relpath(path, folder)).is_file(), "relative folders are kept"
    _index_matches_disk(db_path, folder)
    assert cli("dedupe", "--db", db_path).exit_code == 1, "nothing left to dedupe"

    manifest = next(review.glob("clipsearch-dedupe-*.jsonl"))
    undone = cli("dedupe", "--db", db_path, "--undo", manifest)
    assert undone.exit_code == 0, undone.stderr
    assert _disk_state(folder) == before
    _index_matches_disk(db_path, folder)
    assert json.loads(cli("dedupe", "--db", db_path, "--json").stdout) == groups
    assert json.loads(cli("find", "--tag", "grandma", "--db", db_path, "--json").stdout)[0]["path"] == extra[0], \
        "manual tags come back with the file"
    again = cli("dedupe", "--db", db_path, "--undo", manifest)
    assert again.exit_code == 1 and "already back" in again.stderr, "undo twice restores nothing and says so"
    assert _disk_state(folder) == before


def test_trash_and_undo_round_trip(writable_library, cli):
    folder, _, db_path = writable_library
    before = _disk_state(folder)
    trashed = cli("dedupe", "--db", db_path, "--trash", "--yes", "--in", folder / "originals")
    assert trashed.exit_code == 1, "nothing to do inside originals/ alone"
    trashed = cli("dedupe", "--db", db_path, "--trash", "--yes")
    assert trashed.exit_code == 0, trashed.stderr
    assert "files to the trash" in trashed.stderr and "Moved" not in trashed.stderr
    after = _disk_state(folder)
    assert len(after) < len(before)
    _index_matches_disk(db_path, folder)
    manifest = next((Path(os.environ["XDG_DATA_HOME"]) / "clipsearch" / "dedupe").glob("*.jsonl"))
    assert cli("dedupe", "--db", db_path, "--undo", manifest).exit_code == 0
    assert _disk_state(folder) == before
    _index_matches_disk(db_path, folder)


def test_moves_refuse_what_could_lose_data(writable_library, cli, tmp_path):
    folder, files, db_path = writable_library
    inside = cli("dedupe", "--db", db_path, "--move-to", folder / "dupes", "--yes")
    assert inside.exit_code == 2 and "inside the library" in inside.stderr

    changed = next(f.path for f in files if f.kind == "exact")
    changed.write_bytes(changed.read_bytes() + b"edited")  # edited after indexing: not a copy any more
    result = cli("dedupe", "--db", db_path, "--move-to", tmp_path / "review", "--yes", "--in", folder / "copies")
    assert result.exit_code == 1  # the copies folder holds no group on its own
    result = cli("dedupe", "--db", db_path, "--move-to", tmp_path / "review", "--yes")
    assert "changed since it was indexed" in result.stderr
    assert changed.exists()


def test_tiny_model_ships_its_dedupe_thresholds():
    from clipsearch.models import tuning

    assert tuning.for_model(TINY_MODEL)["near_threshold"] == 0.90
    assert tuning.for_model("laion/CLIP-ViT-B-32-laion2B-s34B-b79K")["near_threshold"] == 0.93


def test_keep_choice_prefers_the_camera_original_then_the_original_format(tmp_path, encoder, cli):
    import random

    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "exports").mkdir(parents=True)
    picture = scenes.draw(scenes.random_scene(random.Random(3), 320, 240))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"
    exif.get_ifd(0x8769)[0x9003] = "2024:06:15 10:30:00"
    picture.save(folder / "IMG_0001.jpg", quality=85, exif=exif)  # the camera original
    picture.save(folder / "exports" / "IMG_0001.png")  # a lossless export: larger, same pixels
    picture.save(folder / "exports" / "IMG_0001-q98.jpg", quality=98)  # a re-encode: larger, no EXIF
    other = scenes.draw(scenes.random_scene(random.Random(4), 320, 240))
    other.save(folder / "exports" / "other.jpg", quality=90)  # no EXIF anywhere in this pair
    other.save(folder / "exports" / "other.png")
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([folder], store, encoder=encoder)
    near = {Path(g.keep.path).name: g for g in _groups(db) if g.tier == "near"}
    assert set(near) == {"IMG_0001.jpg", "other.jpg"}, {k: [m.path for m in g.members] for k, g in near.items()}
    assert near["IMG_0001.jpg"].reason == "has camera EXIF"
    assert near["other.jpg"].reason == "original format (not a lossless re-encode)"
    assert max(m.size for m in near["IMG_0001.jpg"].others) > near["IMG_0001.jpg"].keep.size, "not the largest"
    # --keep still overrides, and the report shows the reason.
    largest = {Path(g.keep.path).name for g in _groups(db, keep=KeepPolicy.largest) if g.tier == "near"}
    assert "IMG_0001.jpg" not in largest
    report = cli("dedupe", "--db", db)
    assert "keep: has camera EXIF" in report.stdout


def test_keep_choice_ties_go_to_the_date_taken_then_the_file_time_then_the_shortest_path(tmp_path, encoder, cli):
    """Camera EXIF, format and pixels equal: the photo taken first is kept (its file time breaks a tie of dates,
    a copy being newer than its original), then the shortest path; never the path order."""
    import random

    from PIL import Image

    folder = tmp_path / "photos"
    hour = 3600 * 10**9
    base = 1_700_000_000 * 10**9

    def camera_copy(relative: str, seed: int, date: str, software: str, mtime_ns: int) -> str:
        """The scene `seed` as a camera JPEG: the same pixels (and quality) each time, only its EXIF differs."""
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "Canon EOS R5", software
        exif.get_ifd(0x8769)[0x9003] = date
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        scenes.draw(scenes.random_scene(random.Random(seed), 320, 240)).save(path, quality=90, exif=exif)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        return str(path)

    long_folder = "z/backup/from-the-old-laptop"
    # 1. The earlier date taken wins over an earlier file time, a shorter path and the path order.
    taken_later = camera_copy("a/IMG_0001.jpg", 21, "2024:06:15 10:30:00", "v1", base)
    taken_first = camera_copy(f"{long_folder}/IMG_0001.jpg", 21, "2021:03:04 05:06:07", "v2", base + hour)
    # 2. The same date taken: the earlier file time wins over a shorter path.
    modified_later = camera_copy("a/IMG_0002.jpg", 22, "2024:06:15 11:00:00", "v1", base + hour)
    modified_first = camera_copy(f"{long_folder}/IMG_0002.jpg", 22, "2024:06:15 11:00:00", "v2", base)
    # 3. The same date taken and file time: the shortest path, though it sorts last.
    longer = camera_copy("a/exported-again/IMG_0003.jpg", 23, "2024:06:15 12:00:00", "v1", base)
    shorter = camera_copy("z/IMG_0003.jpg", 23, "2024:06:15 12:00:00", "v2", base)
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([folder], store, encoder=encoder)

    result = cli("dedupe", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert [g["tier"] for g in groups] == ["near"] * 3, "different bytes, the same pixels"
    by_keep = {g["keep"]: g for g in groups}
    assert {keep: {m["path"] for m in g["members"]} for keep, g in by_keep.items()} == {
        taken_first: {taken_first, taken_later},
        modified_first: {modified_first, modified_later},
        shorter: {shorter, longer},
    }
    # The reason is the deciding criterion alone, as the README promises ("keep: has camera EXIF").
    assert by_keep[taken_first]["reason"] == "taken first (2021-03-04T05:06:07)"
    assert by_keep[taken_first]["members"][0]["taken"] == "2021-03-04T05:06:07"
    assert by_keep[modified_first]["reason"] == "older file (same date taken)"
    assert by_keep[shorter]["reason"] == "shortest path"
    for group in groups:
        assert all(m["width"] == 320 and m["height"] == 240 for m in group["members"])

    # The same choice through the Python API, which `serve` and scripts use.
    from clipsearch import Library

    with Library(db) as library:
        assert {g.keep.path for g in library.dedupe().groups} == {taken_first, modified_first, shorter}


# -- near groups never chain (issue 17, item 2) ------------------------------------------


def _check_near_groups_against_the_kept_file(db_path, groups) -> None:
    """The README's promise, recomputed from the index itself: every member of a near group passes both
    checks (cosine and perceptual hash, colour too) against the file kept, not just against a neighbour."""
    from clipsearch.indexing import fingerprint
    from clipsearch.models import tuning

    with Store.open(db_path) as store:
        table, matrix = store.file_table(), store.vectors().matrix
        threshold = tuning.for_model(store.model()[0])["near_threshold"]
    at = {path: i for i, path in enumerate(table["path"])}
    hashes = fingerprint.hash_matrix(table["phash"])
    for group in groups:
        if group.tier != "near":
            continue
        kept = at[group.keep.path]
        for other in group.others:
            i = at[other.path]
            cosine = float(matrix[i] @ matrix[kept])
            distance = int(fingerprint.hamming(hashes[i:i + 1], hashes[kept:kept + 1])[0])
            assert cosine >= threshold, f"{other.path} is at cosine {cosine:.3f} from the kept {group.keep.path}"
            assert distance <= 56, f"{other.path} is {distance} hash bits from the kept {group.keep.path}"
            assert not fingerprint.colour_mismatch(table["colourfulness"][i], table["colourfulness"][kept])


def test_near_groups_of_solid_colour_squares_do_not_chain(tmp_path, encoder):
    """Issue 17's scenario (1,000 squares here, 10,000 there): all of them hash alike, and their CLIP vectors
    link each colour to the next, so components chained a navy square to an off-white one."""
    from PIL import Image

    folder = tmp_path / "squares"
    folder.mkdir()
    colours = np.random.default_rng(0).integers(0, 256, (1000, 3))
    for i, colour in enumerate(colours):
        Image.new("RGB", (64, 64), tuple(int(c) for c in colour)).save(folder / f"square{i:04d}.png")
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([folder], store, encoder=encoder, options=IndexOptions(batch_size=64))
    groups = _groups(db)
    near = [g for g in groups if g.tier == "near"]
    assert len(near) >= 10 and sum(len(g.members) for g in near) >= 200, "many squares are still near-identical"
    _check_near_groups_against_the_kept_file(db, groups)
    assert all(m.similarity is not None and m.similarity >= 0.90 for g in near for m in g.others)


def test_a_chain_of_brightened_edits_splits_around_the_kept_file(tmp_path, encoder):
    """A photo brightened 8% at a time: each step is near its neighbour, the last is not near the first."""
    import random

    from PIL import ImageEnhance

    from clipsearch.indexing import fingerprint
    from clipsearch.models import tuning

    folder = tmp_path / "edits"
    folder.mkdir()
    picture = scenes.draw(scenes.random_scene(random.Random(1), 320, 240))
    steps = [folder / f"step{k:02d}.jpg" for k in range(16)]
    for k, path in enumerate(steps):
        ImageEnhance.Brightness(picture).enhance(1.08 ** k).save(path, quality=92)
        os.utime(path, ns=(1_700_000_000 * 10**9 + k, 1_700_000_000 * 10**9 + k))  # the first edit is the oldest
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([folder], store, encoder=encoder)
        table, matrix = store.file_table(), store.vectors().matrix
        threshold = tuning.for_model(store.model()[0])["near_threshold"]
    at = {path: i for i, path in enumerate(table["path"])}
    order = [at[str(p)] for p in steps]
    hashes = fingerprint.hash_matrix(table["phash"])

    def near(a: int, b: int) -> bool:
        return float(matrix[a] @ matrix[b]) >= threshold and fingerprint.hamming(hashes[a:a + 1],
                                                                                  hashes[b:b + 1])[0] <= 56

    assert all(near(a, b) for a, b in itertools.pairwise(order)), "each edit is near the one before"
    assert not near(order[0], order[-1]), "the ends are not near each other"

    groups = _groups(db)
    _check_near_groups_against_the_kept_file(db, groups)
    holding = {m.path: g.keep.path for g in groups if g.tier == "near" for m in g.members}
    assert holding[str(steps[0])] == str(steps[0]), "the kept file is chosen before splitting: the oldest leads"
    assert holding.get(str(steps[-1])) != str(steps[0]), "the last edit is not filed as a copy of the first"
    assert len({keep for keep in holding.values()}) >= 2


def test_json_names_that_are_not_utf8_come_with_path_bytes(small_library, tmp_path, encoder, cli):
    """dedupe --json uses find --json's convention: "path" valid Unicode, "path_bytes" the exact name."""
    import base64

    raw = os.fsencode(str(small_library)) + b"/bad\xff\xfe.jpg"
    original = min(small_library.glob("*.jpg"))
    shutil.copy(original, os.fsdecode(raw))
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([small_library], store, encoder=encoder)
    result = cli("dedupe", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    assert "\\udc" not in result.stdout, "no lone surrogates in the JSON"
    groups = json.loads(result.stdout)
    (group,) = [g for g in groups if str(original) in {m["path"] for m in g["members"]}]
    assert {base64.b64decode(m["path_bytes"]) for m in group["members"] if "path_bytes" in m} == {raw}
    for member in group["members"]:
        member["path"].encode("utf-8")  # valid Unicode, whatever the name's bytes
        if "path_bytes" in member:
            assert member["path"] == raw.decode("utf-8", "backslashreplace")
    kept = next(m for m in group["members"] if m["keep"])
    assert group["keep"] == kept["path"] and group.get("keep_bytes") == kept.get("path_bytes")
