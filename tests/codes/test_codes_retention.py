"""Codes' retention over HTTP (product.md "Retention"): a redeemed code's tombstone answers its redeemer's repeat as
the first redeem did, to the last second of the retention after the batch's window ended; once the worker's sweep
has retired the batch, a redeem of any of its codes, the redeemer's repeat too, answers ``invalid_code``. Time is
the processes' one clock (``gateway.clock``), moved; the gateway's own clock check is held off meanwhile."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway import clock
from gateway.scripts import ledger_check
from gateway.services import Services
from gateway.settings import Settings
from tests.codes.test_codes_http import codes_activity, make_codes, redeem
from tests.http.support import assert_refusal
from worker.consumer import Consumer, start_consumer


@pytest.fixture
async def worker(settings: Settings, client: AsyncTestClient[Any]) -> AsyncIterator[Consumer]:
    consumer = await start_consumer(settings)
    yield consumer
    await consumer.redis.close()
    await consumer.pool.close()


@pytest.fixture
def clock_unchecked(monkeypatch: pytest.MonkeyPatch, moved_clock: None) -> None:
    """The gateway's watch checks its clock against Redis's every 10 s and would close its fence for a clock
    moved by weeks; this test moves it on purpose."""
    monkeypatch.setattr(ledger_check, "CLOCK_CHECK_SECONDS", 1e9)


@pytest.mark.usefixtures("clock_unchecked")
async def test_a_repeat_replays_until_the_batch_retires_then_every_code_is_invalid(
    client: AsyncTestClient[Any], services: Services, worker: Consumer
) -> None:
    now = int(time.time())
    ends_at = now + 3600
    activity, _ = await codes_activity(client, stock=10, starts_at=now - 100, ends_at=ends_at)
    _, codes = await make_codes(client, activity["id"], 3)
    first = await redeem(client, codes[0], "keeper", "dev-k")
    assert first.status_code == 201, first.text
    housekeeping = worker.housekeeping
    assert housekeeping is not None
    due = ends_at + services.settings.retention.seconds

    clock.set_to(due - 1)  # the retention's last second: the tombstone answers
    await housekeeping.retire_codes()
    assert housekeeping.batches_retired == 0
    assert services.fence.is_open
    again = await redeem(client, codes[0].lower(), "keeper", "another-device")
    assert (again.status_code, again.content) == (201, first.content)
    assert_refusal(await redeem(client, codes[0], "someone"), 404, "invalid_code")
    assert_refusal(await redeem(client, codes[1], "late"), 409, "ended")  # past the window, still known

    clock.set_to(due)
    assert_refusal(await redeem(client, codes[1], "late"), 409, "ended")  # until the sweep comes
    await housekeeping.retire_codes()
    assert (housekeeping.batches_retired, housekeeping.codes_retired) == (1, 3)

    for code, user in ((codes[0], "keeper"), (codes[1], "late"), (codes[2], "keeper")):
        assert_refusal(await redeem(client, code, user), 404, "invalid_code")
