"""``claimgate benchmark``: one run on one machine that starts its own servers and measures the claim path
against its ceilings (Valkey's script rate, a bare HTTP app on the same granian set-up) and a naive Postgres
baseline, checks that every figure's claims add up, and writes ``docs/benchmark.md`` and ``.json``.

Modules, one job each: ``procs`` (CPU and RSS of process trees, generators run to completion), ``servers``
(Valkey, Postgres, granian apps, the worker), ``apps`` (the bare ASGI and litestar apps), ``naive`` (the
Postgres-only baseline app), ``tokens`` (user tokens in a file), ``wrk`` and ``h2load`` (the generators and their
output), ``redisbench`` (the raw script ceiling), ``backlog`` (the worker's drain rate and Redis bytes per coupon),
``catalog`` (the activities, through the admin API), ``checks`` (the correctness checks), ``stats`` (percentiles,
ratios and targets), ``machine`` (what it ran on), ``describe`` (settings and method, for the report), ``report``
(markdown and JSON), ``run`` (the phases in order) and ``command`` (the flags).
"""
