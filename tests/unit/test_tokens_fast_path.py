"""The token fast path accepts exactly what PyJWT accepts: every verdict of ``verify_user_token`` (fast path, then
PyJWT) equals PyJWT's alone, on valid tokens and on broken ones; and the verified-token cache forgets a token at
its expiry."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import tokens
from gateway.outcomes import DomainError, Outcome
from gateway.tokens import UserIdentity, VerifiedTokens, mint_user_token, verify_user_token

SECRET = "s" * 40


def pyjwt_only(token: str) -> UserIdentity | str:
    try:
        return tokens._identity(tokens._pyjwt_claims(token, SECRET))[0]
    except DomainError as refused:
        return f"refused: {refused.outcome}"


def either_path(token: str) -> UserIdentity | str:
    try:
        return verify_user_token(f"Bearer {token}", SECRET)
    except DomainError as refused:
        return f"refused: {refused.outcome}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: dict[str, object], claims: dict[str, object], secret: str = SECRET) -> str:
    import hashlib
    import hmac

    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


@pytest.fixture(autouse=True)
def header_seen() -> None:
    """The fast path trusts a header only after PyJWT accepted it once."""
    verify_user_token(f"Bearer {mint_user_token(SECRET, 'first', 'd')}", SECRET)


def test_a_plain_token_takes_the_fast_path_and_gets_pyjwts_answer() -> None:
    token = mint_user_token(SECRET, "alice", "phone", reg=5, orders=2, tags=["vip"])
    assert tokens._plain_claims(token, SECRET) is not None
    assert either_path(token) == pyjwt_only(token) == UserIdentity("alice", "phone", 5, 2, ("vip",))


NOW = int(time.time())
HS256: dict[str, object] = {"alg": "HS256", "typ": "JWT"}
BROKEN = {
    "expired": (HS256, {"sub": "u", "did": "d", "exp": NOW - 5}),
    "exp as text": (HS256, {"sub": "u", "did": "d", "exp": str(NOW + 3600)}),
    "exp as float": (HS256, {"sub": "u", "did": "d", "exp": NOW + 3600.5}),
    "exp missing": (HS256, {"sub": "u", "did": "d"}),
    "sub missing": (HS256, {"did": "d", "exp": NOW + 3600}),
    "sub a number": (HS256, {"sub": 7, "did": "d", "exp": NOW + 3600}),
    "an audience": (HS256, {"sub": "u", "did": "d", "exp": NOW + 3600, "aud": "x"}),
    "a jti number": (HS256, {"sub": "u", "did": "d", "exp": NOW + 3600, "jti": 5}),
    "iat as text": (HS256, {"sub": "u", "did": "d", "exp": NOW + 3600, "iat": "x"}),
    "nbf far ahead": (HS256, {"sub": "u", "did": "d", "exp": NOW + 600, "nbf": NOW + 300}),
    "tags not a list": (HS256, {"sub": "u", "did": "d", "exp": NOW + 3600, "tags": "vip"}),
    "reg a bool": (HS256, {"sub": "u", "did": "d", "exp": NOW + 3600, "reg": True}),
    "HS512 header": ({"alg": "HS512", "typ": "JWT"}, {"sub": "u", "did": "d", "exp": NOW + 3600}),
    "alg none": ({"alg": "none", "typ": "JWT"}, {"sub": "u", "did": "d", "exp": NOW + 3600}),
    "crit header": (
        {"alg": "HS256", "typ": "JWT", "crit": ["x"]},
        {"sub": "u", "did": "d", "exp": NOW + 3600},
    ),
    "claims a list": (HS256, ["sub", "u"]),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_unusual_tokens_get_pyjwts_verdict(name: str) -> None:
    header, claims = BROKEN[name]
    token = signed(header, claims)  # type: ignore[arg-type]
    assert either_path(token) == pyjwt_only(token)


def test_wrong_secret_padding_and_truncation_are_refused_as_pyjwt_refuses() -> None:
    token = mint_user_token(SECRET, "alice", "phone")
    head, body, sig = token.split(".")
    padded = f"{head}.{body}.{sig}="  # PyJWT reads a padded signature as the same one
    assert either_path(padded) == pyjwt_only(padded) == UserIdentity("alice", "phone")
    for variant in (
        signed(HS256, {"sub": "u", "did": "d", "exp": NOW + 3600}, secret="t" * 40),
        f"{head}.{body}.{sig[:-1]}",
        f"{head}.{body}",
        f"{head}..{sig}",
        f"{head}.{body}.{sig}.x",
        f"{head}.{body}x.{sig}",
    ):
        assert either_path(variant) == pyjwt_only(variant), variant
        assert isinstance(either_path(variant), str), variant


@settings(max_examples=400, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=10_000),
    replacement=st.sampled_from(list("AZaz09-_.=+/ ")),
)
def test_any_one_character_changed_gets_pyjwts_verdict(position: int, replacement: str) -> None:
    token = mint_user_token(SECRET, "alice", "phone", tags=["a"])
    at = position % len(token)
    changed = token[:at] + replacement + token[at + 1 :]
    assert either_path(changed) == pyjwt_only(changed)


def test_the_cache_answers_a_known_token_and_forgets_it_at_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = VerifiedTokens(SECRET, max_entries=2)
    header = f"Bearer {mint_user_token(SECRET, 'alice', 'phone', ttl_seconds=60)}"
    assert cache.identity(header).user_id == "alice"
    calls: list[str] = []

    def refuse(*_: object) -> tuple[UserIdentity, float]:
        calls.append("verified")
        raise DomainError(Outcome.UNAUTHORIZED, "The token has expired.")

    monkeypatch.setattr(tokens, "_verified_token", refuse)
    assert cache.identity(header).user_id == "alice" and calls == []  # answered from the cache
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(DomainError):
        cache.identity(header)  # past exp: verified again, and refused
    assert calls == ["verified"]


def test_the_cache_keeps_at_most_max_entries() -> None:
    cache = VerifiedTokens(SECRET, max_entries=2)
    for user in ("a", "b", "c"):
        cache.identity(f"Bearer {mint_user_token(SECRET, user, 'd')}")
    assert len(cache._known) == 2
    assert [identity.user_id for identity, _ in cache._known.values()] == ["b", "c"]


def test_pyjwt_still_mints_what_the_fast_path_reads() -> None:
    token = jwt.encode({"sub": "u", "did": "d", "exp": NOW + 3600}, SECRET, algorithm="HS256")
    assert tokens._plain_claims(token, SECRET) == {"sub": "u", "did": "d", "exp": NOW + 3600}


def signed_raw(payload: bytes) -> str:
    """A token signed with ``SECRET`` whose payload is ``payload`` byte for byte (numbers no float can hold)."""
    import hashlib
    import hmac

    head, body = b64(b'{"alg":"HS256","typ":"JWT"}'), b64(payload)
    mac = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def test_an_exp_beyond_any_float_reads_as_far_future() -> None:
    cache = VerifiedTokens(SECRET)
    token = signed_raw(b'{"sub":"u","did":"d","exp":1' + b"0" * 400 + b"}")
    assert cache.identity(f"Bearer {token}").user_id == "u"
    assert cache._known[token][1] == tokens.LATEST_EXP


@pytest.mark.parametrize(
    "extra",
    [
        b',"reg":1' + b"0" * 400,
        b',"orders":-1' + b"0" * 30,
        b',"tags":["a\\u001fb"]',
        b',"tags":["' + b'x", "' * 40 + b'y"]',
        b',"tags":[""]',
    ],
    ids=["reg too large", "orders too large", "tag with a control", "too many tags", "empty tag"],
)
def test_facts_the_scripts_cannot_read_exactly_are_refused(extra: bytes) -> None:
    token = signed_raw(b'{"sub":"u","did":"d","exp":%d%s}' % (int(time.time()) + 60, extra))
    with pytest.raises(DomainError) as refused:
        verify_user_token(f"Bearer {token}", SECRET)
    assert refused.value.outcome is Outcome.UNAUTHORIZED


@pytest.mark.parametrize(
    "header",
    [
        "Bearer " + "a" * (tokens.MAX_TOKEN_LENGTH + 1),
        "Bearer " + " " * tokens.MAX_AUTHORIZATION_LENGTH + "a.b.c",
    ],
    ids=["token too long", "header too long"],
)
def test_too_long_to_be_ours_is_refused_before_any_work(header: str) -> None:
    with pytest.raises(DomainError) as refused:
        VerifiedTokens(SECRET).identity(header)
    assert refused.value.outcome is Outcome.UNAUTHORIZED and "too long" in refused.value.message
