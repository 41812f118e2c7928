"""User identity from a verified HS256 JWT; the CLI mints such tokens for development and load tests."""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
import msgspec

from gateway.outcomes import DomainError, Outcome

ALGORITHM = "HS256"
NBF_LEEWAY_SECONDS = 30
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_BEARER = "bearer "


class UserIdentity(msgspec.Struct, frozen=True):
    user_id: str
    device_id: str
    reg: int | None = None
    orders: int | None = None
    tags: tuple[str, ...] = ()


def _unauthorized(message: str) -> DomainError:
    return DomainError(Outcome.UNAUTHORIZED, message)


def _optional_int(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _unauthorized(f"The token's {name} must be an integer.")
    return int(value)


def verify_user_token(authorization: str | None, secret: str) -> UserIdentity:
    """Check the ``Authorization: Bearer`` header and return who is calling, or raise ``unauthorized``."""
    if not authorization or authorization[:7].lower() != _BEARER:
        raise _unauthorized("A bearer token is required.")
    try:
        claims: dict[str, Any] = jwt.decode(
            authorization[7:].strip(),
            secret,
            algorithms=[ALGORITHM],
            # exp is strict; the contract's 30 s leeway is for nbf, which PyJWT's one leeway cannot say.
            options={"require": ["exp", "sub", "did"], "verify_nbf": False, "verify_iat": False},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired.") from None
    except jwt.PyJWTError:
        raise _unauthorized("The token is malformed or badly signed.") from None
    nbf = claims.get("nbf")
    if nbf is not None and (
        isinstance(nbf, bool) or not isinstance(nbf, int | float) or nbf > time.time() + NBF_LEEWAY_SECONDS
    ):
        raise _unauthorized("The token is not valid yet.")
    user_id, device_id = claims["sub"], claims["did"]
    if not isinstance(user_id, str) or not ID_PATTERN.fullmatch(user_id):
        raise _unauthorized("The token's sub must be 1-64 characters of [A-Za-z0-9_.:-].")
    if not isinstance(device_id, str) or not ID_PATTERN.fullmatch(device_id):
        raise _unauthorized("The token's did must be 1-64 characters of [A-Za-z0-9_.:-].")
    tags = claims.get("tags", ())
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise _unauthorized("The token's tags must be a list of strings.")
    return UserIdentity(
        user_id=user_id,
        device_id=device_id,
        reg=_optional_int(claims, "reg"),
        orders=_optional_int(claims, "orders"),
        tags=tuple(tags),
    )


def mint_user_token(
    secret: str,
    user_id: str,
    device_id: str,
    *,
    ttl_seconds: int = 3600,
    reg: int | None = None,
    orders: int | None = None,
    tags: list[str] | None = None,
    now: int | None = None,
) -> str:
    issued = int(time.time()) if now is None else now
    claims: dict[str, Any] = {"sub": user_id, "did": device_id, "iat": issued, "exp": issued + ttl_seconds}
    if reg is not None:
        claims["reg"] = reg
    if orders is not None:
        claims["orders"] = orders
    if tags is not None:
        claims["tags"] = tags
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
