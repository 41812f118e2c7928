"""Who is calling: a user from a verified token, the order service from a service key (acting for the user it
names), an operator from an API key."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from litestar import Request

from gateway.http.bodies import invalid_request
from gateway.outcomes import DomainError, Outcome
from gateway.services import Services
from gateway.tokens import ID_PATTERN, UserIdentity


def services(request: Request[Any, Any, Any]) -> Services:
    found: Services = request.app.state.services
    return found


def one_credential(authorization: str | None, service_key: str | None) -> None:
    """A request carrying both a user's ``Authorization`` and an ``X-Service-Key`` is ``invalid_request``, on
    every route that takes either: the gateway never picks one of two callers. Checked before either is."""
    if authorization is not None and service_key is not None:
        raise invalid_request("Send a user token (Authorization) or X-Service-Key, not both.")


def user(request: Request[Any, Any, Any]) -> UserIdentity:
    """The user of a route that takes a user token only."""
    authorization = request.headers.get("authorization")
    one_credential(authorization, request.headers.get("x-service-key"))
    return services(request).tokens.identity(authorization)


def _matching(given: str, keys: Iterable[str]) -> str | None:
    """The configured key ``given`` equals, compared in constant time with every key."""
    found = None
    for key in keys:
        if hmac.compare_digest(key.encode(), given.encode()):
            found = key
    return found


def operator(request: Request[Any, Any, Any]) -> str:
    """The operator's name for a valid ``X-API-Key``."""
    given = request.headers.get("x-api-key")
    api_keys = services(request).settings.auth.api_keys
    key = _matching(given, api_keys) if given else None
    if key is None:
        raise DomainError(Outcome.UNAUTHORIZED, "A valid X-API-Key is required.")
    return api_keys[key]


def _is_service(request: Request[Any, Any, Any]) -> bool:
    """True for a valid ``X-Service-Key``; a wrong one is refused, never taken for a user call."""
    given = request.headers.get("x-service-key")
    if given is None:
        return False
    if _matching(given, services(request).settings.auth.service_keys) is not None:
        return True
    raise DomainError(Outcome.UNAUTHORIZED, "The X-Service-Key is not valid.")


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller of a checkout or wallet route: a user (its token), or the order service (``user`` None)."""

    user: UserIdentity | None

    def acting_for(self, user_id: str | None) -> str:
        """The user the call acts for: a token's own user (a ``user_id`` beside it is refused: a token never acts
        for anyone else), or the ``user_id`` the order service names."""
        if self.user is not None:
            if user_id is not None:
                raise invalid_request(
                    "A user token acts for its own user only: leave user_id out.", "user_id"
                )
            return self.user.user_id
        if user_id is None:
            raise invalid_request("user_id is required with X-Service-Key.", "user_id")
        if not ID_PATTERN.fullmatch(user_id):
            raise invalid_request("user_id must be 1-64 characters of [A-Za-z0-9_.:-].", "user_id")
        return user_id


def caller(request: Request[Any, Any, Any]) -> Caller:
    """Credentials first, before the request's shape is looked at."""
    one_credential(request.headers.get("authorization"), request.headers.get("x-service-key"))
    if _is_service(request):
        return Caller(None)
    return Caller(services(request).tokens.identity(request.headers.get("authorization")))
