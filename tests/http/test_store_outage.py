"""A data store that cannot be reached answers 503 overloaded with Retry-After on every route, never 500:
the one mapping in gateway/http/errors.py, not a wrapper per route."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.devstack.pidfile import free_port
from gateway.http.app import create_app
from gateway.http.errors import on_failure
from gateway.settings import Settings, load_settings
from tests.conftest import settings_env
from tests.helpers import ADMIN, bearer
from tests.http.support import assert_refusal

LINES = {"lines": [{"sku": "a", "category": "food", "amount": 100}]}


async def test_postgres_unreachable_answers_overloaded_not_500(settings: Settings, clean: None) -> None:
    nowhere = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    env = settings_env(settings.redis.url, nowhere, load_check_seconds="30")
    async with AsyncTestClient(app=create_app(load_settings(env))) as client:
        for reply in (
            await client.get("/v1/admin/activities", headers=ADMIN),
            await client.get("/v1/admin/templates", headers=ADMIN),
            await client.get("/v1/admin/activities/a1/stats", headers=ADMIN),
            await client.get("/v1/admin/stats", headers=ADMIN),
            await client.post(
                "/v1/admin/templates",
                headers=ADMIN,
                json={"name": "x", "kind": "cash", "amount_off": 1, "valid_days": 1},
            ),
            await client.post("/v1/checkout/quote", headers=bearer("alice"), json=LINES),
        ):
            assert_refusal(reply, 503, "overloaded")
            assert reply.headers["Retry-After"] == "1"


@pytest.mark.parametrize("error", [RedisConnectionError("gone"), OSError("refused"), TimeoutError()])
def test_an_unreachable_store_renders_as_overloaded(error: Exception) -> None:
    reply = on_failure(None, error)  # type: ignore[arg-type]
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "1"
    assert b'"error":"overloaded"' in reply.content


def test_a_bug_is_not_taken_for_an_outage() -> None:
    from gateway.http.errors import EXCEPTION_HANDLERS

    assert ValueError not in EXCEPTION_HANDLERS and KeyError not in EXCEPTION_HANDLERS
