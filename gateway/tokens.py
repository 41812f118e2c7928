"""User identity from a verified HS256 JWT; the CLI mints such tokens for development and load tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections import OrderedDict
from typing import Any

import jwt
import msgspec

from gateway import clock
from gateway.outcomes import DomainError, Outcome

ALGORITHM = "HS256"
NBF_LEEWAY_SECONDS = 30
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_BEARER = "bearer"
TOKEN_CACHE_ENTRIES = 65_536  # ~700 bytes each with its token (at most MAX_TOKEN_LENGTH): ~50 MB when full
# A token minted here is ~200 characters; every claim it may carry is bounded, so 2 KiB leaves ample room. The
# header may add only the scheme and white space around it.
MAX_TOKEN_LENGTH = 2048
MAX_AUTHORIZATION_LENGTH = MAX_TOKEN_LENGTH + 64
# An exp further out than this (year 2255) is read as this: the cache needs a float, and 10**400 has none.
LATEST_EXP = 9_000_000_000
LUA_EXACT = 2**53  # the scripts read reg and orders as Lua numbers (doubles): exact below this
MAX_TAGS = 32
TAG_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,64}")  # no control characters: the scripts split tags on \x1f


class UserIdentity(msgspec.Struct, frozen=True, gc=False):
    """Who a verified token names. Not tracked by the garbage collector (it holds only strings and numbers, so
    it can be in no cycle): ``VerifiedTokens`` keeps tens of thousands, which every full collection would walk."""

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
    if isinstance(value, bool) or not isinstance(value, int) or not -LUA_EXACT < value < LUA_EXACT:
        raise _unauthorized(f"The token's {name} must be an integer of at most 53 bits.")
    return int(value)


def verify_user_token(authorization: str | None, secret: str) -> UserIdentity:
    """Check the ``Authorization: Bearer`` header and return who is calling, or raise ``unauthorized``."""
    return _verified(authorization, secret)[0]


class VerifiedTokens:
    """Tokens already verified, with who they name and when they expire: a user's next request costs a dict
    lookup instead of an HMAC and a JSON decode (a third of a claim's CPU here). Keyed on the token itself, not
    the header, so one token however written (padding, the scheme's case) is one entry; only a token that passed
    :func:`verify_user_token` enters; an entry is dropped at its token's ``exp``; the least recently used goes
    first when ``max_entries`` is reached."""

    def __init__(self, secret: str, max_entries: int = TOKEN_CACHE_ENTRIES) -> None:
        self.secret = secret
        self.max_entries = max_entries
        # Ordered, so the least recently used goes in O(1): deleting a plain dict's first key leaves a hole that
        # every later next(iter(...)) walks past (a sixth of the sold-out path's CPU once the cache was full).
        self._known: OrderedDict[str, tuple[UserIdentity, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def identity(self, authorization: str | None) -> UserIdentity:
        token = bearer_token(authorization)
        known = self._known.get(token)
        if known is not None:
            if clock.now() < known[1]:
                self._known.move_to_end(token)
                return known[0]
            del self._known[token]
        identity, expires = _verified_token(token, self.secret)
        if len(self._known) >= self.max_entries:
            self._known.popitem(last=False)
        self._known[token] = (identity, expires)
        return identity


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (the scheme in any case, white space around
    the token ignored), or ``unauthorized``: no such header, another scheme, or a header or token too long to
    be one of ours."""
    if not authorization or len(authorization) > MAX_AUTHORIZATION_LENGTH:
        if authorization:
            raise _unauthorized("The Authorization header is too long.")
        raise _unauthorized("A bearer token is required.")
    scheme, _, rest = authorization.strip().partition(" ")
    token = rest.strip()
    if scheme.lower() != _BEARER or not token:
        raise _unauthorized("A bearer token is required.")
    if len(token) > MAX_TOKEN_LENGTH:
        raise _unauthorized("The token is too long.")
    return token


def _verified(authorization: str | None, secret: str) -> tuple[UserIdentity, float]:
    return _verified_token(bearer_token(authorization), secret)


def _verified_token(token: str, secret: str) -> tuple[UserIdentity, float]:
    claims = _plain_claims(token, secret)
    if claims is None:
        claims = _pyjwt_claims(token, secret)
    return _identity(claims)


_PLAIN_HEADERS: set[str] = (
    set()
)  # header segments PyJWT accepted that say exactly {"alg": "HS256", "typ": "JWT"}
_PLAIN_CLAIMS = frozenset({"sub", "did", "exp", "iat", "nbf", "reg", "orders", "tags"})


def _plain_claims(token: str, secret: str) -> dict[str, Any] | None:
    """The claims of a token that is plainly valid (a header seen before, the signature exactly as HS256 makes
    it, only the claims minted here, ``exp`` an integer in the future), checked without PyJWT, which costs ten
    times as much per token; ``None`` for anything else, which PyJWT then judges. This path accepts only what
    PyJWT accepts (``tests/unit/test_tokens_fast_path.py`` compares the two on valid and broken tokens)."""
    header, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    if header not in _PLAIN_HEADERS or not payload or not signature:
        return None
    mac = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(base64.urlsafe_b64encode(mac).rstrip(b"=").decode(), signature):
        return None
    try:
        claims = msgspec.json.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, msgspec.DecodeError):
        return None
    if not isinstance(claims, dict) or not claims.keys() <= _PLAIN_CLAIMS:
        return None
    exp, iat = claims.get("exp"), claims.get("iat", 0)
    if type(exp) is not int or type(iat) is not int or exp <= clock.now():
        return None
    if "sub" not in claims or "did" not in claims:
        return None
    return claims


def _pyjwt_claims(token: str, secret: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            # exp is strict; the contract's 30 s leeway is for nbf, which PyJWT's one leeway cannot say.
            options={"require": ["exp", "sub", "did"], "verify_nbf": False, "verify_iat": False},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired.") from None
    except jwt.PyJWTError:
        raise _unauthorized("The token is malformed or badly signed.") from None
    header = token.partition(".")[0]
    if header not in _PLAIN_HEADERS and jwt.get_unverified_header(token) == {"alg": ALGORITHM, "typ": "JWT"}:
        _PLAIN_HEADERS.add(header)
    return claims


def _identity(claims: dict[str, Any]) -> tuple[UserIdentity, float]:
    """Who the verified claims name; the contract's checks PyJWT does not make."""
    nbf = claims.get("nbf")
    if nbf is not None and (
        isinstance(nbf, bool) or not isinstance(nbf, int | float) or nbf > clock.now() + NBF_LEEWAY_SECONDS
    ):
        raise _unauthorized("The token is not valid yet.")
    user_id, device_id = claims["sub"], claims["did"]
    if not isinstance(user_id, str) or not ID_PATTERN.fullmatch(user_id):
        raise _unauthorized("The token's sub must be 1-64 characters of [A-Za-z0-9_.:-].")
    if not isinstance(device_id, str) or not ID_PATTERN.fullmatch(device_id):
        raise _unauthorized("The token's did must be 1-64 characters of [A-Za-z0-9_.:-].")
    tags = claims.get("tags", ())
    if (
        not isinstance(tags, list | tuple)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and TAG_PATTERN.fullmatch(t) for t in tags)
    ):
        raise _unauthorized(
            f"The token's tags must be a list of at most {MAX_TAGS} strings of 1-64 characters, none a control."
        )
    identity = UserIdentity(
        user_id=user_id,
        device_id=device_id,
        reg=_optional_int(claims, "reg"),
        orders=_optional_int(claims, "orders"),
        tags=tuple(tags),
    )
    return identity, _expiry(claims["exp"])


def _expiry(exp: object) -> float:
    """When a verified token's cache entry lapses: its ``exp`` (a number, or text PyJWT read as one), never
    later than ``LATEST_EXP``, which also stands for an ``exp`` too large for a float."""
    try:
        return min(float(exp), LATEST_EXP)  # type: ignore[arg-type]
    except OverflowError:
        return LATEST_EXP


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
    issued = int(clock.now()) if now is None else now
    claims: dict[str, Any] = {"sub": user_id, "did": device_id, "iat": issued, "exp": issued + ttl_seconds}
    if reg is not None:
        claims["reg"] = reg
    if orders is not None:
        claims["orders"] = orders
    if tags is not None:
        claims["tags"] = tags
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
