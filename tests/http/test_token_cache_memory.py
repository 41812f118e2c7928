"""One user cannot grow a gateway's memory: the verified-token cache is keyed on the token, not the header, and
headers or tokens too long to be ours are refused before anything is kept."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import httpx
import pytest

from gateway.tokens import MAX_AUTHORIZATION_LENGTH, VerifiedTokens, mint_user_token
from tests.conftest import JWT_SECRET
from tests.faults.support import Gateway
from tests.live_gateway import gateway, http, procs  # noqa: F401  (a real gateway process)

COPIES = 20_000
WHITE = " \t  \t\t \t   \t" * 1_400  # spaces and tabs to pad with, long enough for 16 KB


def padded(token: str, rng: random.Random, width: int) -> str:
    """The token in a header of about ``width`` characters: the scheme in a random case, then spaces and tabs
    (a header value cannot end in white space on the wire, so all of it goes before the token)."""
    scheme = "".join(c.upper() if rng.random() < 0.5 else c for c in "bearer")
    pad = max(width - len(token) - 7, 0)
    start = rng.randint(0, 64)
    return scheme + " " + WHITE[start : start + pad] + token


def test_padded_copies_of_one_token_are_one_entry() -> None:
    cache = VerifiedTokens(JWT_SECRET)
    token = mint_user_token(JWT_SECRET, "alice", "phone")
    rng = random.Random(7)
    for _ in range(COPIES):
        header = padded(token, rng, rng.randint(len(token) + 8, MAX_AUTHORIZATION_LENGTH))
        assert cache.identity(header).user_id == "alice"
    assert len(cache) == 1


def test_the_cache_evicts_the_least_recently_used() -> None:
    cache = VerifiedTokens(JWT_SECRET, max_entries=2)
    a, b, c = (f"Bearer {mint_user_token(JWT_SECRET, user, 'd')}" for user in "abc")
    cache.identity(a)
    cache.identity(b)
    cache.identity(a)  # a is used again: b is now the least recently used
    cache.identity(c)
    assert sorted(identity.user_id for identity, _ in cache._known.values()) == ["a", "c"]


def group_rss_kib(leader: int) -> int:
    """The resident memory of every process in ``leader``'s process group (granian's main process and its
    workers), in KiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != leader:
                continue
            status = (entry / "status").read_text()
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


@pytest.mark.slow
async def test_twenty_thousand_padded_copies_leave_the_gateway_small(
    gateway: Gateway,  # noqa: F811
    http: httpx.AsyncClient,  # noqa: F811
) -> None:
    token = mint_user_token(JWT_SECRET, "alice", "phone")
    rng = random.Random(11)
    # Padded to 8 KB on average (up to 16 KB): the short ones are verified, the long ones refused at the door.
    headers = [padded(token, rng, rng.randint(len(token) + 8, 16_000)) for _ in range(COPIES)]
    url = "/v1/activities/no-such-activity-here/claim"
    await http.post(url, headers={"authorization": headers[0]})
    before = group_rss_kib(gateway.proc.pid)
    statuses: dict[int, int] = {}

    async def send(chunk: list[str]) -> None:
        for header in chunk:
            response = await http.post(url, headers={"authorization": header})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    await asyncio.gather(*(send(headers[i::32]) for i in range(32)))
    grown_mib = (group_rss_kib(gateway.proc.pid) - before) / 1024
    assert set(statuses) == {401, 404}, statuses  # refused as too long, or verified and then no such activity
    assert statuses[404] > COPIES // 10 and statuses[401] > COPIES // 10
    assert grown_mib < 48, f"the gateway grew by {grown_mib:.0f} MiB"
