"""Settings a person writes once: ~/.config/clipsearch/config.toml, with named libraries.

    db = "~/Pictures/clipsearch.db"
    model = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    device = "cuda"
    top = 20
    exclude = ["Screenshots", "*/exports/*"]
    prefer = ["~/Pictures/originals"]

    [library.family]
    db = "~/family-photos.db"

Per setting, a command-line flag wins, then an environment variable
(CLIPSEARCH_DB, CLIPSEARCH_MODEL), then the selected library's table, then
the file's top level, then the built-in default. The CLI feeds these values
to click as defaults (its `default_map`), which gives exactly that order.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 uses the backport (a dependency there only)
    import tomli as tomllib

CONFIG_ENV = "CLIPSEARCH_CONFIG"

# Setting -> (type, whether it holds paths). Lists hold strings.
SETTINGS: dict[str, tuple[type, bool]] = {
    "db": (str, True),
    "model": (str, False),
    "device": (str, False),
    "top": (int, False),
    "exclude": (list, False),
    "prefer": (list, True),
}
_KINDS = {int: "a whole number", str: "a string", float: "a number"}  # for messages: "top must be a whole number"


class ConfigError(BadInputError):
    """The config file cannot be used; the message names the file and the fix."""


@dataclass
class Config:
    path: Path
    exists: bool = False
    values: dict[str, Any] = field(default_factory=dict)  # top level
    libraries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def settings(self, library: str | None = None) -> dict[str, tuple[Any, str]]:
        """Setting -> (value, where it came from) for the settings this file gives, for `library` if named."""
        if library is not None and library not in self.libraries:
            known = ", ".join(sorted(self.libraries)) or "none defined"
            raise ConfigError(f"No library '{library}' in {self.path} (libraries: {known}). "
                              f"Add a [library.{library}] table with db = \"...\".")
        found = {name: (value, f"config file {self.path}") for name, value in self.values.items()}
        if library is not None:
            found.update({name: (value, f"[library.{library}] in {self.path}")
                          for name, value in self.libraries[library].items()})
        return found


def config_path() -> Path:
    """$CLIPSEARCH_CONFIG, else $XDG_CONFIG_HOME/clipsearch/config.toml (~/.config by default)."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config_home) / "clipsearch" / "config.toml"


def load(path: Path | None = None) -> Config:
    """Read and check the config file; a missing file is an empty config, a broken one a ConfigError."""
    path = path or config_path()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return Config(path)
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                          "TOML files are UTF-8. Save it as UTF-8, or move it away to use the defaults.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}). Fix it, or move it away to use the defaults.") from None
    libraries = data.pop("library", {})
    if not isinstance(libraries, dict) or not all(isinstance(v, dict) for v in libraries.values()):
        raise ConfigError(f"{path}: libraries are tables: [library.NAME] with db = \"...\" under it.")
    return Config(path, True, _checked(data, path, ""),
                  {name: _checked(table, path, f"[library.{name}] ") for name, table in libraries.items()})


def _checked(table: dict[str, Any], path: Path, where: str) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    value: Any
    for name, value in table.items():
        if name not in SETTINGS:
            raise ConfigError(f"{path}: {where}unknown setting '{name}'. Known: {', '.join(SETTINGS)}.")
        kind, holds_paths = SETTINGS[name]
        if kind is list:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{path}: {where}{name} must be a list of strings, like {name} = [\"...\"].")
            checked[name] = [os.path.expanduser(item) if holds_paths else item for item in value]
        elif not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{path}: {where}{name} must be {_KINDS.get(kind, kind.__name__)}, not {value!r}.")
        elif isinstance(value, int) and value < 1:
            raise ConfigError(f"{path}: {where}{name} must be at least 1, not {value}.")
        else:
            checked[name] = os.path.expanduser(str(value)) if holds_paths else value
    return checked


def explain(given: dict[str, tuple[Any, str | None]],
            library: str | None = None) -> tuple[list[tuple[str, Any, str]], Config]:
    """Each setting's effective value and where it comes from: flag > environment > config file > default.

    `given` holds the command line's values and how it got each: "COMMANDLINE", "ENVIRONMENT" (click's
    parameter sources, by name) or None; `library` selects a [library.NAME] table. Returns the rows
    (setting, value, source) and the config file read.
    """
    from .options import DB_ENV, DEFAULT_MODEL, MODEL_ENV
    from .store import default_db_path

    loaded = load()
    from_file = loaded.settings(library)
    envvars = {"db": DB_ENV, "model": MODEL_ENV}
    builtin = {"db": str(default_db_path()), "model": f"the index's model, else {DEFAULT_MODEL}",
               "device": "the fastest available", "top": 10, "exclude": [], "prefer": []}
    rows: list[tuple[str, Any, str]] = []
    for name in SETTINGS:
        value, source = given.get(name, (None, None))
        if source == "COMMANDLINE":
            rows.append((name, value, "flag"))
        elif source == "ENVIRONMENT":
            rows.append((name, value, f"environment {envvars[name]}"))
        elif name in from_file:
            rows.append((name, *from_file[name]))
        else:
            rows.append((name, builtin[name], "built-in default"))
    return rows, loaded
