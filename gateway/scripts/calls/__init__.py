"""Typed calls, one function per Lua script: each builds its script's KEYS and ARGV, in its header's order, in one
place, and hands them to a runner: ``await calls.claim(runner, keys, now=..., ...)`` is the script's reply.

A call function takes the runner, the script's KEYS as one bundle (a NamedTuple whose fields are the header's
KEYS names; its ``of`` picks them from ``gateway.keys``) and the script's ARGV as keyword arguments named and
ordered as in the header. It only arranges what it is given: a flag becomes ``"1"``/``"0"``, an absent value
``""``, a list the joined string the script splits. tests/lua/test_calls.py holds every function to its header.

The runner is ``ScriptRunner``, or anything else with its ``run``: the benchmark's ``EvalshaCommand`` spells a call
as a redis-benchmark command, so the claim's ARGV order is written here only.

Modules follow the capabilities that call them: ``claim``, ``catalog``, ``checkout``, ``codes``, ``restore``,
``retire``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

Arg = str | int | bytes
Reply = TypeVar("Reply", covariant=True)


class Runs(Protocol[Reply]):
    def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Reply: ...
