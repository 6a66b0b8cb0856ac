"""Photo metadata: EXIF read at index time, the schema migration, and the filters and output built on it."""

import json
import os
import random

import pytest
from PIL import Image, features
from PIL.TiffImagePlugin import IFDRational

from clipsearch.indexing import job as indexer
from clipsearch.indexing import metadata
from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.store import MIGRATIONS, SCHEMA_VERSION, Store
from clipsearch_dev import scenes

from .conftest import TINY_MODEL


def write_photo(path, seed: int, make=None, model=None, original=None, create=None, gps=None, mtime=None,
                software=None):
    """A generated scene saved with the EXIF given (a camera's fields), in the format of `path`'s extension."""
    exif = Image.Exif()
    if software:
        exif[0x0131] = software
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if original:
        exif.get_ifd(0x8769)[0x9003] = original
    if create:
        exif.get_ifd(0x8769)[0x9004] = create
    if gps:
        (lat, lat_ref), (lon, lon_ref) = gps
        block = exif.get_ifd(0x8825)
        block[1], block[2] = lat_ref, tuple(IFDRational(v) for v in lat)
        block[3], block[4] = lon_ref, tuple(IFDRational(v) for v in lon)
    path.parent.mkdir(parents=True, exist_ok=True)
    scenes.draw(scenes.random_scene(random.Random(seed), 128)).save(path, exif=exif)
    if mtime:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def camera_library(tmp_path):
    """Five photos: two cameras, three years, one with only CreateDate, one without EXIF."""
    folder = tmp_path / "photos"
    file_time = 1_500_000_000  # 2017-07-14 (UTC)
    return folder, {
        "r5": write_photo(folder / "2024/r5.jpg", 1, "Canon", "Canon EOS R5", "2024:06:15 10:30:00",
                          gps=(((52, 31, 12), "N"), ((13, 24, 0), "E"))),
        "r5b": write_photo(folder / "2023/r5b.jpg", 2, "Canon", "Canon EOS R5", "2023:12:31 23:59:59"),
        "pixel": write_photo(folder / "2024/pixel.jpg", 3, "Google", "Pixel 8", "2024:01:02 08:00:00",
                             gps=(((33, 51, 54), "S"), ((151, 12, 36), "E"))),
        "scan": write_photo(folder / "2022/scan.png", 4, create="2022:03:04 05:06:07", software="VueScan"),
        "bare": write_photo(folder / "bare.jpg", 5, mtime=file_time),
    }


def _rows(db_path) -> dict[str, dict]:
    with Store.open(db_path) as store:
        return {os.path.basename(row["path"]): row for row in store.db.query("SELECT * FROM images")}


def test_exif_date_camera_and_gps_are_stored_at_index_time(camera_library, encoder, tmp_path):
    folder, _ = camera_library
    with Store.open(tmp_path / "index.db") as store:
        index_folders([folder], store, encoder=encoder)
    rows = _rows(tmp_path / "index.db")
    assert rows["r5.jpg"]["taken"] == "2024-06-15T10:30:00" and rows["r5.jpg"]["taken_source"] == "exif"
    assert (rows["r5.jpg"]["camera_make"], rows["r5.jpg"]["camera_model"]) == ("Canon", "Canon EOS R5")
    assert rows["r5.jpg"]["lat"] == pytest.approx(52.52) and rows["r5.jpg"]["lon"] == pytest.approx(13.4)
    assert rows["pixel.jpg"]["lat"] == pytest.approx(-33.865) and rows["pixel.jpg"]["lon"] == pytest.approx(151.21)
    assert (rows["scan.png"]["taken"], rows["scan.png"]["taken_source"]) == ("2022-03-04T05:06:07", "exif-create")
    assert rows["scan.png"]["camera_make"] is None and rows["scan.png"]["lat"] is None
    bare = rows["bare.jpg"]
    assert bare["taken_source"] == "file" and bare["taken"] == metadata.file_time(1_500_000_000 * 10**9)


