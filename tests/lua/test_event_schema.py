"""What the scripts really append, against the event schema (gateway/events.py): every event-appending script run
against real Valkey (tests/lua/every_event.py), each entry it appended decoded strictly (an unknown field fails, a
missing one fails, the version is the current one), and every event type named in a script's header has a struct
and is appended by some script. A script broken on purpose (a misspelled field, a field left out, the old version)
is shown to fail the same check."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from gateway import events
from gateway.events import EVENT_TYPES, PREVIOUS_VERSION, SCHEMA_VERSION, type_of
from gateway.scripts.registry import load_scripts, parse_script
from gateway.scripts.runner import RedisClient, ScriptRunner
from tests.lua.every_event import Appended, every_event

SCRIPTS = load_scripts()
DECLARED = {(script.name, event) for script in SCRIPTS.values() for event in script.events}


def problems(appended: list[Appended]) -> list[str]:
    """Why the entries fail the schema: each undecodable entry, a version other than the current one, and each
    event type a script declares that its run did not append (or appends without declaring)."""
    found = []
    for entry in appended:
        try:
            event = events.decode(entry.fields)
        except msgspec.ValidationError as exc:
            found.append(f"{entry.script}: {entry.fields.get('type')}: {exc}")
            continue
        if "v" not in entry.fields or event.v != SCHEMA_VERSION:
            found.append(f"{entry.script}: {type_of(event)} written as version {entry.fields.get('v')!r}")
    ran = {(entry.script, entry.fields.get("type")) for entry in appended}
    found += [
        f"{script}: declares {kind} but its run appended none" for script, kind in sorted(DECLARED - ran)
    ]
    found += [f"{script}: appended undeclared {kind}" for script, kind in sorted(ran - DECLARED, key=str)]
    return found


async def test_every_script_appends_what_the_schema_declares(runner: ScriptRunner) -> None:
    appended = await every_event(runner)
    assert problems(appended) == []
    assert {entry.script for entry in appended} == {
        name for name, _ in DECLARED
    }  # every script with EVENT lines
    empty: dict[str, set[bool]] = {}  # an optional field seen empty (True) and set (False)
    for entry in appended:
        for name in events.optional_fields(events.decode(entry.fields)):
            empty.setdefault(name, set()).add(entry.fields[name] == "")
    assert {name for name, seen in empty.items() if seen == {True, False}} == set(empty) - {"before"}
    assert empty["before"] == {True}  # activity_created's: always empty


async def test_a_real_entry_broken_in_any_field_fails(runner: ScriptRunner) -> None:
    """Each appended entry with one field left out (any but ``v``), an unknown field, a version from the future,
    and with ``v`` left out: the previous version, accepted."""
    for entry in await every_event(runner):
        fields = entry.fields
        for name in set(fields) - {"v"}:
            with pytest.raises(msgspec.ValidationError):
                events.decode({k: v for k, v in fields.items() if k != name})
        with pytest.raises(msgspec.ValidationError, match="unknown field `extra`"):
            events.decode({**fields, "extra": "1"})
        with pytest.raises(msgspec.ValidationError, match=r"\$\.v"):
            events.decode({**fields, "v": str(SCHEMA_VERSION + 1)})
        previous = {k: v for k, v in fields.items() if k != "v"}
        assert events.decode(previous).v == PREVIOUS_VERSION == 1


def test_every_event_a_header_names_has_a_struct_and_every_struct_is_appended_by_a_script() -> None:
    structs = {type_of(kind) for kind in EVENT_TYPES}
    assert len(structs) == len(EVENT_TYPES) == 24
    assert {event for _, event in DECLARED} == structs


Mutation = Callable[[str], str]
BROKEN: dict[str, tuple[str, Mutation, str]] = {
    "misspelled": (
        "claim",
        lambda s: s.replace('"channel", channel', '"chanel", channel'),
        "unknown field `chanel`",
    ),
    "left out": ("deliver", lambda s: s.replace('"version", 1, ', ""), "missing required field `version`"),
    "not an integer": (
        "restock",
        lambda s: s.replace('"delta", delta', '"delta", delta .. " packs"'),
        r"\$\.delta",
    ),
    "bad JSON": (
        "set_status",
        lambda s: s.replace("cjson.encode({status = after})", "after"),
        "JSON of `after`",
    ),
    "old version": ("lock", lambda s: s.replace('"v", 2,', ""), "lock: locked written as version None"),
    "undeclared": ("release", lambda s: s.replace('"type", "released"', '"type", "redeemed"'), "undeclared"),
}


@pytest.mark.parametrize("how", list(BROKEN))
async def test_a_script_broken_on_purpose_fails_the_check(
    how: str, redis_client: RedisClient, runner: ScriptRunner
) -> None:
    name, mutate, reported = BROKEN[how]
    source = mutate(SCRIPTS[name].source)
    assert source != SCRIPTS[name].source
    scripts: dict[str, Any] = {**SCRIPTS, name: parse_script(name, source)}
    broken = ScriptRunner(redis_client, scripts, runner.fence)
    found = problems(await every_event(broken))
    assert found, f"{how}: nothing found"
    assert all(line.startswith(f"{name}:") for line in found), found
    assert any(re.search(reported, line) for line in found), found
