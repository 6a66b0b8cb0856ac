"""Photo metadata: EXIF read at index time, the schema migration, and the filters and output built on it."""

import json
import os
import random

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from clipsearch import indexer, metadata
from clipsearch.indexer import IndexOptions, index_folders
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
    from clipsearch import images

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
    # Take the index back to the schema before this migration: its columns gone, its version row gone.
    assert MIGRATIONS[SCHEMA_VERSION].__name__ == "_add_photo_metadata_v5"
    with Store.open(db_path) as store:
        store.db.execute("DROP INDEX images_taken")
        store.db.execute("DROP INDEX images_camera")
        for column in ("taken", "taken_source", "camera_make", "camera_model", "lat", "lon"):
            store.db.execute(f"ALTER TABLE images DROP COLUMN {column}")
        store.db.execute("DELETE FROM schema_version WHERE version = ?", [SCHEMA_VERSION])
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
