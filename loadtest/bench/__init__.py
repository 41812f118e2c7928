"""``claimgate benchmark``: one run on one machine that starts its own servers and measures the claim path
against its ceilings (Valkey's script rate, a bare HTTP app on the same granian set-up) and a naive Postgres
baseline, checks that every figure's claims add up, and writes ``docs/benchmark.md`` and ``.json``.

Modules, one job each. The run: ``command`` (the flags), ``phases`` (which phases, each round's activities), ``run``
(setup, the rounds, the end), ``session`` (what the phases share), the phases of a round (``raw_ceiling``,
``gateway_phases`` and ``open_loop``, ``http_baselines``, ``worker_phases``, ``idle``), ``closed_loop`` (one wrk
phase, judged). Its tools: ``procs`` (CPU and RSS of process trees, generators run to completion), ``servers`` (the
gateway, the bare and naive apps, the worker), ``apps`` (the bare ASGI and litestar apps), ``naive`` (the
Postgres-only baseline app), ``tokens`` (user tokens in a file), ``wrk`` and ``h2load`` (the generators and their
output), ``redisbench`` (the raw script call), ``backlog`` (the worker's backlog and Redis bytes per coupon),
``catalog`` (the activities, through the admin API), ``checks`` (the correctness checks).
What it found: ``stats`` (percentiles, medians and spreads, ratios and targets), ``results`` (each run's figures
and phases, grouped over the runs), ``machine`` (what it ran on), ``describe`` (settings and method), ``report``
(markdown and JSON).
"""
