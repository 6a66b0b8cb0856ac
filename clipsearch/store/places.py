"""The place columns of the image rows: the SQL behind `find --place/--country/--near` and filling places.

schema.py's migration 7 adds them: city, county, region, country, country_code, the folded names a
`--place` filter matches (place_key), and `geocoded`, set once a row's position was looked up (so an
older index is filled once, and a position at sea, with no town near, is not looked up every run).
A trigger clears them when a row's position changes. Which town a position is in is places/geonames.py's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..places.distance import bounding_boxes, haversine_m
from ..places.names import Place, key_matches
from .images import scope_sql
from .schema import PLACE_COLUMNS

if TYPE_CHECKING:
    import sqlite3

    from . import Store

# A position of exactly 0,0 is what a camera without a fix writes: never a place (metadata.py drops it too).
HAS_POSITION = "lat IS NOT NULL AND lon IS NOT NULL AND NOT (lat = 0 AND lon = 0)"


def place_of(row: dict) -> Place | None:
    """The Place of a row that has the place columns, or None for a photo without one."""
    if not row.get("geocoded") or not (row.get("city") or row.get("country_code")):
        return None
    return Place(*(row.get(name) for name in ("city", "county", "region", "country", "country_code")))


def place_conditions(conn: sqlite3.Connection, place: str | None, country: str | None,
                     near: tuple[float, float, float] | None) -> tuple[list[str], list] | None:
    """SQL conditions (and their parameters) for the place filters; None when no row can match.

    `place` is already folded (names.place_query); the few distinct place keys are matched here and
    their rows selected through the index on place_key. `near` (lat, lon, radius in metres) gives only
    the bounding boxes: `within` keeps the rows inside the circle.
    """
    conditions: list[str] = []
    params: list = []
    if place:
        keys = [key for (key,) in conn.execute("SELECT DISTINCT place_key FROM images WHERE place_key IS NOT NULL")
                if key_matches(key, place)]
        if not keys:
            return None
        conditions.append(f"place_key IN ({','.join('?' * len(keys))})")
        params.extend(keys)
    if country:
        conditions.append("country_code = ?")
        params.append(country)
    if near:
        boxes = bounding_boxes(*near)
        conditions.append(HAS_POSITION)
        conditions.append("(" + " OR ".join("(lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?)" for _ in boxes) + ")")
        params.extend(value for box in boxes for value in box)
    return conditions, params


def within(rows: Iterable[tuple[int, float, float]], near: tuple[float, float, float]) -> set[int]:
    """Ids of the (id, lat, lon) rows within near's radius (metres) of its position, by great-circle distance."""
    ids, lats, lons = [], [], []
    for image_id, lat, lon in rows:
        ids.append(image_id)
        lats.append(lat)
        lons.append(lon)
    if not ids:
        return set()
    inside = haversine_m(near[0], near[1], np.array(lats), np.array(lons)) <= near[2]
    return {image_id for image_id, keep in zip(ids, inside.tolist()) if keep}


class PlaceStore:
    """The places of one open index. Cheap to make: it holds nothing but the Store."""

    def __init__(self, store: Store):
        self.store = store

    def unplaced(self, folder: str | None = None) -> list[tuple[int, float, float]]:
        """(id, lat, lon) of the photos with a GPS position that were not yet looked up."""
        where, params = scope_sql(folder)
        where = (where + " AND" if where else "WHERE") + f" geocoded IS NULL AND {HAS_POSITION}"
        return [tuple(row) for row in self.store.execute(f"SELECT id, lat, lon FROM images {where}", params)]

    def copy_known(self, folder: str | None = None) -> int:
        """Give photos the place of an already placed photo at exactly the same position (a copy, a renamed
        file, a burst), without loading GeoNames. Returns how many rows got one."""
        where, params = scope_sql(folder)
        where = (where + " AND" if where else "WHERE") + f" geocoded IS NULL AND {HAS_POSITION}"
        columns = ", ".join((*PLACE_COLUMNS, "geocoded"))
        with self.store.transaction():
            before = self.store.execute("SELECT total_changes()").fetchone()[0]
            self.store.execute(
                f"UPDATE images SET ({columns}) = (SELECT {columns} FROM images known WHERE known.lat = images.lat "
                "AND known.lon = images.lon AND known.geocoded IS NOT NULL LIMIT 1) "
                f"{where} AND EXISTS (SELECT 1 FROM images known WHERE known.lat = images.lat "
                "AND known.lon = images.lon AND known.geocoded IS NOT NULL)", params)
            return self.store.execute("SELECT total_changes()").fetchone()[0] - before

    def set_places(self, rows: Sequence[tuple[int, Place | None]]) -> None:
        """Store the place found for each image id (None: no town near its position), in one transaction."""
        assignments = ", ".join(f"{name} = ?" for name in PLACE_COLUMNS)
        values = []
        for image_id, place in rows:
            names = [place.city, place.county, place.region, place.country, place.country_code, place.key] \
                if place else [None] * len(PLACE_COLUMNS)
            values.append([*names, image_id])
        with self.store.transaction():
            self.store.executemany(f"UPDATE images SET {assignments}, geocoded = 1 WHERE id = ?", values)

    def top_places(self, limit: int = 10, folder: str | None = None) -> list[dict]:
        """The places with the most photos: {"city", "county", "region", "country", "country_code", "images"}."""
        where, params = scope_sql(folder)
        where = (where + " AND" if where else "WHERE") + " place_key IS NOT NULL"
        rows = self.store.execute(
            "SELECT city, county, region, country, country_code, count(*) AS n FROM images "
            f"{where} GROUP BY place_key ORDER BY n DESC, place_key LIMIT ?", [*params, limit])
        return [{"city": city, "county": county, "region": region, "country": country, "country_code": code,
                 "images": n} for city, county, region, country, code, n in rows]

    def counts(self) -> tuple[int, int, int]:
        """(photos with a GPS position, those with a place, those not looked up yet)."""
        with_position, placed, pending = self.store.execute(
            f"SELECT count(*), count(place_key), coalesce(sum(geocoded IS NULL), 0) FROM images WHERE {HAS_POSITION}"
        ).fetchone()
        return with_position, placed, pending
