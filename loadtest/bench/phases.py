"""Which phases a run measures (``--phases``), in the order each round runs them, and the activities a round
claims from. Light on purpose: ``command`` imports it to build the parser."""

from __future__ import annotations

import argparse

PHASES = {
    "raw": "raw ceiling: the claim script by redis-benchmark",
    "claim": "claim route while stock lasts",
    "sold_out": "claim route after sell-out (users who come back)",
    "sold_out_unseen": "claim route after sell-out, every token new to the cache (informative)",
    "open_loop": "p99 at a share of the round's claim rate (open loop)",
    "bare": "bare HTTP ceiling: a raw ASGI app and a litestar app",
    "naive": "naive Postgres baseline",
    "safe": "claim route while stock lasts, safe setting (--durability both)",
    "worker": "the worker alone draining a backlog (and Redis bytes per coupon)",
    "idle": "an idle worker and gateway with --idle-activities ended activities (CPU, % of a core)",
}
GATEWAY = ("claim", "sold_out", "sold_out_unseen", "open_loop")  # on the round's gateway (primary setting)
IN_STOCK = 10_000_000  # never runs out within a phase
OPEN_LOOP_LIMIT = 1_000_000  # the open loop's one user claims that often


# Each load generator: its Debian package, and the phases that need it.
GENERATORS = {
    "wrk": ("wrk", ("claim", "sold_out", "sold_out_unseen", "open_loop", "bare", "naive", "safe")),
    "h2load": ("nghttp2-client", ("open_loop",)),
    "redis-benchmark": ("redis-tools", ("raw",)),
}


def generators(selected: tuple[str, ...]) -> dict[str, str]:
    """The load generators the selected phases need: command -> its Debian package."""
    return {
        tool: package for tool, (package, phases) in GENERATORS.items() if any(p in selected for p in phases)
    }


def phase_list(text: str) -> tuple[str, ...]:
    """``--phases``: names separated by commas, each known (argparse's ``type``)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PHASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown phase(s) {unknown or [text]}; the phases are {', '.join(PHASES)}"
        )
    return tuple(names)


def select(asked: tuple[str, ...] | None, durability: str) -> tuple[str, ...]:
    """The phases to run, in the rounds' order: every one that applies when none was asked for."""
    if asked is None:
        return tuple(name for name in PHASES if name != "safe" or durability == "both")
    if "open_loop" in asked and "claim" not in asked:
        raise ValueError("open_loop offers a share of the round's claim rate: select claim too")
    if "safe" in asked and durability != "both":
        raise ValueError(
            "safe is the in-stock claim again on the safe setting: it runs with --durability both"
        )
    return tuple(name for name in PHASES if name in asked)


def round_activities(selected: tuple[str, ...], backlog: int) -> dict[str, tuple[int, int]]:
    """The activities one round claims from, each fresh: name -> (stock, per-user limit)."""
    plan: dict[str, tuple[int, int]] = {}
    if any(name in selected for name in GATEWAY):
        plan["warm"] = (IN_STOCK, 1)
    if "claim" in selected:
        plan["claim"] = (IN_STOCK, 1)
    if "sold_out" in selected or "sold_out_unseen" in selected:
        plan["sold_out"] = (0, 1)
    if "open_loop" in selected:
        plan["open_loop"] = (IN_STOCK, OPEN_LOOP_LIMIT)
    if "safe" in selected:
        plan.update({"warm_safe": (IN_STOCK, 1), "claim_safe": (IN_STOCK, 1)})
    if "worker" in selected:
        plan["backlog"] = (backlog, 1)
    return plan


def activity_key(name: str, run: int) -> str:
    """The run's name for a round's activity (``claim-2``: the in-stock claim of the second round)."""
    return f"{name}-{run}"
