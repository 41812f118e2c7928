"""Every script's call function (gateway/scripts/calls/) agrees with the script's header.

A call function takes a runner, its KEYS as a bundle whose fields must be the header's KEYS names, in order, and
its ARGV as keyword arguments that must be the header's ARGV names, in order; called with a runner that records
what it is given and a distinct value in every argument, it must put each where the header numbers it. Each
bundle's ``of`` must pick, for each KEYS slot, a key of the shape the header gives it. The checks run on every
script, then on deliberately broken headers and builders, so each is shown to fail when someone breaks it (an
ARGV added to a script without its call, say).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union, get_args, get_origin, get_type_hints

import pytest

import gateway.scripts.calls as calls_package
from gateway.keys import BLOCKLIST, ActivityKeys, CodeKeys, Partition, WalletKeys
from gateway.scripts.calls import Arg, catalog, checkout, claim, codes, restore, retire
from gateway.scripts.registry import Script, load_scripts, parse_script

SCRIPTS = load_scripts()
Recorded = tuple[str, Sequence[str], Sequence[Arg]]
CallFunction = Callable[..., Any]


class Recorder:
    """A runner that runs nothing: its reply is what it was given."""

    def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Recorded:
        return name, keys, args


def call_functions() -> dict[str, list[CallFunction]]:
    """Every function of gateway/scripts/calls/ that takes a runner first, by name."""
    found: dict[str, list[CallFunction]] = {}
    for info in pkgutil.iter_modules(calls_package.__path__):
        module = importlib.import_module(f"{calls_package.__name__}.{info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            first = next(iter(inspect.signature(function).parameters), None)
            if function.__module__ == module.__name__ and first == "runner":
                found.setdefault(name, []).append(function)
    return found


CALLS = call_functions()


# --- the check --------------------------------------------------------------------------------------------


def _sample(name: str, annotation: Any, number: int) -> tuple[Any, Any]:
    """(a distinct value of the argument's type, what the call must send for it)."""
    union = get_origin(annotation) in (Union, types.UnionType)
    options = set(get_args(annotation)) if union else {annotation}
    if bool in options:
        return True, "1"
    if int in options:
        return 1000 + number, 1000 + number
    if any(get_origin(option) is Sequence for option in options):
        return [f"<{name}>"], f"<{name}>"  # one item: its joined form is the item itself
    return f"<{name}>", f"<{name}>"  # a string, or one of a Literal's (where it lands is what is looked at)


def _signature_problems(function: CallFunction, script: Script) -> list[str]:
    problems: list[str] = []
    if function.__name__ != script.name:
        problems.append(f"{function.__name__} is not named after its script {script.name}")
    parameters = list(inspect.signature(function).parameters.values())
    leading = parameters[:2]
    if [p.name for p in leading] != ["runner", "keys"] or any(p.kind is p.KEYWORD_ONLY for p in leading):
        return [*problems, "its first parameters are not the runner and the KEYS bundle `keys`"]
    fields = tuple(getattr(get_type_hints(function)["keys"], "_fields", ()))
    if fields != script.keys:
        problems.append(f"KEYS {fields} in its bundle, {script.keys} in the header")
    if any(p.kind is not p.KEYWORD_ONLY for p in parameters[2:]):
        problems.append("ARGV are not all keyword-only")
    names = tuple(p.name for p in parameters[2:])
    if names != script.args:
        problems.append(f"ARGV {names} in its signature, {script.args} in the header")
    return problems


def call_problems(function: CallFunction, script: Script) -> list[str]:
    """How ``function`` disagrees with ``script``'s header (KEYS and ARGV: number, order, names, placement)."""
    problems = _signature_problems(function, script)
    if problems:
        return problems
    hints = get_type_hints(function)
    keys = hints["keys"](*(f"<KEYS {name}>" for name in script.keys))
    samples = {name: _sample(name, hints[name], i) for i, name in enumerate(script.args)}
    name, sent_keys, sent_args = function(Recorder(), keys, **{n: given for n, (given, _) in samples.items()})
    if name != script.name:
        problems.append(f"it calls script {name!r}")
    if list(sent_keys) != list(keys):
        problems.append(f"it sends KEYS {list(sent_keys)}, not its bundle {list(keys)}")
    expected = [samples[n][1] for n in script.args]
    if list(sent_args) != expected:
        problems.append(f"it sends ARGV {list(sent_args)}, the header's order is {expected}")
    return problems


def header_key_shapes(source: str) -> list[str]:
    """The key each KEYS line shows (its third word), e.g. ``{w:n}:u:<user>``."""
    header = source[: source.find("]]")]
    return [m[1] for m in re.finditer(r"^\s*KEYS\[\d+\]\s+\w+\s+\w+\s+(\S+)", header, re.M)]


def key_shape_problems(keys: Sequence[str], source: str) -> list[str]:
    """KEYS that do not have the shape their header line shows (``<...>`` stands for any text)."""
    shapes = header_key_shapes(source)
    if len(shapes) != len(keys):
        return [f"{len(keys)} keys for {len(shapes)} KEYS lines"]
    problems = []
    for slot, (key, shape) in enumerate(zip(keys, shapes, strict=True), start=1):
        pattern = "".join(
            "[^{}]*" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]*>)", shape)
        )
        if re.fullmatch(pattern, key) is None:
            problems.append(f"KEYS[{slot}] is {key!r}, the header shows {shape!r}")
    return problems


