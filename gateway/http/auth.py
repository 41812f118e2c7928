"""Who is calling: a user from a verified token, an operator from an API key."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request

from gateway.outcomes import DomainError, Outcome
from gateway.services import Services
from gateway.tokens import UserIdentity, verify_user_token


def services(request: Request[Any, Any, Any]) -> Services:
    found: Services = request.app.state.services
    return found


def user(request: Request[Any, Any, Any]) -> UserIdentity:
    return verify_user_token(request.headers.get("authorization"), services(request).settings.auth.jwt_secret)


def operator(request: Request[Any, Any, Any]) -> str:
    """The operator's name for a valid ``X-API-Key``; compares every key in constant time."""
    given = request.headers.get("x-api-key")
    if given:
        for key, name in services(request).settings.auth.api_keys.items():
            if hmac.compare_digest(key.encode(), given.encode()):
                return name
    raise DomainError(Outcome.UNAUTHORIZED, "A valid X-API-Key is required.")
