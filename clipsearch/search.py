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
from .store import Store, StoreError
from .store.tags import TagStore
from .store.vectors import Vectors

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

    @classmethod
    def from_row(cls, row: dict, score: float) -> Hit:
        return cls(row["path"], score, row["width"], row["height"], row["size"], row.get("taken"),
                   row.get("taken_source"), metadata.camera_name(row.get("camera_make"), row.get("camera_model")),
                   row.get("lat"), row.get("lon"))

    def to_dict(self) -> dict:
        return {"path": self.path, "score": round(self.score, 6), "width": self.width, "height": self.height,
                "bytes": self.bytes, "taken": self.taken, "taken_source": self.taken_source, "camera": self.camera,
                "lat": self.lat, "lon": self.lon}


@dataclass(frozen=True)
class Filters:
    """Which photos a query may return, by metadata: taken within [after, before), camera name containing text."""

    after: str | None = None  # ISO text, inclusive
    before: str | None = None  # ISO text, exclusive
    camera: str | None = None

    @classmethod
    def parse(cls, after: str | None = None, before: str | None = None, camera: str | None = None) -> Filters:
        """From the command line: `--after 2024` means from the start of 2024, `--before 2024-06` to the end of June."""
        start = _period(after, "--after")[0] if after else None
        end = _period(before, "--before")[1] if before else None
        if start and end and start >= end:
            raise QueryError(f"--after {after} is not before --before {before}: no photo can match.")
        return cls(start, end, camera.strip() if camera and camera.strip() else None)

    def __bool__(self) -> bool:
        return bool(self.after or self.before or self.camera)


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


def _load_vectors(store: Store, folder: str | None) -> Vectors:
    if folder is not None:
        folder = normalise_path(folder)
        if not os.path.isdir(folder) and store.count(folder) == 0:
            raise QueryError(f"{folder} is not a folder, and nothing under it is indexed.")
    vectors = store.vectors(folder)
    if not len(vectors):
        where = f" under {folder}" if folder else ""
        raise EmptyIndexError(f"No images indexed{where} in {store.path}. Run: clipsearch index {folder or 'DIR'}")
    return vectors


def _hits(store: Store, vectors: Vectors, ranked: list[tuple[int, float]], threshold: float | None) -> list[Hit]:
    kept = [(int(vectors.ids[i]), score) for i, score in ranked if threshold is None or score >= threshold]
    rows = store.image_rows([image_id for image_id, _ in kept])
    return [
        Hit.from_row(rows[image_id], score)
        for image_id, score in kept
        if image_id in rows  # removed by a concurrent index run since the vectors were read
    ]


def _only(vectors: Vectors, allowed: set[int] | dict[int, float]) -> Vectors:
    keep = np.isin(vectors.ids, np.fromiter(allowed, dtype=np.int64, count=len(allowed)))
    return Vectors(vectors.ids[keep], np.asarray(vectors.matrix[keep]))


def _filtered(store: Store, vectors: Vectors, filters: Filters | None, folder: str | None) -> Vectors:
    if not filters:
        return vectors
    return _only(vectors, store.ids_matching(filters.after, filters.before, filters.camera,
                                             normalise_path(folder) if folder else None))


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
) -> list[Hit]:
    """Images best matching a (possibly combined) query, best first.

    `get_encoder` is called only if some term needs the model (text, or an
    image that is not in the index). With `tags`, only images that have all
    of them count; with tags and no query, those images are listed by their
    tag score (manual tags first). `filters` keeps only photos taken in a period or by a camera.
    """
    if not query and not tags:
        raise QueryError("Give a query, or --tag TAG to list tagged images.")
    if tags:
        from .tags.auto import clean_tag  # the same rules as when tags are stored (length, control characters)

        tags = [clean_tag(tag) for tag in tags]
    check_finite(threshold, "--threshold")
    vectors = _load_vectors(store, folder)
    if tags:
        tagged = TagStore(store).images_with_tags(tags, normalise_path(folder) if folder else None)
        if filters:
            allowed = store.ids_matching(filters.after, filters.before, filters.camera)
            tagged = {image_id: score for image_id, score in tagged.items() if image_id in allowed}
        if not query:
            ranked = sorted(tagged.items(), key=lambda item: (-item[1], item[0]))[:top]
            rows = store.image_rows([image_id for image_id, _ in ranked])
            return [Hit.from_row(rows[i], score)
                    for i, score in ranked if i in rows and (threshold is None or score >= threshold)]
        vectors = _only(vectors, tagged)
    else:
        vectors = _filtered(store, vectors, filters, folder)
    if not len(vectors):
        return []
    terms = parse_query([query] if isinstance(query, str) else query or [])
    query_vector = combine(embed_terms(terms, store, get_encoder), [t.weight for t in terms])
    return _hits(store, vectors, top_k(vectors.matrix, query_vector, top), threshold)


def similar(
    image: str | os.PathLike,
    store: Store,
    get_encoder: GetQueryModel,
    top: int = 10,
    folder: str | None = None,
    threshold: float | None = None,
    filters: Filters | None = None,
) -> list[Hit]:
    """Images most like `image` (indexed or not); the image itself is never listed."""
    check_finite(threshold, "--threshold")
    path = normalise_path(image)
    if not os.path.isfile(path) and store.vector_for_path(path) is None:
        raise QueryError(f"no such image: {image} (not a file, and not in the index)")
    vectors = _filtered(store, _load_vectors(store, folder), filters, folder)
    if not len(vectors):
        return []
    query_vector = embed_terms([Term(path, 1.0, True)], store, get_encoder)[0]
    own_id = store.id_for_path(path)
    exclude = {int(i) for i in np.flatnonzero(vectors.ids == own_id)} if own_id is not None else set()
    return _hits(store, vectors, top_k(vectors.matrix, query_vector, top, exclude), threshold)


__all__ = ["EmptyIndexError", "Filters", "Hit", "QueryError", "StoreError", "Term", "find", "parse_query", "similar",
           "top_k"]
