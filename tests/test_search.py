import json
import os
import shutil

import numpy as np
import pytest

from clipsearch import search
from clipsearch.library import Library
from clipsearch.search import QueryError, Term, parse_query, top_k
from clipsearch.store import Store
from clipsearch_dev import scenes

from .conftest import TINY_MODEL

QUERIES = [("red", "circle"), ("blue", "square"), ("yellow", "star"), ("green", "triangle"),
           ("purple", "cross"), ("orange", "circle"), ("white", "star"), ("black", "square")]


def labels(scene_library) -> dict[str, tuple[str, str]]:
    return {str(path): (scene.colour, scene.shape) for path, scene in scene_library}


def test_parse_query_operators_weights_and_images(tmp_path):
    photo = tmp_path / "cat.jpg"
    scenes.draw(scenes.random_scene(__import__("random").Random(1), 64)).save(photo)

    assert parse_query(["horse", "+", "stripes"]) == [Term("horse"), Term("stripes")]
    assert parse_query(["horse + stripes"]) == [Term("horse"), Term("stripes")]
    assert parse_query(["apple - fruit"]) == [Term("apple"), Term("fruit", -1.0)]
    assert parse_query(["2:golden retriever", "-", "0.5:grass"]) == [Term("golden retriever", 2.0),
                                                                      Term("grass", -0.5)]
    assert parse_query(["a red t-shirt"]) == [Term("a red t-shirt")], "a hyphen inside words is text"
    assert parse_query(["a", "red", "car"]) == [Term("a red car")], "unquoted words form one term"
    assert parse_query([str(photo), "+", "in snow"]) == [Term(str(photo), 1.0, True), Term("in snow")]
    with pytest.raises(QueryError, match=r"no such image: missing\.jpg"):
        parse_query(["missing.jpg"])  # an image extension: meant as a file, not silently text
    with pytest.raises(QueryError):
        parse_query(["  "])
    with pytest.raises(QueryError, match="at least one term to add"):
        parse_query(["-", "dogs"])


def test_a_term_that_looks_like_a_missing_image_path_is_an_error_not_text(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    for meant_as_a_file in ("./holiday", "photos/beach", "~/nope/IMG_1.HEIC", str(tmp_path / "gone"), "cat.jpeg"):
        with pytest.raises(QueryError, match="no such image"):
            parse_query([meant_as_a_file, "+", "in snow"])
    # Words with a slash stay text when they name no folder, and so do sentences.
    assert parse_query(["AC/DC concert"]) == [Term("AC/DC concert")]
    assert parse_query(["black/white photo of a dog"]) == [Term("black/white photo of a dog")]


def test_top_k_matches_a_full_sort():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(1000, 16)).astype(np.float32)
    query = rng.normal(size=16).astype(np.float32)
    expected = np.argsort(-(matrix @ query))
    assert [i for i, _ in top_k(matrix, query, 7)] == list(expected[:7])
    assert [i for i, _ in top_k(matrix, query, 7, exclude={int(expected[0])})] == list(expected[1:8])
    assert len(top_k(matrix[:3], query, 10)) == 3


@pytest.mark.parametrize("colour, shape", QUERIES)
def test_find_colour_and_shape(store, encoder, scene_library, colour, shape):
    truth = labels(scene_library)
    expected = sum(1 for label in truth.values() if label == (colour, shape))
    hits = search.find(f"a {colour} {shape}", store, lambda: encoder, top=max(1, expected))
    assert truth[hits[0].path] == (colour, shape), f"top hit for 'a {colour} {shape}': {hits[0].path}"
    correct = sum(truth[h.path] == (colour, shape) for h in hits)
    assert correct >= 0.7 * expected, f"{correct} of {expected} {colour} {shape}s in the top {expected}"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_precision_at_1_over_every_scene_kind(store, encoder, scene_library):
    truth = labels(scene_library)
    present = sorted(set(truth.values()))
    right = sum(
        truth[search.find(f"a {c} {s}", store, lambda: encoder, top=1)[0].path] == (c, s) for c, s in present
    )
    assert right / len(present) >= 0.9, f"precision@1 {right}/{len(present)}"


