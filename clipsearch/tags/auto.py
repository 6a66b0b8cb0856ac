"""Zero-shot tagging: scoring stored image vectors against a vocabulary of tags.

Each tag is one or more prompts; the tag's vector is the normalised mean of
their text vectors (a prompt ensemble, steadier than any single wording). An
image gets a tag when the cosine between the two clears a threshold, best
first, at most `max_tags` of them: a confidence rule, not a fixed top-N, so a
photo of a wall gets no tags rather than the five least bad ones.

Tagging needs only the stored vectors and the text encoder: no image is
re-read, and the tags' text vectors are kept in the index, so only the first
run with a vocabulary loads the model. A run remembers, per image, which model, vocabulary version and
settings it was tagged with, so the next run tags only new or changed images,
and a new vocabulary, model or threshold re-tags everything.

The index remembers the vocabulary of its last run (its text, in `meta`), so a
later `tag` without --vocab goes on with it instead of the built-in one, and a
run with another vocabulary file that would replace its tags refuses unless
told (--retag).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInputError, check_finite
from ..models import tuning
from ..models.protocols import GetTextEncoder
from ..options import DEFAULT_MAX_TAGS
from ..paths import normalise_path
from ..store import Store, vector_index
from ..store.tags import TagStore

if TYPE_CHECKING:
    from ..indexing.job import Progress

TEMPLATES = ("a photo of {}", "a picture of {}", "{}")
BUILT_IN = "built-in"
VOCABULARY_KEY = "tag_vocabulary"  # meta key: the last run's vocabulary, {"source", "text"}


# Tags are printed in tables, sidecars and web pages: a long one costs time everywhere (rich lays out a
# 100k-character tag in 87 s), and a control character (an ANSI escape, a bidi override) is not text.
MAX_TAG_LENGTH = 200
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class TagError(BadInputError):
    """Tagging cannot run as asked; the message says why."""


def clean_tag(text: str, where: str = "") -> str:
    """A tag as stored: runs of whitespace made one space; empty, overlong or control characters refused.

    `where` starts the message ("vocab.txt, line 3: ") when the tag comes from a file.
    """
    tag = " ".join(text.split())
    if not tag:
        raise TagError(f"{where}A tag cannot be empty.")
    if len(tag) > MAX_TAG_LENGTH:
        raise TagError(f"{where}A tag can be at most {MAX_TAG_LENGTH} characters; {tag[:40]!r}... has {len(tag)}. "
                       "Use a shorter name.")
    for char in tag:
        if unicodedata.category(char) in ("Cc", "Cs") or char in _BIDI_CONTROLS:
            what = "a byte that is not UTF-8" if unicodedata.category(char) == "Cs" else f"U+{ord(char):04X}"
            raise TagError(f"{where}The tag {tag[:40]!r} contains a control character ({what}); tags are plain "
                           "text: leave it out.")
    return tag


@dataclass(frozen=True)
class Vocabulary:
    source: str  # a file path, or "built-in"
    version: str  # a hash of the tags and prompts: tagging reruns when it changes
    prompts: dict[str, tuple[str, ...]]

    @property
    def tags(self) -> list[str]:
        return list(self.prompts)

    def to_text(self) -> str:
        """The vocabulary as a file would say it; parsing it gives the same tags, prompts and version."""
        return "".join(f"{tag}: {' | '.join(prompts)}\n" for tag, prompts in self.prompts.items())


def parse_vocabulary(text: str, source: str) -> Vocabulary:
    """`tag` or `tag: prompt one | prompt two` per line; # comments; errors name the line."""
    prompts: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tag, _, given = line.partition(":")
        if not tag.strip():
            raise TagError(f"{source}, line {number}: no tag before ':'.")
        tag = clean_tag(tag, f"{source}, line {number}: ")
        if tag in prompts:
            raise TagError(f"{source}, line {number}: tag '{tag}' is listed twice.")
        phrases = tuple(p.strip() for p in given.split("|") if p.strip())
        prompts[tag] = phrases or tuple(template.format(tag) for template in TEMPLATES)
    if not prompts:
        raise TagError(f"{source} holds no tags. Write one tag per line, e.g. 'dog: a dog | a puppy'.")
    canonical = "\n".join(f"{tag}:{'|'.join(p)}" for tag, p in prompts.items())
    return Vocabulary(source, hashlib.sha256(canonical.encode()).hexdigest()[:12], prompts)


