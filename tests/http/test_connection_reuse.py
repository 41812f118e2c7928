"""An answer that leaves the request's body unread (a body over the limit, a refusal before the body is read)
keeps an HTTP/1.1 connection usable for the next request, or says ``Connection: close`` and the server closes
it (issue 20): against a real granian gateway, over raw sockets, so what happens to the connection is seen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from gateway.http.admin_routes import ADMIN_BODY_LIMIT
from gateway.http.body_guard import DRAIN_SECONDS, KEEP_BODY_BYTES
from gateway.http.claim_routes import USER_BODY_LIMIT
from tests.faults.support import Gateway
from tests.helpers import ADMIN, bearer
from tests.live_gateway import gateway, procs  # noqa: F401  (a real gateway process)

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> str:
        answer = json.loads(self.body)
        assert isinstance(answer["message"], str) and answer["message"], answer
        return str(answer["error"])


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[Connection]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


def request(
    path: str, headers: dict[str, str], body: bytes, *, chunked: bool, send_body: bool = True
) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n{lines}"
    if chunked:
        return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (
            len(body),
            body,
        )
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + (body if send_body else b"")


async def exchange(conn: Connection, data: bytes) -> Reply:
    """Send ``data``, read one answer (within 10 s: the guard waits at most DRAIN_SECONDS for a body)."""
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(int(status_line.split()[1]), headers, body)


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"

# (path, credentials, the route's body limit): an admin route, the raw claim route, a checkout and a code route
LIMITED = [
    ("/v1/admin/templates", ADMIN, ADMIN_BODY_LIMIT),
    ("/v1/activities/a1/claim", bearer("u1"), USER_BODY_LIMIT),
    ("/v1/checkout/quote", bearer("u1"), USER_BODY_LIMIT),
    ("/v1/codes/redeem", bearer("u1"), USER_BODY_LIMIT),
]


async def test_a_body_over_the_limit_is_413_and_the_connection_carries_the_next_request(
    gateway: Gateway,  # noqa: F811
) -> None:
    """Just over the limit and well over it (still within what is read out), with a Content-Length and chunked:
    413 in the contract's shape, no Connection: close, and the next request on the same connection answered.
    The old code closed the connection after the admin route's 413 without saying so."""
    for path, headers, limit in LIMITED:
        for size in (limit + 1, 4 * limit):
            for chunked in (False, True):
                case = (path, size, "chunked" if chunked else "content-length")
                async with connection(gateway.port) as conn:
                    first = await exchange(conn, request(path, headers, b"x" * size, chunked=chunked))
                    assert (first.status, first.error) == (413, "invalid_request"), case
                    assert first.headers.get("connection") != "close", case
                    second = await exchange(conn, HEALTH)
                    assert (second.status, json.loads(second.body)) == (200, {"status": "ok"}), case
    log = gateway.proc.text()
    assert "Traceback" not in log and "unhandled error" not in log, log


async def test_a_body_refused_before_it_is_read_leaves_the_connection_usable(
    gateway: Gateway,  # noqa: F811
) -> None:
    """A refusal that comes before the body is read (a wrong key, no token) with a large body still on its way."""
    cases = [
        ("/v1/admin/templates", {"X-API-Key": "not-a-key"}, 401, "unauthorized"),
        ("/v1/activities/a1/claim", {}, 401, "unauthorized"),
        ("/v1/checkout/quote", {}, 401, "unauthorized"),
    ]
    for path, headers, status, code in cases:
        for chunked in (False, True):
            async with connection(gateway.port) as conn:
                first = await exchange(conn, request(path, headers, b"x" * 900_000, chunked=chunked))
                assert (first.status, first.error) == (status, code), (path, chunked)
                assert first.headers.get("connection") != "close", (path, chunked)
                assert (await exchange(conn, HEALTH)).status == 200, (path, chunked)


async def test_a_body_too_large_or_too_slow_to_read_out_is_answered_with_connection_close(
    gateway: Gateway,  # noqa: F811
) -> None:
    """Declared beyond what is read out, or not arriving (the answer waits for it a bounded time): the answer
    says Connection: close, the server closes the connection after it, and the client's next connection is
    served."""
    too_large = request(
        "/v1/admin/templates", ADMIN, b"x" * (KEEP_BODY_BYTES + 1), chunked=False, send_body=False
    )
    too_slow = request(
        "/v1/codes/redeem", bearer("u1"), b"x" * (USER_BODY_LIMIT + 1), chunked=False, send_body=False
    )
    for data in (too_large, too_slow):
        async with connection(gateway.port) as conn:
            started = asyncio.get_running_loop().time()
            first = await exchange(conn, data)
            assert (first.status, first.error) == (413, "invalid_request")
            assert first.headers.get("connection") == "close", first.headers
            assert asyncio.get_running_loop().time() - started < DRAIN_SECONDS + 3  # a body that never comes
            assert await asyncio.wait_for(conn[0].read(), timeout=5) == b""  # closed by the server
        async with connection(gateway.port) as conn:
            assert (await exchange(conn, HEALTH)).status == 200
    log = gateway.proc.text()
    assert "Traceback" not in log and "unhandled error" not in log, log


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_within_the_limit_keeps_the_connection(gateway: Gateway, chunked: bool) -> None:  # noqa: F811
    """The ordinary case, unchanged: a body read whole, then the next request on the same connection."""
    async with connection(gateway.port) as conn:
        first = await exchange(
            conn, request("/v1/codes/redeem", bearer("u1"), b'{"code": "nope"}', chunked=chunked)
        )
        assert (first.status, first.error) == (404, "invalid_code")
        assert first.headers.get("connection") != "close"
        assert (await exchange(conn, HEALTH)).status == 200
