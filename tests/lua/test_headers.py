"""Every script's machine-read header agrees with its code.

Each rule is a small checker over the Lua source (regexes plus a tiny string/comment-aware scanner) that
returns the problems it finds. The checkers run on every script in lua/, and on a minimal well-formed source
and deliberately broken copies of it, so each rule is shown to fail when someone breaks it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from gateway.outcomes import Outcome
from gateway.scripts.registry import LUA_DIR, load_scripts, parse_script

SCRIPTS = load_scripts()  # each script's source as assembled with its fragments: what EVALSHA runs
NAMES = sorted(SCRIPTS)
OUTCOMES = {outcome.value for outcome in Outcome}
# Commands whose first key comes after a subcommand; commands that take no key at all.
SUBCOMMAND_KEYED = {"XGROUP", "XINFO", "OBJECT", "MEMORY"}
KEYLESS = {"TIME", "PING", "ECHO"}

Check = Callable[[str], list[str]]


# --- a tiny Lua scanner ------------------------------------------------------------------------------------


def split_source(source: str) -> tuple[list[str], str]:
    """(header lines, stripped; code after the header with comments blanked, newlines kept)."""
    end = source.find("]]")
    if end < 0:
        return [], strip_comments(source)
    return [line.strip() for line in source[:end].splitlines()], strip_comments(source[end + 2 :])


def _string_end(code: str, i: int) -> int:
    """Index just past the quoted string starting at ``code[i]``."""
    quote, j = code[i], i + 1
    while j < len(code) and code[j] != quote:
        j += 2 if code[j] == "\\" else 1
    return j + 1


def _long_bracket_end(code: str, i: int, level: str) -> int:
    close = code.find("]" + level + "]", i)
    return len(code) if close < 0 else close + len(level) + 2


def strip_comments(code: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(code):
        char = code[i]
        if char in "\"'":
            end = _string_end(code, i)
            out.append(code[i:end])
            i = end
        elif code.startswith("--", i):
            long = re.match(r"--\[(=*)\[", code[i:])
            if long:
                end = _long_bracket_end(code, i + long.end(), long[1])
            else:
                newline = code.find("\n", i)
                end = len(code) if newline < 0 else newline
            out.append("\n" * code[i:end].count("\n") or " ")
            i = end
        elif long := re.match(r"\[(=*)\[", code[i:]):
            end = _long_bracket_end(code, i + long.end(), long[1])
            out.append(code[i:end])
            i = end
        else:
            out.append(char)
            i += 1
    return "".join(out)


def split_top(text: str) -> list[str]:
    """Split on commas outside brackets and strings."""
    parts: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(text):
        char = text[i]
        if char in "\"'":
            i = _string_end(text, i)
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    parts.append(text[start:].strip())
    return [part for part in parts if part]


def redis_calls(code: str) -> list[list[str]]:
    """The argument lists of every ``redis.call(...)`` / ``redis.pcall(...)``."""
    return call_arguments(code, r"\bredis\.p?call")


def call_arguments(code: str, callee: str) -> list[list[str]]:
    """The argument lists of every call of ``callee`` (a regex)."""
    calls = []
    for match in re.finditer(callee + r"\s*\(", code):
        depth, i = 1, match.end()
        while i < len(code) and depth:
            if code[i] in "\"'":
                i = _string_end(code, i)
                continue
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
        calls.append(split_top(code[match.end() : i - 1]))
    return calls


def literal(arg: str) -> str | None:
    found = re.fullmatch(r"\"([^\"\\]*)\"|'([^'\\]*)'", arg)
    return None if found is None else (found[1] if found[1] is not None else found[2])


def declared(header: list[str], word: str) -> list[str]:
    return [m[1] for m in (re.match(rf"^{word}\s+(\S+)", line) for line in header) if m]


def declared_numbered(header: list[str], table: str) -> list[int]:
    return [int(m[1]) for m in (re.match(rf"^{table}\[(\d+)\]\s+\w+", line) for line in header) if m]


def key_locals(code: str) -> tuple[dict[str, int], list[str]]:
    """Locals bound (in ``local a, b = KEYS[1], KEYS[2]`` statements) to a KEYS slot, and binding problems."""
    bound: dict[str, int] = {}
    problems: list[str] = []
    for match in re.finditer(r"^[ \t]*local[ \t]+([A-Za-z_][\w \t,]*?)[ \t]*=(?!=)[ \t]*(.+)$", code, re.M):
        names = [name.strip() for name in match[1].split(",")]
        exprs = split_top(match[2])
        for name, expr in zip(names, exprs, strict=False):
            slot = re.fullmatch(r"KEYS\[(\d+)\]", expr)
            if slot:
                bound[name] = int(slot[1])
        if "KEYS" in match[2] and len(names) != len(exprs):
            problems.append(f"uneven KEYS binding: {match[0].strip()!r}")
    return bound, problems


# --- the rules ---------------------------------------------------------------------------------------------


def check_shebang(source: str) -> list[str]:
    first = source.split("\n", 1)[0]
    found = re.fullmatch(r"#!lua(?:[ \t]+flags=([\w,-]+))?[ \t]*", first)
    if found is None:
        return [f"first line is {first!r}, not '#!lua'"]
    if "allow-cross-slot-keys" in (found[1] or "").split(","):
        return ["the allow-cross-slot-keys flag is set"]
    return []


def _check_table(source: str, table: str) -> list[str]:
    header, code = split_source(source)
    numbers = declared_numbered(header, table)
    problems = []
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"{table} in the header are numbered {numbers}, not 1..n")
    used = {int(n) for n in re.findall(rf"\b{table}\[(\d+)\]", code)}
    if extra := used - set(numbers):
        problems.append(f"{table}{sorted(extra)} used but not declared")
    if unused := set(numbers) - used:
        problems.append(f"{table}{sorted(unused)} declared but never used")
    if dynamic := re.findall(rf"\b{table}\b(?!\[\d+\])", code):
        problems.append(f"{table} used without a literal index ({len(dynamic)}x)")
    return problems


def check_keys(source: str) -> list[str]:
    return _check_table(source, "KEYS")


def check_argv(source: str) -> list[str]:
    return _check_table(source, "ARGV")


def check_replies(source: str) -> list[str]:
    header, code = split_source(source)
    replies = set(declared(header, "REPLY"))
    problems = []
    if not replies:
        problems.append("no REPLY declared")
    returned = set()
    for table in re.findall(r"\breturn\s*\{([^}]*)\}", code):
        first = split_top(table)[0] if split_top(table) else ""
        code_name = literal(first)
        if code_name is None:
            problems.append(f"a reply table starts with {first!r}, not a literal reply code")
        else:
            returned.add(code_name)
    if undeclared := returned - replies:
        problems.append(f"returns undeclared replies {sorted(undeclared)}")
    if not_outcomes := replies - OUTCOMES:
        problems.append(f"declared replies {sorted(not_outcomes)} are not Outcome values")
    if never := replies - returned:
        problems.append(f"declared replies {sorted(never)} are never returned")
    return problems


def check_events(source: str) -> list[str]:
    header, code = split_source(source)
    events = set(declared(header, "EVENT"))
    problems = []
    emitted = set()
    for args in redis_calls(code):
        if literal(args[0]) != "XADD":
            continue
        types = [literal(args[i + 1]) for i, arg in enumerate(args[:-1]) if literal(arg) == "type"]
        if len(types) != 1 or types[0] is None:
            problems.append(f'an XADD without exactly one literal "type": {args}')
        emitted.update(t for t in types if t is not None)
    if undeclared := emitted - events:
        problems.append(f"emits undeclared events {sorted(undeclared)}")
    if never := events - emitted:
        problems.append(f"declared events {sorted(never)} are never emitted")
    return problems


def function_parameters(code: str) -> dict[str, list[str]]:
    """Each ``local function``'s parameter names."""
    return {
        m[1]: [name.strip() for name in m[2].split(",") if name.strip()]
        for m in re.finditer(r"\blocal[ \t]+function[ \t]+(\w+)\s*\(([^)]*)\)", code)
    }


