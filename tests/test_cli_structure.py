"""The command line's shape: a fast --help, the `tags` group and its old spellings, documented options."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import typer

from clipsearch.cli import app
from clipsearch_dev import scenes

from .conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "PIL", "sqlite_utils", "torch", "transformers", "onnxruntime")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command of the CLI with its path (("tags", "add"), ...), walking groups."""
    found = []
    for name, command in group.commands.items():
        found.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*prefix, name)))
    return found


COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [["--help"], ["index", "--help"], ["tags", "--help"], ["tags", "add", "--help"]])
def test_help_imports_none_of_the_heavy_libraries(args):
    script = textwrap.dedent(f"""
        import sys
        from clipsearch.cli import app
        try:
            app({args!r}, standalone_mode=False)
        except SystemExit:
            pass
        print("IMPORTED=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "IMPORTED=\n" in result.stderr, result.stderr


def test_a_text_query_imports_no_pillow_nor_torch(store):
    """What a `find` process imports is most of what it costs: a text asked before needs neither an image
    library nor a model runtime; a new text needs the ONNX text encoder, still without Pillow or torch."""
    script = textwrap.dedent(f"""
        import sys
        from clipsearch.cli import app
        try:
            app(sys.argv[1:], standalone_mode=False)
        except SystemExit:
            pass
        print("IMPORTED=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
    """)

    def imported(text: str) -> set[str]:
        result = subprocess.run([sys.executable, "-c", script, "find", text, "--db", str(store.path)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip(), "no hits"
        return set(result.stderr.rsplit("IMPORTED=", 1)[1].strip().split(",")) - {""}

    assert imported("a red circle") == {"numpy", "onnxruntime"}  # a new text: the ONNX text encoder
    assert imported("a red circle") == {"numpy"}  # remembered by the index: no model at all


def test_cli_holds_no_sql_and_short_commands():
    source = (ROOT / "clipsearch" / "cli" / "__init__.py").read_text()
    assert not re.search(r"\b(SELECT|INSERT|UPDATE|DELETE FROM)\b|sqlite|Store\.open", source)
    for path, command in COMMANDS:
        if command.callback is None:
            continue
        lines = inspect.getsource(command.callback).splitlines()
        start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("-> None:")) + 1
        body = [line for line in lines[start:] if line.strip()]
        docstring = [line for line in (inspect.getdoc(command.callback) or "").splitlines() if line.strip()]
        assert len(body) - len(docstring) <= 25, f"clipsearch {' '.join(path)} has {len(body)} lines"


@pytest.fixture
def folder_named_add(tmp_path, monkeypatch):
    """A library in a folder named `add` (and one named `remove`), indexed, with the working folder beside them."""
    monkeypatch.chdir(tmp_path)
    scenes.write_library(tmp_path / "add", 4, seed=11)
    scenes.write_library(tmp_path / "remove", 3, seed=12)
    scenes.write_library(tmp_path / "other", 3, seed=13)
    db = tmp_path / "index.db"
    return db


def _tagged_paths(cli, db: Path) -> set[str]:
    """Images with at least one tag, by path, read through `find --tag` for each listed tag."""
    counts = json.loads(cli("tags", "list", "--db", db, "--json").stdout or "[]")
    found: set[str] = set()
    for row in counts:
        hits = json.loads(cli("find", "--tag", row["tag"], "--db", db, "--top", "100", "--json").stdout)
        found |= {hit["path"] for hit in hits}
    return found


def test_a_folder_named_add_is_tagged_by_tag_add(cli, folder_named_add, tmp_path):
    db = folder_named_add
    assert cli("index", "add", "remove", "other", "--db", db, "--model", TINY_MODEL).exit_code == 0
    result = cli("tag", "add", "--db", db, "--threshold", "-1", "--max-tags", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["tagged"] == 4
    assert "deprecated" not in result.stderr
    tagged = _tagged_paths(cli, db)
    assert len(tagged) == 4 and all(Path(p).parent == tmp_path / "add" for p in tagged)

    two = cli("tag", "remove", "other", "--db", db, "--threshold", "-1", "--max-tags", "1", "--json")
    assert two.exit_code == 0, two.stderr
    assert json.loads(two.stdout)["tagged"] == 6, "`tag remove other` tags the folders remove and other"


def test_tags_group_adds_removes_lists_and_rejects_options_before_the_subcommand(cli, folder_named_add):
    db = folder_named_add
    assert cli("index", "add", "--db", db, "--model", TINY_MODEL).exit_code == 0
    photo = str(sorted(Path("add").glob("*.jpg"))[0].resolve())
    added = cli("tags", "add", photo, "grandma", "beach walk", "--db", db, "--json")
    assert added.exit_code == 0, added.stderr
    assert {"grandma", "beach walk"} <= {t["tag"] for t in json.loads(added.stdout)["tags"]}
    listed = json.loads(cli("tags", "list", "--db", db, "--json").stdout)
    assert {row["tag"]: row["images"] for row in listed} == {"beach walk": 1, "grandma": 1}
    assert json.loads(cli("tags", "--db", db, "--json").stdout) == listed, "bare `tags` lists too"

    removed = cli("tags", "remove", photo, "grandma", "--db", db, "--json")
    assert removed.exit_code == 0
    assert [t["tag"] for t in json.loads(removed.stdout)["tags"]] == ["beach walk"]
    assert cli("tags", "add", photo, "--db", db).exit_code == 2, "a tag is required"

    misplaced = cli("tags", "--db", db, "list")
    assert misplaced.exit_code == 2 and "after the subcommand" in misplaced.stderr


def test_old_tag_add_and_remove_spellings_work_with_a_deprecation_line(cli, folder_named_add):
    db = folder_named_add
    assert cli("index", "add", "--db", db, "--model", TINY_MODEL).exit_code == 0
    photo = str(sorted(Path("add").glob("*.jpg"))[0].resolve())
    added = cli("tag", "add", photo, "holiday", "--db", db, "--json")
    assert added.exit_code == 0, added.stderr
    assert "holiday" in {t["tag"] for t in json.loads(added.stdout)["tags"]}
    notice = [line for line in added.stderr.splitlines() if "deprecated" in line]
    assert len(notice) == 1 and "clipsearch tags add" in notice[0]
    removed = cli("tag", "remove", photo, "holiday", "--db", db, "--json")
    assert removed.exit_code == 0 and json.loads(removed.stdout)["tags"] == []
    assert "clipsearch tags remove" in removed.stderr


def test_tags_export_and_the_old_tag_export_write_the_same_sidecars(cli, folder_named_add, tmp_path):
    pytest.importorskip("pyexiv2")
    db = folder_named_add
    assert cli("index", "add", "--db", db, "--model", TINY_MODEL).exit_code == 0
    photos = sorted(Path("add").resolve().glob("*.jpg"))
    assert cli("tags", "add", photos[0], "grandma", "--db", db).exit_code == 0
    exported = cli("tags", "export", "--db", db, "--json")
    assert exported.exit_code == 0, exported.stderr
    sidecar = Path(f"{photos[0]}.xmp")
    assert sidecar.exists() and "grandma" in sidecar.read_text()
    assert not Path(f"{photos[1]}.xmp").exists(), "only tagged photos get a sidecar"

    lightroom = cli("tags", "export", tmp_path / "add", "--sidecar", "lightroom", "--db", db)
    assert lightroom.exit_code == 0 and "grandma" in photos[0].with_suffix(".xmp").read_text()

    sidecar.unlink()
    old = cli("tag", "--export", "xmp", "--db", db)
    assert old.exit_code == 0 and sidecar.exists()
    assert "deprecated" in old.stderr and "clipsearch tags export" in old.stderr


def _readme_section(readme: str, path: tuple[str, ...]) -> str:
    """The README's section for one command: from the heading naming `clipsearch NAME` to the next heading."""
    heading = re.search(rf"^##+ .*`clipsearch {re.escape(' '.join(path))}[ `].*$", readme, re.M)
    assert heading, f"README has no section for clipsearch {' '.join(path)}"
    rest = readme[heading.end():]
    following = re.search(r"^#{2,3} ", rest, re.M)
    return rest[:following.start()] if following else rest


# Options every command shares, documented once in their own README sections.
SHARED = {"--help", "--db", "--library", "--json", "--model", "--device", "--quiet", "--paths", "--top", "--in",
          "--threshold", "--after", "--before", "--camera", "--preview", "--preview-size"}


def test_every_cli_option_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = []
    for path, command in COMMANDS:
        section = _readme_section(readme, path if path[0] != "tags" else ("tags",))
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            long = next(opt for opt in param.opts if opt.startswith("--"))
            where = readme if long in SHARED else section
            if not re.search(rf"`[^`]*{re.escape(long)}\b[^`]*`", where):
                missing.append(f"clipsearch {' '.join(path)} {long}")
    assert not missing, "not in the README (in the command's section, or anywhere for shared ones): " + ", ".join(
        missing)
