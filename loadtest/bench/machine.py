"""What the run ran on: the machine, and the version of every piece measured."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from loadtest.host import cpu_model, filesystem_of

PACKAGES = ("granian", "litestar", "redis", "hiredis", "asyncpg", "uvloop", "msgspec", "pyjwt")


def memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine(workdir: Path) -> dict[str, str]:
    return {
        "CPU": cpu_model(),
        "cores": f"{len(os.sched_getaffinity(0))} usable ({os.cpu_count()} online)",
        "RAM": memory_total(),
        "kernel": f"{platform.system()} {platform.release()}",
        "data filesystem": filesystem_of(workdir),
        "load average at start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name if name != "redis" else "redis-py"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["wrk"] = tool_version(["wrk", "-v"]).split(" Copyright")[0]
    found["h2load"] = tool_version(["h2load", "--version"])
    found["redis-benchmark"] = tool_version(["redis-benchmark", "--version"])
    return found
