from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from tests.helpers import bearer, create_activity


async def test_claim_then_sold_out(client: AsyncTestClient[Any]) -> None:
    activity = await create_activity(client, stock=1)
    first = await client.post(f"/v1/activities/{activity['id']}/claim", headers=bearer("u1"))
    assert first.status_code == 201, first.text
    second = await client.post(f"/v1/activities/{activity['id']}/claim", headers=bearer("u2"))
    assert second.status_code == 409
    assert second.json()["error"] == "sold_out"
