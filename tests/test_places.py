"""Places: GPS positions written into real photos become town, region and country at index time (and, for an
older index, on the next `index` run without the model), and `find`/`similar` filter by them."""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational
from rich.console import Console

from clipsearch.cli import output
from clipsearch.indexing import metadata
from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.places import distance, geonames, names
from clipsearch.store import Store
from clipsearch.store.schema import PLACE_JOIN, PLACE_SELECT
from clipsearch_dev import scenes

# Where each test photo was taken. "north" is 4.7 km due north of the --near centre below, "far" 5.3 km.
NEAR = (38.72, -9.14)
POSITIONS = {
    "lisbon": (38.72, -9.14),
    "burst": (38.7201, -9.1401),  # 14 m away: the same town
    "north": (38.72 + 4700 / 111_195, -9.14),
    "far": (38.72 + 5300 / 111_195, -9.14),
    "sydney": (-33.87, 151.21),
    "saopaulo": (-23.55, -46.63),
    "atlantic": (30.0, -40.0),  # at sea: a position, but no town within 100 km
}


def _dms(value: float) -> tuple[IFDRational, ...]:
    """Decimal degrees as EXIF writes them: degrees, minutes and seconds (hundredths), all rationals."""
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60 * 100)
    return IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(seconds, 100)


def write_photo(path: Path, seed: int, position: tuple[float, float] | None = None, status: str | None = None) -> Path:
    """A generated scene whose EXIF carries a GPS position (both hemispheres), as a phone writes it."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Google", "Pixel 8"
    exif.get_ifd(0x8769)[0x9003] = "2024:06:15 10:30:00"
    if position is not None:
        lat, lon = position
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2] = ("N" if lat >= 0 else "S"), _dms(lat)
        gps[3], gps[4] = ("E" if lon >= 0 else "W"), _dms(lon)
        if status:
            gps[9] = status
    path.parent.mkdir(parents=True, exist_ok=True)
    scenes.draw(scenes.random_scene(random.Random(seed), 96)).save(path, exif=exif)
    return path


@pytest.fixture(scope="module")
def geo_library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("geo") / "photos"
    for seed, (name, position) in enumerate(POSITIONS.items()):
        write_photo(folder / f"{name}.jpg", seed, position)
    write_photo(folder / "null-island.jpg", 20, (0.0, 0.0))  # a camera without a fix writes 0,0
    write_photo(folder / "void.jpg", 21, (38.72, -9.14), status="V")  # the receiver said: void
    write_photo(folder / "no-gps.jpg", 22)
    return folder


@pytest.fixture(scope="module")
def geo_index(tmp_path_factory, geo_library, encoder) -> Path:
    """An index of `geo_library`; tests copy it before writing."""
    db = tmp_path_factory.mktemp("geo-index") / "index.db"
    with Store.open(db) as store:
        index_folders([geo_library], store, encoder=encoder, options=IndexOptions(batch_size=16))
    return db


@pytest.fixture
def db(geo_index, tmp_path) -> Path:
    copy = tmp_path / "index.db"
    shutil.copy(geo_index, copy)
    return copy


def _names(result) -> set[str]:
    assert result.exit_code in (0, 1), result.output
    return {Path(line).stem for line in result.stdout.splitlines()}


def _rows(db: Path) -> dict[str, dict]:
    """Each image row with its place (schema 7's tables), by file stem."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {Path(row["path"]).stem: dict(row) for row in conn.execute(
            f"SELECT images.*, {PLACE_SELECT} FROM images {PLACE_JOIN}")}


