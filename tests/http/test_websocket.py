"""No route takes a WebSocket: a handshake to any path, the claim route's included, is refused before it is
accepted (404 ``not_found`` in the contract's body where the server lets the app answer it in HTTP, else a
close), never a 500 or a traceback (issue 19)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.faults.support import Gateway
from tests.live_gateway import gateway, procs  # noqa: F401  (a real gateway process)

PATHS = [
    "/v1/activities/a1/claim",
    "/v1/activities",
    "/v1/codes/redeem",
    "/v1/coupons",
    "/v1/admin/activities",
    "/healthz",
    "/schema/openapi.json",
    "/no/such/route",
]


def _scope(path: str, extensions: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"sec-websocket-version", b"13")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
        "extensions": extensions,
        "state": {},
    }


async def _asgi_handshake(app: Any, path: str, extensions: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages the app sends for one handshake."""
    inbox: list[dict[str, Any]] = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)  # a refused handshake never waits for more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(_scope(path, extensions), receive, send), timeout=5)
    return sent


@pytest.mark.parametrize("path", PATHS)
async def test_a_handshake_is_refused_in_http_where_the_server_allows(
    client: AsyncTestClient[Any], path: str
) -> None:
    sent = await _asgi_handshake(client.app, path, {"websocket.http.response": {}})
    assert [m["type"] for m in sent] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert sent[0]["status"] == 404
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    body = json.loads(sent[1]["body"])
    assert body["error"] == "not_found" and isinstance(body["message"], str), body


@pytest.mark.parametrize("path", PATHS)
async def test_a_handshake_is_closed_where_the_server_has_no_http_answer(
    client: AsyncTestClient[Any], path: str
) -> None:
    sent = await _asgi_handshake(client.app, path, {})
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert sent[0]["code"] == 1008


async def _handshake(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A real WebSocket opening handshake over TCP: the HTTP status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        pairs = [(k.strip().lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines if ln)]
        headers = dict(pairs)
        assert len(headers) == len(pairs), f"a header is repeated: {pairs}"
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), timeout=5)
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()


async def test_a_real_handshake_to_a_live_gateway_is_refused(gateway: Gateway) -> None:  # noqa: F811
    for path in PATHS:
        status, headers, body = await _handshake(gateway.port, path)
        assert status == 404, (path, status, body)
        assert headers["content-type"].startswith("application/json"), headers
        answer = json.loads(body)
        assert answer["error"] == "not_found" and isinstance(answer["message"], str), answer
    log = gateway.proc.text()
    assert "Traceback" not in log and "unhandled error" not in log, log
