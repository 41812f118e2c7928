"""Fragments: Lua shared by several scripts, kept once in ``lua/include/<name>.lua`` and pulled into a script by a
``--#include <name>`` line after its header. The loader assembles them before the SHA is taken, so what a script's
SHA names, what EVALSHA runs and what the header tests read is the assembled source.

A marker line stays in place (a Lua comment) and the fragment follows it. A fragment may include others; each
fragment appears once in an assembled script (a later marker for it adds nothing), and a cycle is refused."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

_DIRECTIVE = "--#"
_INCLUDE = re.compile(r"--#include[ \t]+(?P<name>[a-z][a-z0-9_]*)[ \t]*")
_TOP_LEVEL = re.compile(r"--|local function \w+\(|end\s*$")


class IncludeError(ValueError):
    """A script or fragment names a fragment that does not exist, includes in a cycle, or misspells a marker."""


def read_fragments(directory: Path) -> dict[str, str]:
    """The fragments in ``directory`` by name. A fragment only defines local functions: at its top level, besides
    comments and include markers, stand only ``local function`` lines and the ``end`` that closes them."""
    fragments = {path.stem: path.read_text() for path in sorted(directory.glob("*.lua"))}
    for name, text in fragments.items():
        for number, line in enumerate(text.splitlines(), 1):
            if line[:1] not in ("", " ", "\t") and not _TOP_LEVEL.match(line):
                raise IncludeError(
                    f"include/{name}.lua:{number}: a fragment only defines local functions: {line!r}"
                )
    return fragments


def assemble(script: str, source: str, fragments: Mapping[str, str]) -> str:
    """``source`` with every include marker after its header followed by the fragment it names."""
    header_end = source.find("]]")
    split = source.find("\n", header_end) + 1 if header_end >= 0 else 0
    if split == 0:
        return source  # no header: the registry refuses the script for that
    included: set[str] = set()

    def expand(lines: list[str], where: str, chain: tuple[str, ...]) -> list[str]:
        out: list[str] = []
        for line in lines:
            out.append(line)
            if line.startswith(_DIRECTIVE):
                name = _fragment_named(line, where, chain, fragments)
                if name not in included:
                    included.add(name)
                    text = fragments[name].removesuffix("\n")
                    out += expand(text.split("\n"), f"include/{name}.lua", (*chain, name))
        return out

    return source[:split] + "\n".join(expand(source[split:].split("\n"), f"{script}.lua", ()))


def _fragment_named(line: str, where: str, chain: tuple[str, ...], fragments: Mapping[str, str]) -> str:
    marker = _INCLUDE.fullmatch(line)
    if marker is None:
        raise IncludeError(f"{where}: {line!r} is not a '--#include <fragment>' line")
    name = marker["name"]
    if name in chain:
        raise IncludeError(f"{where}: including {name} makes a cycle: {' -> '.join((*chain, name))}")
    if name not in fragments:
        raise IncludeError(
            f"{where}: no fragment include/{name}.lua (there are: {', '.join(sorted(fragments))})"
        )
    return name
