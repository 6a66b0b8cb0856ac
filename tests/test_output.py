"""What people and pipes see: terminal tables, piped lines, help text, the index summary."""

import os
import re

import pytest
from rich.console import Console

from clipsearch import output

from .conftest import TINY_MODEL


@pytest.fixture
def indexed(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL).exit_code == 0
    return db, small_library


@pytest.fixture
def terminal(monkeypatch):
    """Make stdout a 80-column colour terminal, as rich sees it."""
    console = Console(force_terminal=True, width=80, soft_wrap=True, color_system="truecolor")
    monkeypatch.setattr(output, "stdout", console)
    return console


def test_piped_find_and_similar_print_score_tab_path(indexed, cli):
    db, library = indexed
    for result in (cli("find", "a red circle", "--db", db, "--top", "5"),
                   cli("similar", min(library.glob("*.jpg")), "--db", db, "--top", "5")):
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert len(lines) == 5
        for line in lines:
            score, path = line.split("\t")
            assert -1 <= float(score) <= 1 and os.path.isabs(path) and os.path.isfile(path)
        assert "─" not in result.stdout and "score" not in result.stdout, "never a drawn table"


def test_terminal_table_shows_relative_unwrapped_linked_paths_and_dates(indexed, cli, terminal, monkeypatch):
    db, library = indexed
    monkeypatch.chdir(library.parent)
    result = cli("find", "a red circle", "--db", db, "--top", "3")
    assert result.exit_code == 0
    plain = re.sub(r"\x1b\[[0-9;]*m|\x1b\]8;[^\x1b]*\x1b\\", "", result.stdout)
    assert "taken" in plain and "pixels" in plain
    rows = [line for line in plain.splitlines() if "photos/" in line]
    assert len(rows) == 3, plain
    assert all(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", row) for row in rows), "the date taken is shown"
    assert not any(str(library) in row for row in rows), "relative to the current folder"
    assert all(len(line) <= 80 for line in plain.splitlines()), "never wrapped or wider than the terminal"
    assert "\x1b]8;" in result.stdout and library.as_uri() in result.stdout, "OSC 8 links to the files"


def test_long_paths_are_shortened_in_the_middle():
    long = "/srv/photos/" + "/".join(f"folder-{i:02d}" for i in range(20)) + "/IMG_0042.jpg"
    shown = output.shown_path(long, 40, cwd="/home/someone")
    assert len(shown.plain) == 40 and "…" in shown.plain
    assert shown.plain.startswith("/srv/photos/") and shown.plain.endswith("IMG_0042.jpg")
    assert output.shown_path("/home/someone/pics/a.jpg", 40, cwd="/home/someone").plain == "pics/a.jpg"
    assert output.shown_path("/home/someone-else/a.jpg", 40, cwd="/home/someone").plain == "/home/someone-else/a.jpg"


def test_a_missing_image_term_exits_2_naming_it(indexed, cli):
    db, library = indexed
    missing = library / "IMG_9999.jpg"
    result = cli("find", str(missing), "+", "in snow", "--db", db)
    assert result.exit_code == 2 and f"no such image: {missing}" in result.stderr
    assert cli("similar", missing, "--db", db).exit_code == 2


@pytest.mark.parametrize("command", ["index", "find", "similar", "dedupe", "tag", "tags", "info", "config"])
def test_help_shows_every_default_and_readable_metavars(cli, command):
    result = cli(command, "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = result.stdout
    assert not re.search(r"<(list\[|bool|path|str|int|float)", text), "Python types are not metavars"
    options = {"--db": "FILE", "--model": "MODEL", "--device": "DEVICE", "--top": "N", "--in": "FOLDER",
               "--vocab": "FILE", "--threshold": None, "--near-threshold": "COSINE"}
    for line in text.splitlines():
        for option, metavar in options.items():
            if re.search(rf"│ {re.escape(option)}\s", line):
                if metavar:
                    assert metavar in line, line
                block = text[text.index(line):].split("│ --", 2)[1]
                assert "[default:" in block, f"{command} {option} shows no default:\n{block}"


def test_index_summary_is_short_lines(cli, small_library, tmp_path):
    result = cli("index", small_library, "--db", tmp_path / "i.db", "--model", TINY_MODEL)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    summary = lines[lines.index(next(line for line in lines if "images found" in line)):]
    assert len(summary) >= 3 and all(len(line) <= 72 for line in summary), summary
    assert "12 new" in result.stderr
