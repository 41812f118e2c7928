from __future__ import annotations

import base64
import json
import os
import time

import pytest

from gateway.ids import ID_LENGTH, new_id
from gateway.keys import KeySpace, partition_of_stream, slot_of, stable_bucket
from gateway.outcomes import DomainError, Outcome
from gateway.tokens import mint_user_token, verify_user_token

SECRET = "k" * 40


def test_buckets_are_stable_across_processes() -> None:
    # CRC32, not Python's salted hash(): these values hold on every machine and in every run.
    assert stable_bucket("alice", 64) == 7
    assert stable_bucket("user-12345", 64) == 14
    assert KeySpace(64, 64).wallet("alice").tag == "{w:7}"


def test_every_key_of_a_partition_shares_its_slot() -> None:
    space = KeySpace(64, 64)
    act = space.activity("01a2b3")
    keys = [
        act.config,
        act.user_counts,
        act.device_counts,
        act.allow_list,
        act.idempotency("u", "any key {}"),
        act.no_idempotency,
        act.seq,
        act.events,
    ]
    assert len({slot_of(k) for k in keys}) == 1
    wallet = space.wallet("bob")
    assert (
        len({slot_of(k) for k in (wallet.coupons, wallet.user_index("bob"), wallet.seq, wallet.events)}) == 1
    )
    assert partition_of_stream(act.events) == act.tag


def test_ids_sort_by_creation_time() -> None:
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    assert first < second
    made = [new_id() for _ in range(10_000)]  # many in each millisecond
    assert len(set(made)) == 10_000
    assert made == sorted(made)  # in the order they were made, ties on the millisecond included
    assert all(len(i) == ID_LENGTH for i in made)


def test_a_forked_process_never_repeats_its_parents_ids() -> None:
    new_id()  # the parent holds random bits it has not used yet
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, ",".join(new_id()[12:] for _ in range(600)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        theirs = set(pipe.read().split(","))
    os.waitpid(child, 0)
    ours = {new_id()[12:] for _ in range(600)}
    assert len(theirs) == 600 and len(ours) == 600
    assert not theirs & ours


def test_token_round_trip_with_facts() -> None:
    token = mint_user_token(SECRET, "u-1", "d:1", reg=100, orders=0, tags=["vip"])
    who = verify_user_token(f"Bearer {token}", SECRET)
    assert (who.user_id, who.device_id, who.reg, who.orders, who.tags) == ("u-1", "d:1", 100, 0, ("vip",))


def _unsigned(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic abc",
        "Bearer not-a-token",
        f"Bearer {mint_user_token('x' * 40, 'u', 'd')}",  # another secret
        f"Bearer {mint_user_token(SECRET, 'u', 'd', ttl_seconds=-100)}",  # expired
        f"Bearer {mint_user_token(SECRET, 'a b', 'd')}",  # sub outside the alphabet
        f"Bearer {mint_user_token(SECRET, 'u' * 65, 'd')}",
        f"Bearer {mint_user_token(SECRET, 'u', '')}",
        "Bearer " + _unsigned({"sub": "u", "did": "d", "exp": int(time.time()) + 60}),
    ],
)
def test_anything_but_a_valid_token_is_unauthorized(header: str | None) -> None:
    with pytest.raises(DomainError) as refused:
        verify_user_token(header, SECRET)
    assert refused.value.outcome is Outcome.UNAUTHORIZED
    assert refused.value.status == 401


def test_exp_has_no_leeway_but_nbf_has_thirty_seconds() -> None:
    now = int(time.time())
    just_expired = mint_user_token(SECRET, "u", "d", now=now - 3600, ttl_seconds=3600 - 5)
    with pytest.raises(DomainError):
        verify_user_token(f"Bearer {just_expired}", SECRET)
    import jwt

    soon = jwt.encode({"sub": "u", "did": "d", "exp": now + 60, "nbf": now + 20}, SECRET, algorithm="HS256")
    assert verify_user_token(f"Bearer {soon}", SECRET).user_id == "u"
    later = jwt.encode(
        {"sub": "u", "did": "d", "exp": now + 600, "nbf": now + 120}, SECRET, algorithm="HS256"
    )
    with pytest.raises(DomainError):
        verify_user_token(f"Bearer {later}", SECRET)
