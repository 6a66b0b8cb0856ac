"""Development helpers that are not part of the installed package: generated test scenes.

Used by the tests, `make demo`, the benchmarks and the tiny model's trainer; run them
from the repository root (the scripts put it on sys.path themselves).
"""
