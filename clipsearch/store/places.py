"""The place tables of an index: the SQL behind `find --place/--country/--near` and filling places.

schema.py's migration 7 makes them: `places` holds each town once (its names, and the folded names a
`--place` filter matches), `image_places` maps each photo whose position was looked up to its town
(NULL: no town near it, at sea), so an older index is filled once and a position with no town near it
is not looked up on every run. Writing a place never rewrites an image row (each holds a 1 KB vector).
Triggers drop a photo's mapping when its position changes or it leaves the index. Which town a
position is in is places/geonames.py's; the image rows' own columns (lat, lon) are images.py's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..places.distance import bounding_boxes, haversine_m
from ..places.names import Place, key_matches
from .images import scope_sql

if TYPE_CHECKING:
    import sqlite3

    from . import Store

# A position of exactly 0,0 is what a camera without a fix writes: never a place (metadata.py drops it too).
HAS_POSITION = ("images.lat IS NOT NULL AND images.lon IS NOT NULL "
                "AND NOT (images.lat = 0 AND images.lon = 0)")
_NOT_LOOKED_UP = "NOT EXISTS (SELECT 1 FROM image_places WHERE image_places.image_id = images.id)"
_NAMES_SEPARATOR = "\x1f"  # between the names of a place in `places.names`, what makes a town one row


def place_of(row: dict) -> Place | None:
    """The Place of an image row read with schema.PLACE_SELECT, or None for a photo without one."""
    if not row.get("geocoded") or not (row.get("city") or row.get("country_code")):
        return None
    return Place(*(row.get(name) for name in ("city", "county", "region", "country", "country_code")))


def place_conditions(conn: sqlite3.Connection, place: str | None, country: str | None,
                     near: tuple[float, float, float] | None) -> tuple[list[str], list] | None:
    """SQL conditions on `images` (and their parameters) for the place filters; None when no row can match.

    `place` is already folded (names.place_query): the towns whose folded names hold it as whole words are
    found in `places` (a few thousand rows at most), then their photos. `near` (lat, lon, radius in metres)
    gives only the bounding boxes: `within` keeps the rows inside the circle.
    """
    conditions: list[str] = []
    params: list = []
    if place:
        found = [place_id for place_id, folded in conn.execute(
            "SELECT id, folded FROM places WHERE folded LIKE ?", [f"%{place}%"]) if key_matches(folded, place)]
        if not found:
            return None
        conditions.append("images.id IN (SELECT image_id FROM image_places WHERE place_id IN "
                          f"({','.join('?' * len(found))}))")
        params.extend(found)
    if country:
        conditions.append("images.id IN (SELECT image_id FROM image_places JOIN places ON places.id = place_id "
                          "WHERE places.country_code = ?)")
        params.append(country)
    if near:
        boxes = bounding_boxes(*near)
        conditions.append(HAS_POSITION)
        conditions.append("(" + " OR ".join("(images.lat BETWEEN ? AND ? AND images.lon BETWEEN ? AND ?)"
                                            for _ in boxes) + ")")
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

    def _pending(self, folder: str | None) -> tuple[str, list]:
        where, params = scope_sql(folder, "images.path")
        return (where + " AND" if where else "WHERE") + f" {HAS_POSITION} AND {_NOT_LOOKED_UP}", params

    def unplaced(self, folder: str | None = None) -> list[tuple[int, float, float]]:
        """(id, lat, lon) of the photos with a GPS position that were not yet looked up."""
        where, params = self._pending(folder)
        return [tuple(row) for row in self.store.execute(f"SELECT id, lat, lon FROM images {where}", params)]

    def copy_known(self, folder: str | None = None) -> int:
        """Give photos the place of an already looked-up photo at exactly the same position (a copy, a renamed
        file, a burst), without loading GeoNames. Returns how many photos got one."""
        where, params = self._pending(folder)
        with self.store.transaction():
            before = self.store.execute("SELECT total_changes()").fetchone()[0]
            self.store.execute(
                "INSERT INTO image_places (image_id, place_id) SELECT images.id, known.place_id FROM images "
                "JOIN images other ON other.lat = images.lat AND other.lon = images.lon AND other.id != images.id "
                f"JOIN image_places known ON known.image_id = other.id {where} GROUP BY images.id", params)
            return self.store.execute("SELECT total_changes()").fetchone()[0] - before

    def set_places(self, rows: Sequence[tuple[int, Place | None]]) -> None:
        """Store the place found for each image id (None: no town near its position), in one transaction."""
        with self.store.transaction():
            towns = {place: _names(place) for _, place in rows if place is not None}
            self.store.executemany(
                "INSERT OR IGNORE INTO places (names, folded, city, county, region, country, country_code) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(names, place.key, place.city, place.county, place.region, place.country, place.country_code)
                 for place, names in towns.items()])
            ids: dict[str, int] = {}
            wanted = sorted(set(towns.values()))
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                ids.update((names, place_id) for place_id, names in self.store.execute(
                    f"SELECT id, names FROM places WHERE names IN ({','.join('?' * len(chunk))})", chunk))
            self.store.executemany(
                "INSERT OR REPLACE INTO image_places (image_id, place_id) VALUES (?, ?)",
                [(image_id, ids[towns[place]] if place is not None else None) for image_id, place in rows])

    def top_places(self, limit: int = 10, folder: str | None = None) -> list[dict]:
        """The places with the most photos: {"city", "county", "region", "country", "country_code", "images"}."""
        where, params = scope_sql(folder, "images.path")
        rows = self.store.execute(
            "SELECT places.city, places.county, places.region, places.country, places.country_code, count(*) AS n "
            "FROM image_places JOIN places ON places.id = image_places.place_id "
            f"JOIN images ON images.id = image_places.image_id {where} "
            "GROUP BY places.id ORDER BY n DESC, places.folded LIMIT ?", [*params, limit])
        return [{"city": city, "county": county, "region": region, "country": country, "country_code": code,
                 "images": n} for city, county, region, country, code, n in rows]

    def counts(self) -> tuple[int, int, int]:
        """(photos with a GPS position, those with a place, those not looked up yet)."""
        with_position, placed, looked_up = self.store.execute(
            "SELECT count(*), count(image_places.place_id), count(image_places.image_id) FROM images "
            f"LEFT JOIN image_places ON image_places.image_id = images.id WHERE {HAS_POSITION}").fetchone()
        return with_position, placed, with_position - looked_up


def _names(place: Place) -> str:
    """What makes a town one row of `places`: its names exactly as GeoNames has them."""
    return _NAMES_SEPARATOR.join(name or "" for name in (place.city, place.county, place.region, place.country,
                                                        place.country_code))
