from __future__ import annotations

import pytest

from gateway.catalog.campaign import ActivityIn, TemplateIn
from gateway.http.bodies import decode
from gateway.http.claim_routes import ClaimBody
from gateway.outcomes import DomainError, Outcome


@pytest.mark.parametrize(
    ("raw", "type_", "field"),
    [
        (b'{"channel": "live\\u0000"}', ClaimBody, "channel"),
        (b'{"channel": "a\\nb"}', ClaimBody, "channel"),
        (b'{"name": "x\\u0000", "kind": "cash", "amount_off": 1, "valid_days": 1}', TemplateIn, "name"),
        (
            b'{"name": "x", "kind": "cash", "amount_off": 1, "valid_days": 1, "scope": ["a\\u0007"]}',
            TemplateIn,
            "scope[0]",
        ),
        (
            b'{"name": "x", "kind": "cash", "amount_off": 1, "valid_days": 1, "colour": "red"}',
            TemplateIn,
            "colour",
        ),
        (
            b'{"name": "a", "pack": [{"template_id": "t", "count": 1}], "starts_at": 1, "ends_at": 2, "stock": 1,'
            b' "per_user_limit": 1, "eligibility": {"tags": ["ok"], "extra": 1}}',
            ActivityIn,
            "eligibility.extra",
        ),
        (b'{"kind": "cash"}', TemplateIn, "name"),
    ],
)
def test_refusals_name_the_field_and_control_characters_are_refused(
    raw: bytes, type_: type, field: str
) -> None:
    with pytest.raises(DomainError) as refused:
        decode(raw, type_, "application/json")
    assert refused.value.outcome is Outcome.INVALID_REQUEST
    assert refused.value.extra["field"] == field


def test_not_json_is_415_and_malformed_json_is_400() -> None:
    with pytest.raises(DomainError) as refused:
        decode(b"channel=x", ClaimBody, "application/x-www-form-urlencoded")
    assert refused.value.status == 415
    with pytest.raises(DomainError) as refused:
        decode(b"{", ClaimBody, "application/json")
    assert refused.value.status == 400
