"""The embedded default as a new user runs it: no Redis or Postgres configured, and after a `kill -9` of the
launcher the next run stops the servers it left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.devstack.pidfile import pid_alive, stop_pid
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
CLAIMGATE = [sys.executable, "-m", "claimgate.cli"]


def bare_env() -> dict[str, str]:
    """The environment of a new user: no claimgate settings at all."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CLAIMGATE_")}


def processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def test_up_after_a_kill_9_stops_what_the_killed_run_left(tmp_path: Path) -> None:
    workdir = tmp_path / "stack"
    first = subprocess.Popen(
        [*CLAIMGATE, "up", "--workdir", str(workdir), "--users", "30", "--stock", "5"],
        env=bare_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    left: list[int] = []
    try:
        output = []
        assert first.stdout is not None
        deadline = time.monotonic() + 120
        for line in first.stdout:
            output.append(line)
            if line.startswith("serving;") or time.monotonic() > deadline:
                break
        assert any("granted: 5" in line for line in output), "".join(output)
        left = [entry["pid"] for entry in json.loads((workdir / "pids.json").read_text())]
        kinds = sorted(entry["kind"] for entry in json.loads((workdir / "pids.json").read_text()))
        assert kinds == ["gateway", "postgres", "valkey", "worker"]
        first.kill()  # kill -9: no cleanup runs
        first.wait()
        time.sleep(0.5)
        assert all(pid_alive(pid) for pid in left), "the servers should outlive a kill -9 of the launcher"

        second = subprocess.run(
            [*CLAIMGATE, "up", "--workdir", str(workdir), "--once", "--users", "30", "--stock", "5"],
            env=bare_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"stopped {len(left)} server(s) a previous run left behind" in second.stdout
        assert "granted: 5" in second.stdout
        assert "Postgres: 5 claims rows, 5 coupon rows" in second.stdout
        assert "stopped every server this run started" in second.stdout
        assert not any(pid_alive(pid) for pid in left)
        assert json.loads((workdir / "pids.json").read_text()) == []
        assert processes_with(str(workdir)) == []
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if first.stdout is not None:
            first.stdout.close()
        for pid in left:
            stop_pid(pid)