def test_places_are_found_at_index_time_in_both_hemispheres(geo_index):
    rows = _rows(geo_index)
    assert (rows["lisbon"]["region"], rows["lisbon"]["country"], rows["lisbon"]["country_code"]) == (
        "Lisbon", "Portugal", "PT")
    assert (rows["sydney"]["city"], rows["sydney"]["region"], rows["sydney"]["country_code"]) == (
        "Sydney", "New South Wales", "AU")
    assert rows["saopaulo"]["county"] == "São Paulo" and rows["saopaulo"]["country_code"] == "BR"
    assert rows["saopaulo"]["lat"] < 0 and rows["saopaulo"]["lon"] < 0, "south and west are negative"
    for name in ("null-island", "void", "no-gps"):
        assert rows[name]["lat"] is None and rows[name]["city"] is None and rows[name]["country"] is None, name
    assert rows["atlantic"]["lat"] == pytest.approx(30.0) and rows["atlantic"]["country"] is None, "never guessed"
    assert rows["atlantic"]["geocoded"] == 1, "looked up once, not again on every run"


def test_gps_with_a_void_status_or_at_0_0_is_no_position(geo_library):
    assert metadata.read_file(str(geo_library / "void.jpg")).lat is None
    assert metadata.read_file(str(geo_library / "null-island.jpg")).lat is None
    assert metadata.read_file(str(geo_library / "lisbon.jpg")).lat == pytest.approx(38.72)


def test_place_and_country_filters(db, cli):
    def find(*options: str):
        return _names(cli("find", "a shape", "--db", db, "--paths", "--top", "50", *options))

    lisbon = {"lisbon", "burst", "north", "far"}
    assert find("--place", "lisbon") == lisbon
    assert find("--place", "LISBON") == lisbon, "any case"
    assert find("--place", "sao paulo") == {"saopaulo"}, "accents ignored"
    assert find("--place", "São Paulo") == {"saopaulo"}
    assert find("--place", "new south wales") == {"sydney"}, "a region"
    assert find("--place", "portugal") == lisbon, "a country"
    assert find("--place", "paulo") == {"saopaulo"}, "a whole word of a name"
    assert find("--place", "lis") == set(), "not part of a word"
    assert find("--country", "pt") == lisbon and find("--country", "AU") == {"sydney"}
    assert find("--country", "br", "--place", "lisbon") == set(), "filters combine"
    nothing = cli("find", "a shape", "--db", db, "--place", "atlantis")
    assert nothing.exit_code == 1 and "No results" in nothing.stderr

    for bad, message in ((("--country", "Portugal"), "two-letter ISO country code"),
                         (("--country", "XX"), "not an ISO 3166 country code"),
                         (("--place", "  !! "), "no letters")):
        result = cli("find", "a shape", "--db", db, *bad)
        assert result.exit_code == 2 and message in result.stderr, result.output


def test_near_with_radius_uses_the_great_circle_distance(db, cli):
    def near(*options: str):
        return _names(cli("find", "a shape", "--db", db, "--paths", "--top", "50", "--near", "38.72,-9.14", *options))

    assert near("--radius", "5km") == {"lisbon", "burst", "north"}, "4.7 km in, 5.3 km out"
    assert near("--radius", "5.4km") == {"lisbon", "burst", "north", "far"}
    assert near("--radius", "3.2mi") == {"lisbon", "burst", "north"}  # 5.15 km
    assert near() == {"lisbon", "burst"}, "1 km by default"
    assert near("--radius", "10 m") == {"lisbon"}
    assert _names(cli("find", "a shape", "--db", db, "--paths", "--near", "-33.87, 151.21")) == {"sydney"}
    assert _names(cli("find", "a shape", "--db", db, "--paths", "--near", "30,-40", "--radius", "1km")) == {
        "atlantic"}, "a position with no town near it still has its position"
    assert _names(cli("find", "a shape", "--db", db, "--paths", "--near", "0,0", "--radius", "100km")) == set()

    for options, message in ((("--near", "lisbon"), "not a position"),
                             (("--near", "91,0"), "within -90..90"),
                             (("--near", "38.72,-9.14", "--radius", "5"), "a unit is needed"),
                             (("--near", "38.72,-9.14", "--radius", "0km"), "more than 0"),
                             (("--near", "38.72,-9.14", "--radius", "far"), "not a distance"),
                             (("--radius", "5km"), "needs --near")):
        result = cli("find", "a shape", "--db", db, *options)
        assert result.exit_code == 2 and message in result.stderr, result.output