def test_similar_returns_the_same_concept_and_not_itself(store, encoder, scene_library):
    truth = labels(scene_library)
    loads = []

    def get_encoder():
        loads.append(1)
        return encoder

    agree = 0
    for path, scene in scene_library[:20]:
        hits = search.similar(path, store, get_encoder, top=3)
        assert str(path) not in [h.path for h in hits]
        agree += truth[hits[0].path] == (scene.colour, scene.shape)
    assert agree >= 16, f"similar()'s first hit shows the same coloured shape for {agree} of 20"
    assert not loads, "similar() on an indexed image reuses its stored vector: no model needed"


def test_similar_to_an_image_outside_the_index(store, encoder, scene_library, tmp_path):
    truth = labels(scene_library)
    outside = tmp_path / "new-photo.png"
    rng = __import__("random").Random(5)
    scene = scenes.random_scene(rng, 300, 200)
    while (scene.colour, scene.shape) not in truth.values():
        scene = scenes.random_scene(rng, 300, 200)
    scenes.draw(scene).save(outside)
    hits = search.similar(outside, store, lambda: encoder, top=3)
    assert truth[hits[0].path] == (scene.colour, scene.shape)


def test_combined_queries_move_results(store, encoder, scene_library):
    truth = labels(scene_library)

    def top_labels(*query, k=5):
        return [truth[h.path] for h in search.find(list(query), store, lambda: encoder, top=k)]

    # Adding a colour to a shape query turns the results that colour.
    assert top_labels("a circle", "+", "blue", k=3).count(("blue", "circle")) >= 2
    # Subtracting one colour and adding another swaps it.
    swapped = top_labels("a red square", "-", "red", "+", "green", k=3)
    assert swapped[0] == ("green", "square")
    # Weights decide which term wins.
    assert top_labels("3:a yellow star", "+", "a blue circle", k=1) == [("yellow", "star")]
    assert top_labels("a yellow star", "+", "3:a blue circle", k=1) == [("blue", "circle")]
    # An image term plus a text term.
    red_star = next(p for p, s in scene_library if (s.colour, s.shape) == ("red", "star"))
    mixed = top_labels(str(red_star), "-", "red", "+", "blue", k=5)
    assert ("blue", "star") in mixed[:3]


def test_folder_scope_and_threshold(store, encoder, scene_library, tmp_path):
    root = scene_library[0][0].parent
    hits = search.find("a red circle", store, lambda: encoder, top=500, folder=str(root))
    assert len(hits) == len(scene_library)
    with pytest.raises(search.EmptyIndexError):
        search.find("a red circle", store, lambda: encoder, folder=str(tmp_path))
    with pytest.raises(QueryError, match="not a folder"):
        search.find("a red circle", store, lambda: encoder, folder=str(tmp_path / "nope"))
    strict = search.find("a red circle", store, lambda: encoder, top=500, threshold=0.5)
    assert all(h.score >= 0.5 for h in strict) and len(strict) < len(scene_library)


def test_an_exact_copy_scores_one_not_more(cli, small_library, tmp_path):
    """Vectors are stored as float16, so an image's vector times itself is 1 +- 1e-3; scores never leave [-1, 1]."""
    db = tmp_path / "index.db"
    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL, "--quiet").exit_code == 0
    with Store.open(db) as store:
        vectors = store.vectors()
        self_scores = np.einsum("ij,ij->i", vectors.matrix, vectors.matrix)
        pick = int(np.argmax(self_scores))
        assert self_scores[pick] > 1.00001, "the case that printed 1.0001"
        photo = store.image_rows([int(vectors.ids[pick])])[int(vectors.ids[pick])]["path"]
    copy = small_library / "copies" / os.path.basename(photo)
    copy.parent.mkdir()
    shutil.copy2(photo, copy)
    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL, "--quiet").exit_code == 0

    result = cli("similar", photo, "--db", db, "--json", "--top", "12")
    hits = json.loads(result.stdout)
    assert hits[0]["path"] == str(copy) and hits[0]["score"] == 1.0
    assert all(-1.0 <= hit["score"] <= 1.0 for hit in hits)
    found = json.loads(cli("find", copy, "--db", db, "--json", "--top", "2").stdout)
    assert [hit["score"] for hit in found][:1] == [1.0], "an image as a find term too"
    with Library(db) as library:
        assert library.similar(copy, top=1)[0].score == 1.0
    ranked = top_k(np.stack([vectors.matrix[pick]] * 2), vectors.matrix[pick], 2)
    assert [score for _, score in ranked] == [1.0, 1.0]