def check_no_built_keys(source: str) -> list[str]:
    """Keys reach redis.call only as locals bound, once, straight from a declared KEYS slot, or as a parameter of a
    local function (a fragment's) that every call of it gives such a local."""
    header, code = split_source(source)
    declared_count = len(declared_numbered(header, "KEYS"))
    bound, problems = key_locals(code)
    if too_far := {n for n in bound.values() if n > declared_count}:
        problems.append(f"KEYS{sorted(too_far)} beyond the {declared_count} declared")
    keys_uses = len(re.findall(r"\bKEYS\b", code))
    if keys_uses != len(bound):
        problems.append(f"KEYS appears {keys_uses}x but only {len(bound)} plain local bindings exist")
    parameters = function_parameters(code)
    # function -> the places of its parameters that reach redis.call as keys
    key_parameters: dict[str, set[int]] = {}
    for args in redis_calls(code):
        command = literal(args[0]) if args else None
        if command is None:
            problems.append(f"redis.call with a non-literal command: {args}")
            continue
        if command.upper() in KEYLESS:
            continue
        position = 2 if command.upper() in SUBCOMMAND_KEYED else 1
        key = args[position] if len(args) > position else ""
        owners = {function: names.index(key) for function, names in parameters.items() if key in names}
        for function, place in owners.items():
            key_parameters.setdefault(function, set()).add(place)
        if not owners and key not in bound:
            problems.append(f"{command} gets key {key!r}, not a local bound from KEYS")
    passed_on = {
        parameters[function][place] for function, places in key_parameters.items() for place in places
    }
    for name in set(bound) | passed_on:
        problems += _key_name_problems(code, name, 1 if name in bound else 0)
    for function, places in key_parameters.items():
        problems += _key_parameter_problems(code, function, places, set(bound) | passed_on)
    return problems


