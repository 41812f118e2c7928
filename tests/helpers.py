"""Small builders shared by tests: tokens, templates and activities through the real admin API."""

from __future__ import annotations

import time
from typing import Any

from litestar.testing import AsyncTestClient

from gateway.tokens import mint_user_token
from tests.conftest import API_KEY, JWT_SECRET

ADMIN = {"X-API-Key": API_KEY}


def token(user: str, device: str | None = None, **facts: Any) -> str:
    return mint_user_token(JWT_SECRET, user, device or f"dev-{user}", **facts)


def bearer(user: str, device: str | None = None, **facts: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, device, **facts)}"}


async def create_template(client: AsyncTestClient[Any], **fields: Any) -> dict[str, Any]:
    body = {"name": "5 off", "kind": "cash", "amount_off": 500, "valid_days": 7, **fields}
    reply = await client.post("/v1/admin/templates", json=body, headers=ADMIN)
    assert reply.status_code == 201, reply.text
    created: dict[str, Any] = reply.json()
    return created


async def create_activity(
    client: AsyncTestClient[Any], *, template_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    if template_id is None and "pack" not in fields:
        template_id = (await create_template(client))["id"]
    now = int(time.time())
    body = {
        "name": "sale",
        "pack": [{"template_id": template_id, "count": 1}],
        "starts_at": now - 10,
        "ends_at": now + 3600,
        "stock": 10,
        "per_user_limit": 1,
        **fields,
    }
    reply = await client.post("/v1/admin/activities", json=body, headers=ADMIN)
    assert reply.status_code == 201, reply.text
    created: dict[str, Any] = reply.json()
    return created
