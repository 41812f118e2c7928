"""One place each: only the script runner sends scripts to Redis, only the call functions build a script's
ARGV, only gateway/keys.py spells a key.

Each rule is a checker over a module's syntax tree (so prose in docstrings and comments never counts) that
returns the offending lines. They run over the product packages, and on small broken and clean sources, so each
is shown to catch what it is for and to leave alone what it is not.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.keys import BLOCKLIST, FENCE_CHECKED, KeySpace
from gateway.scripts.registry import load_scripts

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("gateway", "worker", "claimgate", "loadtest")
SCRIPT_COMMANDS = {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"}
SCRIPT_METHODS = {name.lower() for name in SCRIPT_COMMANDS} | {"register_script"}
SCRIPT_NAMES = set(load_scripts())


def _prefix(tag: str) -> str:
    """``{a:x}`` -> ``{a:``: what every key of the partition kind starts with."""
    return tag[: tag.index(":") + 1] if ":" in tag else tag


# The key prefixes gateway/keys.py hands out, read from it rather than copied: partitions, the blocklist, and the
# unpartitioned names under ``claimgate:``.
KEY_PREFIXES = (
    _prefix(KeySpace.activity("x").tag),
    _prefix(KeySpace.wallet_of_bucket(0).tag),
    _prefix(KeySpace.code_of_bucket(0).tag),
    BLOCKLIST.tag,
    FENCE_CHECKED.split(":", 1)[0] + ":",
)
Check = Callable[[str], list[int]]


def _strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal and every f-string's leading text, docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    in_fstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            in_fstrings.update(id(part) for part in node.values)
            first = node.values[0] if node.values else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings | in_fstrings
        ):
            yield node.lineno, node.value


def _calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str, str]]:
    """Every ``receiver.method(...)`` call: (call, method, the receiver's last name)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
            yield node, node.func.attr, name


def script_commands(source: str) -> list[int]:
    """Lines that send a script themselves: an EVAL/EVALSHA/FCALL command word, or a client's script method."""
    tree = ast.parse(source)
    found = [line for line, text in _strings(tree) if text.strip().split(" ")[0].upper() in SCRIPT_COMMANDS]
    found += [call.lineno for call, method, _ in _calls(tree) if method.lower() in SCRIPT_METHODS]
    return sorted(found)


def hand_built_calls(source: str) -> list[int]:
    """Lines that give a runner KEYS and ARGV by hand (``runner.run(...)``, ``<anything>.run("<script>", ...)``)
    instead of calling the script's call function."""
    found = []
    for call, method, receiver in _calls(ast.parse(source)):
        first = call.args[0] if call.args else None
        names_script = isinstance(first, ast.Constant) and first.value in SCRIPT_NAMES
        if method == "run" and ("runner" in receiver.lower() or names_script):
            found.append(call.lineno)
    return sorted(found)


def key_literals(source: str) -> list[int]:
    """Lines whose string (or f-string) starts spelling a key: a key prefix, then not a space (``"claimgate: "``
    begins a message, ``"claimgate:fence"`` a key). ``{{`` is an escaped brace in a ``.format`` template."""
    starts = "|".join(re.escape(prefix) for prefix in KEY_PREFIXES)
    key = re.compile(rf"^(?:{starts}|{starts.replace(re.escape('{'), re.escape('{{'))})(?!\s)")
    return sorted(line for line, text in _strings(ast.parse(source)) if key.match(text))


def product_files() -> list[Path]:
    return sorted(path for package in PRODUCT for path in (ROOT / package).rglob("*.py"))


def offenders(check: Check, allowed: Callable[[str], bool]) -> dict[str, list[int]]:
    found = {}
    for path in product_files():
        name = path.relative_to(ROOT).as_posix()
        lines = check(path.read_text())
        if lines and not allowed(name):
            found[name] = lines
    return found


# --- the product packages ----------------------------------------------------------------------------------


def test_the_checks_read_the_product() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in product_files()}
    assert {"gateway/scripts/runner.py", "gateway/claim/service.py", "worker/recovery/restore.py"} <= names
    assert {"claimgate/cli.py", "loadtest/bench/redisbench.py"} <= names
    assert KEY_PREFIXES == ("{a:", "{w:", "{c:", "{blocklist}", "claimgate:")


def test_only_the_runner_sends_scripts() -> None:
    runner_side = {"gateway/scripts/runner.py", "gateway/scripts/transport.py"}
    assert offenders(script_commands, lambda name: name in runner_side) == {}
    assert all(script_commands((ROOT / name).read_text()) for name in runner_side)  # the check sees them


def test_only_the_call_functions_build_a_scripts_arguments() -> None:
    assert offenders(hand_built_calls, lambda name: name.startswith("gateway/scripts/")) == {}
    assert hand_built_calls((ROOT / "gateway/scripts/calls/claim.py").read_text())  # the check sees them


# Where keys are spelled: the builders, and the table of every key pattern's retention (patterns, built by nothing).
SPELLS_KEYS = ("gateway/keys.py", "gateway/key_retention.py")


def test_only_keys_py_spells_a_key() -> None:
    assert offenders(key_literals, lambda name: name in SPELLS_KEYS) == {}
    assert key_literals((ROOT / "gateway/keys.py").read_text())  # the check sees the keys where they are made


# --- the checks catch broken sources, and leave clean ones alone -------------------------------------------

BROKEN: list[tuple[str, Check, str]] = [
    ("evalsha-method", script_commands, "reply = await client.evalsha(sha, 1, key, now)"),
    ("eval-method", script_commands, "reply = await self.client.eval(source, 1, key)"),
    ("fcall-method", script_commands, "await client.fcall('claim', 1, key)"),
    ("register-script", script_commands, "claim = client.register_script(source)"),
    ("command-word", script_commands, "await client.execute_command('EVALSHA', sha, 1, key)"),
    ("command-in-pipeline", script_commands, "pipe.execute_command('fcall_ro', 'f', 0)"),
    ("command-list", script_commands, "command = ['EVALSHA', sha, '1', key]"),
    ("runner-run", hand_built_calls, "await self.runner.run(name, keys, args)"),
    ("run-by-name", hand_built_calls, "await gateway_scripts.run('claim', keys, [now, activity_id])"),
    ("other-runner", hand_built_calls, "command = EvalshaCommand(sha).run('claim', keys, args)"),
    ("activity-fstring", key_literals, "key = f'{{a:{activity_id}}}:act'"),
    ("wallet-literal", key_literals, "coupons = '{w:3}:coupons'"),
    ("code-format", key_literals, "key = '{{c:{}}}:codes'.format(bucket)"),
    ("blocklist-literal", key_literals, "client.smembers('{blocklist}:users')"),
    ("unpartitioned", key_literals, "client.get('claimgate:fence:checked')"),
    ("bare-prefix", key_literals, "if partition.startswith('{a:'):\n    pass"),
]
CLEAN: list[tuple[str, Check, str]] = [
    ("prose", script_commands, '"""Calls EVALSHA and reloads on NOSCRIPT."""\nx = 1  # EVALSHA here too'),
    ("a-word-in-text", script_commands, "title = 'redis-benchmark EVALSHA, 64 connections'"),
    (
        "other-run",
        hand_built_calls,
        "subprocess.run(['ls'], check=True)\nasyncio.run(main())\nlane.run(stop)",
    ),
    ("call-function", hand_built_calls, "await calls.claim(self.runner, keys, now=now)"),
    ("message", key_literals, "print(f'claimgate: {exc}', file=sys.stderr)"),
    ("help-text", key_literals, "help='only this partition, e.g. {a:ID} (repeatable)'"),
    ("docstring", key_literals, 'def f():\n    """{a:X}:events -> X."""'),
    ("dict-literal", key_literals, "short = {a: n for a, n in expected.items()}"),
]


@pytest.mark.parametrize(("check", "source"), [(c, s) for _, c, s in BROKEN], ids=[i for i, _, _ in BROKEN])
def test_a_check_catches_a_broken_source(check: Check, source: str) -> None:
    assert check(source) == [1]


@pytest.mark.parametrize(("check", "source"), [(c, s) for _, c, s in CLEAN], ids=[i for i, _, _ in CLEAN])
def test_a_check_leaves_a_clean_source_alone(check: Check, source: str) -> None:
    assert check(source) == []
