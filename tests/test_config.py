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
