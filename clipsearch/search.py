"""Queries: parsing combined terms, embedding them, ranking stored vectors.

A query is a sum of weighted terms, like rclip's: `"horse" + "stripes"`,
`"apple" - "fruit"`, `"2:golden retriever"`, and image paths as terms
(`./cat.jpg + "in snow"`). Each term is embedded and L2-normalised, the
weighted sum is normalised again, and images are ranked by dot product with
it (cosine similarity, since stored vectors are unit length).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np

from .errors import BadInputError, NothingFoundError, check_finite
from .indexing import metadata
from .models.protocols import GetQueryModel, QueryModel
from .paths import normalise_path
from .places.names import Place
from .store import Store, StoreError, vector_index
from .store.images import scope_sql
from .store.places import place_of
from .store.tags import TagStore
from .store.vector_index import VectorIndex

MAX_WEIGHT = float(np.finfo(np.float32).max)  # the largest weight a float32 vector can be multiplied by
_WEIGHT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(.+)$", re.S)
_OPERATOR = re.compile(r"(?:^|\s+)([+-])(?:\s+|$)")  # a lone + or -, at either end of an argument too


class QueryError(BadInputError):
    """The query cannot be run; the message says why."""


class EmptyIndexError(QueryError):
    """Nothing to search: the index (or the folder asked for) holds no images."""

    exit_code = NothingFoundError.exit_code


@dataclass(frozen=True)
class Term:
    text: str  # the words, or an image path when `is_image`
    weight: float = 1.0
    is_image: bool = False


@dataclass
class Hit:
    path: str
    score: float
    width: int | None = None
    height: int | None = None
    bytes: int | None = None  # file size
    taken: str | None = None  # ISO 8601, camera local time (or the file time: taken_source)
    taken_source: str | None = None
    camera: str | None = None
    lat: float | None = None
    lon: float | None = None
    place: Place | None = None  # the nearest town and its areas, from the GPS position (None without one)
    text: str | None = None  # with `find(text=...)`: a snippet of the photo's text, the matched words in [brackets]

    @classmethod
    def from_row(cls, row: dict, score: float) -> Hit:
        return cls(row["path"], score, row["width"], row["height"], row["size"], row.get("taken"),
                   row.get("taken_source"), metadata.camera_name(row.get("camera_make"), row.get("camera_model")),
                   row.get("lat"), row.get("lon"), place_of(row))

    def to_dict(self) -> dict:
        return {"path": self.path, "score": round(self.score, 6), "width": self.width, "height": self.height,
                "bytes": self.bytes, "taken": self.taken, "taken_source": self.taken_source, "camera": self.camera,
                "lat": self.lat, "lon": self.lon, "place": self.place.to_dict() if self.place else None,
                "text": self.text}


@dataclass(frozen=True)
class Filters:
    """Which photos a query may return, by metadata: taken within [after, before), camera name containing text,
    place names containing `place` (folded), in `country` (ISO code), within `near` (lat, lon, metres)."""

    after: str | None = None  # ISO text, inclusive
    before: str | None = None  # ISO text, exclusive
    camera: str | None = None
    place: str | None = None  # folded by places.names.fold: "sao paulo"
    country: str | None = None  # "PT"
    near: tuple[float, float, float] | None = None  # (lat, lon, radius in metres)

    @classmethod
    def parse(cls, after: str | None = None, before: str | None = None, camera: str | None = None,
              place: str | None = None, country: str | None = None, near: str | None = None,
              radius: str | None = None) -> Filters:
        """From the command line: `--after 2024` means from the start of 2024, `--before 2024-06` to the end of June;
        `--place "sao paulo"`, `--country pt`, `--near 38.72,-9.14 --radius 5km` (1 km when not given)."""
        from .places import distance, names

        start = _period(after, "--after")[0] if after else None
        end = _period(before, "--before")[1] if before else None
        if start and end and start >= end:
            raise QueryError(f"--after {after} is not before --before {before}: no photo can match.")
        if radius and not near:
            raise QueryError(f"--radius {radius} needs --near LAT,LON: the centre of the circle.")
        position = None
        if near:
            lat, lon = distance.parse_near(near)
            position = (lat, lon, distance.parse_radius(radius or distance.DEFAULT_RADIUS))
        return cls(start, end, camera.strip() if camera and camera.strip() else None,
                   names.place_query(place) if place is not None and place.strip() else None,
                   _country(country) if country is not None and country.strip() else None, position)

    def __bool__(self) -> bool:
        return bool(self.after or self.before or self.camera or self.place or self.country or self.near)

    def ids(self, store: Store, folder: str | None = None) -> set[int]:
        """Ids of the images (under `folder`) these filters let through."""
        return store.ids_matching(self.after, self.before, self.camera, normalise_path(folder) if folder else None,
                                  place=self.place, country=self.country, near=self.near)


def _country(text: str) -> str:
    """`--country` checked against the ISO codes GeoNames knows, so a typo is an error, not an empty result."""
    from .places import geonames, names

    code = names.country_code(text)
    known = geonames.country_names()
    if code not in known:
        raise names.PlaceError(f"--country '{text}' is not an ISO 3166 country code; e.g. PT is Portugal, "
                               "US the United States, GB the United Kingdom")
    return code


def _period(text: str, option: str) -> tuple[str, str]:
    try:
        return metadata.period(text)
    except ValueError as exc:
        raise QueryError(f"{option}: {exc}.") from None


def _image_extension(extension: str) -> bool:
    from .indexing import images  # Pillow's plugin registry: only for text that has an extension at all

    return extension in images.supported_extensions()


def _looks_like_image_path(text: str) -> bool:
    """An image file that exists, or text meant as one: it ends in an image extension, starts like a path
    (/, ./, ../, ~/), or names something inside a folder that exists. Then a missing file is an error,
    not silently a text query (`AC/DC` stays text: there is no folder AC)."""
    expanded = os.path.expanduser(text)
    if os.path.isfile(expanded):
        return True
    if any(c.isspace() for c in text.strip()) and os.sep not in text.strip().split()[0]:
        return False
    extension = os.path.splitext(text)[1].lower()
    if extension and _image_extension(extension):
        return True
    separators = (os.sep, "/") if os.altsep is None else (os.sep, os.altsep)
    if text.startswith(("~", ".." + os.sep, "." + os.sep)) or os.path.isabs(text):
        return True
    parent = os.path.dirname(expanded)
    return any(sep in text for sep in separators) and bool(parent) and os.path.isdir(parent)


def parse_query(parts: Sequence[str]) -> list[Term]:
    """Command-line words to weighted terms.

    `+` and `-` work as separate words (`find cat + snow`) or inside one quoted
    argument when surrounded by spaces (`find "cat + snow"`); a hyphen inside a
    word (`t-shirt`) is just text. `N:` before a term multiplies it by N.
    """
    tokens: list[str] = []
    for part in parts:
        tokens.extend(t for t in _OPERATOR.split(part) if t.strip())
    terms: list[Term] = []
    sign = 1.0
    words: list[str] = []
    operator: str | None = None  # the + or - waiting for its term

    def finish_term() -> None:
        nonlocal sign
        if not words:
            return
        text = " ".join(words).strip()
        weight = 1.0
        match = _WEIGHT.match(text)
        if match:
            weight, text = float(match.group(1)), match.group(2).strip()
        is_image = _looks_like_image_path(text)
        if is_image and not os.path.isfile(os.path.expanduser(text)):
            raise QueryError(f"no such image: {text}")
        terms.append(Term(text, sign * weight, is_image))
        words.clear()
        sign = 1.0

    for token in tokens:
        if token in ("+", "-"):
            if not words and not terms and token == "+" and operator is None:
                continue
            if operator is not None and not words:
                raise QueryError(f"Nothing between '{operator}' and '{token}' in the query; put a term after each "
                                 "operator, e.g. \"dog\" + \"snow\".")
            finish_term()
            sign = -1.0 if token == "-" else 1.0
            operator = token
        else:
            words.append(token)
            operator = None
    if operator is not None:
        raise QueryError(f"Nothing after '{operator}' at the end of the query; add a term after it (\"dog\" "
                         f"{operator} \"snow\") or leave the '{operator}' out.")
    finish_term()
    for term in terms:
        if not abs(term.weight) <= MAX_WEIGHT:  # also NaN; vectors are float32, where 1e39 is already infinite
            raise QueryError(f"The weight of '{term.text[:40]}' is not a usable number (at most {MAX_WEIGHT:.3g}); "
                             f"write e.g. 2:{term.text[:40]}")
    if not terms:
        raise QueryError("Empty query. Give some words, an image path, or both: clipsearch find \"a red car\"")
    if all(term.weight <= 0 for term in terms):
        raise QueryError("A query needs at least one term to add, not only terms to subtract.")
    return terms


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit vectors, normalised to unit length (a float32 vector).

    Summed in float64, so weights up to MAX_WEIGHT neither overflow nor lose the smaller terms.
    """
    weights64 = np.asarray(weights, dtype=np.float64)
    if not np.all(np.abs(weights64) <= MAX_WEIGHT):
        raise QueryError(f"Query weights must be finite numbers of at most {MAX_WEIGHT:.3g}.")
    combined = (weights64[:, None] * np.asarray(vectors, dtype=np.float64)).sum(axis=0)
    norm = float(np.linalg.norm(combined))
    if not np.isfinite(norm) or norm < 1e-6 * float(np.abs(weights64).max(initial=1.0)):
        raise QueryError("The query's terms cancel each other out; change the weights.")
    return (combined / norm).astype(np.float32)