def test_bounding_boxes_cross_the_antimeridian_and_the_poles():
    boxes = distance.bounding_boxes(-17.7, 179.99, 5000)
    assert len(boxes) == 2 and any(box[2] <= -179.9 for box in boxes), "Fiji spans 180°"
    assert distance.bounding_boxes(89.99, 0, 5000) == [(pytest.approx(89.945, abs=0.01), 90.0, -180.0, 180.0)]
    assert distance.haversine_m(38.72, -9.14, [-33.87], [151.21])[0] == pytest.approx(18_090_000, rel=0.01)


def test_places_combine_with_tags_a_clip_query_and_similar(db, cli):
    for name in ("lisbon", "sydney"):
        assert cli("tags", "add", _path(db, name), "holiday", "--db", db).exit_code == 0
    assert _names(cli("find", "--tag", "holiday", "--db", db, "--paths")) == {"lisbon", "sydney"}
    assert _names(cli("find", "--tag", "holiday", "--country", "AU", "--db", db, "--paths")) == {"sydney"}
    assert _names(cli("find", "a shape", "--tag", "holiday", "--place", "lisbon", "--db", db, "--paths")) == {"lisbon"}

    similar = cli("similar", _path(db, "sydney"), "--place", "lisbon", "--db", db, "--paths", "--top", "50")
    assert _names(similar) == {"lisbon", "burst", "north", "far"}
    near = cli("similar", _path(db, "lisbon"), "--near", "38.72,-9.14", "--radius", "5km", "--db", db, "--paths")
    assert _names(near) == {"burst", "north"}, "the image itself is not listed"
    assert cli("similar", _path(db, "lisbon"), "--country", "p", "--db", db).exit_code == 2


def _path(db: Path, name: str) -> str:
    return _rows(db)[name]["path"]


def test_json_has_the_place_and_null_without_gps(db, cli):
    found = {Path(hit["path"]).stem: hit for hit in json.loads(
        cli("find", "a shape", "--db", db, "--json", "--top", "50").stdout)}
    assert found["sydney"]["place"] == {"city": "Sydney", "county": None, "region": "New South Wales",
                                        "country": "Australia", "country_code": "AU"}
    assert found["lisbon"]["place"]["country"] == "Portugal"
    assert found["no-gps"]["place"] is None and found["null-island"]["place"] is None
    assert found["atlantic"]["place"] is None and found["atlantic"]["lat"] == pytest.approx(30.0)


def test_info_lists_the_most_frequent_places(db, cli):
    info = json.loads(cli("info", "--db", db, "--json").stdout)
    assert (info["with_gps"], info["with_place"], info["places_pending"]) == (7, 6, 0)
    top = info["top_places"]
    assert (top[0]["city"], top[0]["county"], top[0]["images"]) == ("Intendente", "Lisbon", 2), "most photos first"
    assert {place["country_code"] for place in top} == {"PT", "AU", "BR"}
    shown = cli("info", "--db", db).stdout
    assert "Sydney, New South Wales, Australia (1 image)" in shown


def test_an_older_index_gets_its_places_on_the_next_run_without_the_model(db, geo_library):
    # What an index made before places holds once migration 7 has added their columns: positions, no places.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM image_places")
        conn.execute("DELETE FROM places")
    with Store.open(db) as store:
        assert all(row["city"] is None for row in _rows(db).values())
        report = index_folders([geo_library], store)  # no encoder given: it would be loaded if needed
        assert report.encoded == 0 and not report.model_loaded
    rows = _rows(db)
    assert rows["sydney"]["city"] == "Sydney" and rows["lisbon"]["country_code"] == "PT"
    assert rows["no-gps"]["geocoded"] == 0 and rows["atlantic"]["geocoded"] == 1


