"""The Lua scripts in ``lua/``: source (assembled with its fragments), SHA, flags and the header every script
declares."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.scripts.includes import assemble, read_fragments

LUA_DIR = Path(__file__).resolve().parents[2] / "lua"

_SHEBANG = re.compile(r"^#!lua(?:\s+flags=(?P<flags>[\w,-]+))?\s*$")
_KEY = re.compile(r"^KEYS\[(\d+)\]\s+(\w+)")
_ARG = re.compile(r"^ARGV\[(\d+)\]\s+(\w+)")
_REPLY = re.compile(r"^REPLY\s+(\w+)")
_EVENT = re.compile(r"^EVENT\s+(\w+)")


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str
    flags: frozenset[str]
    keys: tuple[str, ...]
    args: tuple[str, ...]
    replies: frozenset[str]
    events: frozenset[str]

    @property
    def read_only(self) -> bool:
        return "no-writes" in self.flags


def _numbered(pattern: re.Pattern[str], lines: list[str], what: str, name: str) -> tuple[str, ...]:
    found = [(int(m[1]), m[2]) for m in map(pattern.match, lines) if m]
    if [i for i, _ in found] != list(range(1, len(found) + 1)):
        raise ValueError(f"{name}.lua: {what} in its header must be numbered 1..n in order")
    return tuple(n for _, n in found)


def parse_script(name: str, source: str) -> Script:
    lines = source.splitlines()
    shebang = _SHEBANG.match(lines[0]) if lines else None
    if shebang is None:
        raise ValueError(f"{name}.lua must start with a '#!lua' line")
    flags = frozenset(filter(None, (shebang["flags"] or "").split(",")))
    if "allow-cross-slot-keys" in flags:
        raise ValueError(f"{name}.lua: allow-cross-slot-keys is never allowed")
    header_end = source.find("]]")
    if not lines[1].startswith("--[[") or header_end < 0:
        raise ValueError(f"{name}.lua: a --[[ header ]] must follow the shebang")
    header = [line.strip() for line in source[:header_end].splitlines()]
    replies = frozenset(m[1] for m in map(_REPLY.match, header) if m)
    if not replies:
        raise ValueError(f"{name}.lua: the header names no REPLY")
    return Script(
        name=name,
        source=source,
        sha=hashlib.sha1(source.encode()).hexdigest(),
        flags=flags,
        keys=_numbered(_KEY, header, "KEYS", name),
        args=_numbered(_ARG, header, "ARGV", name),
        replies=replies,
        events=frozenset(m[1] for m in map(_EVENT.match, header) if m),
    )


def load_scripts(directory: Path = LUA_DIR) -> dict[str, Script]:
    """Every script in ``directory`` (not its ``include/`` fragments), assembled, then parsed and hashed."""
    fragments = read_fragments(directory / "include")
    return {
        path.stem: parse_script(path.stem, assemble(path.stem, path.read_text(), fragments))
        for path in sorted(directory.glob("*.lua"))
    }
