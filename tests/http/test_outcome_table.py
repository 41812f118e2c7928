"""Every outcome renders as the contract says, and Outcome/STATUS match the contract's table exactly."""

from __future__ import annotations

import msgspec
import pytest

from gateway.http.errors import render
from gateway.outcomes import (
    INVALID_REQUEST_STATUSES,
    MESSAGES,
    STATUS,
    SUCCESSES,
    DomainError,
    Outcome,
)
from gateway.scripts.registry import load_scripts

# The contract's refusal table (docs/product.md, "Refusals"), copied: code -> status.
CONTRACT: dict[str, int] = {
    "invalid_request": 400,
    "unauthorized": 401,
    "not_eligible": 403,
    "blocked": 403,
    "not_found": 404,
    "invalid_code": 404,
    "sold_out": 409,
    "limit_reached": 409,
    "not_started": 409,
    "ended": 409,
    "paused": 409,
    "coupon_unavailable": 409,
    "not_applicable": 422,
    "idempotency_conflict": 422,
    "over_budget": 422,
    "state_conflict": 409,
    "rate_limited": 429,
    "overloaded": 503,
}
# invalid_request's other statuses: wrong method, body over the limit, not JSON.
CONTRACT_INVALID_REQUEST_STATUSES = {400, 405, 413, 415}

REFUSALS = [outcome for outcome in Outcome if outcome not in SUCCESSES]


def test_the_contract_copy_has_its_18_codes() -> None:
    assert len(CONTRACT) == 18


def test_refusal_codes_are_exactly_the_contract() -> None:
    assert {outcome.value for outcome in REFUSALS} == set(CONTRACT)
    assert {outcome.value for outcome in SUCCESSES} == {
        "ok",
        "replay",
        "pending",
    }  # script replies, not refusals


def test_statuses_are_exactly_the_contract() -> None:
    assert {outcome.value: STATUS[outcome] for outcome in REFUSALS} == CONTRACT
    assert set(STATUS) == set(Outcome)
    assert set(INVALID_REQUEST_STATUSES) == CONTRACT_INVALID_REQUEST_STATUSES


@pytest.mark.parametrize("outcome", REFUSALS, ids=[outcome.value for outcome in REFUSALS])
def test_every_refusal_renders(outcome: Outcome) -> None:
    response = render(DomainError(outcome))
    assert response.status_code == STATUS[outcome] == CONTRACT[outcome.value]
    assert response.media_type == "application/json"
    body = msgspec.json.decode(response.content)
    assert set(body) == {"error", "message"}
    assert body["error"] == outcome.value
    assert isinstance(body["message"], str) and body["message"].strip()
    assert body["message"] == MESSAGES[outcome]
    assert not response.headers  # no Retry-After unless asked for


@pytest.mark.parametrize("outcome", REFUSALS, ids=[outcome.value for outcome in REFUSALS])
def test_a_message_and_extra_fields_render(outcome: Outcome) -> None:
    response = render(DomainError(outcome, "Custom words.", extra={"field": "x"}))
    assert msgspec.json.decode(response.content) == {
        "error": outcome.value,
        "message": "Custom words.",
        "field": "x",
    }


@pytest.mark.parametrize("outcome", [Outcome.OVERLOADED, Outcome.RATE_LIMITED])
def test_retry_after_is_a_header_in_seconds(outcome: Outcome) -> None:
    response = render(DomainError(outcome, retry_after=3))
    assert response.headers == {"Retry-After": "3"}
    assert response.status_code == CONTRACT[outcome.value]


@pytest.mark.parametrize("status", sorted(CONTRACT_INVALID_REQUEST_STATUSES))
def test_invalid_request_takes_its_transport_statuses(status: int) -> None:
    response = render(DomainError(Outcome.INVALID_REQUEST, status=status))
    assert response.status_code == status
    assert msgspec.json.decode(response.content)["error"] == "invalid_request"


@pytest.mark.parametrize(
    "outcome",
    [o for o in REFUSALS if o is not Outcome.INVALID_REQUEST],
    ids=[o.value for o in REFUSALS if o is not Outcome.INVALID_REQUEST],
)
def test_other_refusals_cannot_change_their_status(outcome: Outcome) -> None:
    with pytest.raises(ValueError):
        DomainError(outcome, status=500)
    with pytest.raises(ValueError):
        DomainError(outcome, status=405)


def test_invalid_request_cannot_answer_a_status_outside_the_contract() -> None:
    for status in (200, 401, 404, 500, 503):
        with pytest.raises(ValueError):
            DomainError(Outcome.INVALID_REQUEST, status=status)


@pytest.mark.parametrize("outcome", sorted(SUCCESSES))
def test_successes_are_not_refusals(outcome: Outcome) -> None:
    with pytest.raises(ValueError):
        DomainError(outcome)


def test_every_refusal_has_a_message() -> None:
    assert set(MESSAGES) == set(REFUSALS)
    assert all(message.strip() for message in MESSAGES.values())


def test_every_script_reply_is_an_outcome() -> None:
    for script in load_scripts().values():
        assert script.replies <= {outcome.value for outcome in Outcome}, script.name


def test_the_claim_script_declares_every_claim_outcome() -> None:
    assert load_scripts()["claim"].replies == {
        "ok",
        "replay",
        "idempotency_conflict",
        "blocked",
        "not_found",
        "ended",
        "paused",
        "not_started",
        "sold_out",
        "not_eligible",
        "limit_reached",
    }
