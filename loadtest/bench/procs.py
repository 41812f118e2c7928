"""CPU and memory of process trees (from /proc), and generators run to completion with their own CPU time.

A server's CPU over a phase is read twice, before and after: for every live process of its tree (the root and
its descendants, by parent pid) utime + stime + cutime + cstime, so a child that exited and was reaped during the
phase (a Postgres backend, an AOF rewrite) is still counted, once, in its parent's cumulative fields.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: [state, ppid, ...] (None when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def children_of() -> dict[int, list[int]]:
    """Parent pid -> its live children, from one pass over /proc."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None or fields[0] == "Z":
            continue
        out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def tree(root: int, children: Mapping[int, list[int]] | None = None) -> list[int]:
    """``root`` and every live descendant."""
    children = children_of() if children is None else children
    if _stat(root) is None:
        return []
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime + cutime + cstime of each pid, in seconds (gone pids count 0)."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLOCK_TICKS


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds processes spent so far on the whole machine (every CPU; /proc/stat user + nice + system:
    interrupt time, which loopback traffic of the run's own costs, is left out)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / CLOCK_TICKS


def own_seconds() -> float:
    """This process's own user + system time (not its children's: a generator is counted on its own)."""
    times = os.times()
    return times.user + times.system


class CpuWatch:
    """CPU seconds of named process trees, read at the start and the end of a phase; also the whole machine's
    busy time and this process's own, so what other processes used in the meantime can be told."""

    def __init__(self, roots: Mapping[str, int | None]) -> None:
        self.roots = {name: pid for name, pid in roots.items() if pid}
        self._start: dict[str, float] = {}
        self._began = self._busy = self._own = 0.0
        self.seconds = self.busy = self.own = 0.0
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        children = children_of()
        return {name: cpu_seconds(tree(pid, children)) for name, pid in self.roots.items()}

    def __enter__(self) -> CpuWatch:
        self._began = time.monotonic()
        self._busy, self._own = machine_busy_seconds(), own_seconds()
        self._start = self._read()
        return self

    def __exit__(self, *_: object) -> None:
        end = self._read()
        self.seconds = time.monotonic() - self._began
        self.busy = machine_busy_seconds() - self._busy
        self.own = own_seconds() - self._own
        self.used = {name: end[name] - self._start.get(name, 0.0) for name in end}

    def others(self, generator_seconds: float) -> float:
        """CPU seconds used meanwhile by processes this run did not start (never below 0)."""
        return max(0.0, self.busy - sum(self.used.values()) - self.own - generator_seconds)


class RssSampler:
    """The largest summed VmRSS of a process tree seen while running (sampled every ``interval`` seconds)."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root, self.interval = root, interval
        self.max_bytes, self.max_processes = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        pids = tree(self.root)
        total = rss_bytes(pids)
        if total > self.max_bytes:
            self.max_bytes, self.max_processes = total, len(pids)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Ran:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float  # the generator's own user + system time (wait4's rusage)
    wall_seconds: float


def run_generator(command: list[str], timeout: float, workdir: Path) -> Ran:
    """Run a load generator to its end (SIGKILL after ``timeout`` seconds), collecting it with wait4 for its
    exact CPU time."""
    out_path, err_path = workdir / "generator.out", workdir / "generator.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        began = time.monotonic()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = began + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.monotonic() - began
    proc.returncode = os.waitstatus_to_exitcode(status)  # collected here: Popen must not wait for it again
    return Ran(
        command,
        proc.returncode,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        usage.ru_utime + usage.ru_stime,
        wall,
    )
