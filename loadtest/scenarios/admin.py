"""The operator's calls the set-up makes through the admin API (plain requests: they are not part of what is
measured), and the user tokens it mints up front."""

from __future__ import annotations

from typing import Any

import requests

from gateway.tokens import mint_user_token
from loadtest.scenarios.config import API_KEY, SECRET, TOKEN_TTL


class Admin:
    def __init__(self, host: str | None, timeout: float = 120.0) -> None:
        if not host:
            raise RuntimeError("the scenarios need --host (the gateway's URL)")
        if not API_KEY:
            raise RuntimeError(
                "set LOADTEST_API_KEY or CLAIMGATE_API_KEYS (name:key) to create the test's activities"
            )
        self.base = host.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["X-API-Key"] = API_KEY

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        reply = self.http.request(method, self.base + path, json=body, timeout=self.timeout)
        if reply.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
        return reply.json()

    def template(self, name: str, **terms: Any) -> str:
        return str(self.call("POST", "/v1/admin/templates", {"name": name, **terms})["id"])

    def activity(
        self, name: str, template_id: str, starts_at: int, ends_at: int, stock: int, **rules: Any
    ) -> str:
        body = {
            "name": name,
            "pack": [{"template_id": template_id, "count": 1}],
            "starts_at": starts_at,
            "ends_at": ends_at,
            "stock": stock,
            **rules,
        }
        return str(self.call("POST", "/v1/admin/activities", body)["id"])

    def codes(self, activity_id: str, count: int) -> list[str]:
        return list(self.call("POST", f"/v1/admin/activities/{activity_id}/codes", {"count": count})["codes"])


def user_headers(prefix: str, count: int, devices: int | None = None) -> list[dict[str, str]]:
    """``count`` users named ``prefix-i`` (over ``devices`` devices), each its Authorization header."""
    if not SECRET:
        raise RuntimeError("set CLAIMGATE_JWT_SECRET (the gateway's) to mint user tokens")
    return [
        {
            "Authorization": "Bearer "
            + mint_user_token(
                SECRET, f"{prefix}-{i}", f"{prefix}-dev-{i % (devices or count)}", ttl_seconds=TOKEN_TTL
            )
        }
        for i in range(count)
    ]
