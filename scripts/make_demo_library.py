"""Write a folder of generated demo photos (coloured shapes on backgrounds) for `make demo`.

    python scripts/make_demo_library.py DIR [COUNT]

Besides COUNT scenes it writes DIR/imported/: three photos with copies,
renditions and burst frames, and a RAW+JPEG pair, for `clipsearch dedupe`,
DIR/travels/: photos with words on them and a GPS position, for `clipsearch ocr`,
`find --text` and `find --place`; and DIR-vocabulary.txt: tags the demo's model knows,
for `clipsearch tag`.
"""

import random
import sys
from pathlib import Path

from PIL import Image
from PIL.TiffImagePlugin import IFDRational

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # clipsearch_dev: not installed

from clipsearch_dev import scenes, text_scenes

# (file name, words on it, where it was taken): Lisbon and Porto in Portugal, Sydney in Australia.
TRAVELS = [
    ("lisbon-tram.jpg", ["TRAM", "parking"], (38.7139, -9.1394)),
    ("lisbon-cafe.jpg", ["Café", "pastry"], (38.7107, -9.1427)),
    ("porto-station.jpg", ["station", "Porto"], (41.1456, -8.6109)),
    ("porto-market.jpg", ["market", "fish"], (41.1496, -8.6059)),
    ("sydney-harbour.jpg", ["harbour", "ferry"], (-33.8610, 151.2110)),
    ("sydney-beach.jpg", ["beach", "surf"], (-33.8915, 151.2767)),
]


def _degrees(value: float) -> tuple[IFDRational, ...]:
    """Decimal degrees as a camera writes them in EXIF: degrees, minutes, seconds."""
    value = abs(value)
    minutes = (value - int(value)) * 60
    return IFDRational(int(value), 1), IFDRational(int(minutes), 1), IFDRational(round((minutes % 1) * 6000), 100)


def write_travels(folder: Path) -> int:
    """Photos with words on signs and the GPS position of a phone."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2026)
    for name, words, (lat, lon) in TRAVELS:
        image, _placed = text_scenes.draw_text_photo(rng, words, (800, 600), [56, 48])
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Google", "Pixel 8"
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2] = ("N" if lat >= 0 else "S"), _degrees(lat)
        gps[3], gps[4] = ("E" if lon >= 0 else "W"), _degrees(lon)
        image.save(folder / name, quality=92, exif=exif)
    return len(TRAVELS)


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else "demo-library"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    written = scenes.write_library(folder, count, seed=2026, size=(640, 480))
    # A few copies, re-encodings and bursts for `clipsearch dedupe` to find.
    dupes = scenes.write_duplicate_library(f"{folder}/imported", families=3, unrelated=0, raw_pairs=1, seed=2026)
    travels = write_travels(Path(folder) / "travels")
    with open(f"{folder}-vocabulary.txt", "w", encoding="utf-8") as handle:  # for `clipsearch tag --vocab`
        handle.write(scenes.tag_vocabulary())
    print(f"wrote {len(written) + len(dupes) + travels} demo photos to {folder}/ (file names say what each shows; "
          f"{folder}/imported holds duplicates, {folder}/travels words and GPS positions)")


if __name__ == "__main__":
    main()
