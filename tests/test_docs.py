"""The README's Python example runs as written (in the spirit of sqlite-utils' test_docs.py).

The fenced python block of the "Python API" section is executed against a generated
library in a temporary home folder, with the shipped tiny model as $CLIPSEARCH_MODEL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from clipsearch import Library, search
from clipsearch_dev import scenes

from .conftest import REPO, TINY_MODEL


def python_api_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the Python API section has one example"
    return blocks[0]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".xmp"}


def test_readme_python_example_runs(tmp_path, monkeypatch):
    home = tmp_path / "home"
    photos = home / "Photos"
    scenes.write_library(photos, 12, seed=5)
    scenes.write_duplicate_library(photos / "imported", families=2, unrelated=0, raw_pairs=0, seed=5,
                                   size=(320, 240))
    before = _digests(photos)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLIPSEARCH_MODEL", TINY_MODEL)
    printed: list[str] = []

    def capture(*args: object, **kwargs: object) -> None:
        printed.append(" ".join(str(a) for a in args))

    exec(compile(python_api_example(), "README.md (Python API)", "exec"), {"print": capture})

    assert printed, "the example prints its results"
    assert (home / "dupes-review").is_dir(), "the example moved duplicates for review"
    assert _digests(photos) == before, "undo put every moved file back, unchanged"
    assert list(photos.rglob("*.xmp")), "sidecars were written beside the photos"
    with Library() as library:  # the example used the default index, which now holds the whole library
        assert library.count() == len(before)
        assert [tag["tag"] for tag in library.tags() if tag["manual"]] == ["garden", "grandma"]


def test_readme_names_the_real_hit_fields_and_the_preview_flag(cli):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    named = re.search(r"# Hit: ([a-z_, ]+)$", python_api_example(), re.MULTILINE).group(1).split(", ")
    fields = [field.name for field in dataclasses.fields(search.Hit)]
    assert named and all(name in fields for name in named), (named, fields)
    (row,) = [line for line in readme.splitlines() if line.startswith("| `-p` previews")]
    assert "not yet" not in row and "`find --preview`" in row and "`similar --preview`" in row
    for command in ("find", "similar"):
        assert "--preview" in cli(command, "--help").stdout
