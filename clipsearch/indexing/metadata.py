"""Photo metadata from EXIF: when a picture was taken, with which camera, and where.

Read from the Pillow image the indexer has already opened (no second read of
the file): Pillow parses EXIF for JPEG, TIFF, WebP, PNG and AVIF, pillow-heif
for HEIC, and a TIFF-based RAW file is opened for its own EXIF. Dates are kept
as EXIF writes them, local time of the camera without a zone, as ISO 8601
text (`2024-06-15T10:30:00`), so comparing strings compares dates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime

# Where a date taken came from (the `taken_source` column).
FROM_ORIGINAL = "exif"  # DateTimeOriginal: the shutter
FROM_CREATE = "exif-create"  # CreateDate (EXIF DateTimeDigitized): a scan, some phones
FROM_FILE = "file"  # the file's modification time: no EXIF date

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_MAKE, _MODEL = 0x010F, 0x0110
_DATE_ORIGINAL, _DATE_CREATE = 0x9003, 0x9004
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4
_GPS_STATUS = 9  # "A": a measurement in progress; "V": void, the receiver had no fix

_EXIF_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


@dataclass
class PhotoMetadata:
    taken: str | None = None  # ISO 8601, camera local time; None until the file time fills it in
    taken_source: str | None = None  # FROM_ORIGINAL, FROM_CREATE or FROM_FILE
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None
    lon: float | None = None

    @property
    def camera(self) -> str | None:
        """Make and model as a person says it: "Canon EOS R5", not "Canon Canon EOS R5"."""
        return camera_name(self.camera_make, self.camera_model)

    @property
    def from_camera(self) -> bool:
        """The file carries a camera's EXIF (a maker, a model or a shutter date), as originals do."""
        return bool(self.camera_make or self.camera_model or self.taken_source in (FROM_ORIGINAL, FROM_CREATE))

    def with_file_time(self, mtime_ns: int) -> PhotoMetadata:
        """The same metadata, with the file time as the date taken when EXIF had none."""
        if self.taken is not None:
            return self
        return PhotoMetadata(file_time(mtime_ns), FROM_FILE, self.camera_make, self.camera_model, self.lat, self.lon)


def camera_name(make: str | None, model: str | None) -> str | None:
    make, model = (make or "").strip(), (model or "").strip()
    if make and model.lower().startswith(make.split()[0].lower()):
        return model
    return " ".join(part for part in (make, model) if part) or None


def file_time(mtime_ns: int) -> str:
    """A file's modification time as local ISO 8601 text, like an EXIF date."""
    return datetime.fromtimestamp(mtime_ns / 1e9).isoformat(timespec="seconds")


def from_image(image) -> PhotoMetadata:
    """Metadata of an opened Pillow image; broken or missing EXIF gives empty fields, never an error."""
    try:
        exif = image.getexif()
    except Exception:  # noqa: BLE001 - a damaged EXIF block is common and must not cost the photo
        return PhotoMetadata()
    return from_exif(exif)


def from_exif(exif) -> PhotoMetadata:
    """Metadata of a Pillow `Image.Exif`."""
    found = PhotoMetadata()
    try:
        found.camera_make = _text(exif.get(_MAKE))
        found.camera_model = _text(exif.get(_MODEL))
        details = exif.get_ifd(_EXIF_IFD)
        for tag, source in ((_DATE_ORIGINAL, FROM_ORIGINAL), (_DATE_CREATE, FROM_CREATE)):
            taken = _date(details.get(tag))
            if taken:
                found.taken, found.taken_source = taken, source
                break
        found.lat, found.lon = _gps(exif.get_ifd(_GPS_IFD))
    except Exception:  # noqa: BLE001 - keep what was read before the damaged part
        return found
    return found


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _date(value) -> str | None:
    """EXIF "2024:06:15 10:30:00" as "2024-06-15T10:30:00"; None for blanks like "0000:00:00 00:00:00"."""
    match = _EXIF_DATE.match(_text(value) or "")
    if not match:
        return None
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second).isoformat(timespec="seconds")
    except ValueError:
        return None


def _gps(gps) -> tuple[float | None, float | None]:
    if (_text(gps.get(_GPS_STATUS)) or "").upper() == "V":  # the receiver said its position is void
        return None, None
    lat = _coordinate(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), "S")
    lon = _coordinate(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None, None  # 0,0 is what a phone writes without a fix
    return lat, lon


def _coordinate(parts, ref, negative: str) -> float | None:
    try:
        degrees, minutes, seconds = (float(p) for p in parts)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = degrees + minutes / 60 + seconds / 3600
    if not math.isfinite(value):
        return None
    return round(-value if (_text(ref) or "").upper() == negative else value, 7)


def read_file(path: str) -> PhotoMetadata:
    """Metadata of a file from its header alone, without decoding pixels (for rows indexed before this existed).

    A TIFF-based RAW file opens as TIFF and gives its own EXIF; anything
    unreadable gives empty fields (the caller falls back to the file time).
    """
    from PIL import Image

    from . import formats

    formats.register()

    try:
        with Image.open(path) as image:
            return from_image(image)
    except Exception:  # noqa: BLE001 - any unreadable file: the caller uses the file time
        return PhotoMetadata()


LAST_YEAR = 9998  # the latest year a date filter may name
_PERIOD = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?)?)?$")


def period(text: str) -> tuple[str, str]:
    """An ISO date, or a shorter one meaning the whole period, as [start, end) in the stored text form.

    "2024" is the whole year, "2024-06" the whole month, "2024-06-15" the day,
    "2024-06-15T10:30" the minute. Raises ValueError with a message naming the forms accepted.
    """
    match = _PERIOD.match(text.strip())
    if not match:
        raise ValueError(f"'{text}' is not a date; use 2024, 2024-06, 2024-06-15 or 2024-06-15T10:30")
    year = int(match.group(1))
    month, day, hour, minute, second = (int(g) if g else None for g in match.groups()[1:])
    if not 1 <= year <= LAST_YEAR:  # the end of year 9999 is past what datetime can hold
        raise ValueError(f"'{text}': the year must be between 0001 and {LAST_YEAR}")
    try:
        start = datetime(year, 1 if month is None else month, 1 if day is None else day, hour or 0, minute or 0,
                         second or 0)
    except ValueError as exc:  # month 0 or 13, day 31 of June...
        raise ValueError(f"'{text}' is not a date ({exc}); use 2024, 2024-06, 2024-06-15 or 2024-06-15T10:30") from None
    if month is None:
        end = datetime(year + 1, 1, 1)
    elif day is None:
        end = datetime(year + month // 12, month % 12 + 1, 1)
    else:
        from datetime import timedelta

        step = (timedelta(days=1) if hour is None else timedelta(minutes=1) if second is None
                else timedelta(seconds=1))
        end = start + step
    return start.isoformat(timespec="seconds"), end.isoformat(timespec="seconds")
