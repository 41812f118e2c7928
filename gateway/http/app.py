"""``create_app(settings)``: the litestar application, its routes and its lifespan."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.types import (
    Receive,
    Send,
    WebSocketCloseEvent,
    WebSocketResponseBodyEvent,
    WebSocketResponseStartEvent,
    WebSocketScope,
)

from gateway.http import (
    admin_routes,
    blocklist_routes,
    body_guard,
    checkout_routes,
    claim_routes,
    code_routes,
    ops_routes,
    stats_routes,
    wallet_routes,
)
from gateway.http.claim_routes import MOUNT
from gateway.http.errors import EXCEPTION_HANDLERS, error_parts, no_such_route
from gateway.http.openapi import ContractDocument, schema_router
from gateway.ops_listener import OpsListener
from gateway.services import Services
from gateway.settings import Settings, load_settings

SCHEMA_PATH = "/schema"
POLICY_VIOLATION = 1008  # RFC 6455's close code for a refused endpoint


class Gateway(Litestar):
    """The litestar app, with the claim route (``claim_routes``) answered before litestar's per-request work."""

    claim_services: Services | None = None  # set once the lifespan has started the services

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            receive, send = body_guard.guarded(scope, receive, send)
            services = self.claim_services
            path: str = scope["path"]
            if services is not None and (
                path.startswith(MOUNT) and (len(path) == len(MOUNT) or path[len(MOUNT)] == "/")
            ):
                await claim_routes.answer(services, scope, receive, send, path[len(MOUNT) :])
                return
        elif kind == "websocket":
            await refuse_websocket(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def refuse_websocket(scope: WebSocketScope, receive: Receive, send: Send) -> None:
    """No route takes a WebSocket: every handshake is refused before it is accepted, the way a path without a
    route is (404 ``not_found`` in the contract's body) where the server lets the app answer the handshake in
    HTTP (the ASGI "websocket.http.response" extension, which granian offers), else by closing it (the
    server then answers 403). Litestar would run the claim route's raw handler on it (an HTTP answer to a
    WebSocket scope) or close it with its own code 4500."""
    if (await receive())["type"] != "websocket.connect":
        return  # the client left before its handshake arrived: no one to answer
    if "websocket.http.response" in (scope.get("extensions") or {}):
        status, body, headers = error_parts(no_such_route())
        start: WebSocketResponseStartEvent = {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"%d" % len(body))],
        }
        await send(start)
        end: WebSocketResponseBodyEvent = {
            "type": "websocket.http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(end)
        return
    close: WebSocketCloseEvent = {
        "type": "websocket.close",
        "code": POLICY_VIOLATION,
        "reason": "No such route.",
    }
    await send(close)


def create_app(settings: Settings) -> Gateway:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await Services.start(settings)
        app.state.services = services
        if isinstance(app, Gateway):
            app.claim_services = services
        ops = OpsListener(
            settings.ops.host, settings.ops.port, ops_routes.operations(services), asyncio.get_running_loop()
        )
        if settings.ops.port:
            ops.start()
        gc.collect()
        gc.freeze()  # what start-up made lives as long as the process: no full collection walks it again
        try:
            yield
        finally:
            if isinstance(app, Gateway):
                app.claim_services = None
            await asyncio.to_thread(ops.stop)
            await services.stop()

    return Gateway(
        route_handlers=[
            Router(
                "/",
                route_handlers=[*claim_routes.ROUTES, *wallet_routes.ROUTES, *code_routes.USER_ROUTES],
                request_max_body_size=claim_routes.USER_BODY_LIMIT,
            ),
            Router(
                "/",
                route_handlers=[
                    *admin_routes.ROUTES,
                    *stats_routes.ROUTES,
                    *blocklist_routes.ROUTES,
                    *code_routes.ADMIN_ROUTES,
                ],
                request_max_body_size=admin_routes.ADMIN_BODY_LIMIT,
            ),
            Router(
                "/",
                route_handlers=checkout_routes.ROUTES,
                request_max_body_size=checkout_routes.CHECKOUT_BODY_LIMIT,
            ),
            *ops_routes.ROUTES,
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="claimgate",
            version="0.1.0",
            path=SCHEMA_PATH,
            render_plugins=[ContractDocument()],
            openapi_router=schema_router(SCHEMA_PATH),
        ),
        logging_config=None,
        debug=False,
    )


def app_from_env() -> Gateway:
    """The factory granian runs (``--factory gateway.http.app:app_from_env``): settings from the environment."""
    return create_app(load_settings())
