"""The package's shape, read from the source with `ast`: the front ends go through the facade, the facade
imports no front end, and the packages import each other one way only (no cycles)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import clipsearch

PACKAGE = Path(clipsearch.__file__).resolve().parent
FRONT_ENDS = ("cli", "web")
# What a front end may import besides the standard library and its own package.
FRAMEWORKS = {
    "cli": {"typer", "click", "rich", "PIL", "numpy"},  # PIL, numpy: thumbnail bytes to terminal images (sixel)
    "web": {"starlette", "jinja2", "markupsafe", "uvicorn"},
}
# The facade: `clipsearch` itself (Library and the public types) and the top-level modules with no
# machinery of their own (errors, options, paths, config, units). Not store, indexing, models, search...
FACADE_MODULES = {"clipsearch", "clipsearch.library", "clipsearch.errors", "clipsearch.options", "clipsearch.paths",
                  "clipsearch.config", "clipsearch.units"}
# The one front end that starts the other: `clipsearch serve` runs the web app (which goes through the facade).
ALLOWED_BETWEEN_FRONT_ENDS = {("clipsearch.cli", "clipsearch.web.app"), ("clipsearch.cli", "clipsearch.web")}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the module, lazy ones and TYPE_CHECKING ones included;
    `from clipsearch import Name` gives the module `clipsearch.Name` (a submodule or a public name)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "clipsearch" or (node.level and not node.module):
                found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((base, node.lineno))
    return found


def _resolve(target: str) -> str:
    """`clipsearch.Library` (a public name) -> the module defining it; a module name stays as it is."""
    head, _, last = target.rpartition(".")
    if head == "clipsearch" and last in clipsearch._PUBLIC:
        return f"clipsearch.{clipsearch._PUBLIC[last]}"
    return target


def _unit(module: str) -> str:
    """The architectural unit of a module: its package under clipsearch (cli, store...) or the top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "clipsearch"


def test_front_ends_import_only_the_facade_the_standard_library_and_their_framework():
    wrong = []
    for name, path in _modules().items():
        front = _unit(name)
        if front not in FRONT_ENDS or name == "clipsearch":
            continue
        for target, line in _imports(name, path):
            top = target.split(".")[0]
            if top == "clipsearch":
                own = target == f"clipsearch.{front}" or target.startswith(f"clipsearch.{front}.")
                facade = target.rpartition(".")[0] == "clipsearch" and target.rpartition(".")[2] in clipsearch._PUBLIC
                if own or facade or target in FACADE_MODULES or target == "clipsearch.__version__":
                    continue
                if (f"clipsearch.{front}", target) in ALLOWED_BETWEEN_FRONT_ENDS:
                    continue
            elif top in sys.stdlib_module_names or top == "__future__" or top in FRAMEWORKS[front]:
                continue
            wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not wrong, "front ends go through clipsearch.Library and its types only:\n" + "\n".join(wrong)


def test_the_facade_and_the_library_below_it_import_no_front_end():
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
             for name, path in _modules().items() if _unit(name) not in (*FRONT_ENDS, "__main__", "clipsearch")
             for target, line in _imports(name, path)
             if _unit(_resolve(target)) in FRONT_ENDS and target.startswith("clipsearch.")]
    assert not wrong, "\n".join(wrong)


def test_packages_import_each_other_one_way_only():
    graph: dict[str, set[str]] = {}
    for name, path in _modules().items():
        for target, _ in _imports(name, path):
            if target.startswith("clipsearch.") and target != "clipsearch.__version__":
                source, destination = _unit(name), _unit(_resolve(target))
                if source != destination and source != "clipsearch":  # clipsearch/__init__ only maps names
                    graph.setdefault(source, set()).add(destination)

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for following in sorted(graph.get(path[-1], ())):
            if following == start:
                return [*path, start]
            if following not in path:
                found = cycle_from(start, [*path, following])
                if found:
                    return found
        return None

    cycles = [" -> ".join(found) for unit in sorted(graph) if (found := cycle_from(unit, [unit]))]
    assert not cycles, "import cycles between packages:\n" + "\n".join(cycles)


def test_the_checks_see_real_imports():
    """The parser finds the imports these rules are about (so an empty result is not a pass by accident)."""
    modules = _modules()
    web = {target for target, _ in _imports("clipsearch.web.app", modules["clipsearch.web.app"])}
    assert {"clipsearch.Library", "starlette.applications"} <= web
    job = {_unit(_resolve(t)) for t, _ in _imports("clipsearch.indexing.job", modules["clipsearch.indexing.job"])}
    assert {"store", "models"} <= job
    assert _resolve("clipsearch.Hit") == "clipsearch.search"


def test_the_readme_architecture_lists_every_module():
    """The README's tree names each module with its purpose: a new module is added there, or this fails."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture"):readme.index("## Development")]
    listed = {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.split()}
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        body = ast.parse(path.read_text(encoding="utf-8")).body
        only_a_docstring = len(body) == 1 and isinstance(body[0], ast.Expr)
        if relative not in listed and not (path.name == "__init__.py" and only_a_docstring):
            missing.append(relative)
    assert not missing, "not in the README's Architecture tree: " + ", ".join(missing)
    assert not {entry for entry in listed if entry.endswith(".py")} - {
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}, "the README lists a module that is gone"
