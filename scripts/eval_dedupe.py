"""Precision and recall of each dedupe tier on a generated library whose duplicates are known.

    python scripts/eval_dedupe.py [--families 40] [--unrelated 100] [--model models/tiny-clip]

The library (clipsearch.scenes.write_duplicate_library) holds, per family, an
original, an exact copy, nine near-identical renditions (resized, JPEG q50 and
q95, PNG, WebP, metadata stripped, EXIF-rotated, 2% crop, 8% brighter), a
greyscale copy, two burst frames and a lookalike (same colour, shape and
background, another photo); then unrelated photos and RAW+JPEG pairs.

Pairs of files are counted per tier. Truth: exact = same bytes; near = two
renditions of one family's picture that are not byte-identical; similar = a
burst frame with another burst frame or a rendition of its family. Greyscale
copies are left out of the similar tier's count (we do not claim either way);
everything else not listed is a negative, including lookalikes and RAW+JPEG siblings.
Tiers nest, so a tier's predicted pairs are those it joins beyond the tiers above it.

Then the keep choice: every exact and near group of a family should keep the camera
original (the only file with the camera's EXIF besides its exact copy and the
EXIF-rotated rendition), not the larger q95 re-encode or the lossless PNG export.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipsearch.dedupe.groups import DedupeOptions, find_duplicates
from clipsearch.indexing.job import index_folders
from clipsearch.models.torch_encoder import Encoder
from clipsearch.store import Store
from clipsearch_dev import scenes

REPO = Path(__file__).resolve().parent.parent
RENDITIONS = {"original", *scenes.NEAR_KINDS}


def truth_pairs(files: list[scenes.LibraryFile]) -> dict[str, set[frozenset]]:
    digest = {f.path: hashlib.sha256(f.path.read_bytes()).hexdigest() for f in files}
    truth = {"exact": set(), "near": set(), "similar": set(), "ignore_similar": set()}
    for a, b in itertools.combinations(files, 2):
        pair = frozenset((str(a.path), str(b.path)))
        if digest[a.path] == digest[b.path]:
            truth["exact"].add(pair)
        elif a.family >= 0 and a.family == b.family:
            if a.kind in RENDITIONS and b.kind in RENDITIONS:
                truth["near"].add(pair)
            elif "grey" in (a.kind, b.kind):
                truth["ignore_similar"].add(pair)
            else:
                truth["similar"].add(pair)
    return truth


def predicted_pairs(groups) -> dict[str, set[frozenset]]:
    """Pairs each tier joins beyond the tiers above it (tiers group the kept files of the tier above)."""
    clusters: dict[str, set[str]] = {}  # kept path -> every file it stands for

    def expand(path: str) -> set[str]:
        return clusters.get(path, {path})

    predicted = {}
    for tier in ("exact", "near", "similar"):
        pairs: set[frozenset] = set()
        for group in (g for g in groups if g.tier == tier):
            parts = [expand(m.path) for m in group.members]
            for left, right in itertools.combinations(parts, 2):
                pairs.update(frozenset((a, b)) for a in left for b in right)
            clusters[group.keep.path] = set().union(*parts)
            for member in group.others:
                clusters.pop(member.path, None)
        predicted[tier] = pairs
    return predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", type=int, default=40)
    parser.add_argument("--unrelated", type=int, default=100)
    parser.add_argument("--raw-pairs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--model", default=str(REPO / "models" / "tiny-clip"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        library = Path(workdir) / "library"
        files = scenes.write_duplicate_library(library, args.families, args.unrelated, args.raw_pairs, args.seed)
        with Store.open(Path(workdir) / "index.db") as store:
            index_folders([library], store, encoder=Encoder.load(args.model, "cpu"))
            started = time.perf_counter()
            groups = find_duplicates(store, options=DedupeOptions(similar=True))
            seconds = time.perf_counter() - started
        truth = truth_pairs(files)
        predicted = predicted_pairs(groups)

    print(f"library: {len(files)} files ({args.families} families, {args.unrelated} unrelated, "
          f"{args.raw_pairs} RAW+JPEG pairs); model {args.model}; dedupe took {seconds:.2f}s")
    print(f"{'tier':8} {'groups':>6} {'pairs':>6} {'true':>6} {'precision':>9} {'recall':>7}")
    for tier in ("exact", "near", "similar"):
        guessed = predicted[tier] - (truth["ignore_similar"] if tier == "similar" else set())
        correct = guessed & truth[tier]
        precision = len(correct) / len(guessed) if guessed else 1.0
        recall = len(correct) / len(truth[tier]) if truth[tier] else 1.0
        count = sum(1 for g in groups if g.tier == tier)
        print(f"{tier:8} {count:6d} {len(guessed):6d} {len(truth[tier]):6d} {precision:9.3f} {recall:7.3f}")
    raw_joined = sum(1 for g in groups for a, b in itertools.combinations([m.path for m in g.members], 2)
                     if Path(a).stem == Path(b).stem and Path(a).parent == Path(b).parent)
    print(f"RAW+JPEG siblings grouped: {raw_joined}")
    kinds = {str(f.path): f.kind for f in files}
    family_groups = [g for g in groups if g.tier in ("exact", "near") and kinds[g.keep.path] != "raw"
                     and kinds[g.keep.path] not in ("unrelated", "raw-jpeg")]
    wrong_keep = [g for g in family_groups if kinds[g.keep.path] != "original"]
    print(f"exact and near groups keeping the camera original: {len(family_groups) - len(wrong_keep)}"
          f"/{len(family_groups)}")
    for group in wrong_keep[:10]:
        print(f"  kept {kinds[group.keep.path]} ({group.reason}): {group.keep.path}")
    wrong_near = [pair for pair in predicted["near"] if pair not in truth["near"]]
    for pair in sorted(wrong_near, key=sorted)[:10]:
        print("  wrong near pair:", " <> ".join(sorted(pair)))


if __name__ == "__main__":
    main()