def top_k(matrix: np.ndarray, query: np.ndarray, k: int,
          exclude: AbstractSet[int] = frozenset()) -> list[tuple[int, float]]:
    """Indices and cosine scores of the k best rows, best first, without sorting every row.

    Ranked by the raw dot products; the scores given back are clamped to [-1, 1]:
    stored vectors are float16, so an exact copy's dot product can come out as 1.0001.
    """
    scores = matrix @ query.astype(np.float32)
    for row in exclude:
        scores[row] = -np.inf
    k = min(k, len(scores) - len(exclude))
    if k <= 0:
        return []
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(i), min(1.0, max(-1.0, float(scores[i])))) for i in best]


@dataclass
class Candidates:
    """The images a query may return: the index's vectors (store/vector_index.py) and, when a folder, filter or
    tag narrows them, the allowed image ids. Ranking them is `search`."""

    index: VectorIndex
    ids: np.ndarray | None = None  # None: every image

    def __len__(self) -> int:
        return len(self.index) if self.ids is None else len(self.ids)

    def search(self, query: np.ndarray, top: int, exclude: AbstractSet[int] = frozenset(),
               exact: bool = False) -> list[tuple[int, float]]:
        return self.index.search(query, top, self.ids, sorted(exclude), exact)


def _load_vectors(store: Store, folder: str | None) -> Candidates:
    if folder is not None:
        folder = normalise_path(folder)
        if not os.path.isdir(folder) and store.count(folder) == 0:
            raise QueryError(f"{folder} is not a folder, and nothing under it is indexed.")
    candidates = Candidates(vector_index.open_index(store))
    if folder is not None:
        where, params = scope_sql(folder)
        candidates = Candidates(candidates.index, np.fromiter(
            (row[0] for row in store.execute(f"SELECT id FROM images {where}", params)), dtype=np.int64))
    if not len(candidates):
        where = f" under {folder}" if folder else ""
        raise EmptyIndexError(f"No images indexed{where} in {store.path}. Run: clipsearch index {folder or 'DIR'}")
    return candidates


