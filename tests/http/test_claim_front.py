"""The claim route is answered ahead of litestar (``app.Gateway``): the same answers as through litestar's own
routing to the mounted handler, failures in the contract's shape, and none of litestar's per-request work.

The app is driven here as granian drives it (lifespan, then one ASGI call per request), in the test's own loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.catalog.campaign import ActivityIn, PackItem, TemplateIn
from gateway.http.app import Gateway, create_app
from gateway.services import Services
from gateway.settings import Settings
from tests.helpers import token

Answer = tuple[int, dict[str, str], bytes]


class Served:
    def __init__(self, app: Gateway, services: Services, sold_out: str, in_stock: str) -> None:
        self.app = app
        self.services = services
        self.sold_out = sold_out
        self.in_stock = in_stock


async def call(
    app: Any, method: str, path: str, headers: dict[str, str], body: bytes = b"", query: bytes = b""
) -> tuple[Answer, dict[str, Any]]:
    """One request as granian sends it; the answer and the scope as the app left it."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    answer_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return (start["status"], answer_headers, content), scope


async def through_litestar(app: Gateway, *request: Any, **options: Any) -> Answer:
    """The same request through litestar's own entry point: its router reaches the mounted handler."""

    async def litestar_entry(scope: Any, receive: Any, send: Any) -> None:
        await Litestar.__call__(app, scope, receive, send)

    answer, _ = await call(litestar_entry, *request, **options)
    return answer


@pytest.fixture
async def served(settings: Settings, clean: None) -> AsyncIterator[Served]:
    app = create_app(settings)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    services: Services = app.state.services
    now = int(time.time())
    template = await services.admin.create_template(
        TemplateIn(name="t", kind="cash", amount_off=100, valid_days=3), "op", now
    )
    ids = []
    for stock in (0, 1000):
        activity = ActivityIn(
            name="a",
            pack=[PackItem(template.id, 1)],
            starts_at=now - 5,
            ends_at=now + 600,
            stock=stock,
            per_user_limit=1,
        )
        ids.append((await services.admin.create_activity(activity, "op", now)).id)
    try:
        yield Served(app, services, *ids)
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await lifespan


def user(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(name)}"}


async def test_the_front_answers_as_litestar_routing_to_the_mount_does(served: Served) -> None:
    sold, other = served.sold_out, served.in_stock
    requests: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("POST", f"/v1/activities/{sold}/claim", {}), {}),  # no credentials
        (("POST", f"/v1/activities/{sold}/claim", {"authorization": "Bearer nope"}), {}),
        (("POST", f"/v1/activities/{sold}/claim", user("a")), {}),  # sold out
        (("POST", f"/v1/activities/{sold}/claim/", user("a")), {}),
        (("GET", f"/v1/activities/{sold}/claim", user("a")), {}),
        (("POST", f"/v1/activities/{sold}", user("a")), {}),
        (("POST", "/v1/activities", user("a")), {}),
        (("POST", f"/v1/activities/{sold}/claim/more", user("a")), {}),
        (("POST", "/v1/activities/bad%20id/claim", user("a")), {}),
        (("POST", "/v1/activitiesx/claim", user("a")), {}),
        (
            (
                "POST",
                f"/v1/activities/{other}/claim",
                {**user("b"), "content-type": "application/json"},
                b"{",
            ),
            {},
        ),
        (("POST", f"/v1/activities/{other}/claim", user("b")), {"query": b"x=1"}),
        (("POST", f"/v1/activities/{other}/claim", {**user("b"), "idempotency-key": "\x01"}), {}),
    ]
    for request, options in requests:
        front, _ = await call(served.app, *request, **options)
        assert front == await through_litestar(served.app, *request, **options), request
        assert 400 <= front[0] < 500 and msgspec.json.decode(front[2])["error"], (request, front)
    config = served.services.keyspace.activity(other).config
    assert int(await served.services.redis.control.hget(config, "taken")) == 0  # no refusal took a pack


async def test_a_claim_through_the_front_skips_litestar_and_takes_one_pack(served: Served) -> None:
    (status, headers, body), scope = await call(
        served.app, "POST", f"/v1/activities/{served.in_stock}/claim", user("c")
    )
    assert status == 201 and headers["content-type"] == "application/json"
    assert msgspec.json.decode(body)["claim_id"]
    assert "litestar_app" not in scope  # litestar's entry point marks every scope it handles
    _, scope = await call(served.app, "GET", "/healthz", {})
    assert "litestar_app" in scope  # every other route is litestar's


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [(RedisConnectionError("reset"), 503, "overloaded"), (ValueError("a bug"), 500, "internal")],
)
async def test_a_failure_inside_a_claim_is_answered_in_the_contracts_shape(
    served: Served, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int, code: str
) -> None:
    async def failing(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(served.services.claims, "claim", failing)
    (answer_status, headers, body), _ = await call(
        served.app, "POST", f"/v1/activities/{served.in_stock}/claim", user("d")
    )
    assert answer_status == status
    assert headers["content-type"] == "application/json"
    assert msgspec.json.decode(body)["error"] == code
    if status == 503:
        assert headers["retry-after"] == "1"