def load_vocabulary(path: str | os.PathLike | None = None) -> Vocabulary:
    """The user's vocabulary file, or the built-in one shipped in the package."""
    if path is None:
        text = resources.files("clipsearch.tags").joinpath("vocabulary.txt").read_text(encoding="utf-8")
        return parse_vocabulary(text, BUILT_IN)
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise TagError(f"Cannot read the vocabulary {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise TagError(f"{path} is not a UTF-8 text file; write one tag per line.") from None
    return parse_vocabulary(text, str(path))


def remembered_vocabulary(store: Store) -> Vocabulary | None:
    """The vocabulary the index was last tagged with, or None."""
    stored = store.get_meta(VOCABULARY_KEY)
    if not stored:
        return None
    try:
        data = json.loads(stored)
        return parse_vocabulary(data["text"], data["source"])
    except (ValueError, KeyError, TypeError, TagError):
        return None


def vocabulary_for(store: Store, path: str | os.PathLike | None = None) -> Vocabulary:
    """The vocabulary a run uses: the file given, else the one the index remembers, else the built-in one."""
    if path is not None:
        return load_vocabulary(path)
    return remembered_vocabulary(store) or load_vocabulary()


def _check_replacing(store: Store, vocabulary: Vocabulary, model_id: str, retag: bool) -> None:
    """Refuse to replace another vocabulary's automatic tags without being told to."""
    previous = remembered_vocabulary(store)
    if retag or previous is None or previous.source == vocabulary.source:
        return
    count = TagStore(store).runs_with_other_vocabulary(model_id, vocabulary.version)
    if count:
        raise TagError(f"{count} images are tagged with the vocabulary {previous.source}; tagging with "
                       f"{vocabulary.source} would replace their automatic tags (manual tags stay). Pass --retag to "
                       f"do that, or --vocab {previous.source} to go on with it.")


def tag_vectors(vocabulary: Vocabulary, embed_texts: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """One unit vector per tag: the normalised mean of its prompts' vectors."""
    all_prompts = [p for prompts in vocabulary.prompts.values() for p in prompts]
    embedded = embed_texts(all_prompts)
    vectors, start = [], 0
    for prompts in vocabulary.prompts.values():
        mean = embedded[start:start + len(prompts)].mean(axis=0)
        vectors.append(mean / np.linalg.norm(mean))
        start += len(prompts)
    return np.stack(vectors).astype(np.float32)


def choose_tags(scores: np.ndarray, names: list[str], threshold: float, max_tags: int) -> list[list[tuple[str, float]]]:
    """Per image (row of `scores`): the tags at or above `threshold`, best first, at most `max_tags`."""
    chosen = []
    for row in scores:
        above = np.flatnonzero(row >= threshold)
        best = above[np.argsort(-row[above], kind="stable")][:max_tags]
        chosen.append([(names[i], float(row[i])) for i in best])
    return chosen


@dataclass
class TagOptions:
    threshold: float | None = None  # None: the model's default (tuning.py)
    max_tags: int = DEFAULT_MAX_TAGS
    retag: bool = False  # tag again even images already tagged with these settings


@dataclass
class TagReport:
    vocabulary: str
    vocabulary_version: str
    tags_in_vocabulary: int
    threshold: float
    max_tags: int
    tagged: int = 0  # images scored in this run
    skipped: int = 0  # already tagged with this model, vocabulary and settings
    assigned: int = 0  # tags given
    untagged: int = 0  # images scored that cleared no tag
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # tag -> images given it in this run

    @property
    def images_per_second(self) -> float:
        return self.tagged / self.seconds if self.seconds else 0.0


def tag_images(store: Store, get_encoder: GetTextEncoder, folders: list[str] | None = None,
               vocabulary: Vocabulary | None = None, options: TagOptions | None = None,
               progress: Progress | None = None, batch: int = 4096) -> TagReport:
    """Give the indexed images (all, or those under `folders`) tags from `vocabulary`; `progress` hears
    `started("Tagging", images to score)` and an `advance` per batch."""
    with store.writer():
        return _tag_images(store, get_encoder, folders, vocabulary, options, progress, batch)


def _tag_images(store: Store, get_encoder: GetTextEncoder, folders: list[str] | None, vocabulary: Vocabulary | None,
                options: TagOptions | None, progress: Progress | None, batch: int) -> TagReport:
    started = time.perf_counter()
    options = options or TagOptions()
    vocabulary = vocabulary or vocabulary_for(store)
    recorded = store.model()
    if recorded is None:
        raise TagError(f"The index {store.path} is empty. Run: clipsearch index DIR")
    model_id, _ = recorded
    check_finite(options.threshold, "--threshold")
    threshold = tuning.for_model(model_id)["tag_threshold"] if options.threshold is None else options.threshold
    run_key = (model_id, vocabulary.version, f"threshold={threshold:g};max={options.max_tags}")
    report = TagReport(vocabulary.source, vocabulary.version, len(vocabulary.prompts), threshold, options.max_tags)

    tag_store = TagStore(store)
    scopes = [normalise_path(f) for f in folders] if folders else [None]
    for scope in scopes:
        if scope is not None and not os.path.isdir(scope) and store.count(scope) == 0:
            raise TagError(f"{scope} is not a folder, and nothing under it is indexed.")
    wanted: list[int] = []
    for scope in scopes:
        in_scope = store.count(scope)
        todo = tag_store.untagged(("", "", ""), scope) if options.retag else tag_store.untagged(run_key, scope)
        report.skipped += in_scope - len(todo)
        wanted.extend(todo)
    wanted = sorted(set(wanted))
    if wanted:
        _check_replacing(store, vocabulary, model_id, options.retag)
    store.set_meta(VOCABULARY_KEY, json.dumps({"source": vocabulary.source, "text": vocabulary.to_text()}))
    if not wanted:
        report.seconds = time.perf_counter() - started
        return report

    names = vocabulary.tags
    vectors = tag_store.tag_vectors(model_id, vocabulary.version, names)
    if vectors is None:  # first run with this vocabulary and model: embed its prompts once
        encoder = get_encoder()
        if encoder.model_id != model_id:
            raise TagError(f"Tagging needs the index's model {model_id}, not {encoder.model_id}.")
        vectors = tag_vectors(vocabulary, encoder.embed_texts)
        tag_store.save_tag_vectors(model_id, vocabulary.version, names, vectors)
    stored = vector_index.open_index(store)
    if progress:
        progress.started("Tagging", len(wanted))
    for start in range(0, len(wanted), batch):
        found, matrix = stored.rows_for(wanted[start:start + batch])
        ids = [int(i) for i in found]
        scores = matrix @ vectors.T
        chosen = choose_tags(scores, names, threshold, options.max_tags)
        tag_store.write_auto_tags(dict(zip(ids, chosen)), run_key)
        report.tagged += len(ids)
        for tags in chosen:
            report.assigned += len(tags)
            report.untagged += not tags
            for tag, _ in tags:
                report.counts[tag] = report.counts.get(tag, 0) + 1
        if progress:
            progress.advance(len(ids))
    report.seconds = time.perf_counter() - started
    return report


def edit_tags(store: Store, image: str | os.PathLike, add: Sequence[str] = (),
              remove: Sequence[str] = ()) -> list[dict]:
    """Manual tags on one indexed image; returns its tags afterwards."""
    path = normalise_path(image)
    image_id = store.id_for_path(path)
    if image_id is None:
        raise TagError(f"{image} is not in the index {store.path}. Index it first: clipsearch index FOLDER")
    add = [clean_tag(t) for t in add]
    remove = [clean_tag(t) for t in remove]
    tag_store = TagStore(store)
    with store.writer():
        if remove:
            had = [row["tag"] for row in tag_store.tags_of([image_id]).get(image_id, [])]
            if not set(remove) & set(had):
                names = ", ".join(repr(t) for t in remove)
                has = f"its tags are: {', '.join(had)}" if had else "it has no tags"
                raise TagError(f"{image} has no tag {names}, so nothing was changed ({has}).")
        tag_store.set_manual_tags(image_id, add, remove)
    return tag_store.tags_of([image_id]).get(image_id, [])
