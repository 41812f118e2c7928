"""What the Redis durability tests (``test_redis_durability.py``) need beyond ``support.py``: a standalone Valkey
with AOF that a test kills, rolls back (an older copy of its AOF put back, its last write torn) and restarts on
the same port. These tests run their own Valkey per test with the session Postgres, never the session Valkey.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from gateway.devstack.pidfile import PidFile, free_port, kill_pid
from gateway.devstack.valkey import ValkeyServer, start_valkey, stop_valkey

AOF_DIR = "appendonlydir"  # Valkey's appenddirname: manifest + base (RDB preamble) + incr files


class AofValkey:
    """A standalone Valkey with AOF and automatic rewrites off (so a copy of its AOF folder is whole), killed with
    SIGKILL and restarted on the same port and directory, where it loads the AOF."""

    def __init__(self, workdir: Path, pidfile: PidFile, appendfsync: str) -> None:
        self.workdir = workdir
        self.pidfile = pidfile
        self.appendfsync = appendfsync
        self.port = free_port()
        self.server: ValkeyServer | None = None
        self.starts: list[float] = []  # monotonic time each start returned (the server answers PING)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def aof_dir(self) -> Path:
        return self.workdir / AOF_DIR

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def start(self) -> ValkeyServer:
        assert self.server is None, "already running"
        self.server = start_valkey(
            self.workdir,
            port=self.port,
            appendonly=True,
            appendfsync=self.appendfsync,
            auto_aof_rewrite=False,
            pidfile=self.pidfile,
        )
        self.starts.append(time.monotonic())
        return self.server

    def kill(self) -> None:
        """kill -9: nothing is flushed; the AOF holds what reached the file before."""
        assert self.server is not None
        kill_pid(self.server.pid)
        self.pidfile.remove(self.server.pid)
        self.server = None

    def stop(self) -> None:
        if self.server is not None:
            stop_valkey(self.server, self.pidfile)
            self.server = None

    def copy_aof(self, side: Path) -> list[tuple[str, int]]:
        """Copy the AOF folder while the server runs and writes (a machine crash's view of it: the tail in flight
        may be cut); the files copied and their sizes."""
        shutil.copytree(self.aof_dir, side)
        return aof_files(side)

    def put_back(self, side: Path) -> None:
        """Replace the (stopped) server's AOF folder with an older copy: a rollback."""
        assert self.server is None, "stop the server before replacing its AOF"
        shutil.rmtree(self.aof_dir)
        shutil.copytree(side, self.aof_dir)

    def log(self) -> str:
        try:
            return (self.workdir / "valkey.log").read_text(errors="replace")
        except OSError:
            return ""

    def load_notes(self) -> list[str]:
        """What Valkey said while loading an AOF (a truncated tail, a reverted MULTI)."""
        words = ("truncat", "short read", "MULTI", "incomplete", "Reading the remaining AOF tail")
        return [line for line in self.log().splitlines() if any(w in line for w in words)]


def tear_tail(folder: Path, size: int) -> Path:
    """Cut the last ``size`` bytes off the copy's newest incr file: the last write torn, as a machine crash can
    leave it (the cut lands inside the last script's MULTI ... EXEC block)."""
    incr = max(folder.glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3]))
    with open(incr, "r+b") as fh:
        fh.truncate(max(0, incr.stat().st_size - size))
    return incr


def aof_files(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir())