def _key_name_problems(code: str, name: str, bindings: int) -> list[str]:
    assignments = sum(
        name in (n.strip() for n in m[1].split(","))
        for m in re.finditer(r"^[ \t]*(?:local[ \t]+)?([A-Za-z_][\w \t,]*?)[ \t]*=(?!=)", code, re.M)
    )
    problems = []
    if assignments != bindings:
        problems.append(f"key local {name} is assigned {assignments}x")
    if re.search(rf"\b{name}\s*\.\.|\.\.\s*{name}\b", code):
        problems.append(f"key local {name} is concatenated")
    return problems


def _key_parameter_problems(code: str, function: str, places: set[int], keys: set[str]) -> list[str]:
    """A function that takes keys is only ever called, and each call gives it a key local in those places."""
    calls = call_arguments(code, rf"(?<![\w.:])(?<!function ){function}")
    mentions = len(re.findall(rf"(?<![\w.:]){function}\b", code))
    problems = []
    if mentions != len(calls) + 1:
        problems.append(f"{function}, which takes keys, is used other than by calling it")
    for args in calls:
        for place in sorted(places):
            key = args[place] if place < len(args) else ""
            if key not in keys:
                problems.append(f"{function} gets key {key!r}, not a local bound from KEYS")
    return problems


CHECKS: dict[str, Check] = {
    "shebang": check_shebang,
    "keys": check_keys,
    "argv": check_argv,
    "replies": check_replies,
    "events": check_events,
    "no_built_keys": check_no_built_keys,
}


# --- the real scripts --------------------------------------------------------------------------------------


def test_there_are_scripts() -> None:
    assert set(NAMES) >= {"claim", "deliver", "put_activity"}
    assert set(NAMES) == {path.stem for path in LUA_DIR.glob("*.lua")}


