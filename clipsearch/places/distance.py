"""Distances on the Earth, for `--near LAT,LON --radius 5km`.

A position filter runs in two steps: a bounding box of the circle selects candidate rows through
the index on (lat, lon) in SQL, then the exact great-circle (haversine) distance keeps those inside.
The box is widened at the poles and split where it crosses the antimeridian (180°), so a circle
around Fiji or the North Cape loses no photo.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .names import PlaceError

EARTH_RADIUS_M = 6_371_008.8  # the mean radius (IUGG), which haversine distances assume
DEFAULT_RADIUS = "1km"
_UNITS = {"m": 1.0, "km": 1000.0, "mi": 1609.344}
_RADIUS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(m|km|mi)\s*$", re.I)
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_NEAR = re.compile(rf"^\s*(?:geo:)?\s*({_NUMBER})\s*[,;\s]\s*({_NUMBER})\s*$", re.I)


def parse_near(text: str) -> tuple[float, float]:
    """`--near "38.72,-9.14"` (or `geo:38.72,-9.14`, or with a space) as (lat, lon) in degrees; PlaceError if not."""
    match = _NEAR.match(text)
    if not match:
        raise PlaceError(f"--near '{text}' is not a position; give latitude,longitude in decimal degrees, "
                         "e.g. --near 38.72,-9.14 (south and west are negative)")
    lat, lon = float(match.group(1)), float(match.group(2))
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise PlaceError(f"--near '{text}': latitude must be within -90..90 and longitude within -180..180 "
                         "(latitude comes first: --near 38.72,-9.14)")
    return lat, lon


def parse_radius(text: str) -> float:
    """`--radius` ("500m", "5km", "2.5mi") in metres; PlaceError for anything else, 0 or less included."""
    match = _RADIUS.match(text)
    if not match:
        hint = " (a unit is needed: m, km or mi)" if re.fullmatch(r"\s*[\d.]+\s*", text) else ""
        raise PlaceError(f"--radius '{text}' is not a distance{hint}; give e.g. --radius 500m, 5km or 3mi")
    metres = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not 0 < metres < math.inf:
        raise PlaceError(f"--radius '{text}' must be more than 0, e.g. --radius 500m")
    return metres


def haversine_m(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """Great-circle distances in metres from (lat, lon) to each of (lats, lons), all in degrees."""
    lat1, lon1 = math.radians(lat), math.radians(lon)
    lat2, lon2 = np.radians(np.asarray(lats, dtype=np.float64)), np.radians(np.asarray(lons, dtype=np.float64))
    a = np.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def bounding_boxes(lat: float, lon: float, radius_m: float) -> list[tuple[float, float, float, float]]:
    """(lat_min, lat_max, lon_min, lon_max) boxes that together hold every point within `radius_m` of (lat, lon).

    One box, or two where the circle crosses the antimeridian; all longitudes when it reaches a pole.
    """
    angle = math.degrees(radius_m / EARTH_RADIUS_M)  # the radius as an angle at the Earth's centre
    lat_min, lat_max = lat - angle, lat + angle
    if lat_min <= -90 or lat_max >= 90 or angle >= 90:  # a pole inside the circle: every longitude
        return [(max(lat_min, -90.0), min(lat_max, 90.0), -180.0, 180.0)]
    # The widest longitude span of the circle (at the latitude where it touches its meridians).
    spread = math.degrees(math.asin(min(1.0, math.sin(radius_m / EARTH_RADIUS_M) / math.cos(math.radians(lat)))))
    lon_min, lon_max = lon - spread, lon + spread
    if lon_min < -180:
        return [(lat_min, lat_max, lon_min + 360, 180.0), (lat_min, lat_max, -180.0, lon_max)]
    if lon_max > 180:
        return [(lat_min, lat_max, lon_min, 180.0), (lat_min, lat_max, -180.0, lon_max - 360)]
    return [(lat_min, lat_max, lon_min, lon_max)]


def human_distance(metres: float) -> str:
    """5000.0 -> "5 km", 500.0 -> "500 m": a radius as a person wrote it."""
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
