"""Property-based fuzzing of every route from the OpenAPI document (schemathesis, hypothesis underneath)
against a live gateway process on loopback: requests that fit the document and requests that do not, with
valid credentials (most of them), none, or what the fuzzer made up. Whatever the input, no answer is a 5xx
other than 503, and every refusal is the contract's ``{"error", "message"}`` with a code of the contract.

Sizes are capped so the run fits in CI: a few dozen examples per route, code batches and grant lists kept
small (the fuzzer would otherwise ask for 100,000 codes), the activity and order ids in paths often real
ones so the fuzzer reaches past ``not_found``."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from gateway.devstack.pidfile import PidFile
from gateway.devstack.valkey import ValkeyServer
from gateway.http.app import create_app
from gateway.http.openapi import contracts
from gateway.outcomes import SUCCESSES, Outcome
from gateway.settings import Settings, load_settings
from tests.conftest import API_KEY, SERVICE_KEY, empty_stores, settings_env
from tests.faults.support import Gateway, Processes, process_env
from tests.helpers import token

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))  # per route; more for a longer hunt
MAX_CODES = 20  # a code batch's count
MAX_USERS = 5  # a grant's or a blocklist change's list
FUZZ_USER = "fuzz-user"
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-service-key")
ERROR_CODES = frozenset(o.value for o in Outcome if o not in SUCCESSES)


def _routes() -> list[tuple[str, str]]:
    """Every documented (method, path), read off the app's routes without starting it."""
    app = create_app(load_settings(settings_env("redis://127.0.0.1:1", "postgresql://127.0.0.1:1/unused")))
    return sorted(
        {(method.upper(), path) for path, method, _, _ in contracts(app)}, key=lambda r: (r[1], r[0])
    )


ROUTES = _routes()


@dataclass
class Target:
    gateway: Gateway
    schema: BaseSchema
    activities: list[str]  # real ids: one open for claims, one the fuzzer may pause, end and restock
    coupons: list[str]  # the fuzz user's
    orders: list[str]


async def _seed(url: str) -> tuple[list[str], list[str], list[str]]:
    """A template, two activities, three coupons of the fuzz user and an order locking one of them."""
    admin = {"X-API-Key": API_KEY}
    user = {"Authorization": f"Bearer {token(FUZZ_USER)}"}
    now = int(time.time())
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        template = await http.post(
            "/v1/admin/templates",
            headers=admin,
            json={"name": "5 off", "kind": "cash", "amount_off": 500, "valid_days": 7},
        )
        assert template.status_code == 201, template.text
        activities = []
        for name in ("fuzz-open", "fuzz-changed"):
            created = await http.post(
                "/v1/admin/activities",
                headers=admin,
                json={
                    "name": name,
                    "pack": [{"template_id": template.json()["id"], "count": 1}],
                    "starts_at": now - 10,
                    "ends_at": now + 3600,
                    "stock": 1000,
                    "per_user_limit": 100,
                },
            )
            assert created.status_code == 201, created.text
            activities.append(created.json()["id"])
        coupons = []
        for _ in range(3):
            claimed = await http.post(f"/v1/activities/{activities[0]}/claim", headers=user)
            assert claimed.status_code == 201, claimed.text
            coupons.append(claimed.json()["coupons"][0]["coupon_id"])
        lines = [{"sku": "s1", "category": "food", "amount": 5000}]
        locked = await http.post(
            "/v1/checkout/lock",
            headers=user,
            json={"order_id": "fuzz-order", "coupon_id": coupons[0], "lines": lines},
        )
        assert locked.status_code == 200, locked.text
    return activities, coupons, ["fuzz-order"]


@pytest.fixture(scope="module")
async def target(
    tmp_path_factory: pytest.TempPathFactory,
    pidfile: PidFile,
    valkey: ValkeyServer,
    migrated: str,
    settings: Settings,
) -> AsyncIterator[Target]:
    await empty_stores(settings)
    procs = Processes(Path(tmp_path_factory.mktemp("fuzz")), pidfile)
    try:
        gateway = await procs.gateway(process_env(valkey.url, migrated))
        activities, coupons, orders = await _seed(gateway.url)
        schema = schemathesis.openapi.from_url(f"{gateway.url}/schema/openapi.json")
        yield Target(gateway, schema, activities, coupons, orders)
        log = gateway.proc.text()
        assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]
    finally:
        procs.stop_all()


