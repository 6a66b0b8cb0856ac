"""Showing results: rich tables for people, bare paths for pipes, JSON for programs.

Results go to stdout; messages and progress for people go to stderr, so
`clipsearch find cat --paths | xargs open` sees only paths.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from enum import Enum

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .indexer import IndexReport
from .search import Hit

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


class Format(str, Enum):
    table = "table"
    paths = "paths"
    json = "json"


def _human_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def show_hits(hits: Sequence[Hit], fmt: Format) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps([hit.to_dict() for hit in hits], indent=2) + "\n")
        return
    if fmt is Format.paths:
        for hit in hits:
            sys.stdout.write(hit.path + "\n")
        return
    if not hits:
        stderr.print("No results.")
        return
    table = Table(show_edge=False, header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("score", justify="right")
    table.add_column("size", justify="right", style="dim")
    table.add_column("path", overflow="fold")
    for rank, hit in enumerate(hits, 1):
        dims = f"{hit.width}x{hit.height}" if hit.width else ""
        table.add_row(str(rank), f"{hit.score:.3f}", dims, escape(hit.path))
    stdout.print(table)


def show_index_report(report: IndexReport, fmt: Format) -> None:
    """Summary of an index run: to stdout as JSON, else to stderr for people."""
    if fmt is Format.json:
        data = {k: v for k, v in report.__dict__.items() if k != "skipped"}
        data["skipped"] = [{"path": p, "reason": r} for p, r in report.skipped]
        data["images_per_second"] = round(report.images_per_second, 2)
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    rate = f" ({report.images_per_second:.1f} images/s through the model)" if report.encoded else ""
    stderr.print(
        f"[bold]{report.scanned}[/] images found: [green]{report.new} new[/], {report.updated} updated, "
        f"{report.reused} reused (content already indexed), {report.removed} removed, {report.unchanged} unchanged, "
        f"[yellow]{len(report.skipped)} skipped[/] in {report.seconds:.1f}s{rate}."
    )
    if report.skipped:
        reasons: dict[str, int] = {}
        for _, reason in report.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        stderr.print("Skipped: " + "; ".join(f"{count} {escape(reason)}" for reason, count in sorted(reasons.items())))


def show_info(info: dict, fmt: Format) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    for key, value in info.items():
        stdout.print(f"[bold]{key}[/]: {escape(str(value))}")
