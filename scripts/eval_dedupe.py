"""Precision and recall of each dedupe tier on a generated library whose duplicates are known.

    python scripts/eval_dedupe.py [--families 40] [--unrelated 100] [--model models/tiny-clip]

The library (clipsearch.scenes.write_duplicate_library) holds, per family, an
original, an exact copy, nine near-identical renditions (resized, JPEG q50 and
q95, PNG, WebP, metadata stripped, EXIF-rotated, 2% crop, 8% brighter), a
greyscale copy, two burst frames and a lookalike (same colour, shape and
background, another photo); then unrelated photos and RAW+JPEG pairs. Each
family also gets the geometric edits of GEOMETRIC_EDITS (issue 20): an 80% centre
crop, a 70% crop off-centre, a mirror image, a 90° rotation without an EXIF tag,
a letterbox to a square and a white frame; they are renditions too.

Pairs of files are counted per tier. Truth: exact = same bytes; near = two
renditions of one family's picture that are not byte-identical; similar = a
burst frame with another burst frame or a rendition of its family. Greyscale
copies are left out of the similar tier's count (we do not claim either way);
everything else not listed is a negative, including lookalikes and RAW+JPEG siblings.
Tiers nest, so a tier's predicted pairs are those it joins beyond the tiers above it.

Per edit, recall is the share of families whose edited file ends in one exact or near
group with the family's original; a false group is a near group joining files that are
not renditions of one picture.

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

from PIL import Image, ImageOps

from clipsearch.dedupe.groups import DedupeOptions, find_duplicates
from clipsearch.indexing.job import index_folders
from clipsearch.models.torch_encoder import Encoder
from clipsearch.store import Store
from clipsearch_dev import scenes

REPO = Path(__file__).resolve().parent.parent
GEOMETRIC_EDITS = ("crop80-centre", "crop70-offset", "mirror", "rotate90-no-exif", "letterbox-square", "white-frame")
RENDITIONS = {"original", *scenes.NEAR_KINDS, *GEOMETRIC_EDITS}


def _geometric(original: Image.Image, kind: str) -> Image.Image:
    """One of GEOMETRIC_EDITS applied to the original picture."""
    width, height = original.size
    if kind.startswith("crop"):
        share, (x, y) = (0.8, (0.5, 0.5)) if kind == "crop80-centre" else (0.7, (0.15, 0.8))
        w, h = round(width * share ** 0.5), round(height * share ** 0.5)
        left, top = round((width - w) * x), round((height - h) * y)
        return original.crop((left, top, left + w, top + h))
    if kind == "mirror":
        return original.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "rotate90-no-exif":
        return original.transpose(Image.Transpose.ROTATE_270)  # turned clockwise by hand, no orientation tag
    side = max(width, height) if kind == "letterbox-square" else None
    canvas = Image.new("RGB", (side, side) if side else (width + 48, height + 48),
                       (0, 0, 0) if side else (255, 255, 255))
    canvas.paste(original, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


def _one_picture(families: set) -> bool:
    return len(families) == 1 and None not in families


def add_geometric_edits(library: Path, files: list[scenes.LibraryFile]) -> list[scenes.LibraryFile]:
    """Write GEOMETRIC_EDITS of every family's original under library/geometric/."""
    folder = library / "geometric"
    folder.mkdir(exist_ok=True)
    added = []
    for original in [f for f in files if f.kind == "original"]:
        with Image.open(original.path) as opened:
            picture = ImageOps.exif_transpose(opened).convert("RGB")
        for kind in GEOMETRIC_EDITS:
            path = folder / f"{original.path.stem}-{kind}.jpg"
            _geometric(picture, kind).save(path, quality=88)
            added.append(scenes.LibraryFile(path, original.family, kind))
    return added


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
        files += add_geometric_edits(library, files)
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
    together = predicted["exact"] | predicted["near"]
    originals = {f.family: str(f.path) for f in files if f.kind == "original"}
    print(f"{'edit':18} {'recall':>7}   (families whose edited copy is grouped with the original)")
    for kind in (*scenes.NEAR_KINDS[1:], *GEOMETRIC_EDITS):
        edited = [f for f in files if f.kind == kind]
        found = sum(frozenset((originals[f.family], str(f.path))) in together for f in edited)
        print(f"{kind:18} {found / max(1, len(edited)):7.3f}   ({found}/{len(edited)})")
    family_of = {str(f.path): (f.family if f.kind in RENDITIONS else None) for f in files}
    false_groups = [g for g in groups if g.tier == "near" and not _one_picture({family_of[m.path] for m in g.members})]
    print(f"false near groups (files that are not renditions of one picture): {len(false_groups)}")
    for group in false_groups[:5]:
        print("  false group:", ", ".join(Path(m.path).name for m in group.members))
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
