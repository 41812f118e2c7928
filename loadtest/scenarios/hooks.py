"""Locust's events: the hidden option that carries the master's set-up to its workers, the set-up at test
start, the answer counts sent to the master, and the summary (answers, each activity's stats) at the end.
Importing this module registers them."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from typing import Any

import requests
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest.scenarios.admin import Admin
from loadtest.scenarios.config import SETUP_OPTION
from loadtest.scenarios.outcomes import OUTCOMES
from loadtest.scenarios.plan import Plan, Shared, current, make_plan, make_shared, use

log = logging.getLogger("claimgate.loadtest")


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        f"--{SETUP_OPTION.replace('_', '-')}", default="", include_in_web_ui=False, help=argparse.SUPPRESS
    )


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        OUTCOMES.clear()
        classes = [c.__name__ for c in environment.user_classes if c.tasks]
        shared = make_shared(environment, classes)
        if isinstance(runner, MasterRunner):
            # forwarded to every worker with the spawn message, before the workers' own test_start
            setattr(environment.parsed_options, SETUP_OPTION, json.dumps(asdict(shared)))
            use(Plan(shared=shared))
            return
        use(make_plan(environment, shared, 0))
        return
    blob = getattr(environment.parsed_options, SETUP_OPTION, "")
    if not blob:
        raise RuntimeError("the master sent no set-up; run the same locustfile on the master and the workers")
    use(make_plan(environment, Shared(**json.loads(blob)), runner.worker_index))


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data["claimgate_outcomes"] = dict(OUTCOMES)
    OUTCOMES.clear()


@events.worker_report.add_listener
def _worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    OUTCOMES.update(data.get("claimgate_outcomes", {}))


def _activity_stats(admin: Admin) -> None:
    plan = current()
    for name, activity in [
        ("flash sale", plan.shared.rush_activity),
        ("checkout", plan.checkout_activity),
        ("codes", plan.code_activity),
    ]:
        if activity:
            log.info(
                "%s %s stats: %s", name, activity, admin.call("GET", f"/v1/admin/activities/{activity}/stats")
            )
    for k, activity in enumerate(plan.shared.drops):
        stats = admin.call("GET", f"/v1/admin/activities/{activity}/stats")
        if stats["claimed"]:
            log.info("drop %d %s: claimed %d, %d left", k, activity, stats["claimed"], stats["stock_left"])


@events.quitting.add_listener
def _summary(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    if OUTCOMES:
        width = max(len(k) for k in OUTCOMES)
        lines = [f"  {k:<{width}}  {n:>9}" for k, n in sorted(OUTCOMES.items())]
        log.info("answers by request, status and error:\n%s", "\n".join(lines))
    try:
        _activity_stats(Admin(environment.host, timeout=10))
    except (RuntimeError, requests.RequestException) as error:
        log.warning("no activity stats: %s", error)
