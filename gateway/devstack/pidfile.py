"""Bookkeeping for the servers this project starts, so a crashed launcher's leftovers can be ended later.

A :class:`PidFile` is a JSON list of ``{"pid", "kind", "marker"}``. The marker is a string that appears, as
a whole whitespace-delimited run, in the process's ``/proc/PID/cmdline`` (Valkey rewrites its process title
to ``<binary> 127.0.0.1:PORT [cluster]``, so its marker is ``127.0.0.1:PORT``; the postmaster keeps its argv,
so its marker is its data directory). A pid whose command line lacks the marker is a recycled pid and is never
signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

# Popen handles of the servers started in this process, so their exit status is collected (no zombies) and
# Python never warns that a still-running subprocess was garbage collected.
_children: dict[int, subprocess.Popen[bytes]] = {}

# The signal that asks each kind of server for a quick, clean shutdown. The postmaster's SIGTERM is "smart"
# shutdown, which waits for every client to disconnect; SIGINT is "fast" shutdown.
_STOP_SIGNALS: dict[str, signal.Signals] = {"postgres": signal.SIGINT}


class Entry(TypedDict):
    pid: int
    kind: str
    marker: str
    owner: int  # the process that started it; its servers are stale only once it is gone


def adopt_child(proc: subprocess.Popen[bytes]) -> None:
    """Keep ``proc`` so :func:`stop_pid` can reap it; launchers call this right after ``Popen``."""
    _children[proc.pid] = proc


def spawn(command: list[str], log: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """A child in its own session (a Ctrl-C of the parent reaches it only through an explicit stop), its output
    appended to ``log``, adopted so :func:`stop_pid` reaps it."""
    with open(log, "ab") as out:
        child: subprocess.Popen[bytes] = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )
    adopt_child(child)
    return child


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a server's log, for an error that says why it did not start."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _reap_if_child(pid: int) -> bool:
    """True when ``pid`` is (was) our child and has exited; its status is collected."""
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return False
        del _children[pid]
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process. Collects it if it is an exited child of ours."""
    if pid <= 0:
        return False
    if _reap_if_child(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3, after the parenthesised command name (which may itself contain spaces or parentheses).
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def cmdline_of(pid: int) -> str:
    """The process's command line with NULs as spaces ("" when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def marker_matches(pid: int, marker: str) -> bool:
    """Whether ``marker`` appears in the pid's command line as a whole run (whitespace or ends around it)."""
    if not marker:
        return False
    pattern = r"(?<!\S)" + re.escape(marker) + r"(?!\S)"
    return re.search(pattern, cmdline_of(pid)) is not None


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` (from /proc; zombies left out)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":  # a zombie is ended, only not yet reaped
            members.append(int(entry.name))
    return members


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _end_group(pid: int) -> None:
    """SIGKILL what is left of the process group ``pid`` led (a granian worker whose master was killed -9 keeps
    serving otherwise). A group id is never reused while the group has a member, so this reaches only those."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_pid(pid: int, timeout: float = 10.0, *, sig: signal.Signals = signal.SIGTERM) -> None:
    """Send ``sig`` (SIGTERM), wait up to ``timeout`` seconds, then SIGKILL and wait; no error if gone. What is
    left of the process group it led (``spawn`` starts each child in its own session: a granian master killed
    -9 leaves its workers serving) is SIGKILLed too."""
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if not _wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, 10.0):
                raise RuntimeError(f"process {pid} survived SIGKILL for 10 s")
    if group_members(pid):
        _end_group(pid)


def kill_pid(pid: int) -> None:
    """SIGKILL and wait until it is gone (crash simulation); the process alone, not its group."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, 10.0):
        raise RuntimeError(f"process {pid} survived SIGKILL for 10 s")


class PidFile:
    """A JSON file listing servers this project started: ``[{pid, kind, marker, owner}]``.

    Every read-modify-write holds an exclusive ``flock`` on a sibling ``.lock`` file and rewrites the list
    atomically (temporary file + ``os.replace``), so concurrent launchers never lose each other's entries.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def entries(self) -> list[Entry]:
        """The current entries (an unreadable or malformed file counts as empty)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(data, list):
            return []
        out: list[Entry] = []
        for item in data:
            if not isinstance(item, dict):
                continue
            pid, kind, marker, owner = (
                item.get("pid"),
                item.get("kind"),
                item.get("marker"),
                item.get("owner", 0),
            )
            if (
                isinstance(pid, int)
                and isinstance(kind, str)
                and isinstance(marker, str)
                and isinstance(owner, int)
            ):
                out.append(Entry(pid=pid, kind=kind, marker=marker, owner=owner))
        return out

    def _write(self, entries: list[Entry]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(entries, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def add(self, pid: int, kind: str, marker: str) -> None:
        with self._locked():
            entries = [e for e in self.entries() if e["pid"] != pid]
            entries.append(Entry(pid=pid, kind=kind, marker=marker, owner=os.getpid()))
            self._write(entries)

    def remove(self, pid: int) -> None:
        with self._locked():
            entries = self.entries()
            kept = [e for e in entries if e["pid"] != pid]
            if len(kept) != len(entries):
                self._write(kept)

    def reap_stale(self) -> list[int]:
        """End every listed process whose owner is gone and that is alive and still carries its marker.

        Entries of a live owner (another launcher or test session running now) are kept as they are. Newest
        first (clients before the servers they use), each is asked to stop (SIGTERM; SIGINT for a postmaster),
        given 5 s, then SIGKILLed. Returns the pids that were ended. A live pid whose command line lacks the
        marker (a recycled pid) is left alone.
        """
        with self._locked():
            ended: list[int] = []
            kept: list[Entry] = []
            for entry in reversed(self.entries()):
                pid, owner = entry["pid"], entry["owner"]
                if owner != os.getpid() and pid_alive(owner):
                    kept.insert(0, entry)
                elif pid_alive(pid) and marker_matches(pid, entry["marker"]):
                    stop_pid(pid, 5.0, sig=_STOP_SIGNALS.get(entry["kind"], signal.SIGTERM))
                    ended.append(pid)
                else:  # the leader is gone: children it left in its group (granian's workers) still carry the marker
                    for orphan in group_members(pid):
                        if marker_matches(orphan, entry["marker"]):
                            stop_pid(orphan, 5.0)
                            ended.append(orphan)
            self._write(kept)
            return ended
