"""The config file: defaults, named libraries, precedence flag > environment > config > default."""

import json
import os

import pytest

from clipsearch import config

from .conftest import TINY_MODEL


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config-home" / "clipsearch" / "config.toml"
    path.parent.mkdir(parents=True)
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path / "config-home")  # restored by conftest's monkeypatch
    return path


def _settings(cli, *args, env=None) -> dict:
    result = cli("config", "--json", *args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["settings"]


def test_precedence_flag_then_environment_then_config_then_default(cli, config_file, tmp_path):
    config_file.write_text(f'db = "{tmp_path}/from-config.db"\ntop = 3\nmodel = "{TINY_MODEL}"\n'
                           f'[library.family]\ndb = "~/family.db"\n')
    settings = _settings(cli)
    assert settings["db"] == {"value": f"{tmp_path}/from-config.db", "source": f"config file {config_file}"}
    assert settings["top"]["value"] == 3 and settings["device"]["source"] == "built-in default"

    family = _settings(cli, "--library", "family")
    assert family["db"]["value"] == os.path.expanduser("~/family.db")
    assert family["db"]["source"] == f"[library.family] in {config_file}"
    assert family["top"]["value"] == 3, "a library inherits the top-level settings"

    from_env = _settings(cli, "--library", "family", env={"CLIPSEARCH_DB": str(tmp_path / "env.db")})
    assert from_env["db"] == {"value": str(tmp_path / "env.db"), "source": "environment CLIPSEARCH_DB"}

    from_flag = _settings(cli, "--db", tmp_path / "flag.db", "--top", "7",
                          env={"CLIPSEARCH_DB": str(tmp_path / "env.db")})
    assert from_flag["db"] == {"value": str(tmp_path / "flag.db"), "source": "flag"}
    assert from_flag["top"] == {"value": 7, "source": "flag"}


def test_commands_use_the_config_and_the_selected_library(cli, config_file, small_library, tmp_path):
    config_file.write_text(f'model = "{TINY_MODEL}"\ntop = 2\nexclude = ["*-red-*"]\n'
                           f'[library.family]\ndb = "{tmp_path}/family.db"\n')
    assert cli("index", small_library, "--library", "family").exit_code == 0
    assert (tmp_path / "family.db").exists()
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").rglob("index.db"))
    found = cli("find", "a shape", "--paths", env={"CLIPSEARCH_LIBRARY": "family"})
    assert found.exit_code == 0 and len(found.stdout.splitlines()) == 2, "top = 2 from the config"
    indexed = json.loads(cli("find", "a shape", "--json", "--top", "100", "--library", "family").stdout)
    assert indexed and not any("-red-" in hit["path"] for hit in indexed), "exclude from the config"
    assert len(cli("find", "a shape", "--paths", "--top", "5", "-L", "family").stdout.splitlines()) == 5


def test_a_broken_config_file_is_a_clear_error(cli, config_file):
    for text, message in (('top = "many"', "top must be a whole number, not 'many'"),
                          ('db = 3', "db must be a string, not 3"), ("colour = 1", "unknown setting 'colour'"),
                          ("top = [", "not valid TOML"), ('exclude = [1]', "list of strings")):
        config_file.write_text(text)
        result = cli("find", "cat")
        assert result.exit_code == 2, text
        assert str(config_file) in result.stderr and message in result.stderr, result.stderr
    config_file.write_text('[library.family]\ndb = "x.db"\n')
    result = cli("info", "--library", "holiday")
    assert result.exit_code == 2 and "No library 'holiday'" in result.stderr and "family" in result.stderr


def test_no_config_file_means_built_in_defaults(cli):
    loaded = config.load()
    assert not loaded.exists and loaded.settings() == {}
    settings = _settings(cli)
    assert all(entry["source"] == "built-in default" for entry in settings.values())


def test_config_shows_prefer_and_device_with_their_source(cli, config_file, tmp_path, monkeypatch):
    config_file.write_text(f'device = "cpu"\nprefer = ["~/Pictures/originals", "{tmp_path}/keep"]\n'
                           '[library.family]\ndevice = "mps"\nprefer = "/family/originals"\n')
    from_file = f"config file {config_file}"
    settings = _settings(cli)
    assert settings["device"] == {"value": "cpu", "source": from_file}
    assert settings["prefer"] == {"value": [os.path.expanduser("~/Pictures/originals"), f"{tmp_path}/keep"],
                                  "source": from_file}, "paths with ~ expanded"
    assert settings["exclude"] == {"value": [], "source": "built-in default"}

    family = _settings(cli, "--library", "family")
    assert family["device"] == {"value": "mps", "source": f"[library.family] in {config_file}"}
    assert family["prefer"] == {"value": ["/family/originals"], "source": f"[library.family] in {config_file}"}, \
        "one string is a list of one"
    assert _settings(cli, "--device", "cuda")["device"] == {"value": "cuda", "source": "flag"}

    from rich.console import Console

    from clipsearch.cli import output

    monkeypatch.setattr(output, "stdout", Console(width=400, soft_wrap=True))  # one line per setting
    table = cli("config")
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
    assert "cpu" in rows["device"] and from_file in rows["device"]
    assert f"{tmp_path}/keep" in rows["prefer"] and from_file in rows["prefer"]


def test_an_unknown_device_in_the_config_is_the_unknown_device_error(cli, config_file, small_library, tmp_path):
    config_file.write_text(f'model = "{TINY_MODEL}"\ndevice = "tpu"\n')
    db = tmp_path / "index.db"
    result = cli("index", small_library, "--db", db)
    assert result.exit_code == 2, result.output
    assert "Unknown device 'tpu'. Use one of: cuda, mps, cpu." in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.output
    # The flag wins over the config file.
    result = cli("index", small_library, "--db", db, "--device", "cpu", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new"] == 12


def test_prefer_from_the_config_decides_what_dedupe_keeps_and_the_flag_replaces_it(cli, config_file, small_library,
                                                                                   tmp_path):
    import shutil

    first = min(small_library.glob("*.jpg"))
    original = small_library / "originals" / first.name
    copy = small_library / "exports" / "for-the-web" / first.name
    original.parent.mkdir()
    copy.parent.mkdir(parents=True)
    first.rename(original)
    shutil.copy2(original, copy)  # an exact copy, with a longer path and the same file time
    db = tmp_path / "index.db"
    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL, "--quiet").exit_code == 0

    def exact_group(*args):
        result = cli("dedupe", "--db", db, "--json", *args)
        assert result.exit_code == 0, result.output
        [group] = [g for g in json.loads(result.stdout) if g["tier"] == "exact"]
        return group["keep"], group["reason"]

    assert exact_group() == (str(original), "shortest path")
    config_file.write_text(f'prefer = ["{small_library}/exports"]\n')
    assert exact_group() == (str(copy), "in a preferred folder")
    # --prefer replaces the config's list: were it added to it, both files would be preferred and the path decide.
    assert exact_group("--prefer", str(small_library / "originals")) == (str(original), "in a preferred folder")