def _credentials(operation: APIOperation, draw: Callable[[st.SearchStrategy[Any]], Any]) -> dict[str, str]:
    """Valid headers for one of the credentials the route documents."""
    schemes = [name for requirement in operation.definition.raw.get("security", []) for name in requirement]
    if not schemes:
        return {}
    scheme = draw(st.sampled_from(schemes))
    if scheme == "OperatorKey":
        return {"X-API-Key": API_KEY}
    if scheme == "ServiceKey":
        return {"X-Service-Key": SERVICE_KEY}
    return {"Authorization": f"Bearer {token(FUZZ_USER)}"}


def _prepare(case: Case, target: Target, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
    """Credentials (valid on most calls, else none or the fuzzer's own), real ids in paths now and then, and
    sizes capped."""
    headers = {k: v for k, v in (case.headers or {}).items()}
    mode = draw(st.sampled_from(["valid", "valid", "valid", "none", "generated"]))
    if mode != "generated":
        headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
    if mode == "valid":
        headers.update(_credentials(case.operation, draw))
    case.headers = headers
    parameters = case.path_parameters or {}
    if "activity_id" in parameters and draw(st.booleans()):
        parameters["activity_id"] = draw(st.sampled_from(target.activities))
    if "order_id" in parameters and draw(st.booleans()):
        parameters["order_id"] = draw(st.sampled_from(target.orders))
    body = case.body
    if isinstance(body, dict):
        count = body.get("count")
        if type(count) is int and count > MAX_CODES:
            body["count"] = count % MAX_CODES + 1
        for name in ("user_ids", "users", "devices"):
            if isinstance(body.get(name), list):
                body[name] = body[name][:MAX_USERS]
        if "coupon_id" in body and draw(st.booleans()):
            body["coupon_id"] = draw(st.sampled_from(target.coupons))
        if "order_id" in body and draw(st.booleans()):
            body["order_id"] = draw(st.sampled_from(target.orders))
        if draw(st.integers(0, 9)) == 0:
            case.body = _bad_utf8(body, draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])))


def _bad_utf8(body: dict[str, Any], bad: bytes) -> bytes:
    """The body as JSON with bytes that are not UTF-8 inside a string: a value's if there is one, else a key's
    (schemathesis's own malformed bodies are bad from their first byte)."""
    raw = msgspec.json.encode(body)
    at = raw.find(b'":"')
    at = at + 3 if at >= 0 else (2 if raw.startswith(b'{"') else -1)
    return raw[:at] + bad + raw[at:] if at >= 0 else raw


def _check(case: Case, response: Response) -> None:
    """No 5xx but 503; every refusal the contract's shape with one of its codes."""
    status = response.status_code
    where = (
        f"{case.method} {case.formatted_path}: {status} {response.content[:500]!r}\n{case.as_curl_command()}"
    )
    assert status < 500 or status == 503, where
    if status < 400 or (status == 503 and case.path == "/readyz"):  # /readyz's 503 is its report
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), where
    body = response.json()
    assert isinstance(body, dict), where
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), where
    assert body["error"] in ERROR_CODES, where
    if status == 503:
        assert body["error"] == "overloaded", where


def _strategy(operation: APIOperation) -> st.SearchStrategy[Case]:
    modes = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE)]
    with contextlib.suppress(Exception):  # an operation without inputs has nothing to get wrong
        modes.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    return st.one_of(modes)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_route_answers_a_server_error(target: Target, method: str, path: str) -> None:
    operation = target.schema[path][method]

    @given(case=_strategy(operation), data=st.data())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate),  # no shrinking: the failure's curl command is enough
    )
    def fuzz(case: Case, data: st.DataObject) -> None:
        _prepare(case, target, data.draw)
        response = case.call(base_url=target.gateway.url, timeout=10)
        _check(case, response)
        # and the answer is one the document describes: a documented status, a body of its schema
        case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])

    fuzz()


def test_every_documented_route_is_fuzzed(target: Target) -> None:
    paths = target.schema.raw_schema["paths"]
    assert set(ROUTES) == {(method.upper(), path) for path, ops in paths.items() for method in ops}
