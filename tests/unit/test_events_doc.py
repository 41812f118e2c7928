"""docs/events.md says what gateway/events.py declares: the envelope, each event type's fields in order with their
types, the scripts that append it, and the JSON payloads the events carry. A field added to a struct and not to the
page (or the other way round), a type changed on one side only, or a script not named fails here."""

from __future__ import annotations

import re
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

import msgspec
import pytest

from gateway import events
from gateway.events import EVENT_TYPES, Event, type_of
from gateway.scripts.registry import load_scripts

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def _alternatives(kind: object) -> tuple[object, ...]:
    return get_args(kind) if get_origin(kind) in (Union, UnionType) else (kind,)


def _is_struct(kind: object) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def json_type(kind: object) -> str:
    """A type inside JSON, as the page writes it."""
    if get_origin(kind) is Annotated:
        return json_type(get_args(kind)[0])
    if get_origin(kind) in (Union, UnionType):
        names = [json_type(a) for a in get_args(kind)]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if get_origin(kind) is list:
        return f"list of {json_type(get_args(kind)[0])}"
    if get_origin(kind) is dict:
        return f"object of {json_type(get_args(kind)[1])}"
    if _is_struct(kind):
        return kind.__name__  # type: ignore[union-attr]
    return {str: "string", int: "integer", bool: "boolean", NoneType: "null", None: "null"}[kind]  # type: ignore[index]


def wire_type(kind: object) -> str:
    """A stream field's type, as the page writes it."""
    if kind is None or kind is NoneType:
        return "empty"
    present = [a for a in _alternatives(kind) if a not in (None, NoneType)]
    if len(present) < len(_alternatives(kind)):
        return f"{wire_type(present[0])}, or empty"
    if get_origin(kind) is Annotated:
        return wire_type(get_args(kind)[0])
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(get_args(kind))
    if _is_struct(kind) or get_origin(kind) in (list, dict):
        return f"JSON {json_type(kind)}"
    return json_type(kind)


def payload_type(field: msgspec.structs.FieldInfo) -> str:
    present = [a for a in _alternatives(field.type) if a not in (None, NoneType)]
    if len(present) < len(_alternatives(field.type)) and not field.required:
        return f"{json_type(present[0])}, optional"
    return json_type(field.type)


def payloads(kinds: tuple[type[Event], ...]) -> dict[str, type[msgspec.Struct]]:
    """Every struct the events carry as JSON, and the structs those carry."""
    found: dict[str, type[msgspec.Struct]] = {}
    todo: list[object] = [f.type for kind in kinds for f in msgspec.structs.fields(kind)]
    while todo:
        kind = todo.pop()
        if _is_struct(kind) and kind.__name__ not in found:  # type: ignore[union-attr]
            found[kind.__name__] = kind  # type: ignore[union-attr,assignment]
            todo += [f.type for f in msgspec.structs.fields(kind)]  # type: ignore[arg-type]
        todo += get_args(kind)
    return found


def sections(text: str) -> dict[str, tuple[list[tuple[str, str]], str]]:
    """Each ``##``/``###`` section by name (every backticked name of a heading, else its text): its table's
    (field, type) rows, and its text."""
    found: dict[str, tuple[list[tuple[str, str]], str]] = {}
    names: list[str] = []
    for line in text.splitlines():
        heading = re.match(r"^#{2,3} (.+)$", line)
        if heading:
            names = re.findall(r"`(\w+)`", heading[1]) or [heading[1].strip()]
            for name in names:
                found[name] = ([], "")
            continue
        row = re.match(r"^\| `(\w+)` \| ([^|]+?) \|", line)
        for name in names:
            rows, prose = found[name]
            if row:
                rows.append((row[1], row[2]))
            found[name] = (rows, prose + line + "\n")
    return found


