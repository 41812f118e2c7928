"""Answers judged and counted: each request's expected statuses (and error codes), and the count of every
answer by request name, status and error code (workers send theirs to the master with each report)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping

from locust.contrib.fasthttp import ResponseContextManager

ANY = None  # an expected status whatever its body
Expected = Mapping[int, frozenset[str] | None]
CLAIMED: Expected = {201: ANY, 409: frozenset({"sold_out", "limit_reached"})}
OK: Expected = {200: ANY}
CREATED: Expected = {201: ANY}
WRONG_CODE: Expected = {404: frozenset({"invalid_code"})}

OUTCOMES: Counter[str] = Counter()


def error_code(reply: ResponseContextManager) -> str:
    try:
        return str(json.loads(reply.content or b"{}").get("error", ""))
    except (ValueError, AttributeError):
        return "?"


def settle(reply: ResponseContextManager, name: str, expected: Expected) -> bool:
    """Count the answer and mark it a success when ``expected`` allows its status (and error code)."""
    status = reply.status_code
    error = error_code(reply) if status >= 400 else ""
    OUTCOMES[f"{name} {status} {error}".rstrip()] += 1
    if status in expected:
        allowed = expected[status]
        if allowed is None or error in allowed:
            reply.success()
            return True
    reply.failure(f"unexpected {status} {(reply.text or str(reply.error or ''))[:200]}")
    return False