def test_heic_and_raw_metadata_come_from_the_file_itself(tmp_path):
    from clipsearch.indexing import images

    heic = write_photo(tmp_path / "phone.heic", 6, "Apple", "iPhone 15", "2025:02:03 04:05:06")
    decoded = images.decode_file(heic, images.Preprocess())
    assert (decoded.metadata.camera, decoded.metadata.taken) == ("Apple iPhone 15", "2025-02-03T04:05:06")
    # A TIFF-based RAW: its own IFD0 names the camera, the embedded preview carries no EXIF.
    raw = tmp_path / "IMG_1.CR2"
    header, preview = tmp_path / "h.tif", tmp_path / "p.jpg"
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D"
    scenes.draw(scenes.random_scene(random.Random(7), 160)).save(header, exif=exif)
    scenes.draw(scenes.random_scene(random.Random(7), 320)).save(preview, quality=95)
    raw.write_bytes(header.read_bytes() + bytes(64) + preview.read_bytes())
    decoded = images.decode_file(raw, images.Preprocess())
    assert decoded.metadata.camera == "Canon EOS 5D" and decoded.metadata.from_camera


def test_metadata_migration_fills_an_index_of_the_previous_schema_without_the_model(camera_library, encoder,
                                                                                     tmp_path, cli):
    folder, _ = camera_library
    db_path = tmp_path / "index.db"
    with Store.open(db_path) as store:
        index_folders([folder], store, encoder=encoder)
    expected = {name: (row["taken"], row["camera_model"]) for name, row in _rows(db_path).items()}
    # Take the index back to what migration 5 leaves of an older index: its columns empty (later migrations
    # keep indexes and triggers on them, so they stay; a genuine older schema is the test below).
    assert MIGRATIONS[5].__name__ == "_add_photo_metadata_v5"
    with Store.open(db_path) as store:
        store.db.execute("UPDATE images SET taken = NULL, taken_source = NULL, camera_make = NULL, "
                         "camera_model = NULL, lat = NULL, lon = NULL")
        store.db.conn.commit()
    with Store.open(db_path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert len(store.missing_metadata()) == 5
    # An index run over the unchanged library reads the headers only: no model is loaded.
    result = cli("index", folder, "--db", db_path, "--model", "no/such-model-so-loading-it-would-fail", "--json")
    assert result.exit_code == 3  # the index knows its model: a different one is refused ...
    result = cli("index", folder, "--db", db_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_loaded"] is False
    assert {name: (row["taken"], row["camera_model"]) for name, row in _rows(db_path).items()} == expected


def test_a_file_that_vanished_gets_its_indexed_file_time(camera_library, encoder, tmp_path):
    folder, photos = camera_library
    with Store.open(tmp_path / "index.db") as store:
        index_folders([folder], store, encoder=encoder)
        store.db.execute("UPDATE images SET taken = NULL, taken_source = NULL")
        store.db.conn.commit()
        photos["r5"].unlink()
        assert indexer.fill_metadata(store) == 5
        assert not store.missing_metadata(), "not retried every run"
    assert _rows(tmp_path / "index.db")["r5.jpg"]["taken_source"] == "file"


def test_periods():
    assert metadata.period("2024") == ("2024-01-01T00:00:00", "2025-01-01T00:00:00")
    assert metadata.period("2024-12") == ("2024-12-01T00:00:00", "2025-01-01T00:00:00")
    assert metadata.period("2024-02-29") == ("2024-02-29T00:00:00", "2024-03-01T00:00:00")
    assert metadata.period("2024-06-15T10:30") == ("2024-06-15T10:30:00", "2024-06-15T10:31:00")
    for bad in ("yesterday", "2024-13", "2023-02-29", "24-06-01"):
        with pytest.raises(ValueError):
            metadata.period(bad)


@pytest.fixture
def camera_index(camera_library, cli, tmp_path):
    folder, photos = camera_library
    db_path = tmp_path / "index.db"
    assert cli("index", folder, "--db", db_path, "--model", TINY_MODEL).exit_code == 0
    return db_path, photos


def _names(result) -> set[str]:
    return {os.path.basename(line) for line in result.stdout.splitlines()}


def test_date_and_camera_filters_on_find_similar_and_tags(camera_index, cli):
    db, photos = camera_index

    def find(*args):
        return cli("find", "a shape", "--db", db, "--paths", *args)

    assert _names(find("--after", "2024")) == {"r5.jpg", "pixel.jpg"}
    assert _names(find("--before", "2023")) == {"r5b.jpg", "scan.png", "bare.jpg"}, "2023 is included whole"
    assert _names(find("--after", "2023-12-31", "--before", "2024-01")) == {"r5b.jpg", "pixel.jpg"}
    assert _names(find("--after", "2024-06-15T10:30", "--before", "2024-06-15T10:30")) == {"r5.jpg"}
    assert _names(find("--camera", "eos")) == {"r5.jpg", "r5b.jpg"}
    assert _names(find("--camera", "google pixel")) == {"pixel.jpg"}, "make and model together"
    assert _names(find("--camera", "canon", "--after", "2024")) == {"r5.jpg"}
    assert find("--camera", "nikon").exit_code == 1

    similar = cli("similar", photos["r5"], "--db", db, "--paths", "--camera", "canon")
    assert _names(similar) == {"r5b.jpg"}

    assert cli("tag", "add", photos["r5"], "holiday", "--db", db).exit_code == 0
    assert cli("tag", "add", photos["pixel"], "holiday", "--db", db).exit_code == 0
    assert _names(cli("find", "--tag", "holiday", "--db", db, "--paths", "--before", "2024-05")) == {"pixel.jpg"}
    assert _names(cli("find", "a shape", "--tag", "holiday", "--camera", "canon", "--db", db, "--paths")) == {"r5.jpg"}

    bad = find("--after", "last summer")
    assert bad.exit_code == 2 and "not a date" in bad.stderr
    empty = find("--after", "2025", "--before", "2024")
    assert empty.exit_code == 2 and "no photo can match" in empty.stderr


def test_json_has_dimensions_bytes_date_camera_and_position(camera_index, cli):
    db, photos = camera_index
    found = json.loads(cli("find", "a shape", "--db", db, "--json", "--camera", "R5", "--after", "2024").stdout)
    assert len(found) == 1
    hit = found[0]
    assert {k: hit[k] for k in ("width", "height", "taken", "taken_source", "camera")} == {
        "width": 128, "height": 128, "taken": "2024-06-15T10:30:00", "taken_source": "exif", "camera": "Canon EOS R5"}
    assert hit["bytes"] == photos["r5"].stat().st_size and "size" not in hit
    assert hit["lat"] == pytest.approx(52.52) and hit["lon"] == pytest.approx(13.4)


def test_info_lists_folders_dates_last_run_and_model(camera_index, cli):
    db, photos = camera_index
    info = json.loads(cli("info", "--db", db, "--json").stdout)
    folder = str(photos["bare"].parent)
    assert info["folders"] == [{"path": folder, "images": 5}]
    assert info["taken_from"] == metadata.file_time(1_500_000_000 * 10**9) and info["taken_to"] == "2024-06-15T10:30:00"
    assert info["last_index_run"] and info["model"] == TINY_MODEL
    table = cli("info", "--db", db)
    assert f"{folder} (5 images)" in table.stdout


def test_index_records_its_model_before_the_first_batch(small_library, encoder, tmp_path):
    class StopAtFirstImage(indexer.Progress):
        def advance(self, count: int = 1) -> None:
            raise KeyboardInterrupt  # Ctrl-C as the first image is decoded, before any batch is stored

    with Store.open(tmp_path / "index.db") as store:
        with pytest.raises(KeyboardInterrupt):
            index_folders([small_library], store, encoder=encoder, progress=StopAtFirstImage(),
                          options=IndexOptions(batch_size=64))
        assert store.count() == 0
        assert store.model() == (encoder.model_id, encoder.dim)


# The schema of an index made before photo metadata and remembered queries existed (schema 3), written by hand
# as store.py's migrations 1-3 made it: no taken/taken_source/camera_make/camera_model/lat/lon columns nor their
# indexes (5), no query_vectors table and no index_id (4).
_SCHEMA_3 = """
CREATE TABLE [schema_version] ([version] INTEGER);
INSERT INTO schema_version (version) VALUES (1), (2), (3);
CREATE TABLE [meta] ([key] TEXT PRIMARY KEY, [value] TEXT);
CREATE TABLE [images] ([id] INTEGER PRIMARY KEY, [path] TEXT NOT NULL, [size] INTEGER NOT NULL,
    [mtime_ns] INTEGER NOT NULL, [hash] TEXT NOT NULL, [width] INTEGER, [height] INTEGER, [vector] BLOB NOT NULL,
    [indexed_at] TEXT, [phash] BLOB, [colourfulness] FLOAT);
CREATE UNIQUE INDEX [idx_images_path] ON [images] ([path]);
CREATE INDEX [idx_images_hash] ON [images] ([hash]);
CREATE TABLE [failures] ([path] TEXT PRIMARY KEY, [size] INTEGER, [mtime_ns] INTEGER, [reason] TEXT);
CREATE TABLE tags (image_id INTEGER NOT NULL, tag TEXT NOT NULL, score REAL, source TEXT NOT NULL,
    model TEXT, vocabulary TEXT, tagged_at TEXT, PRIMARY KEY (image_id, tag));
CREATE INDEX tags_tag ON tags (tag);
CREATE TABLE tag_runs (image_id INTEGER PRIMARY KEY, model TEXT NOT NULL, vocabulary TEXT NOT NULL,
    settings TEXT NOT NULL, tagged_at TEXT);
CREATE TABLE tag_vectors (model TEXT NOT NULL, vocabulary TEXT NOT NULL, tag TEXT NOT NULL,
    vector BLOB NOT NULL, PRIMARY KEY (model, vocabulary, tag));
CREATE TRIGGER images_deleted AFTER DELETE ON images BEGIN
    DELETE FROM tags WHERE image_id = OLD.id; DELETE FROM tag_runs WHERE image_id = OLD.id; END;
CREATE TRIGGER images_changed AFTER UPDATE OF vector ON images WHEN OLD.vector IS NOT NEW.vector BEGIN
    DELETE FROM tags WHERE image_id = OLD.id AND source = 'auto';
    DELETE FROM tag_runs WHERE image_id = OLD.id; END;
"""


def _schema_3_index(db_path, photos: list, encoder) -> None:
    """A schema-3 index of `photos` as that version wrote it: real vectors, hashes, fingerprints and file facts."""
    import sqlite3

    import numpy as np

    from clipsearch.indexing import images
    from clipsearch.paths import normalise_path
    from clipsearch.store import encode_vector

    decoded, digests = [], []
    for photo in photos:
        digest, data = images.read_and_hash(str(photo))
        digests.append(digest)
        decoded.append(images.decode(data, encoder.preprocess, path=str(photo)))
    vectors = encoder.embed_pixels(np.stack([d.pixels for d in decoded]))
    connection = sqlite3.connect(db_path)
    connection.executescript(_SCHEMA_3)
    connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                           [("model", encoder.model_id), ("dim", str(encoder.dim))])
    connection.executemany(
        "INSERT INTO images (path, size, mtime_ns, hash, width, height, vector, indexed_at, phash, colourfulness) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, '2023-05-01T12:00:00', ?, ?)",
        [(normalise_path(photo), photo.stat().st_size, photo.stat().st_mtime_ns, digest, d.width, d.height,
          encode_vector(vector), d.phash, d.colourfulness)
         for photo, digest, d, vector in zip(photos, digests, decoded, vectors)])
    connection.execute("INSERT INTO tags (image_id, tag, source, tagged_at) VALUES (1, 'holiday', 'manual', "
                       "'2023-05-02T10:00:00')")
    connection.commit()
    connection.close()


def test_a_genuine_schema_3_index_is_migrated_and_filled_without_the_model(encoder, tmp_path, cli):
    folder = tmp_path / "photos"
    file_time = 1_500_000_000
    photos = {
        "r5": write_photo(folder / "r5.jpg", 11, "Canon", "Canon EOS R5", "2024:06:15 10:30:00",
                          gps=(((52, 31, 12), "N"), ((13, 24, 0), "E"))),
        "pixel": write_photo(folder / "pixel.jpg", 12, "Google", "Pixel 8", "2023:01:02 08:00:00",
                             gps=(((40, 41, 0), "N"), ((74, 0, 36), "W"))),
        "scan": write_photo(folder / "scan.png", 13, create="2022:03:04 05:06:07", software="VueScan"),
        "bare": write_photo(folder / "bare.jpg", 14, mtime=file_time),
    }
    db_path = tmp_path / "index.db"
    _schema_3_index(db_path, list(photos.values()), encoder)

    with Store.open(db_path) as store:  # the current Store migrates it: 3 -> 4 -> 5 -> ...
        assert store.schema_version() == SCHEMA_VERSION
        versions = [row[0] for row in store.db.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == sorted(MIGRATIONS)
        assert {"taken", "taken_source", "camera_make", "camera_model", "lat", "lon"} <= set(
            store.db["images"].columns_dict)
        assert "query_vectors" in store.db.table_names() and store.get_meta("index_id")
        assert {"images_taken", "images_camera"} <= {index.name for index in store.db["images"].indexes}
        assert store.count() == 4 and len(store.missing_metadata()) == 4, "nothing is read at open"

    # An index run over the unchanged files fills the metadata from their headers, without the model.
    result = cli("index", folder, "--db", db_path, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model_loaded"] is False and report["unchanged"] == 4 and report["encoded"] == 0

    rows = _rows(db_path)
    r5, pixel, scan, bare = rows["r5.jpg"], rows["pixel.jpg"], rows["scan.png"], rows["bare.jpg"]
    assert (r5["taken"], r5["taken_source"]) == ("2024-06-15T10:30:00", "exif")
    assert (r5["camera_make"], r5["camera_model"]) == ("Canon", "Canon EOS R5")
    assert r5["lat"] == pytest.approx(52.52) and r5["lon"] == pytest.approx(13.4)
    assert (pixel["taken"], pixel["camera_make"], pixel["camera_model"]) == ("2023-01-02T08:00:00", "Google", "Pixel 8")
    assert pixel["lat"] == pytest.approx(40.6833333) and pixel["lon"] == pytest.approx(-74.01), "W is negative"
    with Store.open(db_path) as store:  # places follow (migration 7)
        placed = store.image_rows([store.id_for_path(str(photos[name])) for name in ("r5", "pixel")])
        assert sorted(row["country_code"] for row in placed.values()) == ["DE", "US"]
    assert (scan["taken"], scan["taken_source"], scan["camera_make"], scan["lat"]) == (
        "2022-03-04T05:06:07", "exif-create", None, None)
    assert (bare["taken"], bare["taken_source"]) == (metadata.file_time(file_time * 10**9), "file")
    assert bare["camera_model"] is None and bare["lon"] is None
    assert rows["r5.jpg"]["indexed_at"] == "2023-05-01T12:00:00", "rows are filled in place, not re-indexed"
    with Store.open(db_path) as store:
        assert store.missing_metadata() == [] and store.schema_version() == SCHEMA_VERSION

    # The migrated index answers the new filters, and keeps what schema 3 held (a manual tag).
    def find(*args):
        return _names(cli("find", "a shape", "--db", db_path, "--paths", *args))

    assert find("--after", "2023", "--camera", "pixel") == {"pixel.jpg"}
    assert find("--before", "2022") == {"scan.png", "bare.jpg"}
    assert _names(cli("find", "--tag", "holiday", "--db", db_path, "--paths")) == {"r5.jpg"}


@pytest.mark.skipif(not features.check("avif"),
                    reason="this Pillow was built without AVIF support (PIL.features.check('avif') is false)")
def test_avif_date_camera_and_gps_are_read(tmp_path, encoder):
    from clipsearch.indexing import images

    folder = tmp_path / "photos"
    avif = write_photo(folder / "phone.avif", 15, "samsung", "SM-S918B", "2025:07:08 09:10:11",
                       gps=(((48, 51, 24), "N"), ((2, 21, 0), "E")))
    with Image.open(avif) as opened:
        assert opened.format == "AVIF"
    decoded = images.decode_file(avif, images.Preprocess())  # what index reads, from the file it decodes
    found = decoded.metadata
    assert (found.taken, found.taken_source, found.camera) == ("2025-07-08T09:10:11", "exif", "samsung SM-S918B")
    assert found.lat == pytest.approx(48.8566667) and found.lon == pytest.approx(2.35)
    assert metadata.read_file(str(avif)) == found, "the header-only read (older rows) gives the same"

    with Store.open(tmp_path / "index.db") as store:
        report = index_folders([folder], store, encoder=encoder)
        assert report.new == 1 and report.skipped == []
    row = _rows(tmp_path / "index.db")["phone.avif"]
    assert (row["taken"], row["camera_make"], row["camera_model"]) == ("2025-07-08T09:10:11", "samsung", "SM-S918B")
