"""dedupe, wave 2: mirrored, rotated, transposed, letterboxed, framed and cropped copies, and what must not match.

Real pictures from the scenes generator, real edits made here, a real index and the real command.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.dedupe import crops, geometry
from clipsearch.dedupe.groups import DedupeOptions, find_duplicates
from clipsearch.indexing import fingerprint
from clipsearch.indexing.job import IndexOptions, fill_fingerprints, index_folders
from clipsearch.store import Store
from clipsearch_dev import scenes

SIZE = (480, 360)
SYMMETRY_EDITS = {
    "mirror": Image.Transpose.FLIP_LEFT_RIGHT,
    "flip": Image.Transpose.FLIP_TOP_BOTTOM,
    "rotate90": Image.Transpose.ROTATE_90,
    "rotate180": Image.Transpose.ROTATE_180,
    "rotate270": Image.Transpose.ROTATE_270,
    "transpose": Image.Transpose.TRANSPOSE,
    "transverse": Image.Transpose.TRANSVERSE,
}
# (share of the area kept, where the window sits: 0 left/top .. 1 right/bottom)
CROPS = {"crop95": (0.95, 0.5, 0.5), "crop80": (0.8, 0.5, 0.5), "crop70-offset": (0.7, 0.1, 0.9),
         "crop60-corner": (0.62, 0.0, 0.0), "crop75-square": (0.75, 0.5, 0.5)}


def _crop(picture: Image.Image, share: float, x: float, y: float, square: bool = False) -> Image.Image:
    width, height = picture.size
    if square:
        w = h = round((share * width * height) ** 0.5)
    else:
        w, h = round(width * share ** 0.5), round(height * share ** 0.5)
    left, top = round((width - w) * x), round((height - h) * y)
    return picture.crop((left, top, left + w, top + h))


def _bordered(picture: Image.Image, size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    canvas = Image.new("RGB", size, colour)
    canvas.paste(picture, ((size[0] - picture.width) // 2, (size[1] - picture.height) // 2))
    return canvas


def _scene(seed: int) -> tuple[scenes.Scene, Image.Image]:
    scene = scenes.random_scene(random.Random(seed), *SIZE)
    return scene, scenes.draw(scene)


@pytest.fixture(scope="module")
def edited_library(tmp_path_factory, encoder):
    """Three families of edits and the negatives; returns (folder, index path, {name: path})."""
    folder = tmp_path_factory.mktemp("geometry") / "library"
    folder.mkdir()
    written: dict[str, Path] = {}

    def save(name: str, picture: Image.Image, quality: int = 88) -> None:
        path = folder / f"{name}.jpg"
        picture.save(path, quality=quality)
        written[name] = path

    width, height = SIZE
    for family in range(3):
        scene, original = _scene(100 + family)
        save(f"f{family}", original, 92)
        for name, operation in SYMMETRY_EDITS.items():
            save(f"f{family}-{name}", original.transpose(operation), 85)
        for name, (share, x, y) in CROPS.items():
            if name.endswith("corner"):  # the corner the subject is nearest: a crop keeps its subject
                x, y = float(scene.cx >= 0.5), float(scene.cy >= 0.5)
            save(f"f{family}-{name}", _crop(original, share, x, y, square=name.endswith("square")), 85)
        save(f"f{family}-letterbox", _bordered(original, (width, width), (0, 0, 0)))
        save(f"f{family}-pillarbox", _bordered(original, (height * 16 // 9, height), (0, 0, 0)))
        save(f"f{family}-frame", _bordered(original, (width + 40, height + 40), (255, 255, 255)))
        # Negatives: another photo of the same subject (colour, shape, background), a crop keeping under 60%,
        # a burst frame and a tight crop of it (the subject moved).
        like = scenes.random_scene(random.Random(200 + family), *SIZE)
        like = scenes.Scene(**{**like.__dict__, "colour": scene.colour, "shape": scene.shape,
                               "background": scene.background})
        save(f"f{family}-lookalike", scenes.draw(like))
        save(f"f{family}-crop45", _crop(original, 0.45, 0.5, 0.5), 85)
        burst = scenes._burst_frame(scene, random.Random(family), 1)
        save(f"f{family}-burst", burst)
        save(f"f{family}-burstcrop", _crop(burst, 0.75, 0.5, 0.5), 85)
    db_path = folder.parent / "index.db"
    with Store.open(db_path) as store:
        index_folders([folder], store, encoder=encoder, options=IndexOptions(batch_size=32))
    return folder, db_path, written


def _near_partners(groups) -> dict[str, dict[str, object]]:
    """kept path -> {member path: member} of near groups."""
    return {g.keep.path: {m.path: m for m in g.others} for g in groups if g.tier == "near"}


def test_symmetries_are_bit_operations_on_the_sign_hash():
    """The hash of every mirrored and rotated copy, derived from the original's bits, is the copy's own hash."""
    _, original = _scene(7)
    stored = fingerprint.split_geometry([fingerprint.geometry(original)])
    derived = fingerprint.symmetries(stored.hash)
    for index, name in enumerate(fingerprint.SYMMETRIES):
        operation = SYMMETRY_EDITS.get(name)
        copy = original.transpose(operation) if operation is not None else original
        own = fingerprint.split_geometry([fingerprint.geometry(copy)]).hash
        assert fingerprint.hamming(derived[index], own)[0] <= 8, name
        others = [fingerprint.hamming(derived[k], own)[0] for k in range(8) if k != index]
        assert min(others) >= 60, f"{name} is told apart from the other symmetries"


def test_borders_are_trimmed_and_the_box_kept():
    _, original = _scene(8)
    width, height = original.size
    for canvas, colour in (((width, width), (0, 0, 0)), ((height * 2, height), (0, 0, 0)),
                           ((width + 40, height + 40), (255, 255, 255))):
        bordered = _bordered(original, canvas, colour)
        box = fingerprint.trim_box(bordered)
        x, y = (canvas[0] - width) // 2 / canvas[0], (canvas[1] - height) // 2 / canvas[1]
        expected = (x, y, x + width / canvas[0], y + height / canvas[1])
        assert np.allclose(box, expected, atol=0.015), (canvas, box)
        stored = fingerprint.split_geometry([fingerprint.geometry(bordered)])
        assert np.allclose(stored.box[0], expected, atol=0.015)
        plain = fingerprint.split_geometry([fingerprint.geometry(original)])
        assert fingerprint.hamming(stored.hash, plain.hash)[0] <= 16
    assert fingerprint.trim_box(original) == (0.0, 0.0, 1.0, 1.0), "a gradient sky is not a border"


def test_every_geometric_edit_is_near_identical_and_reported(edited_library):
    _, db_path, written = edited_library
    with Store.open(db_path) as store:
        groups = find_duplicates(store)
    partners = _near_partners(groups)
    for family in range(3):
        original = str(written[f"f{family}"])
        assert original in partners, f"family {family}'s original keeps its group"
        members = partners[original]
        for name in SYMMETRY_EDITS:
            member = members.get(str(written[f"f{family}-{name}"]))
            assert member is not None, f"f{family}-{name} is near the original"
            assert member.transform == name
        for name in ("letterbox", "pillarbox", "frame"):
            member = members.get(str(written[f"f{family}-{name}"]))
            assert member is not None and member.borders, f"f{family}-{name}"
        for name, (share, _, _) in CROPS.items():
            member = members.get(str(written[f"f{family}-{name}"]))
            assert member is not None, f"f{family}-{name} is near the original"
            if member.crop is not None:  # a 95% crop may pass as the same frame (the plain near checks)
                assert member.cropped == "member" and abs(member.crop - share) <= 0.04, (name, member.crop)
            else:
                assert share >= 0.9, (name, family, member)


def test_other_photos_of_the_subject_and_small_crops_are_never_near(edited_library):
    _, db_path, _ = edited_library
    with Store.open(db_path) as store:
        groups = find_duplicates(store, options=DedupeOptions(similar=True))
    near = [{Path(m.path).name for m in g.members} for g in groups if g.tier == "near"]
    for family in range(3):
        for name in ("lookalike", "crop45", "burst", "burstcrop"):
            together = next((names for names in near if f"f{family}-{name}.jpg" in names), set())
            # The only near partner allowed: the tight crop of the burst frame is a crop of that frame.
            allowed = {f"f{family}-burst.jpg", f"f{family}-burstcrop.jpg"} if "burst" in name else set()
            assert together <= allowed | {f"f{family}-{name}.jpg"}, f"f{family}-{name} joined {sorted(together)}"
    similar = [g for g in groups if g.tier == "similar"]
    assert any(f"f{f}-burst.jpg" in {Path(m.path).name for m in g.members} for g in similar for f in range(3)), \
        "a burst stays a similar shot"


def test_keep_the_original_over_its_crop_and_json_says_what_was_done(edited_library, cli):
    _, db_path, written = edited_library
    result = cli("dedupe", "--db", db_path, "--json")
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    by_path = {m["path"]: (g, m) for g in groups if g["tier"] == "near" for m in g["members"]}
    group, member = by_path[str(written["f0-crop80"])]
    assert group["keep"] == str(written["f0"]), "the uncropped original is kept, not the crop"
    assert member["crop"] == pytest.approx(0.8, abs=0.04) and member["cropped"] == "member"
    assert by_path[str(written["f0-mirror"])][1]["transform"] == "mirror"
    assert by_path[str(written["f0-rotate90"])][1]["transform"] == "rotate90"
    assert by_path[str(written["f0-letterbox"])][1]["borders"] is True
    kept = next(m for m in group["members"] if m["keep"])
    assert kept["transform"] is None and kept["crop"] is None

    # The table names the edit instead of the scores.
    table = cli("dedupe", "--db", db_path)
    assert "mirrored" in table.stdout and "rotated 90°" in table.stdout and "crop of 80%" in table.stdout


def test_a_crop_with_camera_exif_still_loses_to_its_original(tmp_path, encoder):
    folder = tmp_path / "photos"
    folder.mkdir()
    _, original = _scene(31)
    original.save(folder / "export.png")  # lossless export, no EXIF
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"
    _crop(original.resize((960, 720)), 0.7, 0.3, 0.3).save(folder / "IMG_0001.jpg", quality=92, exif=exif)
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([folder], store, encoder=encoder)
        groups = [g for g in find_duplicates(store) if g.tier == "near"]
    assert len(groups) == 1
    assert Path(groups[0].keep.path).name == "export.png"
    assert groups[0].reason == "the uncropped original"


def test_crop_check_on_pixels():
    _, original = _scene(41)
    grey = np.asarray(original.convert("L"), dtype=np.float32)
    for share, x, y in ((0.62, 1.0, 1.0), (0.7, 0.2, 0.8), (0.85, 0.5, 0.5)):
        cut = np.asarray(_crop(original, share, x, y).convert("L"), dtype=np.float32)
        match = crops.find_crop(grey, cut)
        assert match is not None and abs(match.fraction - share) <= 0.03, (share, match)
    too_small = np.asarray(_crop(original, 0.4, 0.5, 0.5).convert("L"), dtype=np.float32)
    assert crops.find_crop(grey, too_small) is None


def test_old_rows_get_the_geometric_fingerprint_and_vanished_files_are_skipped(edited_library, tmp_path, encoder):
    import shutil

    _, db_path, written = edited_library
    copy = tmp_path / "index.db"
    shutil.copy(db_path, copy)
    with Store.open(copy) as store:
        store.db.execute("UPDATE images SET geometry = NULL")
        store.db.conn.commit()
        assert len(store.missing_fingerprints()) == len(written)
        assert fill_fingerprints(store) == []
        assert store.missing_fingerprints() == []
        stored = fingerprint.split_geometry(store.file_table()["geometry"])
        assert stored.has.all()
    # A crop pair whose files are gone: the crop check has nothing to read and claims nothing.
    pairs = [(0, 1)]
    assert crops.verify_pairs(pairs, [str(tmp_path / "gone.jpg"), str(written["f0"])],
                              np.asarray([(0, 0, 1, 1)] * 2, dtype=np.float32), np.asarray([1, 1])) == {}


def test_hash_candidates_scale_without_comparing_every_pair():
    """Random hashes plus planted mirrored and rotated copies a few bits off: the multi-index lookup finds every
    planted pair and nothing else."""
    rng = np.random.default_rng(0)
    count, planted = 50_000, 200
    hashes = rng.integers(0, 2**63, (count, 4), dtype=np.int64).view(np.uint64)
    names = list(fingerprint.SYMMETRIES)
    truth = {}
    for k in range(planted):
        source, target = k, count - 1 - k
        s = 1 + k % 7
        turned = fingerprint.symmetries(hashes[source:source + 1])[s][0].copy()
        bits = np.unpackbits(turned.view(np.uint8))
        bits[rng.choice(256, int(rng.integers(0, 13)), replace=False)] ^= 1
        hashes[target] = np.packbits(bits).view(np.uint64)
        truth[(source, target)] = names[s]
    blobs = [bytes(fingerprint.HEADER_BYTES - 4) + bytes([128, 128, 128, 30]) + h.tobytes() +
             bytes(fingerprint.HASH_BYTES * len(fingerprint.WINDOWS)) for h in hashes]
    geo = fingerprint.split_geometry(blobs)
    i, j, s = geometry.hash_candidates(geo, np.ones(count, dtype=bool))
    found = {}
    for a, b, t in zip(i.tolist(), j.tolist(), s.tolist()):
        key = (min(a, b), max(a, b))
        found[key] = names[t] if a == key[0] else fingerprint.INVERSE[names[t]]
    assert {k: found.get(k) for k in truth} == truth
    assert set(found) == set(truth), "random hashes never come within MAX_DISTANCE bits"