def _hits(store: Store, ranked: list[tuple[int, float]], threshold: float | None) -> list[Hit]:
    kept = [(image_id, score) for image_id, score in ranked if threshold is None or score >= threshold]
    rows = store.image_rows([image_id for image_id, _ in kept])
    return [
        Hit.from_row(rows[image_id], score)
        for image_id, score in kept
        if image_id in rows  # removed by a concurrent index run since the vectors were read
    ]


def _only(vectors: Candidates, allowed: AbstractSet[int] | dict[int, float]) -> Candidates:
    wanted = np.fromiter(allowed, dtype=np.int64, count=len(allowed))
    return Candidates(vectors.index, wanted if vectors.ids is None else np.intersect1d(vectors.ids, wanted))


def _filtered(store: Store, vectors: Candidates, filters: Filters | None, folder: str | None) -> Candidates:
    if not filters:
        return vectors
    return _only(vectors, filters.ids(store, folder))


def embed_terms(terms: list[Term], store: Store, get_encoder: GetQueryModel) -> np.ndarray:
    """One unit vector per term: stored vectors for indexed images, the model for the rest."""
    vectors: list[np.ndarray | None] = []
    for term in terms:
        stored = store.vector_for_path(normalise_path(term.text)) if term.is_image else None
        vectors.append(stored)
    texts = [t.text for t, v in zip(terms, vectors) if v is None and not t.is_image]
    new_images = [t.text for t, v in zip(terms, vectors) if v is None and t.is_image]
    if texts or new_images:
        encoder = get_encoder()
        text_vectors = iter(encoder.embed_texts(texts)) if texts else iter(())
        image_vectors = iter(_embed_files(encoder, new_images)) if new_images else iter(())
        vectors = [
            v if v is not None else next(image_vectors if t.is_image else text_vectors)
            for t, v in zip(terms, vectors)
        ]
    return np.stack(vectors)  # type: ignore[arg-type]  # every None was filled just above