def doc_problems(text: str, kinds: tuple[type[Event], ...] = EVENT_TYPES) -> list[str]:
    doc = sections(text)
    problems = []
    if f"The current version is **{events.SCHEMA_VERSION}**" not in text:
        problems.append(f"the page does not give the current version, {events.SCHEMA_VERSION}")
    envelope_rows = [("type", "string")] + [
        (f.encode_name, wire_type(f.type)) for f in msgspec.structs.fields(Event)
    ]
    if doc.get("Envelope", ([], ""))[0] != envelope_rows:
        problems.append(f"Envelope: the page says {doc.get('Envelope')}, the code {envelope_rows}")
    appenders: dict[str, set[str]] = {}
    for script in load_scripts().values():
        for event in script.events:
            appenders.setdefault(event, set()).add(f"lua/{script.name}.lua")
    envelope = {name for name, _ in envelope_rows}
    for kind in kinds:
        name = type_of(kind)
        fields = [(f.encode_name, wire_type(f.type)) for f in msgspec.structs.fields(kind)]
        expected = [row for row in fields if row[0] not in envelope]
        rows, prose = doc.get(name, ([], ""))
        if rows != expected:
            problems.append(f"{name}: the page says {rows}, the code {expected}")
        named = set(re.findall(r"lua/\w+\.lua", prose))
        together = [
            other for other in kinds if type_of(other) in doc and doc[type_of(other)] == doc.get(name)
        ]
        wanted = set().union(*(appenders.get(type_of(other), set()) for other in together or [kind]))
        if named != wanted:
            problems.append(
                f"{name}: the page names {sorted(named)} as appending it, the headers {sorted(wanted)}"
            )
    for name, struct in sorted(payloads(kinds).items()):
        expected = [(f.encode_name, payload_type(f)) for f in msgspec.structs.fields(struct)]
        if doc.get(name, ([], ""))[0] != expected:
            problems.append(
                f"payload {name}: the page says {doc.get(name, ([], ''))[0]}, the code {expected}"
            )
    known = {"Envelope", *(type_of(kind) for kind in kinds), *payloads(kinds)}
    tables = {name for name, (rows, _) in doc.items() if rows}
    problems += [
        f"the page has a table for {name}, which the code does not declare" for name in sorted(tables - known)
    ]
    return problems


def test_the_page_says_what_the_code_declares() -> None:
    assert doc_problems(DOC.read_text()) == []


class ClaimedWithMore(events.Claimed, tag="claimed"):
    discount_code: str


BROKEN_PAGES = {
    "a row left out": lambda t: t.replace("| `ordinal` | integer | the pack's place", "| x |"),
    "a type changed": lambda t: t.replace("| `delta` | integer |", "| `delta` | string |"),
    "rows swapped": lambda t: t.replace("| `before` | JSON StockLeft | packs left before |\n", "", 1).replace(
        "| `delta` | integer |", "| `before` | JSON StockLeft | packs left before |\n| `delta` | integer |", 1
    ),
    "a script not named": lambda t: t.replace(
        "`lua/sweep_locks.lua` (a lock past", "the sweeper (a lock past"
    ),
    "a payload's field left out": lambda t: t.replace("| `amount` | integer |", "| amount | integer |"),
    "a table for no event": lambda t: t
    + "\n### `teleported`\n\n| field | type | meaning |\n| `where` | string | x |\n",
    "the version": lambda t: t.replace("current version is **2**", "current version is **3**"),
}


@pytest.mark.parametrize("how", list(BROKEN_PAGES))
def test_a_page_out_of_step_fails(how: str) -> None:
    text = BROKEN_PAGES[how](DOC.read_text())
    assert text != DOC.read_text()
    assert doc_problems(text) != []


def test_a_field_added_to_a_struct_and_not_to_the_page_fails() -> None:
    kinds = tuple(ClaimedWithMore if kind is events.Claimed else kind for kind in EVENT_TYPES)
    [problem] = doc_problems(DOC.read_text(), kinds)
    assert problem.startswith("claimed: the page says") and "('discount_code', 'string')" in problem