def test_a_moved_position_loses_its_place_and_copies_reuse_a_known_one(db, geo_library, encoder, tmp_path,
                                                                     monkeypatch):
    copy = tmp_path / "copies"
    copy.mkdir()
    shutil.copy(geo_library / "sydney.jpg", copy / "sydney-copy.jpg")
    looked_up: list[int] = []
    monkeypatch.setattr(geonames, "nearest", lambda positions: looked_up.append(len(positions)) or [])
    with Store.open(db) as store:
        index_folders([copy], store, encoder=encoder)
        assert looked_up == [], "the place of a known position is copied: GeoNames is not asked"
        assert _rows(db)["sydney-copy"]["city"] == "Sydney"
        with store.transaction():
            store.execute("UPDATE images SET lat = 38.72, lon = -9.14 WHERE path LIKE '%sydney-copy.jpg'")
    rows = _rows(db)
    assert rows["sydney-copy"]["city"] is None and rows["sydney-copy"]["geocoded"] == 0, "to be looked up again"
    with Store.open(db) as store:
        with store.transaction():
            store.execute("DELETE FROM images WHERE path LIKE '%far.jpg'")
        assert store.execute("SELECT count(*) FROM image_places").fetchone()[0] == len(POSITIONS) - 1, (
            "a photo that leaves the index leaves image_places too")


def test_folding_and_matching_names():
    assert names.fold("São Paulo") == "sao paulo" and names.fold("Saint-Étienne") == "saint etienne"
    assert names.fold("Tromsø") == "tromso" and names.fold("Łódź") == "lodz"
    key = names.Place("Sé", "São Paulo", "São Paulo", "Brazil", "BR").key
    assert names.key_matches(key, "sao paulo") and names.key_matches(key, "brazil")
    assert not names.key_matches(key, "paulo brazil"), "one name at a time"
    assert names.country_code("uk") == "GB"


def test_the_table_shows_the_place_in_80_columns(db, cli, monkeypatch, geo_library):
    console = Console(force_terminal=True, width=80, soft_wrap=True, color_system="truecolor")
    monkeypatch.setattr(output, "stdout", console)
    monkeypatch.chdir(geo_library.parent)
    result = cli("find", "a shape", "--db", db, "--country", "AU", "--place", "sydney")
    plain = re.sub(r"\x1b\[[0-9;]*m|\x1b\]8;[^\x1b]*\x1b\\", "", result.stdout)
    assert "place" in plain and "Sydney, Australia" in plain, plain
    assert all(len(line) <= 80 for line in plain.splitlines()), plain
    assert "photos/sydney.jpg" in plain, "the file name stays whole"
    wide = cli("find", "a shape", "--db", db, "--top", "50")
    plain = re.sub(r"\x1b\[[0-9;]*m|\x1b\]8;[^\x1b]*\x1b\\", "", wide.stdout)
    assert all(len(line) <= 80 for line in plain.splitlines()), plain
    assert "null-island.jpg" in plain and ", BR" in plain, "a narrow table names the country by its code"


def test_the_web_app_shows_the_place_and_filters_by_it(db, encoder):
    from starlette.testclient import TestClient

    from clipsearch.web.app import create_app

    with TestClient(create_app(db, lambda: encoder), base_url="http://127.0.0.1") as client:
        page = client.get("/", params={"q": "a shape", "place": "sao paulo"})
        assert page.status_code == 200 and "saopaulo.jpg" in page.text and "sydney.jpg" not in page.text
        assert 'name="place" value="sao paulo"' in page.text and "place: sao paulo" in page.text
        photo = client.get("/photo", params={"path": _path(db, "sydney")})
        assert photo.status_code == 200 and "Sydney</a>, New South Wales, Australia" in photo.text
        bare = client.get("/photo", params={"path": _path(db, "no-gps")})
        assert "no GPS position" in bare.text
