"""Filling in the place of photos with a GPS position: at the end of every `index` run, and once for
indexes made before places existed. Needs the positions the index holds, not the files nor the model.

Positions already placed in the index are copied first (a renamed file, a copy, a burst at one spot),
so GeoNames is loaded (about a second) only when a position is new; all new positions are then looked
up in batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..places import geonames
from ..store import Store
from ..store.places import PlaceStore

if TYPE_CHECKING:
    from .job import Progress

BATCH = 20_000  # positions per lookup and per transaction
NOTICE_FROM = 1_000  # say what is happening only when it takes a moment


def fill_places(store: Store, folder: str | None = None, progress: Progress | None = None) -> int:
    """Give every photo with a GPS position (under `folder`) that has not been looked up its place.

    Returns how many rows were looked up or copied. Takes the writer lock (already held by `index`).
    """
    places = PlaceStore(store)
    with store.writer():
        copied = places.copy_known(folder)
        missing = places.unplaced(folder)
        if not missing:
            return copied
        if progress is not None and len(missing) >= NOTICE_FROM:
            progress.notice(f"Finding the places of {len(missing):,} photos from their GPS positions "
                            "(offline GeoNames data, once)...")
        for start in range(0, len(missing), BATCH):
            batch = missing[start:start + BATCH]
            found = geonames.nearest([(lat, lon) for _, lat, lon in batch])
            places.set_places([(image_id, place) for (image_id, _, _), place in zip(batch, found)])
    return copied + len(missing)
