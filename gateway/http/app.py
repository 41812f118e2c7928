"""``create_app(settings)``: the litestar application, its routes and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
from gateway.http.errors import EXCEPTION_HANDLERS
from gateway.http.openapi import ContractDocument
from gateway.services import Services
from gateway.settings import Settings, load_settings


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await Services.start(settings)
        app.state.services = services
        try:
            yield
        finally:
            await services.stop()

    return Litestar(
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


def app_from_env() -> Litestar:
    """The factory granian runs (``--factory gateway.http.app:app_from_env``): settings from the environment."""
    return create_app(load_settings())
