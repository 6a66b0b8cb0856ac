"""Accuracy of zero-shot tagging on generated scenes whose colour and shape are known.

    python scripts/eval_tags.py [--scenes 600] [--threshold 0.42] [--model models/tiny-clip]

Indexes generated scenes with the shipped tiny CLIP model, tags them with a
vocabulary of the 8 colours and 5 shapes plus 5 tags they never show (dog,
car, sunset, receipt, people), and reports how many scenes got exactly their
two right tags, per-tag-kind precision and recall, and how often an unrelated
tag was given. With --sweep it repeats the scoring over a range of thresholds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipsearch.indexing.job import index_folders
from clipsearch.models.torch_encoder import Encoder
from clipsearch.store import Store
from clipsearch.store.tags import TagStore
from clipsearch.tags import auto as tags
from clipsearch_dev import scenes

REPO = Path(__file__).resolve().parent.parent


def score(assigned: dict[str, set[str]], truth: dict[str, set[str]]) -> dict[str, float]:
    exact = sum(assigned[p] == truth[p] for p in truth) / len(truth)
    result = {"exactly right": exact}
    for kind, names in (("colour", set(scenes.COLOURS)), ("shape", set(scenes.SHAPES))):
        given = sum(len(assigned[p] & names) for p in truth)
        right = sum(len(assigned[p] & truth[p] & names) for p in truth)
        result[f"{kind} precision"] = right / given if given else 1.0
        result[f"{kind} recall"] = right / len(truth)
    result["unrelated tags given"] = sum(len(assigned[p] & set(scenes.UNRELATED_TAGS)) for p in truth)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threshold", type=float, default=None, help="default: the model's (0.42 for tiny-clip)")
    parser.add_argument("--model", default=str(REPO / "models" / "tiny-clip"))
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    encoder = Encoder.load(args.model, "cpu")
    vocabulary = tags.parse_vocabulary(scenes.tag_vocabulary(), "scene colours and shapes")
    with tempfile.TemporaryDirectory() as workdir:
        library = scenes.write_library(Path(workdir) / "scenes", args.scenes, seed=args.seed)
        truth = {str(path): {scene.colour, scene.shape} for path, scene in library}
        with Store.open(Path(workdir) / "index.db") as store:
            index_folders([Path(workdir) / "scenes"], store, encoder=encoder)
            report = tags.tag_images(store, lambda: encoder, None, vocabulary, tags.TagOptions(args.threshold))
            assigned = {path: set(found) for path, found in TagStore(store).tags_by_path().items()}
            assigned = {path: assigned.get(path, set()) for path in truth}
            print(f"{args.scenes} scenes, {len(vocabulary.tags)} tags, threshold {report.threshold:g}, "
                  f"model {args.model}")
            for name, value in score(assigned, truth).items():
                print(f"  {name:22} {value:.3f}" if isinstance(value, float) else f"  {name:22} {value}")
            if args.sweep:
                vectors = tags.tag_vectors(vocabulary, encoder.embed_texts)
                stored = store.vectors()
                paths = store.image_rows(stored.ids.tolist())
                scores = np.asarray(stored.matrix) @ vectors.T
                for threshold in np.arange(0.30, 0.50, 0.02):
                    chosen = tags.choose_tags(scores, vocabulary.tags, threshold, tags.DEFAULT_MAX_TAGS)
                    swept = {paths[int(i)]["path"]: {t for t, _ in c} for i, c in zip(stored.ids, chosen)}
                    print(f"  threshold {threshold:.2f}: exactly right {score(swept, truth)['exactly right']:.3f}")


if __name__ == "__main__":
    main()
