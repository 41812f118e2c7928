"""docs/architecture.md's module map ("Where things are") names every product module exactly once and nothing else:
a module added, moved or deleted without the map following fails here. Its scripts table names every script in
lua/, and its list of fragments every fragment in lua/include/.

A product module is every ``.py`` under claimgate/, gateway/, worker/ and loadtest/, except an ``__init__.py`` that
holds nothing but its docstring (a package marker: the map's heading names the package)."""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
PRODUCT = ("claimgate", "gateway", "worker", "loadtest")
MODULE_PATH = re.compile(r"\b(?:" + "|".join(PRODUCT) + r")/[\w/]*\.py\b")
MAP_HEADING = "## Where things are"
SCRIPTS_HEADING = "## Scripts and the wrapper"


def is_package_marker(path: Path) -> bool:
    """An ``__init__.py`` with no statement but its docstring."""
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return not body


def product_modules(root: Path = ROOT) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for package in PRODUCT
        for path in (root / package).rglob("*.py")
        if not is_package_marker(path)
    )


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of its level."""
    start = text.find("\n" + heading + "\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(heading) + 2)
    return text[start : end if end >= 0 else len(text)]


def map_problems(text: str, modules: Iterable[str], root: Path = ROOT) -> list[str]:
    """What the module map gets wrong: a module it does not name, or names more than once; a path it names that
    does not exist, or is no product module."""
    the_map = section(text, MAP_HEADING)
    if not the_map:
        return [f"no section {MAP_HEADING!r}"]
    named = Counter(MODULE_PATH.findall(the_map))
    wanted = set(modules)
    problems = [f"{module}: not in the module map" for module in sorted(wanted - set(named))]
    problems += [f"{path}: named {n} times" for path, n in sorted(named.items()) if n > 1]
    for path in sorted(set(named) - wanted):
        if (root / path).exists():
            problems.append(f"{path}: named in the map, but not a product module (a package marker?)")
        else:
            problems.append(f"{path}: named in the map, but no such file")
    return problems


def scripts_problems(text: str, root: Path = ROOT) -> list[str]:
    """The scripts table (rows ``| `name` | partition | ...``) against lua/*.lua, and the fragments named as
    ``lua/include/<name>.lua`` against lua/include/."""
    part = section(text, SCRIPTS_HEADING)
    rows = re.findall(r"^\| `(\w+)` \| (?:activity|wallet|code|blocklist|any)\b", part, re.M)
    scripts = sorted(p.stem for p in (root / "lua").glob("*.lua"))
    fragments = sorted(p.stem for p in (root / "lua" / "include").glob("*.lua"))
    listed = re.findall(r"`lua/include/(\w+)\.lua`", part)
    problems = []
    if sorted(rows) != scripts:
        problems.append(f"scripts table {sorted(rows)} != lua/ {scripts}")
    if sorted(set(listed)) != fragments:
        problems.append(f"fragments named {sorted(set(listed))} != lua/include/ {fragments}")
    return problems


def test_the_module_map_names_every_module_once() -> None:
    assert map_problems(DOC.read_text(), product_modules()) == []


def test_the_scripts_table_and_fragments_follow_lua() -> None:
    assert scripts_problems(DOC.read_text()) == []


def test_every_module_is_found() -> None:
    modules = product_modules()
    assert "gateway/scripts/transport.py" in modules and "claimgate/cli.py" in modules
    assert "worker/sink/__init__.py" in modules  # it re-exports: code, not a marker
    assert "gateway/claim/__init__.py" not in modules  # a docstring only


def _without_row(text: str, path: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(f"| `{path}` |"))


def _with_row_after(text: str, after: str, row: str) -> str:
    lines = text.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(f"| `{after}` |"))
    return "".join([*lines[: at + 1], row, *lines[at + 1 :]])


BROKEN_MAPS: dict[str, tuple[Callable[[str], str], str]] = {
    "a module left out": (
        lambda t: _without_row(t, "gateway/ids.py"),
        "gateway/ids.py: not in the module map",
    ),
    "a stale entry": (
        lambda t: _with_row_after(
            t, "gateway/scripts/transport.py", "| `gateway/scripts/pipelined.py` | the old transport |\n"
        ),
        "gateway/scripts/pipelined.py: named in the map, but no such file",
    ),
    "a module named twice": (
        lambda t: _with_row_after(t, "gateway/scripts/transport.py", "| `gateway/ids.py` | again |\n"),
        "gateway/ids.py: named 2 times",
    ),
    "a package marker listed": (
        lambda t: _with_row_after(t, "gateway/ids.py", "| `gateway/claim/__init__.py` | the package |\n"),
        "gateway/claim/__init__.py: named in the map, but not a product module (a package marker?)",
    ),
}


@pytest.mark.parametrize("how", list(BROKEN_MAPS))
def test_a_map_out_of_step_fails(how: str) -> None:
    breaks, expected = BROKEN_MAPS[how]
    text = breaks(DOC.read_text())
    assert text != DOC.read_text()
    assert map_problems(text, product_modules()) == [expected]


def test_a_new_module_not_in_the_map_fails() -> None:
    modules = [*product_modules(), "gateway/claim/waitlist.py"]
    assert map_problems(DOC.read_text(), modules) == ["gateway/claim/waitlist.py: not in the module map"]


def test_a_scripts_table_out_of_step_fails() -> None:
    text = DOC.read_text()
    assert scripts_problems(_without_row(text, "restore_record")) != []
    assert scripts_problems(text.replace("`lua/include/flat_list.lua`", "flat_list")) != []
