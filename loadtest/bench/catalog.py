"""The activities a run claims from, created through the gateway's admin API (so each is in Postgres, its
stream registered for the worker, and mirrored into Valkey by the gateway itself)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

DAY = 86_400


@dataclass
class Activity:
    key: str  # the run's name for it
    id: str
    stock: int
    per_user_limit: int
    granted: int | None = None  # 201 answers counted by whoever claimed (None: not claimed yet)
    redis: bool = True  # claimed through the gateway (False: the naive baseline's, Postgres only)


class Admin:
    def __init__(self, url: str, api_key: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=30)
        self._template = ""

    def close(self) -> None:
        self.client.close()

    def _post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        reply = self.client.post(path, json=body)
        if reply.status_code != 201:
            raise RuntimeError(f"POST {path} answered {reply.status_code}: {reply.text}")
        data: dict[str, object] = reply.json()
        return data

    def template(self) -> str:
        if not self._template:
            body = {"name": "benchmark 5 off", "kind": "cash", "amount_off": 500, "valid_days": 7}
            self._template = str(self._post("/v1/admin/templates", body)["id"])
        return self._template

    def read(self, activity_id: str) -> int:
        """GET the activity (the gateway mirrors an unmirrored one into Redis on the way); the status code."""
        return self.client.get(f"/v1/admin/activities/{activity_id}").status_code

    def activity(self, key: str, *, stock: int, per_user_limit: int) -> Activity:
        now = int(time.time())
        body = {
            "name": f"benchmark {key}",
            "pack": [{"template_id": self.template(), "count": 1}],
            "starts_at": now - 60,
            "ends_at": now + DAY,
            "stock": stock,
            "per_user_limit": per_user_limit,
        }
        created = self._post("/v1/admin/activities", body)
        return Activity(key, str(created["id"]), stock, per_user_limit)
