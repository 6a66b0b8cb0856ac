"""Numbers as people read them, shared by the command line and the web app so both say the same."""

from __future__ import annotations


def human_size(size: int | None, space: str = " ") -> str:
    """1.2 MB (0 bytes is "0 B"; unknown is ""). The web app joins number and unit with a no-break space."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f}{space}{unit}" if unit == "B" else f"{value:.1f}{space}{unit}"
        value /= 1024
    return ""
