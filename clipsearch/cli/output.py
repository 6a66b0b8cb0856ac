"""Showing results: rich tables for people, bare paths for pipes, JSON for programs.

Results go to stdout; messages and progress for people go to stderr, so
`clipsearch find cat --paths | xargs open` sees only paths.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..paths import path_json
from ..units import human_size

if TYPE_CHECKING:  # only for annotations: the CLI imports this module for --help too
    from rich.console import Console
    from rich.text import Text

    from .. import ExportReport, Group, Hit, IndexReport, Move, MoveReport, OcrReport, TagReport, UndoReport
    from ..config import Config
    from ..options import SidecarStyle


def write_json(data: Any) -> None:
    """--json output. On a terminal, where a person reads it, indented. To a pipe or a file a list is written one
    item per line, each compact: grep finds a whole record, and json's C encoder does the work (indenting falls
    back to pure Python: a million-image dedupe's 75 MB of groups took 3.3 s indented, 0.75 s this way).
    Either way it is the same JSON to a parser."""
    if isinstance(data, list) and not sys.stdout.isatty():
        sys.stdout.write("[\n" + ",\n".join(map(json.dumps, data)) + "\n]\n" if data else "[]\n")
    else:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")


class _Console:
    """A rich Console made on first use: a query piped into another program prints no rich output, and
    does not import rich (40 ms of a 0.3 s query)."""

    def __init__(self, **options: Any):
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)

    # Dunder methods bypass __getattr__: rich's Live (progress bars) uses its console in a `with`.
    def __enter__(self) -> Console:
        return self._made().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        self._made().__exit__(*exc_info)

    @property
    def real(self) -> Console:
        """The rich Console itself (made now), for code that type-checks what it is given."""
        return self._made()

    def _made(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
            self._console.on_broken_pipe = _closed_pipe  # type: ignore[method-assign]
            # A terminal gets lines folded at word boundaries to its width; a pipe or file gets whole lines.
            self._console.soft_wrap = not self._console.is_terminal
        return self._console

    @property
    def is_terminal(self) -> bool:
        """rich's answer, without making the Console where the stream is plainly no terminal (a pipe)."""
        stream = sys.stderr if self._options.get("stderr") else sys.stdout
        forced = any(os.environ.get(name) for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"))
        if self._console is None and not forced and not (hasattr(stream, "isatty") and stream.isatty()):
            return False
        return bool(self._made().is_terminal)


def _closed_pipe() -> None:
    """rich's own answer to a closed pipe is `SystemExit(1)` ("nothing found" here): let the CLI decide."""
    raise BrokenPipeError()


stdout: Any = _Console()
stderr: Any = _Console(stderr=True)


def escape(text: str) -> str:
    """rich's markup escaping (imported when something is printed through rich)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def shown(text: str) -> str:
    """Text safe to print: control characters (ANSI escapes included) and bytes that are not
    UTF-8 (surrogate escapes of a non-UTF-8 file name) are shown as backslash escapes."""
    def escaped(match: re.Match) -> str:
        char = match.group()
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name (PEP 383)
            return f"\\x{code - 0xDC00:02x}"
        return char.encode("unicode_escape").decode("ascii")

    return _UNPRINTABLE.sub(escaped, text)


def write_path(line: str, null: bool = False) -> None:
    """One path (or a line ending in one) on stdout, for pipes and xargs: the exact bytes of the name, ended by
    a newline, or by a NUL with `null` (`--null`, for `xargs -0`: the one ending no file name can contain).
    In a terminal the name is escaped instead: a name cannot move the cursor or split a line on screen."""
    sys.stdout.flush()
    if sys.stdout.isatty():
        sys.stdout.write(shown(line) + ("\0" if null else "\n"))
        sys.stdout.flush()
        return
    sys.stdout.buffer.write(line.encode("utf-8", "surrogateescape") + (b"\0" if null else b"\n"))
    sys.stdout.buffer.flush()


class Format(str, Enum):
    table = "table"
    paths = "paths"
    json = "json"




def shorten_path(text: str, width: int) -> str:
    """`text` in at most `width` characters, cut in the middle of its folders: the file name, the part that
    tells IMG_0001.JPG from IMG_0001.CR2, stays whole (a name longer than `width` keeps its end)."""
    if len(text) <= width:
        return text
    width = max(width, 4)
    folder, sep, name = text.rpartition(os.sep)
    if not sep or len(name) + 2 > width:  # no folders to cut, or the name alone is too long: keep its end
        tail = width - 1 - min(width // 4, 8)
        return text[:width - 1 - tail] + "…" + text[len(text) - tail:]
    room = width - len(name) - 2  # characters of the folder part around the "…" (before "/name")
    head = min(len(folder), (room + 1) // 2)
    return folder[:head] + "…" + folder[len(folder) - (room - head):] + sep + name


def relative_path(path: str, cwd: str | None = None) -> str:
    """`path` relative to the current folder when it is under it (what a person typed), else as it is."""
    cwd = cwd if cwd is not None else os.getcwd()
    return os.path.relpath(path, cwd) if path.startswith(cwd.rstrip(os.sep) + os.sep) else path


def shown_path(path: str, width: int, cwd: str | None = None) -> Text:
    """A path for a person: relative to the current folder when under it, shortened in the middle of its
    folders to `width` characters (never wrapped, the file name whole), and a clickable file:// link (OSC 8)
    in terminals that support it."""
    from rich.style import Style
    from rich.text import Text

    text = shorten_path(shown(relative_path(path, cwd)), width)
    try:
        link = Path(path).as_uri()
    except ValueError:  # not absolute
        link = None
    return Text(text, style=Style(link=link) if link else "", no_wrap=True, overflow="ignore")


def _taken(hit: Hit) -> Text:
    """Date taken to the minute; dim when it is only the file's time (no EXIF date)."""
    from rich.text import Text

    if not hit.taken:
        return Text("")
    return Text(hit.taken[:16].replace("T", " "), style="dim" if hit.taken_source == "file" else "")


def show_hits(hits: Sequence[Hit], fmt: Format, null: bool = False) -> None:
    """Results: JSON, bare paths, `score<TAB>path` lines when stdout is a pipe (like rclip), else a table."""
    if fmt is Format.json:
        write_json([hit.to_dict() | path_json(hit.path) for hit in hits])
        return
    if fmt is Format.paths:
        for hit in hits:
            write_path(hit.path, null)
        return
    if not hits:
        stderr.print("No results.")
        return
    if not stdout.is_terminal:
        for hit in hits:
            write_path(f"{hit.score:.4f}\t{hit.path}", null)
        return
    rows = [(str(rank), f"{hit.score:.3f}", f"{hit.width}x{hit.height}" if hit.width else "", _taken(hit))
            for rank, hit in enumerate(hits, 1)]
    headers = ("#", "score", "pixels", "taken")
    columns = [(header, "right" if i < 3 else "left", ("dim", "", "dim", "")[i]) for i, header in enumerate(headers)]
    cells: list[list[str | Text]] = [list(row) for row in rows]
    if any(hit.place for hit in hits):  # a place column, and room for it
        cells, columns = _with_places(hits, cells, columns)
    widths = _widths(columns, cells)
    # Each column (the path's too) has one space of padding either side, with a rule between two columns.
    room = max(20, stdout.width - sum(widths) - (len(columns) + 1) * 2 - len(columns))
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for (header, justify, style), width in zip(columns, widths):
        table.add_column(header, justify=justify, style=style, no_wrap=True, min_width=width)  # type: ignore[arg-type]
    table.add_column("path", no_wrap=True, overflow="ignore")
    for row, hit in zip(cells, hits):
        table.add_row(*row, _path_and_text(hit, room))
    stdout.print(table)


def _path_and_text(hit: Hit, room: int) -> Text:
    """The path cell; for a text search, the photo's text around the match on a line below (cut to fit)."""
    cell = shown_path(hit.path, room)
    if hit.text:
        snippet = shown(hit.text)
        cell.append("\n" + (snippet if len(snippet) <= room else snippet[:room - 1] + "…"), style="dim")
    return cell


def _widths(columns: list[tuple[str, str, str]], cells: list[list[str | Text]]) -> list[int]:
    """Each column's width: its longest cell or its header."""
    rows: list[list[str | Text]] = [*cells, [header for header, _, _ in columns]]
    return [max(len(str(row[i])) for row in rows) for i in range(len(columns))]


_PATH_ROOM = 30  # what a path should keep beside the other columns: a camera's file name and a folder or two


def _with_places(hits: Sequence[Hit], cells: list[list[str | Text]], columns: list[tuple[str, str, str]]
                 ) -> tuple[list[list[str | Text]], list[tuple[str, str, str]]]:
    """The table's cells and columns with a place column before the path: "Lisbon, Portugal" where the
    terminal is wide, "Lisbon, PT" where not; the pixels column gives way first on a narrow terminal."""
    def fixed(columns: list[tuple[str, str, str]], cells: list[list[str | Text]]) -> int:
        return sum(_widths(columns, cells)) + (len(columns) + 1) * 2 + len(columns)

    def place_text(hit: Hit, long: bool, width: int) -> str:
        if not hit.place:
            return ""
        where = hit.place.country if long else hit.place.country_code
        city = hit.place.city or ""
        tail = f", {where}" if where and city else where or ""
        if len(city) + len(tail) > width:
            city = city[:max(1, width - len(tail) - 1)] + "…"
        return shown(city + tail)

    need = min(_PATH_ROOM, max(len(shown(relative_path(hit.path))) for hit in hits))
    for long, width in ((True, 28), (False, 18)):
        texts = [place_text(hit, long, width) for hit in hits]
        placed: list[list[str | Text]] = [[*row, text] for row, text in zip(cells, texts)]
        with_place = [*columns, ("place", "left", "")]
        if stdout.width - fixed(with_place, placed) >= need:
            return placed, with_place
    # Still too narrow: the pixels column goes (the path and the place say more).
    return [row[:2] + row[3:] for row in placed], with_place[:2] + with_place[3:]


def show_index_report(report: IndexReport, fmt: Format, text: OcrReport | None = None) -> None:
    """Summary of an index run (and of its `--ocr` pass, `text`): to stdout as JSON, else to stderr for people."""
    if fmt is Format.json:
        data = {k: v for k, v in report.__dict__.items() if k != "skipped"}
        data["skipped"] = [path_json(p) | {"reason": shown(r)} for p, r in report.skipped]
        data["images_per_second"] = round(report.images_per_second, 2)
        if text is not None:
            data["ocr"] = _ocr_json(text)
        write_json(data)
        return
    rate = f", {report.images_per_second:.1f} images/s through the model" if report.encoded else ""
    indexed = max(0, report.scanned - len(report.skipped))
    stderr.print(f"Indexed [bold]{indexed}[/] images under {'this folder' if report.folders == 1 else 'these folders'} "
                 f"in {report.seconds:.1f} s{rate}:")
    stderr.print(f"  [green]{report.new} new[/], {report.updated} updated, {report.reused} renamed or copied "
                 f"(vector reused), {report.unchanged} unchanged; {report.removed} gone from the index")
    if report.skipped:
        stderr.print(f"  [yellow]{len(report.skipped)} skipped[/] (not in the index):")
        reasons: dict[str, int] = {}
        for _, reason in report.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in sorted(reasons.items()):
            stderr.print(f"    {count} {escape(reason)}")
    if report.unreadable_on_workers:  # index --ray: a worker without the photos at the same paths
        hosts = report.unreadable_on_workers
        named = ", ".join(f"{escape(shown(host))} ({count})" for host, count in sorted(hosts.items()))
        stderr.print(f"  [yellow]{sum(hosts.values())} files could not be opened on Ray workers[/] {named}: mount the "
                     f"photos at the same paths on every worker; the next run tries them again.")
    if text is not None:
        show_ocr_report(text, fmt)


def _ocr_json(report: OcrReport) -> dict[str, Any]:
    data = report.to_dict()
    data["failed"] = [path_json(p) | {"reason": shown(r)} for p, r in report.failed]
    return data


def show_ocr_report(report: OcrReport, fmt: Format) -> None:
    """What an OCR pass read: to stdout as JSON, else to stderr for people."""
    if fmt is Format.json:
        write_json(_ocr_json(report))
        return
    if report.unavailable:
        stderr.print(f"[yellow]Text in photos not read:[/] {escape(shown(report.unavailable))}")
        return
    rate = f", {report.images_per_second:.1f} photos/s" if report.read else ""
    stderr.print(f"Read the text in [bold]{report.read}[/] photos in {report.seconds:.1f} s{rate}: "
                 f"[green]{report.with_text} with text[/] ({report.lines} lines); {report.skipped} already read.")
    if report.failed:  # each was printed as it happened
        stderr.print(f"  [yellow]{len(report.failed)} could not be read[/] (listed above); the next run tries "
                     "them again.")


def show_info(info: dict, fmt: Format) -> None:
    if fmt is Format.json:
        write_json(info)
        return
    for key, value in info.items():
        if isinstance(value, list):
            stdout.print(f"[bold]{key}[/]:" + ("" if value else " none"))
            for item in value:
                if isinstance(item, dict):
                    count = item["images"]
                    described = f"{_described(item)} ({count} image{'' if count == 1 else 's'})"
                else:
                    described = str(item)
                stdout.print(f"  {escape(shown(described))}")
        elif isinstance(value, dict):  # a part described in one line (vector_index: its summary)
            summary = value.get("summary") or ", ".join(f"{k}: {v}" for k, v in value.items())
            stdout.print(f"[bold]{key}[/]: {escape(shown(str(summary)))}")
        else:
            stdout.print(f"[bold]{key}[/]: {escape(shown(str(value)))}")


def _described(item: dict) -> str:
    """An `info` list item: a folder's path, or a place's names (city to country, each once)."""
    if "path" in item:
        return str(item["path"])
    names: list[str] = []
    for name in (item.get("city"), item.get("county"), item.get("region"), item.get("country")):
        if name and name not in names:
            names.append(name)
    return ", ".join(names)


_TIER_TITLES = {"exact": "exact copies", "near": "near-identical", "similar": "similar shots"}


def _when(mtime_ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")


def _member_date(member) -> str:
    """Date taken when the index has it, else the file time: what a photographer compares."""
    return member.taken[:16].replace("T", " ") if member.taken else _when(member.mtime_ns)


# How a near-identical copy was made from the file kept (dedupe's geometric checks; rotations counterclockwise).
_TRANSFORMS = {"mirror": "mirrored", "flip": "upside down", "rotate90": "rotated 90°", "rotate180": "rotated 180°",
               "rotate270": "rotated 270°", "transpose": "mirrored, rotated 90°",
               "transverse": "mirrored, rotated 270°"}


def _match(group: Group, member) -> str:
    """How close a member is to the file kept: nothing to say for exact copies (the same bytes); the edit
    for mirrored, rotated, bordered and cropped copies."""
    if member is group.keep or group.tier == "exact":
        return ""
    edits = [_TRANSFORMS.get(member.transform, member.transform)] if member.transform else []
    if member.borders:
        edits.append("borders")
    if member.crop is not None:
        edits.append(f"crop of {member.crop:.0%}" if member.cropped == "member" else f"uncropped ({member.crop:.0%})")
    if edits:
        return ", ".join(edits)
    distance = f" hash {member.hash_distance}" if member.hash_distance is not None else ""
    return f"cos {member.similarity:.3f}{distance}"


def _show_group(number: int, group: Group) -> None:
    """One group as aligned lines that fit the terminal: the path gets the room left, shortened in its
    folders; where under 24 characters would be left, it goes on a line of its own below."""
    stdout.print(f"[bold]{number}. {_TIER_TITLES[group.tier]}[/]  [dim]keep: {escape(group.reason)}[/]")
    cells = [(f"{m.width}x{m.height}" if m.width else "?", human_size(m.size), _member_date(m), _match(group, m))
             for m in group.members]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lead = 8 + sum(width + 2 for width in widths if width)  # "  keep  " and two spaces after each field
    room = stdout.width - lead
    for member, (pixels, size, date, match) in zip(group.members, cells):
        keep = member is group.keep
        fields = [f"{pixels:>{widths[0]}}", f"{size:>{widths[1]}}", date] + ([f"{match:<{widths[3]}}"]
                                                                             if widths[3] else [])
        line = f"  {'[green]keep[/]' if keep else '    '}  " + "  ".join(escape(f) for f in fields) + "  "
        if room >= 24:
            stdout.print(line, shown_path(member.path, room), sep="")
        else:
            stdout.print(line.rstrip())
            stdout.print("      ", shown_path(member.path, stdout.width - 6), sep="")
    stdout.print()


def show_groups(groups: Sequence[Group], fmt: Format, null: bool = False) -> None:
    """Duplicate groups: the file kept and why, then the others; --paths lists only the others."""
    if fmt is Format.json:
        write_json([group.to_dict() for group in groups])
        return
    if fmt is Format.paths:
        for group in groups:
            for member in group.others:
                write_path(member.path, null)
        return
    if not groups:
        stderr.print("No duplicates found.")
        return
    for number, group in enumerate(groups, 1):
        _show_group(number, group)
    extra = [m for g in groups for m in g.others]
    by_tier = {tier: sum(1 for g in groups if g.tier == tier) for tier in _TIER_TITLES}
    stderr.print(
        f"[bold]{len(groups)}[/] groups ({', '.join(f'{n} {_TIER_TITLES[t]}' for t, n in by_tier.items() if n)}): "
        f"{len(extra)} files could go, {human_size(sum(m.size for m in extra))}. Nothing was changed; "
        "use --move-to DIR or --trash to act."
    )


def show_plan(moves: Sequence[Move]) -> None:
    """What --move-to / --trash would do, before asking."""
    for move in moves:
        target = escape(shown(move.target)) if move.target else "[yellow]the trash[/]"
        stderr.print(f"  {escape(shown(move.source))} [dim]->[/] {target}")
    stderr.print(f"[bold]{len(moves)}[/] files to move; every move is recorded so --undo can put it back.")


def show_move_report(report: MoveReport, fmt: Format) -> None:
    if fmt is Format.json:
        sys.stderr.write(json.dumps({"manifest": report.manifest, "moved": len(report.moved),
                                     "skipped": [{"path": p, "reason": r} for p, r in report.skipped]}) + "\n")
        return
    for path, reason in report.skipped:
        stderr.print(f"[yellow]not moved[/] {escape(shown(path))}: {escape(reason)}")
    where = "Sent [bold]{}[/] files to the trash" if report.trash else "Moved [bold]{}[/] files to the review folder"
    stderr.print(f"{where.format(len(report.moved))} and removed them from the index. "
                 f"To put them back: clipsearch dedupe --undo {escape(shown(report.manifest))}")


def show_undo_report(report: UndoReport, fmt: Format) -> None:
    if fmt is Format.json:
        skipped = [{"path": p, "reason": r} for p, r in report.skipped]
        write_json({"restored": report.restored, "already_restored": report.already, "skipped": skipped})
        return
    for path, reason in report.skipped:
        stderr.print(f"[yellow]not restored[/] {escape(shown(path))}: {escape(shown(reason))}")
    if report.restored or not report.already:
        stderr.print(f"Restored [bold]{len(report.restored)}[/] files to where they were, and to the index.")
    if report.already:
        since = f" (undone {report.undone_before[:16].replace('T', ' ')})" if report.undone_before else ""
        stderr.print(f"{len(report.already)} files were already back where they were: this manifest was undone "
                     f"before{since}.")


def show_tag_report(report: TagReport, fmt: Format) -> None:
    if fmt is Format.json:
        data = {k: v for k, v in report.__dict__.items()}
        data["images_per_second"] = round(report.images_per_second, 1)
        write_json(data)
        return
    rate = f" ({report.images_per_second:,.0f} images/s)" if report.tagged else ""
    stderr.print(
        f"Tagged [bold]{report.tagged}[/] images with the {escape(report.vocabulary)} vocabulary "
        f"({report.tags_in_vocabulary} tags, version {report.vocabulary_version}, threshold {report.threshold:g}, "
        f"at most {report.max_tags} a photo) in {report.seconds:.1f}s{rate}: {report.assigned} tags given; "
        f"{report.untagged} images scored below the threshold for every tag; {report.skipped} already tagged "
        "with these settings."
    )
    if report.counts:
        top = sorted(report.counts.items(), key=lambda item: (-item[1], item[0]))[:12]
        stderr.print("Most given: " + ", ".join(f"{escape(shown(tag))} ({count})" for tag, count in top))


def show_tag_counts(counts: Sequence[dict], fmt: Format) -> None:
    if fmt is Format.json:
        write_json(counts)
        return
    if not counts:
        stderr.print("No tags yet. Run: clipsearch tag")
        return
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    table.add_column("tag")
    table.add_column("images", justify="right")
    table.add_column("auto", justify="right", style="dim")
    table.add_column("manual", justify="right", style="dim")
    for row in counts:
        table.add_row(escape(shown(row["tag"])), str(row["images"]), str(row["auto"]), str(row["manual"]))
    stdout.print(table)


def show_image_tags(image: str, image_tags: Sequence[dict], fmt: Format) -> None:
    if fmt is Format.json:
        write_json({"path": image, "tags": list(image_tags)})
        return
    described = [f"{t['tag']}" + (f" ({t['score']:.2f})" if t["source"] == "auto" else " (manual)") for t in image_tags]
    stdout.print(f"{escape(shown(image))}: {escape(shown(', '.join(described))) or 'no tags'}")


def show_export_report(report: ExportReport, style: SidecarStyle, fmt: Format) -> None:
    if fmt is Format.json:
        sys.stderr.write(json.dumps({"sidecars": report.__dict__ | {"style": style.value}}) + "\n")
        return
    for sidecar, reason in report.failed:
        stderr.print(f"[yellow]not written[/] {escape(shown(sidecar))}: {escape(reason)}")
    stderr.print(f"XMP sidecars ({style.value} names): {report.written} written, {report.merged} merged into, "
                 f"{report.unchanged} already up to date. The photos themselves were not touched.")


def show_settings(rows: Sequence[tuple[str, object, str]], loaded: Config, fmt: Format) -> None:
    """`clipsearch config`: each setting, its value and where it came from."""
    if fmt is Format.json:
        settings = {name: {"value": value, "source": source} for name, value, source in rows}
        write_json({"config_file": str(loaded.path), "exists": loaded.exists,
                    "libraries": sorted(loaded.libraries), "settings": settings})
        return
    state = "" if loaded.exists else " (not there: built-in defaults)"
    stdout.print(f"[bold]config file[/]: {escape(str(loaded.path))}{state}")
    if loaded.libraries:
        stdout.print(f"[bold]libraries[/]: {escape(', '.join(sorted(loaded.libraries)))} (select with --library NAME)")
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("from", style="dim")
    for name, value, source in rows:
        shown = ", ".join(value) if isinstance(value, list) else str(value)
        table.add_row(name, escape(shown or "(none)"), escape(source))
    stdout.print(table)


def show_not_hashed(not_hashed: Sequence[tuple[str, str]]) -> None:
    """dedupe: files that could not be fingerprinted (only exact copies of them are found)."""
    for path, reason in not_hashed:
        stderr.print(f"[yellow]not hashed[/] {escape(shown(path))}: {escape(reason)} (only exact copies of it "
                     "are found)")


def show_serving(host: str, port: int, count: int, db_path: Path, local: bool) -> str:
    """serve: where the web app is (and a warning when others on the network can reach it); returns its URL."""
    if not local:
        stderr.print(f"[yellow]warning:[/] listening on {escape(host)}: anyone who can reach this machine can see "
                     "your photos and move files in the duplicate review. Use --host 127.0.0.1 to keep it private.")
    url = f"http://{'localhost' if local else host}:{port}/"
    stderr.print(f"Serving {count} photos from {escape(str(db_path))} at [bold]{url}[/] (Ctrl-C to stop).")
    return url
