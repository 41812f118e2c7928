"""The fragment loader: ``--#include <fragment>`` lines, expanded from lua/include/ before a script is hashed.

The expansion is checked on small sources; the real scripts are checked for what the loader promises (the SHA
is the assembled source's, which Valkey agrees with; a fragment's change moves its dependents' SHAs and no
other's), and for what luacheck on lua/ cannot see: the assembled sources themselves."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.scripts.includes import IncludeError, assemble, read_fragments
from gateway.scripts.registry import LUA_DIR, load_scripts

ROOT = LUA_DIR.parent
SCRIPTS = load_scripts()
FRAGMENTS = read_fragments(LUA_DIR / "include")
HEADER = "#!lua\n--[[\ndemo: a script.\nREPLY ok\n]]\n"


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def includes_of(source: str) -> set[str]:
    return set(re.findall(r"^--#include (\w+)$", source, re.M))


# --- expansion ---------------------------------------------------------------------------------------------


def test_an_include_is_followed_by_its_fragment() -> None:
    source = HEADER + "--#include twice\nreturn {'ok', twice(2)}\n"
    fragments = {"twice": "local function twice(n)\n  return 2 * n\nend\n"}

    assembled = assemble("demo", source, fragments)

    assert assembled == (
        HEADER + "--#include twice\nlocal function twice(n)\n  return 2 * n\nend\nreturn {'ok', twice(2)}\n"
    )


def test_a_fragment_may_include_another_which_comes_first_and_once() -> None:
    fragments = {
        "base": "local function base() end\n",
        "upper": "--#include base\nlocal function upper() base() end\n",
    }
    source = HEADER + "--#include upper\n--#include base\nupper()\n"

    assembled = assemble("demo", source, fragments)

    assert assembled == HEADER + (
        "--#include upper\n--#include base\nlocal function base() end\nlocal function upper() base() end\n"
        "--#include base\nupper()\n"
    )
    assert assembled.count("local function base") == 1


def test_a_script_without_includes_is_left_byte_for_byte() -> None:
    source = HEADER + "return {'ok'}"  # no newline at the end either
    assert assemble("demo", source, FRAGMENTS) == source
    for name, script in SCRIPTS.items():
        raw = (LUA_DIR / f"{name}.lua").read_text()
        if not includes_of(raw):
            assert script.source == raw, name


def test_markers_inside_the_header_are_not_read() -> None:
    source = "#!lua\n--[[\ndemo: mentions\n--#include nothing\nREPLY ok\n]]\nreturn {'ok'}\n"
    assert assemble("demo", source, {}) == source


@pytest.mark.parametrize(
    ("fragments", "body", "error"),
    [
        ({}, "--#include nowhere\n", r"demo\.lua: no fragment include/nowhere\.lua"),
        ({"a": "--#include b\n", "b": "--#include a\n"}, "--#include a\n", r"cycle: a -> b -> a"),
        ({"a": "--#include a\n"}, "--#include a\n", r"cycle: a -> a"),
        ({"a": ""}, "--#inlcude a\n", r"demo\.lua: '--#inlcude a' is not a '--#include"),
        ({"a": ""}, "--#include a b\n", r"is not a '--#include"),
        ({"a": "--#include  gone\n"}, "--#include a\n", r"include/a\.lua: no fragment include/gone\.lua"),
    ],
    ids=["unknown", "cycle", "self", "misspelled", "two-names", "unknown-nested"],
)
def test_a_bad_include_is_refused(fragments: dict[str, str], body: str, error: str) -> None:
    with pytest.raises(IncludeError, match=error):
        assemble("demo", HEADER + body, fragments)


def copy_lua(tmp_path: Path) -> Path:
    directory = tmp_path / "lua"
    shutil.copytree(LUA_DIR, directory)
    return directory


def test_an_unknown_include_fails_at_load(tmp_path: Path) -> None:
    directory = copy_lua(tmp_path)
    claim = directory / "claim.lua"
    claim.write_text(claim.read_text().replace("--#include pack_answer\n", "--#include pack_answers\n"))

    with pytest.raises(IncludeError, match=r"claim\.lua: no fragment include/pack_answers\.lua"):
        load_scripts(directory)


@pytest.mark.parametrize(
    "text",
    ["#!lua\nlocal function f() end\n", "local f = 1\n", "redis.call('DEL', KEYS[1])\n"],
    ids=["shebang", "local-value", "statement"],
)
def test_a_fragment_only_defines_local_functions(tmp_path: Path, text: str) -> None:
    directory = copy_lua(tmp_path)
    (directory / "include" / "odd.lua").write_text(text)

    with pytest.raises(IncludeError, match=r"include/odd\.lua:1: a fragment only defines local functions"):
        load_scripts(directory)


def test_fragments_are_not_loaded_as_scripts() -> None:
    assert FRAGMENTS
    assert not set(FRAGMENTS) & set(SCRIPTS)
    assert set(SCRIPTS) == {path.stem for path in LUA_DIR.glob("*.lua")}


# --- the real scripts: their SHA -------------------------------------------------------------------------------


def test_each_fragment_is_included_somewhere() -> None:
    used = set().union(*(includes_of(script.source) for script in SCRIPTS.values()))
    assert used == set(FRAGMENTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_sha_is_that_of_the_assembled_source(name: str) -> None:
    script = SCRIPTS[name]
    raw = (LUA_DIR / f"{name}.lua").read_text()
    assert script.source == assemble(name, raw, FRAGMENTS)
    assert script.sha == sha1(script.source)
    assert script.source.startswith("#!lua")
    if includes_of(raw):
        assert script.sha != sha1(raw)


async def test_valkey_runs_what_the_sha_names(plain: Redis) -> None:
    """SCRIPT LOAD of each assembled source answers the SHA the runner calls EVALSHA with."""
    for name, script in SCRIPTS.items():
        assert await plain.script_load(script.source) == script.sha, name


def test_a_fragment_change_changes_its_dependents_shas(tmp_path: Path) -> None:
    directory = copy_lua(tmp_path)
    fragment = directory / "include" / "lapsed_lock.lua"
    fragment.write_text(fragment.read_text() + "-- one more line\n")

    changed = {name for name, script in load_scripts(directory).items() if script.sha != SCRIPTS[name].sha}

    # wallet_page and release include it only through shown_status.
    assert changed == {"lock", "redeem", "sweep_locks", "sweep_expired", "release", "wallet_page"}


# --- luacheck on what runs ---------------------------------------------------------------------------------


def fragment_functions() -> set[str]:
    return {m for text in FRAGMENTS.values() for m in re.findall(r"^local function (\w+)", text, re.M)}


def test_luacheckrc_names_every_fragment_function() -> None:
    """.luacheckrc lets lua/ name the fragments' functions (luacheck reads include lines as comments)."""
    listed = re.search(r"local fragment_functions = \{(.*?)\}", (ROOT / ".luacheckrc").read_text(), re.S)
    assert listed is not None
    assert set(re.findall(r'"(\w+)"', listed[1])) == fragment_functions()
    definitions = [m for text in FRAGMENTS.values() for m in re.findall(r"^local function (\w+)", text, re.M)]
    assert len(definitions) == len(set(definitions)), "two fragments define the same function"


def luacheck(directory: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("luacheck") is None:
        pytest.skip("luacheck is not installed (apt-get install lua-check; .ci/run installs it)")
    config = str(ROOT / ".luacheckrc")
    command = ["luacheck", "--no-color", "--codes", "--config", config, str(directory)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def write_assembled(directory: Path, sources: dict[str, str]) -> Path:
    directory.mkdir()
    for name, source in sources.items():
        (directory / f"{name}.lua").write_text(source)
    return directory


def test_luacheck_passes_the_assembled_sources(tmp_path: Path) -> None:
    sources = {name: script.source for name, script in SCRIPTS.items()}
    done = luacheck(write_assembled(tmp_path / "assembled", sources))
    assert done.returncode == 0, done.stdout


def test_luacheck_sees_a_fragment_function_used_without_its_include(tmp_path: Path) -> None:
    raw = (LUA_DIR / "refund.lua").read_text().replace("--#include order_lookup\n", "")
    done = luacheck(write_assembled(tmp_path / "assembled", {"refund": assemble("refund", raw, FRAGMENTS)}))
    assert done.returncode != 0
    assert "accessing undefined variable 'find_order'" in done.stdout
