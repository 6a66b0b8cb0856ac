"""Opening image files safely and turning them into model-sized pixel arrays.

Everything here is model-agnostic: the caller says how many pixels it wants
(`Preprocess`), and this module decodes as few as it can (JPEG draft mode),
applies EXIF orientation, guards against decompression bombs and reports
every failure as an `ImageError` whose message names the problem.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError
from ..models.preprocess import Preprocess
from ..options import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_MEGAPIXELS
from . import fingerprint, formats, metadata

pillow_heif = formats.register()  # HEIC/HEIF, before supported_extensions() reads Pillow's registry

# We enforce our own, clearer pixel limit (see `decode`).
Image.MAX_IMAGE_PIXELS = None

# Formats Pillow opens that are not still pictures: video and animation (FLI, MPEG), vector formats that
# need Ghostscript or Windows (EPS, WMF/EMF), scientific data stubs without a loader (BUFR, GRIB, HDF5),
# IPTC records, and icons, cursors and brushes that litter application folders.
_NOT_PHOTOS = frozenset({"FLI", "MPEG", "EPS", "WMF", "BUFR", "GRIB", "HDF5", "IPTC", "GBR", "CUR", "ICO", "ICNS"})
# Image sequences (bursts, animations) of formats whose single images are indexed.
_SEQUENCE_EXTENSIONS = frozenset({".avifs", ".heics", ".heifs"})

# Camera RAW formats. They are read through the full-size JPEG preview that
# cameras embed in them: what the camera showed, at a fraction of a RAW decode's cost.
RAW_EXTENSIONS = frozenset({
    ".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".iiq", ".k25", ".kdc", ".mef", ".mos",
    ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".raw", ".rw2", ".rwl", ".sr2", ".srf", ".srw", ".x3f",
})


@functools.cache
def supported_extensions() -> frozenset[str]:
    """Lower-case extensions (with dot) of the still-image formats the installed Pillow plugins can open
    (JPEG 2000, PSD, QOI... included; taken from Pillow's registry, so a new plugin adds its formats), plus RAW."""
    registered = Image.registered_extensions()
    readable = {ext.lower() for ext, fmt in registered.items() if fmt in Image.OPEN and fmt not in _NOT_PHOTOS}
    if registered.get(".jpg") in Image.OPEN:
        readable.add(".mpo")  # multi-picture JPEG (3D and some phone cameras): Pillow's JPEG opener reads it
    return frozenset(readable - _SEQUENCE_EXTENSIONS) | RAW_EXTENSIONS


def check_limits(max_megapixels: float, max_file_mb: float) -> None:
    """Refuse limits that would turn the guards off (NaN compares false with every size) or skip every image."""
    for value, option, unit, default in ((max_megapixels, "--max-megapixels", "megapixels", DEFAULT_MAX_MEGAPIXELS),
                                         (max_file_mb, "--max-file-size", "MB", DEFAULT_MAX_FILE_MB)):
        if not 0 < value < math.inf:  # also NaN
            raise BadInputError(f"{option} {value:g} is not a usable limit: give a number of {unit} above 0 "
                                f"(the default is {default:g}).")


def is_raw(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in RAW_EXTENSIONS


class ImageError(Exception):
    """A file that cannot be turned into pixels; the message is the reason."""


@dataclass
class DecodedImage:
    pixels: np.ndarray  # uint8, crop_height x crop_width x 3
    width: int  # displayed size of the original (after EXIF orientation)
    height: int
    phash: bytes  # perceptual hash of the whole upright picture (see fingerprint.py)
    colourfulness: float
    metadata: metadata.PhotoMetadata = field(default_factory=metadata.PhotoMetadata)  # EXIF date, camera, GPS
    geometry: bytes | None = None  # trimmed borders and symmetry/crop hashes (fingerprint.geometry)


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """OS errors while reading a file, as reasons a person understands (ImageError)."""
    try:
        yield
    except FileNotFoundError:
        raise ImageError("vanished during the run") from None
    except PermissionError:
        raise ImageError("permission denied (check the file's read permission)") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from None


def read_bytes(path: str) -> bytes:
    """Read a whole file, translating OS errors into reasons a person understands."""
    with _reading(), open(path, "rb") as handle:
        data = handle.read()
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data


def read_and_hash(path: str, max_file_mb: float = DEFAULT_MAX_FILE_MB) -> tuple[str, bytes]:
    """SHA-256 and bytes of a file, read in chunks; a file over `max_file_mb` is refused before it is read.

    The size is checked again while reading, so a file that grows (or a sparse
    file that claims less) never takes more memory than the limit.
    """
    import hashlib

    limit = int(max_file_mb * 1024 * 1024)
    too_large = f"larger than {max_file_mb:g} MB (--max-file-size); not read"
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    read = 0
    with _reading(), open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size > limit:
            raise ImageError(too_large)
        while chunk := handle.read(1 << 20):
            read += len(chunk)
            if read > limit:
                raise ImageError(too_large)
            digest.update(chunk)
            chunks.append(chunk)
    if not read:
        raise ImageError("empty file (0 bytes)")
    return digest.hexdigest(), b"".join(chunks)


def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB without surprises: transparent areas become white, not black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale (some TIFF/PNG scans): scale down to 8 bits first.
        array = np.asarray(image, dtype=np.float32)
        peak = float(array.max()) or 1.0
        return Image.fromarray((array * (255.0 / max(peak, 255.0))).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def open_oriented(
    data: bytes, min_short_side: int | None = None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    orientation: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode `data` upright as RGB; also return the original's displayed width and height."""
    image, size, _ = _open(data, min_short_side, max_megapixels, orientation)
    return image, size


def _open(
    data: bytes, min_short_side: int | None, max_megapixels: float, orientation: int | None,
) -> tuple[Image.Image, tuple[int, int], metadata.PhotoMetadata]:
    """`open_oriented`, plus the EXIF metadata read from the same opened file.

    `min_short_side` is the smallest short side the caller needs; JPEGs are then
    decoded with Pillow's draft mode (DCT scaling by 1/2, 1/4 or 1/8), which is
    several times faster than a full decode followed by a resize.
    `orientation` overrides the file's own EXIF orientation (for RAW previews).
    """
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_megapixels * 1_000_000:
            raise ImageError(
                f"too large ({width}x{height}, {width * height / 1e6:.0f} MP > "
                f"{max_megapixels:g} MP limit; raise it with --max-megapixels)"
            )
        found = metadata.from_image(image)
        if orientation is None:
            orientation = _orientation(image)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        if min_short_side and image.format == "JPEG":
            scale = min(width, height) / min_short_side
            if scale >= 2:
                image.draft("RGB", (int(image.width / scale) + 1, int(image.height / scale) + 1))
        image.load()
        if orientation in _TRANSPOSE:
            image = image.transpose(_TRANSPOSE[orientation])
        return _flatten_to_rgb(image), (width, height), found
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        message = str(exc) or type(exc).__name__
        if "truncated" in message:
            raise ImageError("truncated or incomplete file") from None
        raise ImageError(f"corrupt image ({message})") from None


# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001  (broken EXIF blocks are common and harmless here)
        return 1


_JPEG_START = re.compile(rb"\xff\xd8\xff[\xc0-\xfe]")


def raw_preview(data: bytes) -> tuple[bytes, int, metadata.PhotoMetadata]:
    """The largest JPEG embedded in a camera RAW file, the RAW's EXIF orientation and its metadata.

    Every common RAW format (CR2/CR3, NEF, ARW, DNG, ORF, RW2, RAF, PEF...)
    carries a JPEG the camera rendered; scanning for JPEG start markers finds it
    without a RAW decoder. The preview itself usually has no orientation tag.
    """
    view = memoryview(data)
    best, best_area = None, 0
    for count, match in enumerate(_JPEG_START.finditer(data)):
        if count >= 64:
            break
        try:
            with Image.open(io.BytesIO(view[match.start():])) as candidate:
                area = candidate.width * candidate.height
        except Exception:  # noqa: BLE001  (a false JPEG marker inside the RAW: try the next one)
            continue
        if area > best_area:
            best, best_area = match.start(), area
    if best is None:
        raise ImageError("RAW file without an embedded JPEG preview (clipsearch reads RAW files through it)")
    return (bytes(view[best:]), *_raw_exif(data))


def _raw_exif(data: bytes) -> tuple[int, metadata.PhotoMetadata]:
    """Orientation tag and metadata of TIFF-based RAW files (most of them); 1 and nothing otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as raw:
            exif = raw.getexif()
            return int(exif.get(0x0112, 1)), metadata.from_exif(exif)
    except Exception:  # noqa: BLE001  (no readable EXIF: upright, no metadata)
        return 1, metadata.PhotoMetadata()


def to_model_pixels(image: Image.Image, prep: Preprocess) -> np.ndarray:
    """Resize the short side to `prep.shortest_edge`, centre-crop, return uint8 HxWx3."""
    width, height = image.size
    scale = prep.shortest_edge / min(width, height)
    new_size = (max(prep.crop_width, round(width * scale)), max(prep.crop_height, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, prep.resample, reducing_gap=3.0)
    left = (new_size[0] - prep.crop_width) // 2
    top = (new_size[1] - prep.crop_height) // 2
    image = image.crop((left, top, left + prep.crop_width, top + prep.crop_height))
    return np.asarray(image, dtype=np.uint8)


def decode(data: bytes, prep: Preprocess, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
           path: str | None = None) -> DecodedImage:
    """Bytes of an image file to model pixels, the original's displayed size and its fingerprints.

    `path` is only used to recognise RAW files by their extension.
    """
    orientation, raw_metadata = None, None
    if path and is_raw(path):
        data, orientation, raw_metadata = raw_preview(data)
    image, (width, height), found = _open(data, prep.shortest_edge, max_megapixels, orientation)
    phash, colourfulness = fingerprint.fingerprints(image)
    return DecodedImage(to_model_pixels(image, prep), width, height, phash, colourfulness, raw_metadata or found,
                        fingerprint.geometry(image))


def decode_file(path: str | os.PathLike, prep: Preprocess,
                max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> DecodedImage:
    return decode(read_bytes(os.fspath(path)), prep, max_megapixels, os.fspath(path))
