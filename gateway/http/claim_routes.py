"""The claim route, the hot path: a raw ASGI handler, answered ahead of litestar's router.

``app.Gateway`` sends every request under ``/v1/activities`` straight to :func:`answer`, before litestar's own
per-request work (scope state, router, exception middleware): that work, with the request and response objects
of a regular handler, cost more than the two script calls (docs/benchmark.md). The route is also mounted in the
app as a litestar ``asgi`` handler, for the OpenAPI document (from ``opt``, like the other routes) and for any
caller that reaches the app through litestar itself; both ways run :func:`answer`. The contract is the same as
every other route's: the same checks in the same order, the same error bodies (``errors.error_parts``,
``errors.failure_parts``).
"""

from __future__ import annotations

from typing import Annotated, Any, cast
from urllib.parse import parse_qsl

import msgspec
from litestar import asgi
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, HTTPScope, Receive, Scope, Send
from msgspec import Meta

from gateway import clock
from gateway.catalog.campaign import NO_CONTROL_CHARACTERS
from gateway.http import auth, bodies
from gateway.http.answers import ClaimAnswer
from gateway.http.errors import (
    error_parts,
    failure_parts,
    method_not_allowed,
    no_such_route,
    payload_too_large,
)
from gateway.http.openapi import USER, documented
from gateway.outcomes import DomainError, Outcome
from gateway.services import Services

USER_BODY_LIMIT = 16 * 1024
CLAIM_REFUSALS = (
    Outcome.IDEMPOTENCY_CONFLICT,
    Outcome.BLOCKED,
    Outcome.NOT_STARTED,
    Outcome.ENDED,
    Outcome.PAUSED,
    Outcome.SOLD_OUT,
    Outcome.NOT_ELIGIBLE,
    Outcome.LIMIT_REACHED,
)
MOUNT = "/v1/activities"
JSON_HEADERS = [(b"content-type", b"application/json")]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, body, every header (content-length too)


class ClientGone(Exception):
    """The client disconnected before its body arrived: nothing was done and there is no one to answer."""


class ClaimBody(msgspec.Struct, forbid_unknown_fields=True):
    channel: Annotated[str, Meta(min_length=1, max_length=32, pattern=NO_CONTROL_CHARACTERS)] | None = None


def with_length(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> Answer:
    return status, body, [*headers, (b"content-length", b"%d" % len(body))]


SOLD_OUT = with_length(
    *error_parts(DomainError(Outcome.SOLD_OUT))
)  # the marked activities' answer, made once


async def send_answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """Send an answer whose headers are complete (``with_length``)."""
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


async def read_body(receive: Receive, declared_length: bytes | None) -> bytes:
    if declared_length is not None and (
        not declared_length.isdigit() or int(declared_length) > USER_BODY_LIMIT
    ):
        raise payload_too_large()
    if declared_length == b"0":
        return b""  # nothing to wait for: no receive() through the server
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        size += len(chunk)
        if size > USER_BODY_LIMIT:
            raise payload_too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


@asgi(
    MOUNT,
    is_mount=True,  # litestar 2.25 cannot route a raw handler with path parameters (its trie looks them up by
    copy_scope=False,  # method): the handler takes every path under the mount and answers the others 404
    opt=documented(
        path=MOUNT + "/{activity_id}/claim",
        method="post",
        status_code=201,
        summary="Claim",
        callers=USER,
        description="Claim one pack of an activity for the user; a retry with the same Idempotency-Key answers "
        "the first success.",
        idempotency=True,
        body=ClaimBody,
        body_required=False,
        answer=ClaimAnswer,
        refusals=CLAIM_REFUSALS,
        scripts=True,
    ),
)
async def claim(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/activities/{activity_id}/claim`` reached through litestar (the path is under the mount)."""
    await answer(scope["app"].state.services, cast(HTTPScope, scope), receive, send, scope["path"])


async def answer(
    services: Services, scope: HTTPScope, receive: Receive, send: Send, under_mount: str
) -> None:
    """Answer a request whose path is ``MOUNT + under_mount``: a claim, or the contract's refusal."""
    try:
        status, body, headers = await claimed(services, scope, receive, under_mount)
    except DomainError as refusal:
        status, body, headers = with_length(*error_parts(refusal))
    except ClientGone:
        return
    except Exception as exc:
        status, body, headers = with_length(*failure_parts(exc))
    await send_answer(send, status, body, headers)


async def claimed(services: Services, scope: HTTPScope, receive: Receive, under_mount: str) -> Answer:
    """The answer to a claim: the checks in the order the other routes make them, credentials first."""
    parts = under_mount.strip("/").split("/")
    if len(parts) != 2 or parts[1] != "claim" or not parts[0]:
        raise no_such_route()
    if scope["method"] != "POST":
        raise method_not_allowed()
    authorization = content_type = idempotency_key = content_length = service_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-service-key":
            service_key = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"idempotency-key":
            idempotency_key = value.decode("latin-1")
        elif name == b"content-length":
            content_length = value
    auth.one_credential(authorization, service_key)  # a user route: the service key alone is unauthorized
    who = services.tokens.identity(authorization)
    if scope["query_string"]:
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        bodies.only_names((name for name, _ in query), frozenset())
    channel = ""
    if content_length != b"0":  # an empty body is common: no coroutine to read it
        raw = await read_body(receive, content_length)
        if raw.strip():
            channel = bodies.decode(raw, ClaimBody, content_type or "").channel or ""
    key = bodies.checked_idempotency_key(idempotency_key)
    activity_id = parts[0]
    blocked = services.blocklist.blocks(who.user_id, who.device_id)
    now = clock.now()
    unkeyed = key is None and not blocked
    # A marked activity's id passed the check below when its sold-out refusal came back: no need to match again.
    if unkeyed and services.sold_out.holds(activity_id, now) and services.fence.is_open:
        return SOLD_OUT
    if not bodies.PATH_ID.fullmatch(activity_id):
        raise DomainError(Outcome.NOT_FOUND, "No such activity.")
    try:
        result = await services.claims.claim(
            activity_id, who, now=int(now), channel=channel, idempotency_key=key, blocked=blocked
        )
    except DomainError as refusal:
        if unkeyed and refusal.outcome is Outcome.SOLD_OUT:
            services.sold_out.mark(activity_id)
        raise
    return with_length(201, result.answer.encode(), JSON_HEADERS)


ROUTES: list[Any] = [claim]