# The partitions as the headers write them, and each script's KEYS built by the bundles' ``of``.
ACT = ActivityKeys("{a:X}")
WALLET = WalletKeys("{w:n}")
CODES = CodeKeys("{c:n}")
GATE = codes.CodeGateKeys(WALLET.failed_codes_of_user("u1"), WALLET.idempotency("u1", "k"))
SAMPLE_KEYS: dict[str, Sequence[str]] = {
    "blocklist": catalog.BlocklistChangeKeys.of(BLOCKLIST),
    "claim": claim.ClaimKeys.of(ACT, ACT.idempotency("u1", "k")),
    "code_batch": codes.CodeBatchKeys.of(ACT),
    "code_gate": GATE,
    "code_settle": codes.CodeSettleKeys.of(GATE, WALLET),
    "deliver": claim.DeliverKeys.of(WALLET, "u1"),
    "grant_call": claim.GrantCallKeys.of(ACT, "alice", "k"),
    "lock": checkout.CheckoutKeys.of(WALLET),
    "order_view": checkout.OrderViewKeys.of(WALLET),
    "patch_activity": catalog.ActivityChangeKeys.of(ACT),
    "put_activity": catalog.PutActivityKeys.of(ACT),
    "put_codes": codes.PutCodesKeys.of(CODES),
    "redeem": checkout.CheckoutKeys.of(WALLET),
    "redeem_code": codes.RedeemCodeKeys.of(CODES),
    "refund": checkout.RefundKeys.of(WALLET),
    "release": checkout.CheckoutKeys.of(WALLET),
    "restock": catalog.ActivityChangeKeys.of(ACT),
    "retire_activity": retire.RetireActivityKeys.of(ACT),
    "revive_activity": retire.ReviveActivityKeys.of(ACT),
    "restore_activity": restore.RestoreActivityKeys.of(ACT),
    "restore_blocklist": restore.RestoreBlocklistKeys.of(BLOCKLIST),
    "restore_codes": restore.RestoreCodesKeys.of(CODES),
    "restore_finish": restore.RestoreFinishKeys.of(Partition("{p}")),
    "restore_record": restore.RestoreRecordKeys(ACT.idempotency("u1", "k")),
    "restore_wallet": restore.RestoreWalletKeys.of(WALLET, "u1"),
    "set_status": catalog.ActivityChangeKeys.of(ACT),
    "sweep_expired": checkout.ExpiryKeys.of(WALLET),
    "sweep_locks": checkout.CheckoutKeys.of(WALLET),
    "retain_orders": checkout.RetainOrdersKeys.of(WALLET),
    "retain_coupons": checkout.RetainCouponsKeys.of(WALLET, "u1"),
    "retire_codes": codes.RetireCodesKeys.of(CODES),
    "wallet_page": checkout.WalletPageKeys.of(WALLET, "u1"),
}


# --- the real scripts --------------------------------------------------------------------------------------


def test_every_script_has_one_call_function_and_every_call_function_a_script() -> None:
    assert set(CALLS) == set(SCRIPTS)
    assert {name: len(found) for name, found in CALLS.items() if len(found) != 1} == {}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_call_function_follows_its_scripts_header(name: str) -> None:
    assert call_problems(CALLS[name][0], SCRIPTS[name]) == []


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_bundle_picks_the_keys_its_header_shows(name: str) -> None:
    keys = SAMPLE_KEYS[name]
    assert type(keys) is get_type_hints(CALLS[name][0])["keys"]
    assert key_shape_problems(keys, SCRIPTS[name].source) == []


# --- the checks catch what breaks them ---------------------------------------------------------------------

CLAIM = SCRIPTS["claim"]
LAST_KEY = f"KEYS[{len(CLAIM.keys)}] {CLAIM.keys[-1]} "
LAST_ARG = f"ARGV[{len(CLAIM.args)}] {CLAIM.args[-1]}"


