"""Write a folder of generated demo photos (coloured shapes on backgrounds) for `make demo`.

    python scripts/make_demo_library.py DIR [COUNT]

Besides COUNT scenes it writes DIR/imported/: three photos with copies,
renditions and burst frames, and a RAW+JPEG pair, for `clipsearch dedupe`,
and DIR-vocabulary.txt: tags the demo's model knows, for `clipsearch tag`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # clipsearch_dev: not installed

from clipsearch_dev import scenes


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else "demo-library"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    written = scenes.write_library(folder, count, seed=2026, size=(640, 480))
    # A few copies, re-encodings and bursts for `clipsearch dedupe` to find.
    dupes = scenes.write_duplicate_library(f"{folder}/imported", families=3, unrelated=0, raw_pairs=1, seed=2026)
    with open(f"{folder}-vocabulary.txt", "w", encoding="utf-8") as handle:  # for `clipsearch tag --vocab`
        handle.write(scenes.tag_vocabulary())
    print(f"wrote {len(written) + len(dupes)} demo photos to {folder}/ (file names say what each shows; "
          f"{folder}/imported holds duplicates)")


if __name__ == "__main__":
    main()
