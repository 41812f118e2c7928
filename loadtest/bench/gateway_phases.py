"""A round's phases on the gateway: on the primary setting a warm-up, the claim route while stock lasts (every
answer 201, tokens never reused), after sell-out (users who come back, then every token new to the cache) and the
open loop; then, with ``--durability both``, the in-stock claim again on the safe setting. Each round starts its
own gateway process, so its verified-token cache starts empty as in the first round."""

from __future__ import annotations

import math
from pathlib import Path

import httpx

from gateway.settings import PREFIX
from gateway.tokens import TOKEN_CACHE_ENTRIES as TOKEN_CACHE
from loadtest.bench import wrk
from loadtest.bench.closed_loop import Load, http_figure, http_phase, warm_up
from loadtest.bench.open_loop import open_loop
from loadtest.bench.results import Figure
from loadtest.bench.servers import Process
from loadtest.bench.session import FSYNC, Session

TOKEN_MARGIN = 1.5  # tokens minted over the warm-up's rate x the phase's seconds


def cache_note(users: int) -> str:
    """What the gateway's verified-token cache does for a phase rotating over ``users`` tokens."""
    if users <= TOKEN_CACHE:
        return f" (the verified-token cache holds {TOKEN_CACHE:,}: after the first pass each token is a hit)"
    return f" (more than the verified-token cache holds, {TOKEN_CACHE:,}: each request verifies its token)"


def ensure_tokens(s: Session, rate: float) -> None:
    """Enough tokens that no token is used twice in a phase of ``--duration`` at ``rate`` (with a margin)."""
    needed = math.ceil(rate * s.opt("duration") * TOKEN_MARGIN) + s.opt("connections")
    if needed > s.token_file.count:
        s.say(f"minting {needed - s.token_file.count:,} more tokens ({needed:,} in all)")
        s.token_file.grow_to(needed)


def warm(s: Session, gateway: Process, name: str, setting: str) -> None:
    """The warm-up on the round's own activity ``name``; sizes the token file for the in-stock phase."""
    activity = s.activity(name)
    warmed = warm_up(s, gateway, activity.id, f"claim route, {setting}", max(2, s.opt("warmup")))
    activity.granted = warmed.statuses.get("201", 0)
    ensure_tokens(s, warmed.rate)


def in_stock(s: Session, gateway: Process, name: str, key: str, setting: str, rss: bool) -> wrk.WrkResult:
    """The measured in-stock claim phase on the round's own activity ``name`` (every answer 201)."""
    activity = s.activity(name)
    load = Load(
        key,
        f"claim route, in stock ({setting})",
        gateway,
        activity.id,
        s.opt("duration"),
        frozenset({"201"}),
        rss=rss,
    )
    result = http_phase(s, load)
    activity.granted = result.statuses.get("201", 0)
    return result


def claim_phase(s: Session, gateway: Process) -> float:
    """The in-stock claim on the primary setting and the gateway's RSS under it; the rate."""
    key = f"claim_{s.primary}"
    claim = in_stock(s, gateway, "claim", key, s.primary, rss=True)
    http_figure(s, key, f"claim route while stock lasts ({s.primary})", claim)
    phase = s.results.phases[-1]
    s.figure(
        Figure(
            "gateway_rss",
            "gateway RSS under load (max, all granian processes)",
            phase.rss_max_bytes / 2**20,
            "MiB",
            f"sum of VmRSS over {phase.rss_processes} processes (granian parent + {s.opt('workers')}"
            " worker(s)), sampled every 0.2 s during the in-stock claim phase",
        )
    )
    return claim.rate


def sold_out_run(s: Session, gateway: Process, key: str, label: str, tokens: Path) -> wrk.WrkResult:
    """One sold-out phase on the round's sold-out activity (every answer a 409 sold_out)."""
    activity = s.activity("sold_out")
    load = Load(
        key,
        label,
        gateway,
        activity.id,
        s.opt("duration"),
        frozenset({"409"}),
        marker="sold_out",
        one_token_each=False,
        tokens=tokens,
    )
    result = http_phase(s, load)
    activity.granted = (activity.granted or 0) + result.statuses.get("201", 0)
    return result


def sold_out_phases(s: Session, gateway: Process) -> None:
    """After sell-out: the users who come back (the headline), then every token minted (informative)."""
    s.activity("sold_out").granted = 0
    if s.runs("sold_out"):
        crowd = s.opt("users")
        result = sold_out_run(s, gateway, "sold_out", "claim route, sold out", s.crowd)
        http_figure(
            s,
            "sold_out",
            f"claim route after sell-out ({s.primary})",
            result,
            f"; every 409 is sold_out; tokens rotating over {crowd:,} users, who come back"
            + cache_note(crowd),
        )
    if s.runs("sold_out_unseen"):
        label = "claim route, sold out, every token new to the cache"
        result = sold_out_run(s, gateway, "sold_out_unseen", label, s.token_file.path)
        everyone = s.token_file.count
        http_figure(
            s,
            "sold_out_unseen",
            f"claim route after sell-out, every token new to the cache (informative, {s.primary})",
            result,
            f"; tokens rotating over all {everyone:,} users minted" + cache_note(everyone),
        )


def primary_round(s: Session) -> None:
    """The round's phases on one gateway started for them, on the primary setting."""
    gateway = s.start_gateway(s.primary)
    try:
        warm(s, gateway, "warm", s.primary)
        peak = claim_phase(s, gateway) if s.runs("claim") else None
        if s.runs("sold_out", "sold_out_unseen"):
            sold_out_phases(s, gateway)
        if s.runs("open_loop") and peak:
            open_loop(s, gateway, peak)
    finally:
        s.stop("gateway")


def safe_round(s: Session) -> None:
    """The in-stock claim on the safe setting: Valkey switched to ``appendfsync always`` (CONFIG SET), a gateway
    started with CLAIMGATE_DURABILITY=safe, whose /readyz must confirm it; Valkey switched back after."""
    s.say("switching Valkey to appendfsync always (CONFIG SET) and starting a gateway as safe")
    s.rd.config_set("appendfsync", "always")
    try:
        gateway = s.start_gateway("safe")
        ops = f"http://127.0.0.1:{s.env[PREFIX + 'OPS_PORT']}"
        durability = httpx.get(ops + "/readyz", timeout=5).json().get("durability", {})
        if durability.get("setting") != "safe" or durability.get("problem"):
            s.fail(f"safe setting: the gateway reports {durability}")
        warm(s, gateway, "warm_safe", "safe")
        claim = in_stock(s, gateway, "claim_safe", "claim_safe", "safe", rss=False)
        http_figure(
            s,
            "claim_safe",
            "claim route while stock lasts (safe)",
            claim,
            f"; Redis reported: {durability.get('redis', '?')}",
        )
    finally:
        s.stop("gateway")
        s.rd.config_set("appendfsync", FSYNC[s.primary])
