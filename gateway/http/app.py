"""``create_app(settings)``: the litestar application, its routes and its lifespan."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig

from gateway.http import (
    admin_routes,
    blocklist_routes,
    checkout_routes,
    claim_routes,
    code_routes,
    ops_routes,
    wallet_routes,
)
from gateway.http.claim_routes import MOUNT
from gateway.http.errors import EXCEPTION_HANDLERS
from gateway.http.openapi import ContractDocument
from gateway.ops_listener import OpsListener
from gateway.services import Services
from gateway.settings import Settings, load_settings


class Gateway(Litestar):
    """The litestar app, with the claim route (``claim_routes``) answered before litestar's per-request work."""

    claim_services: Services | None = None  # set once the lifespan has started the services

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        services = self.claim_services
        if services is not None and scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(MOUNT) and (len(path) == len(MOUNT) or path[len(MOUNT)] == "/"):
                await claim_routes.answer(services, scope, receive, send, path[len(MOUNT) :])
                return
        await super().__call__(scope, receive, send)


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
                route_handlers=[*admin_routes.ROUTES, *blocklist_routes.ROUTES, *code_routes.ADMIN_ROUTES],
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
            title="claimgate", version="0.1.0", path="/schema", render_plugins=[ContractDocument()]
        ),
        logging_config=None,
        debug=False,
    )


def app_from_env() -> Gateway:
    """The factory granian runs (``--factory gateway.http.app:app_from_env``): settings from the environment."""
    return create_app(load_settings())