@pytest.mark.parametrize(
    ("line", "replacement", "problem"),
    [
        (
            LAST_ARG,
            f"{LAST_ARG}\nARGV[{len(CLAIM.args) + 1}] region  a new one\n--",
            "'region') in the header",
        ),
        (LAST_ARG, f"{LAST_ARG}_renamed", "_renamed') in the header"),
        (
            LAST_KEY,
            f"{LAST_KEY}\nKEYS[{len(CLAIM.keys) + 1}] extra  hash  {{a:X}}:x\n--",
            "'extra') in the header",
        ),
    ],
    ids=["argv-added", "argv-renamed", "keys-added"],
)
def test_a_changed_header_fails_the_unchanged_call(line: str, replacement: str, problem: str) -> None:
    """claim.lua's header with one more ARGV (or KEYS), or its last ARGV renamed, and claim() unchanged."""
    assert CLAIM.source.count(line) == 1
    changed = parse_script("claim", CLAIM.source.replace(line, replacement))
    problems = call_problems(claim.claim, changed)
    assert len(problems) == 1 and problem in problems[0], problems


def _swapped_argv(
    runner: Recorder,
    keys: catalog.ActivityChangeKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    action: catalog.StatusAction,
) -> Recorded:
    return runner.run("set_status", keys, [now, event_id, activity_id, operator, action])


def _argv_in_wrong_order(
    runner: Recorder,
    keys: catalog.ActivityChangeKeys,
    *,
    now: int,
    operator: str,
    event_id: str,
    activity_id: str,
    action: catalog.StatusAction,
) -> Recorded:
    return runner.run("set_status", keys, [now, event_id, operator, activity_id, action])


class _SwappedKeys(NamedTuple):
    config: str
    events: str
    seq: str


def _keys_in_wrong_order(
    runner: Recorder,
    keys: _SwappedKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    action: catalog.StatusAction,
) -> Recorded:
    return runner.run("set_status", keys, [now, event_id, operator, activity_id, action])


def _wrong_script(
    runner: Recorder,
    keys: catalog.ActivityChangeKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    action: catalog.StatusAction,
) -> Recorded:
    return runner.run("restock", keys, [now, event_id, operator, activity_id, action])


def _one_argv_short(
    runner: Recorder,
    keys: catalog.ActivityChangeKeys,
    *,
    now: int,
    event_id: str,
    operator: str,
    activity_id: str,
    action: catalog.StatusAction,
) -> Recorded:
    return runner.run("set_status", keys, [now, event_id, operator, activity_id])


def _flag_as_bool(
    runner: Recorder,
    keys: codes.RedeemCodeKeys,
    *,
    now: int,
    event_id: str,
    code_hash: str,
    user_id: str,
    device_id: str,
    blocked: bool,
    claim_id: str,
) -> Recorded:
    return runner.run("redeem_code", keys, [now, event_id, code_hash, user_id, device_id, blocked, claim_id])


@pytest.mark.parametrize(
    ("builder", "script", "problem"),
    [
        (_swapped_argv, "set_status", "it sends ARGV [1000, '<event_id>', '<activity_id>', '<operator>'"),
        (_argv_in_wrong_order, "set_status", "ARGV ('now', 'operator', 'event_id',"),
        (_keys_in_wrong_order, "set_status", "KEYS ('config', 'events', 'seq') in its bundle"),
        (_wrong_script, "set_status", "it calls script 'restock'"),
        (_one_argv_short, "set_status", "'<activity_id>'], the header's order is"),
        (_flag_as_bool, "redeem_code", "'<device_id>', True, '<claim_id>'], the header's order is"),
    ],
    ids=["argv-swapped", "signature-order", "keys-order", "other-script", "argv-missing", "flag-not-encoded"],
)
def test_a_broken_call_function_fails(builder: CallFunction, script: str, problem: str) -> None:
    builder.__name__ = script  # only what it builds is broken
    problems = call_problems(builder, SCRIPTS[script])
    assert len(problems) == 1 and problem in problems[0], problems


def test_a_key_of_the_wrong_shape_fails() -> None:
    keys = SAMPLE_KEYS["claim"]
    source = SCRIPTS["claim"].source
    swapped = claim.ClaimKeys(*keys[:6], keys[7], keys[6])  # seq and events exchanged
    assert key_shape_problems(swapped, source) == [
        "KEYS[7] is '{a:X}:events', the header shows '{a:X}:seq'",
        "KEYS[8] is '{a:X}:seq', the header shows '{a:X}:events'",
    ]
    other_partition = claim.ClaimKeys.of(ActivityKeys("{a:Y}"))
    assert key_shape_problems(other_partition, source) != []
    assert key_shape_problems(keys[:6], source) == ["6 keys for 8 KEYS lines"]