@pytest.mark.parametrize("check", list(CHECKS), ids=list(CHECKS))
@pytest.mark.parametrize("name", NAMES)
def test_script_obeys_rule(name: str, check: str) -> None:
    assert CHECKS[check](SCRIPTS[name].source) == []


# Scripts that write only failed-attempt counters: rate-limit state, not ledger state, so no event (a guessing
# run would flood the stream with them) and a restore starts them afresh (docs/architecture.md).
RATE_LIMIT_ONLY = {"code_gate"}
READ_COMMANDS = {
    "GET",
    "HGET",
    "HMGET",
    "HGETALL",
    "ZRANGE",
    "ZREVRANGEBYLEX",
    "ZSCORE",
    "SISMEMBER",
    "EXISTS",
}


@pytest.mark.parametrize("name", NAMES)
def test_loader_reads_the_same_header(name: str) -> None:
    """gateway.scripts.parse_script (what ScriptRunner uses) sees what these checks see."""
    source = SCRIPTS[name].source
    script = parse_script(name, source)
    header, _ = split_source(source)
    assert len(script.keys) == len(declared_numbered(header, "KEYS"))
    assert len(script.args) == len(declared_numbered(header, "ARGV"))
    assert script.replies == set(declared(header, "REPLY"))
    assert script.events == set(declared(header, "EVENT"))
    assert "allow-cross-slot-keys" not in script.flags
    # A script either writes (the fence and the OOM refusal apply to it, and it appends an event) or carries
    # no-writes and calls only commands that read.
    commands = {literal(args[0]) for args in redis_calls(split_source(source)[1])}
    if script.read_only:
        assert not script.events
        assert commands <= READ_COMMANDS, commands - READ_COMMANDS
    elif name not in RATE_LIMIT_ONLY:
        assert script.events or name.startswith("restore_") or commands & {"SET", "HSET", "DEL"}


# --- the checks catch broken sources ------------------------------------------------------------------------

GOOD = """#!lua
--[[
demo: a minimal well-formed script.
KEYS[1] config  hash   {a:X}:act
KEYS[2] events  stream {a:X}:events
ARGV[1] now     unix seconds
ARGV[2] user_id
REPLY ok
REPLY sold_out
EVENT claimed
]]
local config_key, events_key = KEYS[1], KEYS[2]
local now, user_id = tonumber(ARGV[1]), ARGV[2]
local function field_of(hash_key, field)  -- as a fragment's function takes a key: a parameter
  return redis.call("HGET", hash_key, field)
end
-- a comment may say redis.call("GET", "{a:X}:" .. KEYS[9]) and return {"nonsense"}
if redis.call("HGET", config_key, "stock_left") == "0" or field_of(config_key, "status") == "ended" then
  return {"sold_out"}
end
redis.call("XADD", events_key, "*", "type", "claimed", "user", user_id, "at", now)
return {"ok"}
"""

CALL = 'redis.call("HGET", config_key, "stock_left")'
BINDING = "local config_key, events_key = KEYS[1], KEYS[2]\n"

