"""Tagging: accuracy on generated scenes, incremental and manual behaviour, find --tag, XMP sidecars."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from clipsearch.store import Store
from clipsearch.store.tags import TagStore
from clipsearch.tags import auto as tags
from clipsearch.tags import sidecars
from clipsearch_dev import scenes

from .conftest import TINY_MODEL


@pytest.fixture
def scene_vocab(tmp_path):
    path = tmp_path / "scenes-vocab.txt"
    path.write_text(scenes.tag_vocabulary())
    return path


def _tags_by_path(store):
    return {path: set(found) for path, found in TagStore(store).tags_by_path().items()}


def test_built_in_vocabulary_and_user_files():
    built_in = tags.load_vocabulary()
    assert built_in.source == tags.BUILT_IN
    assert 200 <= len(built_in.tags) <= 500
    for expected in ("dog", "beach", "receipt", "screenshot", "birthday", "snow", "food"):
        assert expected in built_in.tags
    assert built_in.prompts["dog"] == ("a photo of a dog", "a puppy", "a dog playing")

    vocabulary = tags.parse_vocabulary("# mine\nold car\nlake: a lake | still water\n", "mine.txt")
    assert vocabulary.prompts == {"old car": ("a photo of old car", "a picture of old car", "old car"),
                                  "lake": ("a lake", "still water")}
    assert tags.parse_vocabulary("lake: a pond\n", "x").version != tags.parse_vocabulary("lake: a lake\n", "x").version
    with pytest.raises(tags.TagError, match="line 2: tag 'lake' is listed twice"):
        tags.parse_vocabulary("lake\nlake\n", "dupes.txt")
    with pytest.raises(tags.TagError, match="holds no tags"):
        tags.parse_vocabulary("# nothing\n", "empty.txt")


def test_scenes_get_their_colour_and_shape_and_nothing_unrelated(store, encoder, scene_library, scene_vocab):
    vocabulary = tags.load_vocabulary(scene_vocab)
    report = tags.tag_images(store, lambda: encoder, vocabulary=vocabulary)
    assert report.tagged == len(scene_library) and report.threshold == 0.42  # from models/tiny-clip/clipsearch.json
    given = _tags_by_path(store)
    exactly_right = sum(given.get(str(path), set()) == {scene.colour, scene.shape} for path, scene in scene_library)
    accuracy = exactly_right / len(scene_library)
    print(f"scenes with exactly their two tags: {accuracy:.3f}")
    assert accuracy >= 0.9
    assert not set().union(*given.values()) & set(scenes.UNRELATED_TAGS), "unrelated tags must stay off"


def test_tagging_is_incremental_and_follows_vocabulary_and_model(store, encoder, scene_vocab, tmp_path):
    vocabulary = tags.load_vocabulary(scene_vocab)
    first = tags.tag_images(store, lambda: encoder, vocabulary=vocabulary)

    def no_model():
        raise AssertionError("the model is not needed: tag vectors are kept in the index")

    again = tags.tag_images(store, no_model, vocabulary=vocabulary)
    assert (again.tagged, again.skipped) == (0, first.tagged)

    image_id = store.id_for_path(store.paths()[0])
    store.db.execute("UPDATE images SET vector = zeroblob(length(vector)) WHERE id = ?", [image_id])  # content changed
    store.db.conn.commit()
    assert tags.tag_images(store, no_model, vocabulary=vocabulary).tagged == 1

    original = scene_vocab.read_text()
    scene_vocab.write_text(original.replace("a red thing", "a red object"))  # the user edits their vocabulary
    assert tags.tag_images(store, lambda: encoder, vocabulary=tags.load_vocabulary(scene_vocab)).tagged == first.tagged
    scene_vocab.write_text(original)
    assert tags.tag_images(store, lambda: encoder, vocabulary=vocabulary,
                           options=tags.TagOptions(threshold=0.45)).tagged == first.tagged


def test_manual_tags_survive_automatic_tagging(store, encoder, scene_library, scene_vocab):
    vocabulary = tags.load_vocabulary(scene_vocab)
    path, scene = scene_library[0]
    tags.tag_images(store, lambda: encoder, vocabulary=vocabulary)
    after = tags.edit_tags(store, path, add=["holiday", "grandma's garden"], remove=[scene.shape])
    assert {t["tag"] for t in after} == {scene.colour, "holiday", "grandma's garden"}
    tags.tag_images(store, lambda: encoder, vocabulary=vocabulary, options=tags.TagOptions(retag=True))
    assert _tags_by_path(store)[str(path)] == {scene.colour, "holiday", "grandma's garden"}, \
        "a removed auto tag stays removed, manual tags stay"
    tags.edit_tags(store, path, add=[scene.shape])
    assert scene.shape in _tags_by_path(store)[str(path)]
    with pytest.raises(tags.TagError, match="not in the index"):
        tags.edit_tags(store, "/nowhere/x.jpg", add=["x"])


def test_renamed_photo_keeps_its_tags(cli, small_library, tmp_path, scene_vocab):
    db = tmp_path / "index.db"
    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL).exit_code == 0
    assert cli("tag", "--db", db, "--vocab", scene_vocab).exit_code == 0
    photo = sorted(small_library.glob("*.jpg"))[0]
    assert cli("tag", "add", photo, "grandma", "--db", db).exit_code == 0
    with Store.open(db) as store:
        before = _tags_by_path(store)[str(photo)]
    moved = small_library / "2024" / "renamed.jpg"
    moved.parent.mkdir()
    photo.rename(moved)
    result = cli("index", small_library, "--db", db, "--json")
    assert json.loads(result.stdout)["reused"] == 1
    with Store.open(db) as store:
        assert _tags_by_path(store)[str(moved)] == before
        assert str(photo) not in _tags_by_path(store)
    again = json.loads(cli("tag", "--db", db, "--vocab", scene_vocab, "--json").stdout)
    assert again["tagged"] == 0, "the tagging record moved along too"


def test_cli_tag_tags_and_find_by_tag(cli, store, scene_library, scene_vocab):
    db = store.path
    result = cli("tag", "--db", db, "--vocab", scene_vocab, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["tagged"] == len(scene_library)

    counts = json.loads(cli("tags", "--db", db, "--json").stdout)
    by_tag = {row["tag"]: row["images"] for row in counts}
    assert set(by_tag) <= set(scenes.COLOURS) | set(scenes.SHAPES)
    reds = sum(1 for _, s in scene_library if s.colour == "red")
    assert abs(by_tag["red"] - reds) <= max(1, reds // 10)

    listed = json.loads(cli("find", "--tag", "red", "--tag", "star", "--db", db, "--top", "50", "--json").stdout)
    assert listed and all("red-star" in hit["path"] for hit in listed)
    assert [h["score"] for h in listed] == sorted((h["score"] for h in listed), reverse=True)
    ranked = json.loads(cli("find", "a circle", "--tag", "blue", "--db", db, "--json").stdout)
    assert ranked and all("-blue-" in hit["path"] for hit in ranked)
    assert "circle" in ranked[0]["path"]
    assert cli("find", "--tag", "no such tag", "--db", db).exit_code == 1
    assert cli("find", "--db", db).exit_code == 2

    path = scene_library[0][0]
    added = cli("tag", "add", path, "holiday", "--db", db, "--json")
    assert added.exit_code == 0 and "holiday" in {t["tag"] for t in json.loads(added.stdout)["tags"]}
    holiday = json.loads(cli("find", "--tag", "holiday", "--db", db, "--json").stdout)
    assert [hit["path"] for hit in holiday] == [str(path)]
    assert cli("tag", "remove", path, "holiday", "--db", db).exit_code == 0
    assert cli("find", "--tag", "holiday", "--db", db).exit_code == 1
    assert cli("tag", "add", path, "--db", db).exit_code == 2


def _exiftool(*args) -> dict:
    if not shutil.which("exiftool"):
        pytest.skip("needs exiftool (apt install libimage-exiftool-perl; .ci/run installs it)")
    output = subprocess.run(["exiftool", "-json", "-struct", *map(str, args)], capture_output=True, text=True,
                            check=True).stdout
    return json.loads(output)[0]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_xmp_sidecars_are_readable_and_merged(cli, small_library, tmp_path, encoder, scene_vocab):
    db = tmp_path / "index.db"
    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL).exit_code == 0
    photos = sorted(small_library.glob("*.jpg"))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos}
    # A sidecar some other program wrote already: its fields must survive.
    existing = photos[0].with_name(photos[0].name + ".xmp")
    existing.write_text(
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4">'
        "<dc:subject><rdf:Bag><rdf:li>holiday</rdf:li></rdf:Bag></dc:subject>"
        '<dc:creator><rdf:Seq><rdf:li>Ada</rdf:li></rdf:Seq></dc:creator>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end=\"w\"?>\n"
    )
    result = cli("tag", small_library, "--db", db, "--vocab", scene_vocab, "--export", "xmp")
    assert result.exit_code == 0, result.stderr
    assert "11 written, 1 merged" in result.stderr

    with Store.open(db) as store:
        expected = TagStore(store).tags_by_path()
    for photo in photos:
        sidecar = photo.with_name(photo.name + ".xmp")
        read = _exiftool(sidecar)
        keywords = _as_list(read.get("Subject", []))
        assert set(expected[str(photo)]) <= set(keywords)
        assert hashlib.sha256(photo.read_bytes()).hexdigest() == before[photo], "originals are never modified"
    merged = _exiftool(existing)
    assert merged["Rating"] == 4 and _as_list(merged["Creator"]) == ["Ada"]
    assert "holiday" in _as_list(merged["Subject"])

    again = cli("tag", small_library, "--db", db, "--vocab", scene_vocab, "--export", "xmp")
    assert "12 already up to date" in again.stderr

    lightroom = cli("tag", "--db", db, "--vocab", scene_vocab, "--export", "xmp", "--sidecar", "lightroom")
    assert lightroom.exit_code == 0
    assert set(_as_list(_exiftool(photos[1].with_suffix(".xmp"))["Subject"])) == set(expected[str(photos[1])])


def _sidecar_keywords(name: bytes) -> list[str]:
    import pyexiv2

    with open(name, "rb") as handle, pyexiv2.ImageData(handle.read()) as xmp:
        return _as_list(xmp.read_xmp().get("Xmp.dc.subject", []))


def test_tags_export_writes_the_sidecars_of_files_whose_names_are_not_utf8(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    raw = os.fsencode(str(small_library)) + b"/bad\xff\xfe.jpg"
    bad = os.fsdecode(raw)
    shutil.copy(min(small_library.glob("*.jpg")), bad)
    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL, "--quiet").exit_code == 0
    assert cli("tags", "add", bad, "holiday", "--db", db).exit_code == 0

    export = cli("tags", "export", "--db", db)
    assert export.exit_code == 0 and "not written" not in export.stderr, export.stderr
    assert "1 written" in export.stderr
    assert _sidecar_keywords(raw + b".xmp") == ["holiday"], "named by the photo's exact bytes"
    assert sidecars.read_keywords(bad + ".xmp") == ["holiday"]

    os.chmod(raw + b".xmp", 0o640)
    assert cli("tags", "add", bad, "beach", "--db", db).exit_code == 0
    merged = cli("tags", "export", "--db", db)
    assert merged.exit_code == 0 and "1 merged" in merged.stderr, merged.stderr
    assert _sidecar_keywords(raw + b".xmp") == ["holiday", "beach"]
    assert os.stat(raw + b".xmp").st_mode & 0o777 == 0o640, "a merged sidecar keeps its permissions"
    assert not [name for name in os.listdir(os.fsencode(small_library)) if name.endswith(b".tmp")]

    lightroom = cli("tags", "export", "--db", db, "--sidecar", "lightroom")
    assert lightroom.exit_code == 0 and "1 written" in lightroom.stderr, lightroom.stderr
    assert sorted(_sidecar_keywords(os.fsencode(str(small_library)) + b"/bad\xff\xfe.xmp")) == ["beach", "holiday"]
