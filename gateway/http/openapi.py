"""The OpenAPI document at ``/schema/openapi.json``: litestar's routes, completed with what the handlers
declare (``opt=documented(...)``): request bodies, success bodies and refusals, as msgspec's JSON schemas.

Handlers decode raw bodies with msgspec themselves (for the contract's refusals), so litestar cannot infer
these; declaring them next to each route keeps one place for both.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.routes import ASGIRoute, HTTPRoute

from gateway.http.errors import no_such_route, render
from gateway.outcomes import (
    MESSAGES,
    METHOD_NOT_ALLOWED,
    PAYLOAD_TOO_LARGE,
    STATUS,
    SUCCESSES,
    UNSUPPORTED_MEDIA_TYPE,
    Outcome,
)
from gateway.tokens import ID_PATTERN

COMPONENTS = "#/components/schemas/{name}"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "enum": [o.value for o in Outcome if o not in SUCCESSES]},
        "message": {"type": "string"},
        "field": {"type": "string", "description": "the field an invalid_request names"},
    },
}


# The credentials (product.md, "Identity"): a route's ``callers`` name which of them it takes, any one enough.
USER_TOKEN = "UserToken"
SERVICE_KEY = "ServiceKey"
OPERATOR_KEY = "OperatorKey"
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    USER_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A user's token, HS256: sub (user id), did (device id) and exp required; iat, nbf, and "
        "the facts eligibility reads (reg, orders, tags) optional",
    },
    SERVICE_KEY: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Service-Key",
        "description": "The order service: acts for the user it names in user_id (body, or query on a read)",
    },
    OPERATOR_KEY: {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An operator's key; the operator's name is recorded with every change",
    },
}
USER = (USER_TOKEN,)
USER_OR_SERVICE = (USER_TOKEN, SERVICE_KEY)
OPERATOR = (OPERATOR_KEY,)
NO_CREDENTIAL: tuple[str, ...] = ()


@dataclass(frozen=True)
class Query:
    """A query parameter a route takes: the route refuses any other (``bodies.only_query``)."""

    name: str
    description: str
    schema: dict[str, Any]

    def parameter(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": "query",
            "required": False,
            "description": self.description,
            "schema": self.schema,
        }


USER_ID = Query(
    "user_id",
    "With X-Service-Key, required: the user the order service acts for. A user token must leave it out.",
    {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"},
)

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1-64 printable ASCII characters: a retry with the same key and body gets the first answer "
    "and takes nothing more (kept at least 24 hours); another body is idempotency_conflict",
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
}


@dataclass(frozen=True)
class Contract:
    description: str = ""  # one sentence: what the route does
    body: type | None = None
    body_required: bool = True
    answer: Any = None
    csv: bool = False  # the answer also comes as CSV under Accept: text/csv
    refusals: tuple[Outcome, ...] = ()
    callers: tuple[str, ...] = NO_CREDENTIAL  # security schemes, any one of them enough
    query: tuple[Query, ...] = ()  # every query parameter the route takes
    scripts: bool = False  # the route runs scripts: overloaded (503) is possible
    idempotency: bool = False  # takes an optional Idempotency-Key header
    extra_statuses: dict[int, str] = field(default_factory=dict)
    # A raw ASGI route (litestar leaves it out of the document) declares what litestar would have read off it.
    path: str = ""
    method: str = ""
    status_code: int = 200
    summary: str = ""

    @property
    def query_names(self) -> frozenset[str]:
        return frozenset(q.name for q in self.query)

    def refusal_statuses(self) -> dict[int, list[str]]:
        outcomes = {Outcome.INVALID_REQUEST, Outcome.NOT_FOUND, *self.refusals}
        if self.callers:
            outcomes.add(Outcome.UNAUTHORIZED)
        if self.scripts:
            outcomes.add(Outcome.OVERLOADED)
        statuses: dict[int, list[str]] = {}
        for outcome in sorted(outcomes, key=lambda o: (STATUS[o], o.value)):
            statuses.setdefault(STATUS[outcome], []).append(outcome.value)
        statuses[METHOD_NOT_ALLOWED] = ["invalid_request (method not allowed)"]
        if self.body is not None:
            statuses[PAYLOAD_TOO_LARGE] = ["invalid_request (body too large)"]
            statuses[UNSUPPORTED_MEDIA_TYPE] = ["invalid_request (not JSON)"]
        return statuses


def documented(**contract: Any) -> dict[str, Any]:
    """``opt`` for a route handler: what the OpenAPI document says of its body, answer and refusals."""
    return {"contract": Contract(**contract)}


def contracts(app: Litestar) -> Iterable[tuple[str, str, int, Contract]]:
    for route in app.routes:
        if isinstance(route, ASGIRoute):
            contract = route.route_handler.opt.get("contract")
            if isinstance(contract, Contract) and contract.method:
                yield contract.path, contract.method, contract.status_code, contract
            continue
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            contract = handler.opt.get("contract")
            if isinstance(contract, Contract):
                for method in handler.http_methods:
                    yield route.path_format, method.lower(), handler.status_code, contract


def _ref(kind: Any) -> dict[str, Any]:
    schema, _ = msgspec.json.schema_components([kind], ref_template=COMPONENTS)
    return dict(schema[0])


def complete(app: Litestar, document: dict[str, Any]) -> dict[str, Any]:
    declared = list(contracts(app))
    kinds = [k for _, _, _, c in declared for k in (c.body, c.answer) if k is not None]
    _, components = msgspec.json.schema_components(kinds, ref_template=COMPONENTS)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    schemas["Error"] = ERROR_SCHEMA
    document["components"]["securitySchemes"] = SECURITY_SCHEMES
    error = {"application/json": {"schema": {"$ref": COMPONENTS.format(name="Error")}}}
    for path, method, status, contract in declared:
        if contract.method:
            document["paths"].setdefault(path, {})[method] = _raw_operation(path, contract)
        operation = document["paths"][path][method]
        operation["description"] = contract.description
        operation["security"] = [{scheme: []} for scheme in contract.callers]
        responses = operation.setdefault("responses", {})
        parameters = operation.setdefault("parameters", [])
        parameters.extend(q.parameter() for q in contract.query)
        if contract.idempotency:
            parameters.append(IDEMPOTENCY_KEY)
        if contract.body is not None:
            operation["requestBody"] = {
                "required": contract.body_required,
                "content": {"application/json": {"schema": _ref(contract.body)}},
            }
        if contract.answer is not None:
            success = responses.setdefault(str(status), {"description": "success"})
            success["content"] = {"application/json": {"schema": _ref(contract.answer)}}
            if contract.csv:
                success["content"]["text/csv"] = {"schema": {"type": "string"}}
        for code, outcomes in contract.refusal_statuses().items():
            described = "; ".join(
                f"{o}: {MESSAGES[Outcome(o)]}" if o in Outcome._value2member_map_ else o for o in outcomes
            )
            responses[str(code)] = {"description": described, "content": error}
    return document


def _raw_operation(path: str, contract: Contract) -> dict[str, Any]:
    """The operation litestar would have written for a raw ASGI route: its summary, id and path parameters."""
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    return {
        "summary": contract.summary,
        "description": contract.description,
        "operationId": "".join(part.title().replace("_", "") for part in path.split("/") if part.strip("{}"))
        + contract.summary.replace(" ", ""),
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names
        ],
        "responses": {},
    }


def _contract_refusal(response: Response[Any]) -> Response[Any]:
    """Litestar answers a path under the schema's that serves nothing with an HTML page: the contract's 404."""
    return render(no_such_route()) if response.status_code == 404 else response


def schema_router(path: str) -> Router:
    """The router litestar serves the document from (``OpenAPIConfig.openapi_router``)."""
    return Router(path, route_handlers=[], include_in_schema=False, after_request=_contract_refusal)


class ContractDocument(JsonRenderPlugin):
    """Serves the completed document as JSON (no HTML viewers: they load scripts from a CDN)."""

    def __init__(self) -> None:
        super().__init__(path="/openapi.json")
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = self.render_json(request, complete(request.app, copy.deepcopy(openapi_schema)))
        return self._rendered
