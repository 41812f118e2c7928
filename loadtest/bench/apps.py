"""The bare HTTP ceiling: two apps that answer every request with one constant 201 JSON body, served by the
same granian command as the gateway (``servers.granian_command``).

``raw_app``: a plain ASGI callable (reads the request body unless it declares ``Content-Length: 0``, as the
claim route does, then answers). ``litestar_app``: litestar with one POST
route on the claim path, configured as the gateway's app is (no logging config, no debug). The body has the
size and shape of a claim's answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from litestar import Litestar, Response, post

BODY = (
    b'{"claim_id":"01kbenchmarkconstant0000000","coupons":[{"coupon_id":"01kbenchmarkconstant0000000.1",'
    b'"template_id":"01kbenchmarktemplate000000","valid_from":1700000000,"valid_until":1700604800}]}'
)
JSON = "application/json"
_HEADERS = [(b"content-type", JSON.encode()), (b"content-length", str(len(BODY)).encode())]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _raw(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = (b"content-length", b"0") not in scope["headers"]  # no body to wait for, as the claim route
    while more:
        message = await receive()
        more = bool(message.get("more_body", False))
    await send({"type": "http.response.start", "status": 201, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def raw_app() -> ASGIApp:
    """granian ``--factory loadtest.bench.apps:raw_app``."""
    return _raw


@post("/v1/activities/{activity_id:str}/claim", status_code=201)
async def _claim(activity_id: str) -> Response[bytes]:
    return Response(BODY, status_code=201, media_type=JSON)


def litestar_app() -> Litestar:
    """granian ``--factory loadtest.bench.apps:litestar_app``."""
    return Litestar(route_handlers=[_claim], logging_config=None, debug=False)