BROKEN: list[tuple[str, str, str, str]] = [
    # (id, check, text in GOOD, replacement)
    ("no-shebang", "shebang", "#!lua\n", ""),
    ("other-shebang", "shebang", "#!lua\n", "#!/usr/bin/lua\n"),
    ("cross-slot-flag", "shebang", "#!lua\n", "#!lua flags=no-writes,allow-cross-slot-keys\n"),
    ("undeclared-key", "keys", BINDING, BINDING + "local seq_key = KEYS[3]\n"),
    ("unused-key", "keys", "ARGV[1] now", "KEYS[3] seq     string {a:X}:seq\nARGV[1] now"),
    ("misnumbered-keys", "keys", "KEYS[2] events", "KEYS[3] events"),
    (
        "dynamic-keys",
        "keys",
        'return {"ok"}',
        'for _, k in ipairs(KEYS) do redis.call("DEL", k) end\nreturn {"ok"}',
    ),
    ("undeclared-arg", "argv", "ARGV[2]\n", "ARGV[3]\n"),
    ("unused-arg", "argv", "ARGV[2] user_id", "ARGV[2] user_id\nARGV[3] channel"),
    ("dynamic-arg", "argv", "ARGV[2]\n", "ARGV[#ARGV]\n"),
    ("undeclared-reply", "replies", 'return {"sold_out"}', 'return {"gone"}'),
    ("reply-not-outcome", "replies", "REPLY sold_out", "REPLY sold_out\nREPLY gone"),
    ("reply-never-returned", "replies", "REPLY sold_out", "REPLY sold_out\nREPLY paused"),
    ("reply-not-literal", "replies", 'return {"sold_out"}', "return {status}"),
    ("no-replies", "replies", "REPLY ok\nREPLY sold_out\n", ""),
    ("undeclared-event", "events", '"type", "claimed"', '"type", "claim_made"'),
    ("xadd-without-type", "events", '"type", "claimed", ', ""),
    ("event-never-emitted", "events", "EVENT claimed", "EVENT claimed\nEVENT delivered"),
    ("concatenated-key", "no_built_keys", CALL, 'redis.call("HGET", config_key .. ":x", "stock_left")'),
    ("literal-key", "no_built_keys", CALL, 'redis.call("HGET", "{a:X}:act", "stock_left")'),
    ("keys-in-call", "no_built_keys", CALL, 'redis.call("HGET", KEYS[1], "stock_left")'),
    ("key-from-argv", "no_built_keys", CALL, 'redis.call("HGET", user_id, "stock_left")'),
    ("key-beyond-declared", "no_built_keys", BINDING, "local config_key, events_key = KEYS[3], KEYS[2]\n"),
    ("reassigned-key", "no_built_keys", BINDING, BINDING + 'config_key = "{a:" .. ARGV[2] .. "}:act"\n'),
    ("non-literal-command", "no_built_keys", CALL, 'redis.call(ARGV[2], config_key, "stock_left")'),
    ("subcommand-key", "no_built_keys", CALL, 'redis.call("XGROUP", "CREATE", "{a:X}:events", "g", "0")'),
    ("key-parameter-from-argv", "no_built_keys", "field_of(config_key,", "field_of(user_id,"),
    ("key-parameter-built", "no_built_keys", "field_of(config_key,", 'field_of("{a:" .. user_id .. "}:act",'),
    ("key-parameter-left-out", "no_built_keys", "field_of(config_key, ", "field_of("),
    ("key-parameter-reassigned", "no_built_keys", "  return redis", "  hash_key = user_id\n  return redis"),
    ("key-function-passed-on", "no_built_keys", 'return {"ok"}', 'local get = field_of\nreturn {"ok"}'),
]


def test_good_source_passes_every_check() -> None:
    for name, check in CHECKS.items():
        assert check(GOOD) == [], name


@pytest.mark.parametrize(("check", "old", "new"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_check_catches_broken_source(check: str, old: str, new: str) -> None:
    assert old in GOOD
    broken = GOOD.replace(old, new, 1)
    assert broken != GOOD
    assert CHECKS[check](broken) != []


def test_built_local_via_intermediate_is_caught() -> None:
    broken = GOOD.replace(BINDING, BINDING + 'local built = "{a:" .. user_id .. "}:act"\n').replace(
        CALL, 'redis.call("HGET", built, "stock_left")'
    )
    assert check_no_built_keys(broken) != []


def test_loader_also_refuses_cross_slot_flag() -> None:
    with pytest.raises(ValueError, match="allow-cross-slot-keys"):
        parse_script("demo", GOOD.replace("#!lua\n", "#!lua flags=allow-cross-slot-keys\n"))
