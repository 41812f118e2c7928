"""Request bodies, headers and query strings decoded with msgspec into the contract's refusals."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec
from litestar import Request

from gateway.http.openapi import Contract, Query
from gateway.outcomes import UNSUPPORTED_MEDIA_TYPE, DomainError, Outcome
from gateway.tokens import ID_PATTERN

T = TypeVar("T")
_FIELD = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,64}")
PATH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A coupon id as a client may send it: the contract's id alphabet and length (product.md, "Identity"). The ids
# the gateway makes ("<claim id>.<place in the pack>") are one shape within it, and that shape is ours: an id
# in the alphabet that names no coupon is not_found, like an unknown activity or order, never a 400.
COUPON_ID = ID_PATTERN
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20
LIMIT = Query(
    "limit",
    f"Items on a page, 1-{MAX_LIST_LIMIT} (default {DEFAULT_LIST_LIMIT}).",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
)


def cursor_query(pattern: re.Pattern[str]) -> Query:
    return Query(
        "cursor",
        "The next_cursor of the page before (absent: the first page).",
        {"type": "string", "pattern": f"^{pattern.pattern}$"},
    )


def invalid_request(message: str, field: str | None = None) -> DomainError:
    return DomainError(Outcome.INVALID_REQUEST, message, extra={"field": field} if field else None)


def decode(raw: bytes, type_: type[T], content_type: str) -> T:
    if content_type.split(";", 1)[0].strip().lower() not in ("application/json", ""):
        raise DomainError(Outcome.INVALID_REQUEST, "The body must be JSON.", status=UNSUPPORTED_MEDIA_TYPE)
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _FIELD.search(text)
        field = match[1] if match else None
        named = _UNKNOWN_FIELD.search(text) or (
            re.search(r"missing required field `([^`]*)`", text) if "missing required field" in text else None
        )
        if named:  # msgspec names the object; the contract names the field itself
            field = f"{field}.{named[1]}" if field else named[1]
        raise invalid_request(str(exc), field) from None
    except msgspec.DecodeError:
        raise invalid_request("The body is not valid JSON.") from None
    except UnicodeDecodeError:  # msgspec checks a string's UTF-8 as it reads it, raising Python's own error
        raise invalid_request("The body is not valid UTF-8.") from None


async def body(request: Request[Any, Any, Any], type_: type[T]) -> T:
    return decode(await request.body(), type_, request.headers.get("content-type", "application/json"))


def idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    return checked_idempotency_key(request.headers.get("idempotency-key"))


def checked_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise invalid_request("Idempotency-Key must be 1-64 printable ASCII characters.", "Idempotency-Key")
    return key


def only_query(request: Request[Any, Any, Any]) -> None:
    """Refuse a query parameter the route's contract does not document (``openapi.Contract.query``)."""
    contract = request.route_handler.opt.get("contract")
    only_names(request.query_params, contract.query_names if isinstance(contract, Contract) else frozenset())


def only_names(names: Iterable[str], allowed: frozenset[str]) -> None:
    """Refuse the first (in order) query parameter not in ``allowed``, naming it."""
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise invalid_request(f"Unknown query parameter: {unknown[0]}", unknown[0])


def list_limit(request: Request[Any, Any, Any]) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIST_LIMIT
    if not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise invalid_request(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}.", "limit")
    return int(raw)


def cursor(request: Request[Any, Any, Any]) -> str | None:
    raw = request.query_params.get("cursor")
    if raw is not None and not PATH_ID.fullmatch(raw):
        raise invalid_request("cursor is malformed.", "cursor")
    return raw
