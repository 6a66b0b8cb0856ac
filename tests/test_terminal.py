"""The CLI as people run it: the installed `clipsearch` in a real pseudo-terminal, and into a closed pipe.

Every other test reads the CLI through a pipe, where rich draws no progress bar and prints no table, so a
crash that only a terminal triggers (a progress bar, a table, a preview) passes them all. Here each command
runs in a pty of 80 and 160 columns with TERM set as real terminals set it, and what it drew is checked
the way a person would see it: no internal error or traceback, no line wider than the terminal, the cursor
shown again after a progress bar, and file names whole (the end of a name tells IMG_0001.JPG from
IMG_0001.PNG). Commands that print lists are also run into a pipe whose reader has gone (`| head -1`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from PIL import Image
from rich.cells import cell_len

from clipsearch_dev import scenes

from .conftest import TINY_MODEL

CLIPSEARCH = shutil.which("clipsearch", path=os.path.dirname(sys.executable)) or "clipsearch"
# Every TERM at 80 columns, where wrapping and truncation bite; 160 once, for the wide layout (the full
# 2 x 3 matrix took 110 s of the suite for what these four find).
TERMINALS = [(80, "xterm-256color"), (160, "xterm-256color"), (80, "xterm-kitty"), (80, "dumb")]
DEEP = "imported/some very long folder name from the camera card/2024-06-15 holiday in Portugal"

# CSI (colours, cursor moves), OSC (links, titles), APC (kitty graphics), DCS (sixel), charset and keypad modes.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b_[^\x1b]*\x1b\\"
                      r"|\x1bP[^\x1b]*\x1b\\|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def screen_lines(raw: str) -> list[str]:
    """What each drawn line shows: escapes removed, split where the terminal starts a line again."""
    text = _ESCAPES.sub("", raw)
    return [segment for line in text.split("\n") for segment in line.split("\r")]


def problems(raw: str, columns: int) -> list[str]:
    """What a person would call broken in this output, in words (empty when it looks right)."""
    found = []
    for marker in ("internal error", "Traceback"):
        if marker in raw:
            found.append(f"{marker!r} in the output")
    wide = [line for line in screen_lines(raw) if cell_len(line) > columns]
    if wide:
        found.append(f"{len(wide)} lines wider than {columns} columns, e.g. {wide[0]!r}")
    if "\x1b[?25l" in raw and raw.rfind("\x1b[?25h") < raw.rfind("\x1b[?25l"):
        found.append("the cursor was hidden and never shown again")
    return found


def terminal_env(term: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    env.update(TERM=term, HF_HUB_OFFLINE="1")
    env.pop("TMUX", None)
    return env


def spawn(args: list, columns: int, term: str, timeout: float = 90) -> pexpect.spawn:
    """`clipsearch ARGS` started in a pty of `columns` x 40 with TERM=`term`, everything it draws logged."""
    child = pexpect.spawn(CLIPSEARCH, [str(a) for a in args], dimensions=(40, columns), env=terminal_env(term),
                          encoding="utf-8", codec_errors="replace", timeout=timeout)
    child.logfile_read = io.StringIO()
    return child


def finish(child: pexpect.spawn) -> tuple[int, str]:
    """Wait for the end: (exit status, 128 + N for signal N; everything it drew)."""
    child.expect(pexpect.EOF)
    child.close()
    status = child.exitstatus if child.exitstatus is not None else 128 + (child.signalstatus or 0)
    return status, child.logfile_read.getvalue()


def in_terminal(args: list, columns: int, term: str, answers: tuple[tuple[str, str], ...] = ()) -> tuple[int, str]:
    """Run `clipsearch ARGS` to its end in a terminal, typing each answer when its prompt appears."""
    child = spawn(args, columns, term)
    for prompt, answer in answers:
        child.expect(re.escape(prompt))
        child.sendline(answer)
    return finish(child)


@pytest.fixture(scope="module")
def template_library(tmp_path_factory) -> Path:
    """12 scenes, plus one of them as IMG_0001.JPG and IMG_0001.PNG deep in long folder names."""
    folder = tmp_path_factory.mktemp("library") / "photos"
    written = scenes.write_library(folder, 12, seed=3)
    deep = folder / DEEP
    deep.mkdir(parents=True)
    picture = Image.open(written[0][0])
    picture.save(deep / "IMG_0001.JPG", quality=95)
    picture.save(deep / "IMG_0001.PNG")
    return folder


def json_paths(args: list, env: dict | None = None) -> list[str]:
    done = subprocess.run([CLIPSEARCH, *map(str, args), "--json"], capture_output=True, text=True, timeout=90,
                          env=env or terminal_env("dumb"))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    return [m["path"] for g in data for m in g["members"]] if data and "members" in data[0] else [
        h["path"] for h in data]


@pytest.mark.parametrize("columns,term", TERMINALS, ids=[f"{c}-{t}" for c, t in TERMINALS])
def test_every_command_in_a_real_terminal(columns, term, template_library, tmp_path):
    library = tmp_path / "photos"
    shutil.copytree(template_library, library)
    db, review = tmp_path / "index.db", tmp_path / "review"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red\nblue\ncircle\nstar\n")
    image = sorted(library.glob("*.jpg"))[0]
    outcome: dict[str, list[str]] = {}

    def check(name: str, args: list, expect: int = 0, names: list[str] = (),
              answers: tuple[tuple[str, str], ...] = ()) -> str:
        status, raw = in_terminal(args, columns, term, answers)
        found = problems(raw, columns)
        if status != expect:
            found.append(f"exit {status}, expected {expect}: {screen_lines(raw)[-3:]}")
        lines = screen_lines(raw)
        for path in names:
            if not any(os.path.basename(path) in line for line in lines):
                found.append(f"{os.path.basename(path)!r} not shown whole")
        outcome[name] = found
        return raw

    model = ["--model", TINY_MODEL]
    drawn = check("index", ["index", library, "--db", db, *model])
    if term != "dumb":
        assert "Indexing" in drawn or "━" in drawn, "a progress bar is drawn in a terminal"
    check("index again", ["index", library, "--db", db])
    everything = json_paths(["find", "a red circle", "--top", "14", "--db", db])
    check("find", ["find", "a red circle", "--top", "14", "--db", db], names=everything)
    check("find --preview", ["find", "a red circle", "--top", "2", "--preview", "--db", db])
    check("similar", ["similar", image, "--top", "13", "--db", db],
          names=json_paths(["similar", image, "--top", "13", "--db", db]))
    groups = json_paths(["dedupe", "--db", db])
    check("dedupe", ["dedupe", "--db", db], names=groups)
    check("dedupe --move-to", ["dedupe", "--db", db, "--move-to", review], answers=(("Go ahead?", "y"),))
    manifests = sorted(review.glob("*.jsonl"))
    if manifests:
        check("dedupe --undo", ["dedupe", "--db", db, "--undo", manifests[0]])
    else:
        outcome["dedupe --undo"] = ["no manifest was written by --move-to"]
    check("tag", ["tag", "--db", db, "--vocab", vocab])
    check("tags", ["tags", "--db", db])
    check("tags add", ["tags", "add", image, "holiday", "--db", db])
    check("info", ["info", "--db", db])
    check("config", ["config", "--db", db])
    check("--help", ["index", "--help"])

    broken = {name: found for name, found in outcome.items() if found}
    assert not broken, f"in a {columns}-column {term} terminal: {broken}"


@pytest.mark.parametrize("columns,term", [(80, "xterm-256color"), (160, "dumb")])
def test_ctrl_c_during_index_then_the_run_again(columns, term, tmp_path):
    """Ctrl-C half-way: exit 130 with one line saying the work is kept, the cursor back; the re-run finishes."""
    library = tmp_path / "photos"
    scenes.write_library(library, 48, seed=11)
    db = tmp_path / "index.db"
    args = ["index", library, "--db", db, "--model", TINY_MODEL, "--batch-size", "2", "--workers", "1"]
    child = spawn(args, columns, term)
    deadline, stored = time.time() + 90, 0
    while time.time() < deadline and child.isalive() and stored < 6:
        time.sleep(0.05)
        with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF):  # keep the pty drained
            child.read_nonblocking(65536, timeout=0)
        try:
            with sqlite3.connect(db, timeout=5) as connection:
                stored = connection.execute("SELECT count(*) FROM images").fetchone()[0]
        except sqlite3.OperationalError:
            continue
    child.sendintr()
    status, raw = finish(child)
    assert 6 <= stored < 48, "the run should have been interrupted part-way"
    assert status == 130, screen_lines(raw)[-3:]
    assert "Interrupted" in raw and not problems(raw, columns), problems(raw, columns)

    status, raw = in_terminal(args, columns, term)
    assert status == 0 and not problems(raw, columns), problems(raw, columns)
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM images").fetchone()[0] == 48


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("columns,term", [(80, "xterm-256color"), (160, "dumb")])
def test_serve_starts_in_a_terminal_and_stops_on_ctrl_c(columns, term, template_library, tmp_path):
    db = tmp_path / "index.db"
    assert in_terminal(["index", template_library, "--db", db, "--model", TINY_MODEL], columns, term)[0] == 0
    child = spawn(["serve", "--db", db, "--port", free_port()], columns, term, timeout=120)
    child.expect("Ctrl-C to stop")
    child.sendintr()
    status, raw = finish(child)
    assert status in (0, 130) and not problems(raw, columns), (status, problems(raw, columns))


def test_serve_on_a_port_in_use_says_so_before_loading_anything(template_library, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        started = time.perf_counter()
        status, raw = in_terminal(["serve", "--db", tmp_path / "none.db", "--port", taken.getsockname()[1]],
                                  80, "xterm-256color")
    assert status == 2 and "in use" in raw and not problems(raw, 80)
    assert time.perf_counter() - started < 20, "no model is loaded first"


# -- into a closed pipe (`clipsearch ... | head -1`) --------------------------------------------------------

LISTS = [["find", "a red circle", "--top", "14"], ["find", "a red circle", "--paths"],
         ["find", "a red circle", "--json"], ["similar", "IMAGE", "--top", "13"], ["dedupe"], ["dedupe", "--paths"],
         ["dedupe", "--json"], ["dedupe", "--similar"], ["tags", "list"], ["tags", "list", "--json"], ["info"],
         ["info", "--json"], ["config"], ["--help"]]


@pytest.fixture(scope="module")
def indexed_template(template_library, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("piped") / "index.db"
    done = subprocess.run([CLIPSEARCH, "index", str(template_library), "--db", str(db), "--model", TINY_MODEL,
                           "--quiet"], capture_output=True, text=True, timeout=120, env=terminal_env("dumb"))
    assert done.returncode == 0, done.stderr
    subprocess.run([CLIPSEARCH, "tags", "add", str(sorted(template_library.glob("*.jpg"))[0]), "holiday", "--db",
                    str(db)], check=True, capture_output=True, timeout=60, env=terminal_env("dumb"))
    return db


@pytest.mark.parametrize("args", LISTS, ids=[" ".join(a) for a in LISTS])
def test_a_closed_pipe_is_not_an_error(args, indexed_template, template_library):
    """`| head -1` closes the pipe after one line: clipsearch stops quietly with 141, as `ls` does."""
    image = str(sorted(template_library.glob("*.jpg"))[0])
    command = [CLIPSEARCH, *[image if a == "IMAGE" else a for a in args]]
    if args != ["--help"]:
        command += ["--db", str(indexed_template)]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write meets a closed pipe
    try:
        done = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=90,
                              env=terminal_env("dumb"))
    finally:
        os.close(write_end)
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert done.returncode == 141, (done.returncode, done.stderr)


def test_names_with_escapes_and_newlines_cannot_reach_the_terminal_or_split_null_lines(tmp_path):
    """A file named with an escape sequence and a newline: escaped on screen, exact bytes and NUL-ended with
    --null in a pipe (so `xargs -0` gets it whole)."""
    library = tmp_path / "photos"
    written = scenes.write_library(library, 4, seed=5)
    evil = library / "evil\x1b[31mred\nname.jpg"
    written[0][0].rename(evil)
    db = tmp_path / "index.db"
    subprocess.run([CLIPSEARCH, "index", str(library), "--db", str(db), "--model", TINY_MODEL, "--quiet"],
                   check=True, capture_output=True, timeout=120, env=terminal_env("dumb"))
    for args in (["find", "a shape", "--paths"], ["find", "a shape"], ["find", "a shape", "--paths", "--null"]):
        status, raw = in_terminal([*args, "--db", db], 160, "xterm-256color")
        assert status == 0 and "\x1b[31mred" not in raw and "\\x1b[31mred\\nname.jpg" in raw, raw
    piped = subprocess.run([CLIPSEARCH, "find", "a shape", "--paths", "--null", "--db", str(db)],
                           capture_output=True, timeout=90, env=terminal_env("dumb"))
    names = piped.stdout.split(b"\0")
    assert names[-1] == b"" and len(names) == 5 and os.fsencode(evil) in names
