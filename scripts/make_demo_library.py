"""Write a folder of generated demo photos (coloured shapes on backgrounds) for `make demo`.

    python scripts/make_demo_library.py DIR [COUNT]
"""

import sys

from clipsearch import scenes


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else "demo-library"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    written = scenes.write_library(folder, count, seed=2026, size=(640, 480))
    print(f"wrote {len(written)} demo photos to {folder}/ (file names say what each shows)")


if __name__ == "__main__":
    main()