def _start_loading_model(terms: list[Term], get_encoder: GetQueryModel) -> None:
    """Have the text encoder load in the background when a text term may need it (models/query.py)."""
    texts = [term.text for term in terms if not term.is_image]
    if texts:
        start = getattr(get_encoder(), "start_loading", None)  # QueryEncoder's; other models are loaded already
        if start is not None:
            start(texts)


def _embed_files(encoder: QueryModel, paths: list[str]) -> np.ndarray:
    from .indexing import images  # decoding: only for image terms that are not in the index

    pixels = []
    for path in paths:
        try:
            pixels.append(images.decode_file(os.path.expanduser(path), encoder.preprocess).pixels)
        except images.ImageError as exc:
            raise QueryError(f"Cannot use {path} as a query: {exc}") from None
    return encoder.embed_pixels(np.stack(pixels))


def find(
    query: Sequence[str] | str | None,
    store: Store,
    get_encoder: GetQueryModel,
    top: int = 10,
    folder: str | None = None,
    threshold: float | None = None,
    tags: Sequence[str] = (),
    filters: Filters | None = None,
    text: str | None = None,
    exact: bool = False,
) -> list[Hit]:
    """Images best matching a (possibly combined) query, best first.

    `get_encoder` is called only if some term needs the model (text, or an
    image that is not in the index). With `tags`, only images that have all
    of them count; with tags and no query, those images are listed by their
    tag score (manual tags first). `filters` keeps only photos taken in a period or by a camera.
    With `text`, only images whose text (read by `clipsearch ocr`) matches it count; with text and
    no query or tags, they are listed by BM25 (score: -bm25, higher is better). Each hit then has a snippet.
    """
    if not query and not tags and text is None:
        raise QueryError("Give a query, --tag TAG to list tagged images, or --text WORDS to find text in photos.")
    if tags:
        from .tags.auto import clean_tag  # the same rules as when tags are stored (length, control characters)

        tags = [clean_tag(tag) for tag in tags]
    check_finite(threshold, "--threshold")
    terms = parse_query([query] if isinstance(query, str) else query) if query else []
    _start_loading_model(terms, get_encoder)  # loads while the index is opened and filtered
    vectors = _load_vectors(store, folder)
    matched = _text_matches(store, text, folder) if text is not None else None
    if tags:
        tagged = TagStore(store).images_with_tags(tags, normalise_path(folder) if folder else None)
        if filters:
            allowed = filters.ids(store)
            tagged = {image_id: score for image_id, score in tagged.items() if image_id in allowed}
        if matched is not None:
            tagged = {image_id: score for image_id, score in tagged.items() if image_id in matched}
        if not query:
            return _with_snippets(store, _ranked(store, tagged, top, threshold), text)
        vectors = _only(vectors, tagged)
    elif matched is not None:
        if filters:
            allowed = filters.ids(store)
            matched = {image_id: score for image_id, score in matched.items() if image_id in allowed}
        if not query:
            return _with_snippets(store, _ranked(store, matched, top, threshold), text)
        vectors = _only(vectors, matched)
    else:
        vectors = _filtered(store, vectors, filters, folder)
    if not len(vectors):
        return []
    query_vector = combine(embed_terms(terms, store, get_encoder), [t.weight for t in terms])
    return _with_snippets(store, _hits(store, vectors.search(query_vector, top, exact=exact), threshold), text)


