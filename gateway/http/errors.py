"""The one place refusals become responses: ``{"error": <code>, "message": <for a person>}``."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from redis.exceptions import ClusterDownError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.outcomes import (
    METHOD_NOT_ALLOWED,
    PAYLOAD_TOO_LARGE,
    STATUS,
    UNSUPPORTED_MEDIA_TYPE,
    DomainError,
    Outcome,
)
from gateway.scripts.runner import redis_unavailable

log = logging.getLogger(__name__)
JSON = "application/json"
INTERNAL_ERROR = b'{"error":"internal","message":"Internal error."}'


def error_parts(error: DomainError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and headers of a refusal, for a raw ASGI route (the claim route) and for ``render``."""
    body: dict[str, object] = {"error": error.outcome.value, "message": error.message, **error.extra}
    headers = [(b"content-type", JSON.encode())]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    return error.status, msgspec.json.encode(body), headers


def response(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> Response[bytes]:
    """A litestar response from an answer's parts (``error_parts``, ``failure_parts``)."""
    extra = {name.decode().title(): value.decode() for name, value in headers if name != b"content-type"}
    return Response(body, status_code=status, media_type=JSON, headers=extra or None)


def render(error: DomainError) -> Response[bytes]:
    return response(*error_parts(error))


def on_domain_error(_: Request[Any, Any, Any], exc: DomainError) -> Response[bytes]:
    return render(exc)


def no_such_route() -> DomainError:
    return DomainError(Outcome.NOT_FOUND, "No such route.")


def method_not_allowed() -> DomainError:
    return DomainError(
        Outcome.INVALID_REQUEST, "Method not allowed on this route.", status=METHOD_NOT_ALLOWED
    )


def payload_too_large() -> DomainError:
    return DomainError(Outcome.INVALID_REQUEST, "The request body is too large.", status=PAYLOAD_TOO_LARGE)


_FRAMEWORK_REFUSALS: dict[int, DomainError] = {
    404: no_such_route(),
    405: method_not_allowed(),
    413: payload_too_large(),
    415: DomainError(Outcome.INVALID_REQUEST, "The body must be JSON.", status=UNSUPPORTED_MEDIA_TYPE),
    401: DomainError(Outcome.UNAUTHORIZED),
}


def on_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own refusals (no route, wrong method, body too large, bad parameters) in the contract's shape."""
    known = _FRAMEWORK_REFUSALS.get(exc.status_code)
    if known is not None:
        return render(known)
    if exc.status_code < 500:
        return render(DomainError(Outcome.INVALID_REQUEST, str(exc.detail)))
    log.error("framework error %s: %s", exc.status_code, exc.detail)
    return Response(INTERNAL_ERROR, status_code=500, media_type=JSON)


# A store that cannot be reached (refused, reset, timed out, a cluster without its nodes) or cannot take the
# request now (Postgres out of connections or cancelling a query past its statement_timeout, shutting down) is
# not a bug of the request: every route answers it as the contract's overloaded, with Retry-After, and nothing
# was done (a Postgres error rolls its transaction back). Redis's own "not now" replies (BUSY, MISCONF,
# READONLY, ...: ``redis_client.UNAVAILABLE_REPLIES``) are ResponseErrors, told apart by their code.
STORE_UNREACHABLE: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,  # asyncio.TimeoutError too: the same class since Python 3.11
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    RedisClusterException,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
UNREACHABLE_RETRY_AFTER = 1


def store_unreachable(exc: Exception) -> DomainError:
    log.warning("a store is unreachable or busy: %r", exc)
    return DomainError(
        Outcome.OVERLOADED,
        "A data store is unreachable or busy; retry shortly.",
        retry_after=UNREACHABLE_RETRY_AFTER,
    )


def failure_parts(exc: Exception) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """An exception that is not a refusal: a store unreachable or busy is overloaded (nothing was done); anything
    else is a bug, logged whole and answered 500 without details. For every route, the raw claim route included."""
    if isinstance(exc, STORE_UNREACHABLE) or (isinstance(exc, ResponseError) and redis_unavailable(exc)):
        return error_parts(store_unreachable(exc))
    log.exception("unhandled error", exc_info=exc)
    return 500, INTERNAL_ERROR, [(b"content-type", JSON.encode())]


def on_failure(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    return response(*failure_parts(exc))


EXCEPTION_HANDLERS = {
    DomainError: on_domain_error,
    HTTPException: on_http_exception,
    **dict.fromkeys(STORE_UNREACHABLE, on_failure),
    Exception: on_failure,
}
assert all(outcome in STATUS for outcome in Outcome)
