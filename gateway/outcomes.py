"""Domain outcomes: one enum shared by Lua replies, Python and HTTP, and the one table of HTTP statuses."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """Exactly the contract's error codes, plus the successes scripts reply with."""

    OK = "ok"
    REPLAY = "replay"
    PENDING = "pending"  # a keyed grant call that started before and did not finish
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    NOT_ELIGIBLE = "not_eligible"
    BLOCKED = "blocked"
    NOT_FOUND = "not_found"
    INVALID_CODE = "invalid_code"
    SOLD_OUT = "sold_out"
    LIMIT_REACHED = "limit_reached"
    NOT_STARTED = "not_started"
    ENDED = "ended"
    PAUSED = "paused"
    COUPON_UNAVAILABLE = "coupon_unavailable"
    NOT_APPLICABLE = "not_applicable"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    OVER_BUDGET = "over_budget"
    STATE_CONFLICT = "state_conflict"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"


SUCCESSES = frozenset({Outcome.OK, Outcome.REPLAY, Outcome.PENDING})

STATUS: dict[Outcome, int] = {
    Outcome.OK: 200,
    Outcome.REPLAY: 200,
    Outcome.PENDING: 200,
    Outcome.INVALID_REQUEST: 400,
    Outcome.UNAUTHORIZED: 401,
    Outcome.NOT_ELIGIBLE: 403,
    Outcome.BLOCKED: 403,
    Outcome.NOT_FOUND: 404,
    Outcome.INVALID_CODE: 404,
    Outcome.SOLD_OUT: 409,
    Outcome.LIMIT_REACHED: 409,
    Outcome.NOT_STARTED: 409,
    Outcome.ENDED: 409,
    Outcome.PAUSED: 409,
    Outcome.COUPON_UNAVAILABLE: 409,
    Outcome.NOT_APPLICABLE: 422,
    Outcome.IDEMPOTENCY_CONFLICT: 422,
    Outcome.OVER_BUDGET: 422,
    Outcome.STATE_CONFLICT: 409,
    Outcome.RATE_LIMITED: 429,
    Outcome.OVERLOADED: 503,
}

# invalid_request is 400, except for these transport-level refusals the contract names.
METHOD_NOT_ALLOWED = 405
PAYLOAD_TOO_LARGE = 413
UNSUPPORTED_MEDIA_TYPE = 415
INVALID_REQUEST_STATUSES = frozenset({400, METHOD_NOT_ALLOWED, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE})

MESSAGES: dict[Outcome, str] = {
    Outcome.INVALID_REQUEST: "The request is malformed.",
    Outcome.UNAUTHORIZED: "Missing or invalid credentials.",
    Outcome.NOT_ELIGIBLE: "You are not eligible for this activity.",
    Outcome.BLOCKED: "This account or device may not take part.",
    Outcome.NOT_FOUND: "Not found.",
    Outcome.INVALID_CODE: "That code is not valid.",
    Outcome.SOLD_OUT: "No stock left.",
    Outcome.LIMIT_REACHED: "The limit for this activity is used up.",
    Outcome.NOT_STARTED: "The activity has not started yet.",
    Outcome.ENDED: "The activity has ended.",
    Outcome.PAUSED: "The activity is paused.",
    Outcome.COUPON_UNAVAILABLE: "The coupon is not available for this.",
    Outcome.NOT_APPLICABLE: "The coupon does not apply to these items.",
    Outcome.IDEMPOTENCY_CONFLICT: "This Idempotency-Key was used with a different request.",
    Outcome.OVER_BUDGET: "This would exceed the activity's budget.",
    Outcome.STATE_CONFLICT: "The activity's state does not allow this change.",
    Outcome.RATE_LIMITED: "Too many failed attempts; try again later.",
    Outcome.OVERLOADED: "The service is busy; retry shortly.",
}


class DomainError(Exception):
    """A refusal in the contract's terms; rendered as ``{"error", "message"}`` by the one handler."""

    def __init__(
        self,
        outcome: Outcome,
        message: str | None = None,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        if outcome in SUCCESSES:
            raise ValueError(f"{outcome} is not a refusal")
        if status is not None and not (
            outcome is Outcome.INVALID_REQUEST and status in INVALID_REQUEST_STATUSES
        ):
            raise ValueError(f"{outcome} cannot answer {status}")
        self.outcome = outcome
        self.message = message or MESSAGES[outcome]
        self.status = status if status is not None else STATUS[outcome]
        self.retry_after = retry_after
        self.extra = extra or {}
        super().__init__(f"{outcome}: {self.message}")