def _ranked(store: Store, scores: dict[int, float], top: int, threshold: float | None) -> list[Hit]:
    """The `top` images of `scores` (id -> score, higher first; ties by id) as hits."""
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:top]
    rows = store.image_rows([image_id for image_id, _ in ranked])
    return [Hit.from_row(rows[i], score)
            for i, score in ranked if i in rows and (threshold is None or score >= threshold)]


def _text_matches(store: Store, text: str, folder: str | None) -> dict[int, float]:
    """Images (under `folder`) whose photo text matches `text`: id -> -bm25 (higher is better)."""
    from .store.text import TextStore

    return {image_id: -rank for image_id, rank in TextStore(store).matching(text, normalise_path(folder)
                                                                             if folder else None).items()}


def _with_snippets(store: Store, hits: list[Hit], text: str | None) -> list[Hit]:
    """`hits` with a snippet of each one's text around what `text` matched (nothing to add without `text`)."""
    if text is None or not hits:
        return hits
    from .store.text import TextStore

    ids = [store.id_for_path(hit.path) for hit in hits]
    snippets = TextStore(store).snippets(text, [image_id for image_id in ids if image_id is not None])
    for hit, image_id in zip(hits, ids):
        hit.text = snippets.get(image_id) if image_id is not None else None
    return hits


def similar(
    image: str | os.PathLike,
    store: Store,
    get_encoder: GetQueryModel,
    top: int = 10,
    folder: str | None = None,
    threshold: float | None = None,
    filters: Filters | None = None,
    exact: bool = False,
) -> list[Hit]:
    """Images most like `image` (indexed or not); the image itself is never listed. `exact` ranks every
    image even where the library is large enough for the approximate index (store/vector_index.py)."""
    check_finite(threshold, "--threshold")
    path = normalise_path(image)
    if not os.path.isfile(path) and store.vector_for_path(path) is None:
        raise QueryError(f"no such image: {image} (not a file, and not in the index)")
    vectors = _filtered(store, _load_vectors(store, folder), filters, folder)
    if not len(vectors):
        return []
    query_vector = embed_terms([Term(path, 1.0, True)], store, get_encoder)[0]
    own_id = store.id_for_path(path)
    exclude = {own_id} if own_id is not None else set()
    return _hits(store, vectors.search(query_vector, top, exclude, exact), threshold)


__all__ = ["EmptyIndexError", "Filters", "Hit", "QueryError", "StoreError", "Term", "find", "parse_query", "similar",
           "top_k"]
