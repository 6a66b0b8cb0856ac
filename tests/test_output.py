"""What people and pipes see: terminal tables, piped lines, help text, the index summary."""

import json
import os
import re

import pytest
from rich.console import Console

from clipsearch.cli import output

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


COMMANDS = ["index", "find", "similar", "dedupe", "tag", "tags", "tags add", "tags export", "info", "config", "serve"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default_and_readable_metavars(cli, command):
    result = cli(*command.split(), "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = result.stdout
    assert not re.search(r"<(list\[|bool|path|str|int|float)|int range>", text), "Python types are not metavars"
    options = {"--db": "FILE", "--model": "MODEL", "--device": "DEVICE", "--top": "N", "--in": "FOLDER",
               "--vocab": "FILE", "--threshold": None, "--near-threshold": "COSINE", "--host": "HOST",
               "--port": "PORT"}
    entries = re.split(r"\n(?=  (?:-\w, )?--)", text.split("Options:", 1)[1])
    checked = 0
    for option, metavar in options.items():
        for entry in entries:
            if re.match(rf"\s+(-\w, )?{re.escape(option)}\s", entry):
                checked += 1
                if metavar:
                    assert entry.split()[1 if entry.split()[0] == option else 2] == metavar, entry
                assert "[default:" in entry or "default:" in entry, f"{command} {option} shows no default:\n{entry}"
    assert checked >= 1, "every command has --db"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns_without_cutting_anything(cli, command):
    """Plain help, folded at word boundaries: no default cut short with "…", no markup eaten, usage as click
    writes it (FOLDER..., not {FOLDER})."""
    result = cli(*command.split(), "--help", env={"COLUMNS": "80"})
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "…" not in result.stdout and "{" not in lines[0] and "}" not in lines[0], lines[0]
    if "--library" in result.stdout:
        assert "[library.NAME]" in result.stdout and "~/.local/share/clipsearch/index.db" in result.stdout


def test_a_number_given_as_text_is_called_a_number(cli):
    result = cli("find", "cats", "--top", "abc")
    assert result.exit_code == 2 and "'abc' is not a valid whole number" in result.output
    assert "int range" not in result.output


def test_shortened_paths_keep_the_file_name_whole():
    """JPG and CR2 must be told apart: the folders are cut, never the name or its extension."""
    folder = "/home/someone/Pictures/imported/camera/2024-06-15 holiday in Portugal"
    for name in ("IMG_0001.JPG", "IMG_0001.CR2"):
        text = output.shorten_path(f"{folder}/{name}", 30)
        assert len(text) == 30 and text.endswith("/" + name) and "…" in text, text
    very_long_name = "a-very-long-file-name-exported-from-some-phone-app-IMG_0001.HEIC"
    text = output.shorten_path(f"{folder}/{very_long_name}", 24)
    assert len(text) == 24 and text.endswith(".HEIC"), text
    assert output.shorten_path("short/a.jpg", 30) == "short/a.jpg"


def test_index_quiet_json_prints_nothing_on_stderr(cli, small_library, tmp_path):
    """The README's cron line: the report on stdout, and stderr empty unless something went wrong."""
    result = cli("index", small_library, "--db", tmp_path / "i.db", "--model", TINY_MODEL, "--quiet", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    assert json.loads(result.stdout)["new"] == 12


def test_index_summary_is_short_lines(cli, small_library, tmp_path):
    result = cli("index", small_library, "--db", tmp_path / "i.db", "--model", TINY_MODEL)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    summary = lines[lines.index(next(line for line in lines if line.startswith("Indexed"))):]
    assert len(summary) >= 2 and all(len(line) <= 100 for line in summary), summary
    assert "Indexed 12 images under this folder" in result.stderr and "12 new" in result.stderr


def test_the_progress_rate_waits_for_a_second_of_work():
    """Two images in the first milliseconds are not "26986.9 img/s": the rate shows once a second has passed."""
    from rich.progress import Progress

    from clipsearch.cli.progress import MIN_RATE_SECONDS, _RateColumn

    bar = Progress(auto_refresh=False)
    task_id = bar.add_task("Indexing", total=10)
    bar.advance(task_id, 2)
    task = bar.tasks[0]
    assert str(_RateColumn().render(task)) == ""
    assert task.start_time is not None
    task.start_time -= MIN_RATE_SECONDS + 1  # as if it had started earlier
    bar.advance(task_id, 2)
    assert str(_RateColumn().render(task)).endswith(" img/s")
    bar.advance(task_id, 6)  # finished: the final rate stays
    assert str(_RateColumn().render(bar.tasks[0])).endswith(" img/s")
