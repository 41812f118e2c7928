"""A batch made and one code redeemed over HTTP: the pack lands in the wallet, a repeat answers the first."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from tests.helpers import ADMIN, bearer, create_activity, create_template
from tests.http.support import stock_left


async def test_make_and_redeem(client: AsyncTestClient[Any]) -> None:
    template = await create_template(client, amount_off=500)
    activity = await create_activity(client, pack=[{"template_id": template["id"], "count": 2}], stock=10)
    made = await client.post(f"/v1/admin/activities/{activity['id']}/codes", json={"count": 3}, headers=ADMIN)
    assert made.status_code == 201, made.text
    codes = made.json()["codes"]
    assert len(codes) == 3 and await stock_left(client, activity["id"]) == 7
    redeemed = await client.post("/v1/codes/redeem", json={"code": codes[0].lower()}, headers=bearer("bob"))
    assert redeemed.status_code == 201, redeemed.text
    again = await client.post("/v1/codes/redeem", json={"code": codes[0]}, headers=bearer("bob"))
    assert again.status_code == 201 and again.json() == redeemed.json()
    other = await client.post("/v1/codes/redeem", json={"code": codes[0]}, headers=bearer("carol"))
    assert other.status_code == 404 and other.json()["error"] == "invalid_code"
    wallet = await client.get("/v1/coupons", headers=bearer("bob"))
    assert len(wallet.json()["items"]) == 2
    csv = await client.post(
        f"/v1/admin/activities/{activity['id']}/codes",
        json={"count": 2},
        headers={**ADMIN, "Accept": "text/csv"},
    )
    assert csv.status_code == 201 and csv.text.startswith("batch_id,code\r\n") and csv.text.count("\r\n") == 3
