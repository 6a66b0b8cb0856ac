"""Duplicates: grouping near-identical photos (groups.py) and moving or trashing the extra copies with an
undo log (moves.py)."""
